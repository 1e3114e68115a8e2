"""Refusal metrics: one differentiable number per harmful prompt, from one forward pass.

A metric runs the forward pass itself (under whatever hooks are active, with or without
gradients), so patching only has to attach hooks and call it. Two are provided:

* :class:`RefusalTokenMetric` -- log-odds (or log-probability) that the first generated
  token opens a refusal ("I", "Sorry", "As", ...). It measures behaviour, needs no
  direction, and is what the refusal judges see first.
* :class:`DirectionMetric` -- the last prompt token's residual projected on a refusal
  direction, read at one layer (the final one by default). It measures the mechanism the
  directions work found; it stops the forward pass at that layer, so it is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.decoding import run_until
from circuitlab.evaluate.openings import REFUSAL_OPENINGS, opening_token_ids, refusal_log_mass

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel

__all__ = ["DirectionMetric", "Metric", "RefusalTokenMetric"]

Batch = dict[str, Tensor]


class Metric(Protocol):
    """``metric(model, batch)``: one value per prompt of an encoded batch; higher = more
    refusal. Differentiable when called with gradients enabled."""

    name: str

    def __call__(self, model: HookedModel, batch: Batch) -> Float[Tensor, " batch"]: ...


@dataclass(frozen=True)
class RefusalTokenMetric:
    """Log-odds ``log p - log(1 - p)`` of ``p = P(first generated token in token_ids)``
    (default), or ``log p`` with ``log_odds=False``.

    On a model that refuses almost surely the log-probability saturates near 0: a single
    head's patch barely moves it and a first-order estimate of that patch ranks heads
    poorly. The log-odds keep growing, which is why they are the default (names:
    ``refusal-logodds``, ``refusal-logprob``). Build it with :meth:`from_openings` to pass
    refusal-opening strings instead of ids.
    """

    token_ids: tuple[int, ...]
    log_odds: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_ids", tuple(int(i) for i in self.token_ids))
        if not self.token_ids:
            raise ValueError("RefusalTokenMetric needs at least one token id")

    @property
    def name(self) -> str:
        return "refusal-logodds" if self.log_odds else "refusal-logprob"

    @classmethod
    def from_openings(
        cls,
        tokenizer,
        openings: Sequence[str] = REFUSAL_OPENINGS,
        log_odds: bool = True,
    ) -> RefusalTokenMetric:
        """The metric over the first tokens of ``openings`` (see
        :func:`~circuitlab.evaluate.openings.opening_token_ids`)."""
        return cls(tuple(opening_token_ids(tokenizer, openings)), log_odds)

    def __call__(self, model: HookedModel, batch: Batch) -> Float[Tensor, " batch"]:
        # logits_to_keep=1: only the last position is unembedded (a 262k vocabulary would
        # otherwise dominate the cost of every patched pass).
        logits = model.hf_model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        value = refusal_log_mass(logprobs, self.token_ids)
        if self.log_odds:
            refusal = torch.zeros(logprobs.shape[-1], dtype=torch.bool, device=logprobs.device)
            refusal[list(self.token_ids)] = True
            # log(1 - p) as the log-sum-exp of every other token: exact even when p -> 1.
            value = value - logprobs[:, ~refusal].logsumexp(dim=-1)
        return value


@dataclass(frozen=True, eq=False)
class DirectionMetric:
    """Projection of the last prompt token's residual on ``direction`` at one layer.

    Args:
        direction: the refusal direction (normalised here).
        layer: where to read (default: the final layer).
        hook: the residual hook read at ``blocks.{layer}``; ``hook_resid_post`` includes the
            layer's own heads and MLP, ``hook_resid_mid`` only its heads (then the metric is
            exactly linear in that layer's head outputs).
    """

    direction: Float[Tensor, " d_model"]
    layer: int | None = None
    hook: str = "hook_resid_post"
    name: ClassVar[str] = "refusal-projection"

    def __post_init__(self) -> None:
        if self.direction.ndim != 1:
            raise ValueError(f"direction must be [d_model], got {tuple(self.direction.shape)}")
        unit = self.direction.detach().float() / self.direction.norm().clamp_min(1e-12)
        object.__setattr__(self, "direction", unit)

    def __call__(self, model: HookedModel, batch: Batch) -> Float[Tensor, " batch"]:
        layer = model.n_layers - 1 if self.layer is None else self.layer
        if not 0 <= layer < model.n_layers:
            raise ValueError(f"metric layer {layer} out of range [0, {model.n_layers})")
        value: dict[str, Tensor] = {}

        def read(x: Tensor) -> None:
            # Left padding: every prompt's last token is at position -1.
            value["v"] = x[:, -1].float() @ self.direction.to(x.device)

        run_until(model, batch, [(f"blocks.{layer}.{self.hook}", read)])
        return value["v"]
