"""Greedy decoding for search trials: shared prefixes, one prefill, finished rows leave.

Three savings over ``HookedModel.generate`` / ``evaluate.kl.teacher_forced`` (same greedy
tokens, same log-probs to ~1e-4; tests/test_search.py checks):

* Chat prompts share their template's opening (a system turn: 24 of SmolLM2's ~42 prompt
  tokens). It is run once per batch and its KV cache repeated, instead of once per row.
* The prefill's last-position logits *are* the first-token distribution the cheap refusal
  score reads, so a trial runs the harmful prompts through the model once: score, decide
  whether to prune, then keep decoding from the same KV cache.
* ``generate`` computes every row of a batch until its slowest row ends. Here a row that
  emits end-of-turn or that the judge has decided is dropped from the batch and its KV
  cache (``DynamicCache.batch_select_indices``), so later steps cost only the rows left.

Runs under whatever hooks are active (the bridge fires them inside ``hf_model``'s forward).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitlab.engine import HookedModel

__all__ = ["Prefill", "common_prefix", "decode", "prefill", "teacher_forced", "token_ids"]

log = logging.getLogger(__name__)

StopFn = Callable[[list[str]], Sequence[bool]]


@dataclass
class _Rows:
    """The live rows of one batch: prompt indices, KV cache, mask and next positions."""

    index: list[int]
    cache: object
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
    """

    n: int
    first_logprobs: Float[Tensor, "prompt vocab"]
    batches: list[_Rows]


def _forward(model: HookedModel, ids, mask, positions, cache, keep: int | Tensor = 1):
    return model.hf_model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=keep,
    )


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


def _run_suffixes(
    model: HookedModel, prefix: list[int], suffixes: list[list[int]], wanted: list[list[int]]
):
    """Forward ``prefix`` once, then ``[prefix][suffix_i][padding]`` for the batch.

    Every chat prompt starts with the same template tokens (SmolLM2: a 24-token system turn
    in ~42); computing them once instead of once per row roughly halves a prompt pass.
    Suffixes are right-padded so the prefix sits at the same positions in every row; the
    mask hides the padding and position ids continue each row's own count, so RoPE sees
    exactly the unpadded sequence. (A sliding-window cache counts padding as tokens: fine
    while prompts are shorter than the window, as they are for search prompts.)

    Returns:
        ``(logits, cache, mask, lengths)``: per row, the logits at its ``wanted`` suffix
        offsets (float32, ``[len(wanted[i]), vocab]``); the cache, mask and suffix lengths.
    """
    device, b, p = model.device, len(suffixes), len(prefix)
    cache = None
    if p:
        cache = _forward(model, torch.tensor([prefix], device=device), None, None, None)
        cache = cache.past_key_values
        cache.batch_repeat_interleave(b)
    lengths = torch.tensor([len(s) for s in suffixes], device=device)
    width = int(lengths.max())
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=device)
    suffix_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).long()
    mask = torch.cat([torch.ones(b, p, dtype=torch.long, device=device), suffix_mask], dim=1)
    positions = (p + torch.arange(width, device=device)).expand(b, -1)
    # Logits only where some row needs them (a 1-D index keeps the same columns for all rows).
    columns = sorted({o for row in wanted for o in row})
    out = _forward(model, ids, mask, positions, cache, torch.tensor(columns, device=device))
    at = {o: j for j, o in enumerate(columns)}
    logits = [out.logits[r, [at[o] for o in wanted[r]]].float() for r in range(b)]
    return logits, out.past_key_values, mask, lengths


@torch.no_grad()
def prefill(
    model: HookedModel, prompts: Sequence[str], batch_size: int = 16, chat: bool = True
) -> Prefill:
    """Run the prompts once, their shared template prefix once per batch.

    Returns:
        The first-token log-probs and the caches to decode from.
    """
    ids = token_ids(model, prompts, chat)
    p = common_prefix(ids)
    # Similar lengths in a batch waste less compute on padding.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    first: list[Tensor] = [torch.empty(0)] * len(ids)
    batches = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        suffixes = [ids[i][p:] for i in index]
        wanted = [[len(s) - 1] for s in suffixes]
        logits, cache, mask, lengths = _run_suffixes(model, ids[0][:p], suffixes, wanted)
        last = torch.cat(logits)
        for row, i in enumerate(index):
            first[i] = torch.log_softmax(last[row], -1).cpu()
        batches.append(_Rows(index, cache, mask, p + lengths, last))
    return Prefill(len(ids), torch.stack(first), batches)


@torch.no_grad()
def teacher_forced(
    model: HookedModel,
    prompts: Sequence[str],
    continuation: Int[Tensor, "prompt k"],
    batch_size: int = 16,
    chat: bool = True,
) -> Float[Tensor, "prompt k vocab"]:
    """As ``circuitlab.evaluate.kl.teacher_forced`` (log-probs at each continuation
    position given the prompt and the tokens before it), the shared prefix run once."""
    ids = token_ids(model, prompts, chat)
    p, k = common_prefix(ids), continuation.shape[1]
    out: list[Tensor] = []
    for start in range(0, len(ids), batch_size):
        rows = range(start, min(start + batch_size, len(ids)))
        suffixes = [ids[i][p:] + continuation[i].tolist() for i in rows]
        # The prompt's last token predicts continuation token 0, and so on.
        wanted = [list(range(len(ids[i]) - p - 1, len(ids[i]) - p - 1 + k)) for i in rows]
        logits, _, _, _ = _run_suffixes(model, ids[0][:p], suffixes, wanted)
        out.extend(torch.log_softmax(x, -1).cpu() for x in logits)
    return torch.stack(out)


def _eos_ids(model: HookedModel) -> Tensor:
    eos = model.hf_model.generation_config.eos_token_id
    eos = model.tokenizer.eos_token_id if eos is None else eos
    return torch.tensor(eos if isinstance(eos, list) else [eos], device=model.device)


@torch.no_grad()
def _decode_batch(model, rows: _Rows, max_new_tokens, stop, check_every, eos, out) -> None:
    tokens: dict[int, list[int]] = {i: [] for i in rows.index}

    def text(i: int) -> str:
        return model.tokenizer.decode(tokens[i], skip_special_tokens=True)

    for step in range(1, max_new_tokens + 1):
        chosen = rows.logits.argmax(-1)
        for i, token in zip(rows.index, chosen.tolist(), strict=True):
            tokens[i].append(token)
        # The logits come from the last device of a split model, the inputs go to the first.
        done = torch.isin(chosen, eos.to(chosen.device))
        if stop is not None and step % check_every == 0:
            verdict = stop([text(i) for i in rows.index])
            done |= torch.tensor(list(verdict), dtype=torch.bool, device=done.device)
        if step == max_new_tokens or bool(done.all()):
            break
        if bool(done.any()):
            rows.keep(~done)
            chosen = chosen[~done]
        rows.mask = torch.cat([rows.mask, torch.ones_like(rows.mask[:, :1])], dim=1)
        ids = chosen[:, None].to(rows.mask.device)
        result = _forward(model, ids, rows.mask, rows.positions[:, None], rows.cache)
        rows.logits = result.logits[:, -1].float()
        rows.positions = rows.positions + 1
    for i in tokens:
        out[i] = text(i)


def decode(
    model: HookedModel,
    state: Prefill,
    max_new_tokens: int,
    stop: StopFn | None = None,
    check_every: int = 4,
) -> list[str]:
    """Greedy completions from a :class:`Prefill` (which it consumes).

    Args:
        max_new_tokens: the budget per prompt.
        stop: as ``HookedModel.generate``'s: called every ``check_every`` tokens with the
            live rows' texts; a row it returns True for ends (and leaves the batch).

    Returns:
        Completions (special tokens removed), in prompt order.
    """
    out = [""] * state.n
    eos = _eos_ids(model)
    while state.batches:
        _decode_batch(model, state.batches.pop(0), max_new_tokens, stop, check_every, eos, out)
    return out
