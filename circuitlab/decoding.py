"""The one decoder: every greedy generation, prefill and teacher-forced pass in circuitlab.

Generation, the KL baseline and its scores, the search's trials, the organism's
self-distillation and the export's parity check all run here, so that the same prompts give
the same tokens and the same log-probabilities wherever they are asked for.

* **Shared-prefix prefill.** Chat prompts share their template's opening (SmolLM2: a
  24-token system turn in ~42). It is run once per batch and its KV cache repeated; the
  suffixes are right-padded after it, the mask hides the padding and position ids continue
  each row's own count, so RoPE sees exactly the unpadded sequence. (A sliding-window cache
  counts padding as tokens: fine while prompts are shorter than the window.)
* **Row-dropping decode.** A row that emits end-of-sequence, or that a ``stop`` callback has
  decided, leaves the batch and its KV cache, so later steps cost only the rows left.
* **Teacher forcing** through the same prefill, for KL along a given continuation.
* **The fast path.** With no TransformerLens hook attached, forward passes run on a plain
  HF view of the model (:mod:`circuitlab.fastpath`: the bridge's own leaf modules, no copy
  of the weights, SDPA attention) instead of through the bridge's hook points; linear
  edits reach it as ordinary torch forward hooks on the writer modules.
* **Run until a layer** (:func:`run_until`): read residuals and stop the forward pass there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformers import GenerationConfig

from circuitlab.fastpath import Runner, runner
from circuitlab.progress import progress_bar

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel

__all__ = [
    "Prefill",
    "common_prefix",
    "decode",
    "eos_ids",
    "generate",
    "generate_tokens",
    "generation_config",
    "greedy_continuation",
    "next_token_logprobs",
    "prefill",
    "read_until",
    "run_until",
    "teacher_forced",
    "token_ids",
]

log = logging.getLogger(__name__)

StopFn = Callable[[list[str]], Sequence[bool]]
# Decides rows from their new token ids (a text judge is wrapped into one by the caller).
TokenStop = Callable[[list[list[int]]], Sequence[bool]]


# --------------------------------------------------------------------------- settings
def eos_ids(hf_model: nn.Module, tokenizer) -> list[int]:
    """End-of-sequence ids: the model's generation config, else the tokenizer's."""
    eos = getattr(getattr(hf_model, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def generation_config(hf_model: nn.Module, tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Greedy settings (pad, end-of-sequence, budget) as a transformers GenerationConfig."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_ids(hf_model, tokenizer),
    )


# --------------------------------------------------------------------------- the runner
# ------------------------------------------------------------------------ tokenization
def token_ids(model: HookedModel, prompts: Sequence[str], chat: bool = True) -> list[list[int]]:
    """Unpadded token ids, tokenized as ``HookedModel.encode`` does."""
    if chat:
        texts = model.format_chat(prompts)
        return [model.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    return [model.tokenizer(t).input_ids for t in prompts]


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token."""
    limit = max(min(len(r) for r in rows) - 1, 0)
    first = rows[0]
    for i in range(limit):
        if any(r[i] != first[i] for r in rows):
            return i
    return limit


# ----------------------------------------------------------------------------- prefill
def _forward(run: Runner, ids, mask, positions, cache, keep: int | Tensor = 1, use_cache=True):
    return run.net(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=use_cache,
        logits_to_keep=keep,
    )


def _run_suffixes(
    run: Runner,
    prefix: list[int],
    suffixes: list[list[int]],
    wanted: list[list[int]],
    keep_cache: bool = True,
):
    """Forward ``prefix`` once, then ``[prefix][suffix_i][padding]`` for the batch.

    With no prefix and ``run.share_prefix`` off, rows are left-padded instead (every
    prompt's last token at position -1, as position-reading hooks expect).

    Returns:
        ``(logits, cache, mask, lengths)``: per row, the logits at its ``wanted`` suffix
        offsets (float32, ``[len(wanted[i]), vocab]``); the cache, mask and suffix lengths.
    """
    device, b, p = run.device, len(suffixes), len(prefix)
    cache = None
    if p:
        cache = _forward(run, torch.tensor([prefix], device=device), None, None, None)
        cache = cache.past_key_values
        cache.batch_repeat_interleave(b)
    lengths = torch.tensor([len(s) for s in suffixes], device=device)
    width = int(lengths.max())
    left = [0] * b if run.share_prefix else [width - len(s) for s in suffixes]
    rows = [
        [run.pad_id] * n + s + [run.pad_id] * (width - len(s) - n)
        for s, n in zip(suffixes, left, strict=True)
    ]
    ids = torch.tensor(rows, device=device)
    offset = torch.tensor(left, device=device)[:, None]
    steps = torch.arange(width, device=device)[None]
    suffix_mask = ((steps >= offset) & (steps < offset + lengths[:, None])).long()
    mask = torch.cat([torch.ones(b, p, dtype=torch.long, device=device), suffix_mask], dim=1)
    positions = (p + steps - offset).clamp_min(0).expand(b, -1)
    # Logits only where some row needs them (a 1-D index keeps the same columns for all rows).
    wanted = [[o + n for o in row] for row, n in zip(wanted, left, strict=True)]
    columns = sorted({o for row in wanted for o in row})
    out = _forward(
        run, ids, mask, positions, cache, torch.tensor(columns, device=device), keep_cache or p > 0
    )
    at = {o: j for j, o in enumerate(columns)}
    logits = [out.logits[r, [at[o] for o in wanted[r]]].float() for r in range(b)]
    return logits, (out.past_key_values if keep_cache else None), mask, lengths


@dataclass
class _Rows:
    """The live rows of one batch: prompt indices, KV cache, mask and next positions."""

    index: list[int]
    cache: Any
    mask: Int[Tensor, "row length"]
    positions: Int[Tensor, " row"]
    logits: Float[Tensor, "row vocab"]

    def keep(self, keep: Tensor) -> None:
        # Host indices index a tensor on any device: a split model's cache spans several.
        rows = keep.nonzero().flatten().cpu()
        self.index = [self.index[i] for i in rows.tolist()]
        self.cache.batch_select_indices(rows)
        self.mask, self.positions, self.logits = (
            self.mask[rows.to(self.mask.device)],
            self.positions[rows.to(self.positions.device)],
            self.logits[rows.to(self.logits.device)],
        )


@dataclass
class Prefill:
    """Prompts run once with a KV cache, ready to decode.

    Attributes:
        n: prompts.
        first_logprobs: log-probabilities of the first generated token, in prompt order.
        batches: the cached batches (consumed by :func:`decode`).
        run: the forward the caches belong to.
    """

    n: int
    first_logprobs: Float[Tensor, "prompt vocab"]
    batches: list[_Rows]
    run: Runner | None = None


def _batch_index(lengths: Sequence[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    # Similar lengths in a batch waste less compute on padding; per-prompt routing keeps
    # the given order (its decisions are read back by batch row).
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if sort else range(len(lengths))
    order = list(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def prefill_tokens(
    run: Runner, ids: Sequence[Sequence[int]], batch_size: int = 16, keep_cache: bool = True
) -> Prefill:
    """Run token rows once, their shared prefix once per batch.

    Returns:
        The first-token log-probs and (``keep_cache``) the caches to decode from.
    """
    ids = [list(row) for row in ids]
    p = common_prefix(ids) if len(ids) > 1 and run.share_prefix else 0
    first: list[Tensor] = [torch.empty(0)] * len(ids)
    batches = []
    for index in _batch_index([len(r) for r in ids], batch_size, run.share_prefix):
        suffixes = [ids[i][p:] for i in index]
        wanted = [[len(s) - 1] for s in suffixes]
        logits, cache, mask, lengths = _run_suffixes(run, ids[0][:p], suffixes, wanted, keep_cache)
        last = torch.cat(logits)
        for row, i in enumerate(index):
            first[i] = torch.log_softmax(last[row], -1).cpu()
        if keep_cache:
            batches.append(_Rows(index, cache, mask, p + lengths, last))
    return Prefill(len(ids), torch.stack(first), batches, run)


def prefill(
    model: HookedModel, prompts: Sequence[str], batch_size: int = 16, chat: bool = True
) -> Prefill:
    """:func:`prefill_tokens` of chat-formatted prompts on the model's fastest exact forward."""
    return prefill_tokens(runner(model), token_ids(model, prompts, chat), batch_size)


def next_token_logprobs(
    model: HookedModel, prompts: Sequence[str], batch_size: int = 16, chat: bool = True
) -> Float[Tensor, "prompt vocab"]:
    """Log-probabilities of the first generated token (float32, CPU), no cache kept."""
    ids = token_ids(model, prompts, chat)
    return prefill_tokens(runner(model), ids, batch_size, keep_cache=False).first_logprobs


@torch.no_grad()
def teacher_forced(
    model: HookedModel,
    prompts: Sequence[str],
    continuation: Int[Tensor, "prompt k"],
    batch_size: int = 16,
    chat: bool = True,
) -> Float[Tensor, "prompt k vocab"]:
    """Log-probabilities at each continuation position, feeding the given tokens.

    Position ``t`` is the distribution over token ``t`` of the continuation given the prompt
    and tokens ``0..t-1`` (position 0 is the first generated token's distribution). Runs
    under whatever edits are active.
    """
    run = runner(model)
    ids = token_ids(model, prompts, chat)
    p, k = (common_prefix(ids) if len(ids) > 1 and run.share_prefix else 0), continuation.shape[1]
    out: list[Tensor] = []
    for start in range(0, len(ids), batch_size):
        rows = range(start, min(start + batch_size, len(ids)))
        suffixes = [ids[i][p:] + continuation[i].tolist() for i in rows]
        # The prompt's last token predicts continuation token 0, and so on.
        wanted = [list(range(len(ids[i]) - p - 1, len(ids[i]) - p - 1 + k)) for i in rows]
        logits, _, _, _ = _run_suffixes(run, ids[0][:p], suffixes, wanted, keep_cache=False)
        out.extend(torch.log_softmax(x, -1).cpu() for x in logits)
    return torch.stack(out)


# ------------------------------------------------------------------------------ decode
@dataclass
class Decoded:
    """New token ids per prompt (end-of-sequence included when emitted) and, if asked,
    each step's top logits per prompt (``[steps, k]`` values and indices)."""

    tokens: list[list[int]]
    top: list[tuple[Tensor, Tensor] | None]


@torch.no_grad()
def _decode_batch(run: Runner, rows: _Rows, max_new, stop, every, eos, top_k, out, tick) -> None:
    tokens: dict[int, list[int]] = {i: [] for i in rows.index}
    tops: dict[int, list[tuple[Tensor, Tensor]]] = {i: [] for i in rows.index}
    for step in range(1, max_new + 1):
        chosen = rows.logits.argmax(-1)
        if top_k:
            best = rows.logits.topk(top_k, dim=-1)
            for r, i in enumerate(rows.index):
                tops[i].append((best.values[r].cpu(), best.indices[r].cpu()))
        for i, token in zip(rows.index, chosen.tolist(), strict=True):
            tokens[i].append(token)
        # The logits come from the last device of a split model, the inputs go to the first.
        done = torch.zeros_like(chosen, dtype=torch.bool)
        if eos is not None:
            done = torch.isin(chosen, eos.to(chosen.device))
        if stop is not None and step % every == 0:
            verdict = stop([tokens[i] for i in rows.index])
            done |= torch.tensor(list(verdict), dtype=torch.bool, device=done.device)
        if step == max_new or bool(done.all()):
            tick(len(rows.index))
            break
        # Rows are counted as they finish, and every step ticks, so a progress display of a
        # long batch (a whole test split at once) is never silent for long.
        tick(int(done.sum()))
        if bool(done.any()):
            rows.keep(~done)
            chosen = chosen[~done]
        rows.mask = torch.cat([rows.mask, torch.ones_like(rows.mask[:, :1])], dim=1)
        ids = chosen[:, None].to(rows.mask.device)
        result = _forward(run, ids, rows.mask, rows.positions[:, None], rows.cache)
        rows.logits = result.logits[:, -1].float()
        rows.positions = rows.positions + 1
    for i, new in tokens.items():
        out.tokens[i] = new
        if top_k:
            values, indices = zip(*tops[i], strict=True)
            out.top[i] = (torch.stack(values), torch.stack(indices))


def decode_tokens(
    state: Prefill,
    max_new_tokens: int,
    eos: Sequence[int] | None,
    stop: TokenStop | None = None,
    check_every: int = 4,
    top_k: int = 0,
    advance: Callable[[int], None] | None = None,
) -> Decoded:
    """Greedy new tokens from a :class:`Prefill` (which it consumes).

    Args:
        eos: ids that end a row (kept as its last token); None: every row runs the budget.
        stop: called every ``check_every`` tokens with the live rows' new ids; a row it
            returns True for ends (and leaves the batch).
        top_k: also record each step's ``top_k`` logits (to tell near-ties).
        advance: called with the number of rows that finished at each step (0 too).
    """
    out = Decoded([[] for _ in range(state.n)], [None] * state.n)
    eos_t = None if eos is None else torch.tensor(list(eos), device=state.run.device)
    tick = advance or (lambda n: None)
    while state.batches:
        rows = state.batches.pop(0)
        _decode_batch(state.run, rows, max_new_tokens, stop, check_every, eos_t, top_k, out, tick)
    return out


def _text_stop(tokenizer, stop: StopFn | None) -> TokenStop | None:
    if stop is None:
        return None
    return lambda rows: stop(tokenizer.batch_decode(rows, skip_special_tokens=True))


def decode(
    model: HookedModel,
    state: Prefill,
    max_new_tokens: int,
    stop: StopFn | None = None,
    check_every: int = 4,
) -> list[str]:
    """Greedy completions from a :func:`prefill` (special tokens removed), in prompt order.

    Args:
        stop: called every ``check_every`` tokens with the live rows' texts; a row it returns
            True for ends (a judge that has already decided).
    """
    eos = eos_ids(model.hf_model, model.tokenizer)
    found = decode_tokens(
        state, max_new_tokens, eos, _text_stop(model.tokenizer, stop), check_every
    )
    return model.tokenizer.batch_decode(found.tokens, skip_special_tokens=True)


def generate_tokens(
    run: Runner,
    ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos: Sequence[int] | None,
    *,
    batch_size: int = 16,
    stop: TokenStop | None = None,
    check_every: int = 4,
    top_k: int = 0,
    progress: bool = False,
    label: str = "generating",
) -> Decoded:
    """Greedy new tokens for token rows: prefill and decode one batch at a time (so only
    one batch's KV cache is held)."""
    out = Decoded([[] for _ in ids], [None] * len(ids))
    with progress_bar(len(ids), label, progress) as advance:
        for index in _batch_index([len(r) for r in ids], batch_size):
            state = prefill_tokens(run, [ids[i] for i in index], batch_size)
            found = decode_tokens(state, max_new_tokens, eos, stop, check_every, top_k, advance)
            for j, i in enumerate(index):
                out.tokens[i], out.top[i] = found.tokens[j], found.top[j]
    return out


def generate(
    model: HookedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    stop: StopFn | None = None,
    stop_check_every: int = 4,
    chat: bool = True,
    progress: bool = False,
) -> list[str]:
    """Greedy completions under whatever edits are active (see ``HookedModel.generate``)."""
    run, ids = runner(model), token_ids(model, prompts, chat)
    eos = eos_ids(model.hf_model, model.tokenizer)
    results: list[str] = [""] * len(prompts)
    token_stop = _text_stop(model.tokenizer, stop)
    order = [i for batch in _batch_index([len(r) for r in ids], batch_size) for i in batch]
    with progress_bar(len(prompts), "generating", progress) as advance:

        def one(rows: range) -> None:
            index = [order[i] for i in rows]
            state = prefill_tokens(run, [ids[i] for i in index], len(index))
            found = decode_tokens(
                state, max_new_tokens, eos, token_stop, stop_check_every, advance=advance
            )
            texts = model.tokenizer.batch_decode(found.tokens, skip_special_tokens=True)
            for i, text in zip(index, texts, strict=True):
                results[i] = text

        for rows in model._batches(len(prompts), batch_size):
            model._each(rows, one)
    return results


def greedy_continuation(
    model: HookedModel, prompts: Sequence[str], k: int, batch_size: int = 16, chat: bool = True
) -> Int[Tensor, "prompt k"]:
    """The ``k`` tokens the model (under any active edits) picks greedily after each prompt.

    Exactly ``k`` tokens each: an end-of-turn token does not stop the row, so every prompt
    contributes ``k`` positions to the k-token KL.
    """
    state = prefill(model, prompts, batch_size, chat)
    return torch.tensor(decode_tokens(state, k, None).tokens, dtype=torch.long)


# --------------------------------------------------------------------------- run until
class _Reached(Exception):
    """Raised once every read of :func:`run_until` has fired: later layers are not needed."""


def run_until(
    model: HookedModel,
    batch: dict[str, Tensor],
    reads: Sequence[tuple[str, Callable[[Tensor], None]]],
) -> None:
    """Run the decoder (no unembedding) on ``batch`` until every read has seen its activation.

    Args:
        batch: ``input_ids`` and ``attention_mask`` (left-padded).
        reads: ``(TL hook name, fn(activation))`` pairs; the forward pass stops once each
            has been called. Gradients flow as the caller's grad mode says (attribution
            metrics need them).
    """
    read_until(model, reads, lambda: model.hf_model.model(**batch, use_cache=False))


def read_until(
    model: HookedModel,
    reads: Sequence[tuple[str, Callable[[Tensor], None]]],
    forward: Callable[[], object],
) -> None:
    """Call ``forward`` with ``reads`` attached and stop it once every read has fired: the
    one early stop of the package (the layers after the last read are never run).

    Args:
        reads: ``(TL hook name, fn(activation))`` pairs, attached for this call only.
        forward: runs a pass through the model (e.g. the decoder on a batch, or a routing
            pass re-entering the decoder with the caller's arguments).
    """
    pending = {name for name, _ in reads}

    def make(name: str, fn: Callable[[Tensor], None]):
        def read(x: Tensor, hook) -> None:
            fn(x)
            pending.discard(name)
            if not pending:
                raise _Reached

        return read

    with model.hooks([(name, make(name, fn)) for name, fn in reads]):
        try:
            forward()
        except _Reached:
            return
