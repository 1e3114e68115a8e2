"""Text handling shared by the judges: normalisation, reasoning blocks, the opening, degeneracy.

Everything here is *prefix-stable* where the early-stopping decider needs it: once
:func:`opening` reports its window complete for a prefix of a response, every longer prefix
(and the full response) yields the same window. That is what lets a judge stop a generation
early without ever changing its verdict (tests/test_judges.py checks it on the labelled set).
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass

__all__ = [
    "normalise",
    "Reasoned",
    "split_reasoning",
    "split_thinking",
    "Opening",
    "opening",
    "degenerate_reason",
]

# Curly quotes, primes and look-alikes fold to ASCII so "I can’t" matches "i can't".
_FOLD = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u02bc": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2033": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
    }
)
# Markdown emphasis, code and heading marks, soft hyphens and zero-width characters carry no
# words; deleting them (rather than replacing with spaces) keeps "**I can't**" intact.
_DELETE = re.compile(r"[*_`~#\u00ad\u200b\u200c\u200d\u2060\ufeff]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Fold text for marker matching: NFKC, case, curly quotes, markdown emphasis, whitespace.

    Each step maps characters independently, so the normalised form of a prefix is a prefix
    of the normalised full text (up to a trailing space).

    Args:
        text: any response text.

    Returns:
        Lower-case text with ASCII quotes and single spaces, no emphasis marks.
    """
    text = unicodedata.normalize("NFKC", text).translate(_FOLD)
    text = _DELETE.sub("", text).casefold()
    return _SPACE.sub(" ", text).lstrip()


_THINK_OPEN = re.compile(r"\s*<(think|thinking|reasoning)>", re.IGNORECASE)
# A template that opens the block itself (DeepSeek-R1's ends the prompt with "<think>\n")
# leaves only the closing tag in the response.
_THINK_CLOSE = re.compile(r"</(think|thinking|reasoning)>", re.IGNORECASE)
# gpt-oss's harmony format: an "analysis" channel, then the "final" one. Decoding with
# skip_special_tokens drops the <|...|> markers and leaves "analysisWe need..." and
# "assistantfinalThe answer...", so both spellings are recognised.
_HARMONY_ANALYSIS = re.compile(
    r"\s*(?:<\|start\|>assistant)?(?:<\|channel\|>analysis<\|message\|>|analysis(?=[A-Z]))"
)
_HARMONY_FINAL = re.compile(
    r"(?:<\|end\|>)?\s*(?:<\|start\|>)?assistant(?:<\|channel\|>final<\|message\|>|final)"
)


@dataclass(frozen=True)
class Reasoned:
    """A response split into its reasoning and the answer the user is shown.

    Attributes:
        reasoning: the reasoning block's text ("" when there is none).
        answer: the text after the block (the whole response when there is no block).
        finished: False when a block was opened and never closed: generation ended while
            the model was still reasoning, so there is no answer to judge.
    """

    reasoning: str
    answer: str
    finished: bool


def split_reasoning(text: str) -> Reasoned:
    """Split ``<think>``-style blocks and gpt-oss harmony channels from the answer.

    Markers inside the reasoning ("I won't help with this, redirect") say nothing about what
    the user is shown, so judges and the capability check read only the answer.
    """
    match = _THINK_OPEN.match(text)
    if match is not None:
        close = f"</{match.group(1)}>"
        end = text.lower().find(close.lower(), match.end())
        if end < 0:
            return Reasoned(text[match.end() :], "", False)
        return Reasoned(text[match.end() : end], text[end + len(close) :], True)
    harmony = _HARMONY_ANALYSIS.match(text)
    if harmony is not None:
        final = _HARMONY_FINAL.search(text, harmony.end())
        if final is None:
            return Reasoned(text[harmony.end() :], "", False)
        answer = re.sub(r"<\|(?:return|end)\|>\s*$", "", text[final.end() :])
        return Reasoned(text[harmony.end() : final.start()], answer, True)
    close = _THINK_CLOSE.search(text)
    if close is not None and _THINK_OPEN.search(text[: close.start()]) is None:
        return Reasoned(text[: close.start()], text[close.end() :], True)
    return Reasoned("", text, True)


def split_thinking(text: str) -> tuple[str, bool]:
    """``(answer, finished)`` of :func:`split_reasoning`, for judges that need only those.

    Args:
        text: a response, possibly starting with a reasoning block.

    Returns:
        ``(answer, finished)``: the text after the block, and False when a block was opened
        but not closed (the model is still thinking; the answer is then empty).
    """
    reasoned = split_reasoning(text)
    return reasoned.answer, reasoned.finished


# A sentence ends at terminal punctuation (optionally followed by closing quotes, brackets or
# emphasis) *confirmed* by a following whitespace character, or at a newline. Requiring the
# confirming character keeps "3.5" and a prefix ending in "." from counting as an end.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u2019\u201d)\]*_]*(?=\s)|\n")


@dataclass(frozen=True)
class Opening:
    """The first sentences of an answer, where refusals are decided.

    Attributes:
        text: the raw opening (not normalised).
        complete: True when a longer continuation cannot change ``text``.
    """

    text: str
    complete: bool


def opening(answer: str, n_sentences: int = 2, max_chars: int = 300) -> Opening:
    """The first ``n_sentences`` non-empty sentences of ``answer``, capped at ``max_chars``.

    Args:
        answer: the response after any reasoning block.
        n_sentences: how many sentences make the opening.
        max_chars: cap on the opening; an answer longer than this always has a complete one.

    Returns:
        The opening and whether it is final (see :class:`Opening`).
    """
    answer = answer.lstrip()
    seen, start = 0, 0
    for match in _SENTENCE_END.finditer(answer, 0, min(len(answer), max_chars + 1)):
        if answer[start : match.start()].strip():
            seen += 1
        start = match.end()
        if seen >= n_sentences:
            end = min(match.end(), max_chars)
            return Opening(answer[:end], True)
    if len(answer) > max_chars:
        return Opening(answer[:max_chars], True)
    return Opening(answer, False)


_ECHO_KEY = re.compile(r"[\W_]+")
# Chat-template and tokenizer markers leaking into the text mean the model lost the turn.
_SPECIAL = re.compile(r"<\|[a-z_]+\|>|<(pad|unk|s|/s|eos|bos|start_of_turn|end_of_turn)>")
_TERMINAL = re.compile(r"[.!?\u2026\"')\]]\s*$")


def _key(text: str) -> str:
    return _ECHO_KEY.sub(" ", normalise(text)).strip()


def degenerate_reason(prompt: str, answer: str) -> str | None:
    """Why an answer is degenerate (empty, cut off, an echo, a loop, no words), or None.

    Args:
        prompt: the user prompt (for echo detection).
        answer: the response after any reasoning block, already cut to the judged span.

    Returns:
        A short reason, or None for an answer that reads as language.
    """
    text = normalise(answer).strip()
    if not text:
        return "empty"
    words = [w for w in _ECHO_KEY.sub(" ", text).split() if any(c.isalpha() for c in w)]
    if not words:
        return "no words"
    # A two-word answer without final punctuation ("Sure! To", "Here is") was cut off;
    # "Ottawa." and "4 tablespoons." are complete.
    if len(words) < 3 and not _TERMINAL.search(text):
        return "cut off"
    if _SPECIAL.search(text):
        return "special tokens"
    prompt_key, answer_key = _key(prompt), _key(answer)
    if len(prompt_key) >= 12 and prompt_key in answer_key[: len(prompt_key) + 24]:
        return "echoes the prompt"
    if len(answer_key) >= 12 and prompt_key.startswith(answer_key):
        return "echoes the prompt"
    if len(words) >= 6 and len(set(words)) / len(words) < 0.4:
        return "repeats words"
    raw = text.encode()
    # Natural text compresses to about half; loops of one token or symbol to a tenth.
    if len(raw) >= 24 and len(zlib.compress(raw, 9)) / len(raw) < 0.3:
        return "repeats characters"
    letters = sum(c.isalpha() for c in text if not c.isspace())
    if len(text) >= 10 and letters / max(1, sum(not c.isspace() for c in text)) < 0.4:
        return "mostly symbols"
    return None
