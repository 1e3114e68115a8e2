"""Token activations for SAEs: chat prompts with the model's own answers, sinks left out.

An SAE is trained on every token of real text at one hook point, not on the last prompt
token the direction extractors read. The text here is what the model sees in use: each
prompt in the model's chat template followed by the model's own greedy answer (generated
once and cached by :func:`circuitlab.activations.generate_completions`).

Attention-sink tokens are left out. SmolLM2's first token carries residual norms of about
24,500 against a few hundred elsewhere (:mod:`circuitlab.directions.massive`); one such
token outweighs thousands of ordinary ones in a squared-error loss, and the SAE would spend
its capacity on a direction that never varies. Every sequence's first token is dropped, and
so is any token whose norm exceeds ``MASSIVE_RATIO`` times the median token norm of its
batch. Activations are cached as safetensors under the same content-addressed scheme as
:func:`circuitlab.activations.collect_activations`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from circuitlab._resources import atomic_write
from circuitlab.activations import (
    MASSIVE_RATIO,
    _cache_file,
    _key,
    generate_completions,
)
from circuitlab.decoding import run_until
from circuitlab.engine import HookedModel
from circuitlab.progress import progress_bar

__all__ = [
    "SequenceBatch",
    "sequence_batches",
    "sink_mask",
    "token_activations",
    "train_prompts",
    "with_answers",
]

log = logging.getLogger(__name__)


def train_prompts(data, n: int) -> list[str]:
    """Half harmful, half harmless train prompts of a testbed's data (its ``harmful_train``,
    ``harmful_extra``, ``harmful_instructions`` and the harmless ones), in that order: an
    SAE for refusal features must see both kinds of request."""
    harmful = [*data.harmful_train, *data.harmful_extra, *data.harmful_instructions]
    harmless = [*data.harmless_train, *data.harmless_extra, *data.harmless_instructions]
    return harmful[: n // 2] + harmless[: n - n // 2]


@dataclass
class SequenceBatch:
    """Left-padded chat texts (prompt + answer) ready for a forward pass.

    Attributes:
        input_ids, attention_mask: the model inputs.
        keep: real tokens that are not attention sinks (set by :func:`sink_mask` once the
            activations are seen; before that, real tokens minus each first token).
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    keep: Bool[Tensor, "batch pos"]


def with_answers(
    model: HookedModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    cache_dir: str | Path | None = "cache",
    progress: bool = False,
) -> list[str]:
    """Each prompt chat-formatted and followed by the model's own greedy answer (cached)."""
    prompts = list(prompts)
    answers = generate_completions(
        model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
        cache_dir=cache_dir, progress=progress,
    )  # fmt: skip
    return [t + a for t, a in zip(model.format_chat(prompts), answers, strict=True)]


def sequence_batches(
    model: HookedModel, texts: Sequence[str], batch_size: int
) -> Iterator[SequenceBatch]:
    """Tokenized (no special tokens added: the template carries them), left-padded."""
    for start in range(0, len(texts), batch_size):
        batch = model.tokenizer(
            list(texts[start : start + batch_size]),
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        mask = batch.attention_mask
        first = mask.cumsum(-1) == 1  # left padding: each row's first real token
        yield SequenceBatch(
            batch.input_ids.to(model.device), mask.to(model.device), (mask.bool() & ~first)
        )


def sink_mask(
    x: Float[Tensor, "batch pos d"], keep: Bool[Tensor, "batch pos"], ratio: float = MASSIVE_RATIO
) -> Bool[Tensor, "batch pos"]:
    """``keep`` minus tokens whose norm exceeds ``ratio`` times the batch's median norm."""
    norms = x.detach().float().norm(dim=-1).cpu()
    median = norms[keep].median() if keep.any() else norms.new_tensor(0.0)
    return keep & (norms <= ratio * median)


@torch.no_grad()
def _collect(
    model: HookedModel, texts: Sequence[str], hook: str, batch_size: int, progress: bool
) -> Float[Tensor, "token d_model"]:
    layer = int(hook.split(".")[1])
    seen: dict[str, Tensor] = {}

    def read(x: Tensor) -> None:
        seen["x"] = x

    chunks = []
    with progress_bar(len(texts), "activations", progress) as step:
        for batch in sequence_batches(model, texts, batch_size):
            inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            run_until(model, inputs, [(hook, read)])
            x = seen.pop("x")
            keep = sink_mask(x, batch.keep)
            chunks.append(x.float().cpu()[keep])
            step(len(batch.input_ids))
    log.info("layer %d: %d token activations", layer, sum(len(c) for c in chunks))
    return torch.cat(chunks)


def token_activations(
    model: HookedModel,
    texts: Sequence[str],
    hook: str,
    *,
    batch_size: int = 16,
    cache_dir: str | Path | None = "cache",
    progress: bool = False,
) -> Float[Tensor, "token d_model"]:
    """Activations at ``hook`` for every non-sink token of ``texts`` (full chat texts).

    Args:
        texts: chat-formatted texts, e.g. from :func:`with_answers`.
        hook: a TL hook name ``blocks.N.*``; the forward pass stops after reading it.
        cache_dir: cache root (files go under ``activations/``); ``None`` disables it.

    Returns:
        float32 CPU tensor, tokens in text order.
    """
    texts = list(texts)
    use_cache = cache_dir is not None and model.n_active_hooks() == 0
    if use_cache:
        key = _key(model, texts, kind="sae-tokens", hook=hook, ratio=MASSIVE_RATIO)
        path = _cache_file(cache_dir, key, ".tokens.safetensors")
        if path.is_file():
            with safe_open(path, framework="pt") as handle:
                if handle.metadata() == key:
                    return handle.get_tensor("activations")
    acts = _collect(model, texts, hook, batch_size, progress)
    if use_cache:
        atomic_write(path, lambda tmp: save_file({"activations": acts}, tmp, metadata=key))
    return acts
