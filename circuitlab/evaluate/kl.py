"""KL divergence of an edited model from its base on harmless prompts.

Two readings, both KL(base ‖ edited) in nats, averaged over prompts:

* **first-token**: the distribution of the first generated token (what Heretic reports).
* **k-token**: the mean over the first ``k`` positions of the *base* model's own greedy
  continuation, teacher-forced through the edited model. First-token KL under-reads damage
  that shows a few tokens in (an edit that keeps "Sure" but derails what follows).

The base side is computed once into a :class:`KLBaseline` and reused for every edited
evaluation (a search scores hundreds of edits against the same base). Both sides come from
one teacher-forced pass of the one decoder (:func:`circuitlab.decoding.teacher_forced`):
position 0 of the base's continuation *is* the first generated token, so the search's trials
and the scorecard read the same numbers, and an unedited model scores exactly 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from circuitlab.decoding import greedy_continuation, teacher_forced
from circuitlab.engine import HookedModel

__all__ = ["kl_divergence", "KLBaseline", "KLScores"]

log = logging.getLogger(__name__)


def kl_divergence(
    base: Float[Tensor, "*batch vocab"], edited: Float[Tensor, "*batch vocab"]
) -> Float[Tensor, "*batch"]:
    """KL(base ‖ edited) = Σ p_base (log p_base − log p_edited), from log-probabilities.

    Args:
        base: log-probabilities of the reference distribution.
        edited: log-probabilities of the compared distribution, same shape.

    Returns:
        One KL value (nats) per distribution.
    """
    # float64 for the sum: over a 262k vocabulary float32 cancellation leaves ~1e-6 noise.
    base, edited = base.double(), edited.double()
    return (base.exp() * (base - edited)).sum(-1).float()


@dataclass(frozen=True)
class KLScores:
    """KL(base ‖ edited), averaged over prompts (and positions for ``k_token``).

    Attributes:
        first_token: mean first-token KL.
        k_token: mean KL over the base's first ``k`` greedy positions.
        k: positions in ``k_token``.
        per_prompt_first, per_prompt_k: the per-prompt values behind the means.
    """

    first_token: float
    k_token: float
    k: int
    per_prompt_first: tuple[float, ...] = field(repr=False)
    per_prompt_k: tuple[float, ...] = field(repr=False)


@dataclass(frozen=True, eq=False)
class KLBaseline:
    """The base model's log-probabilities on a prompt set, computed once.

    Memory is ``n × (k + 1) × vocab`` float32 (32 prompts, k 4, a 262k vocabulary: 168 MB).

    Attributes:
        prompts: the harmless prompts.
        chat: whether prompts were chat-formatted.
        first: base log-probs of the first generated token.
        continuation: the base's greedy continuation tokens.
        along: base log-probs at each continuation position (teacher-forced).
    """

    prompts: tuple[str, ...]
    chat: bool
    first: Float[Tensor, "prompt vocab"]
    continuation: Int[Tensor, "prompt k"]
    along: Float[Tensor, "prompt k vocab"]

    @property
    def k(self) -> int:
        return self.continuation.shape[1]

    @classmethod
    def compute(
        cls,
        model: HookedModel,
        prompts: Sequence[str],
        k: int = 4,
        batch_size: int = 16,
        chat: bool = True,
    ) -> KLBaseline:
        """Run the base model (call it outside any edit's hooks).

        Args:
            model: the base model.
            prompts: harmless prompts.
            k: positions of the base's greedy continuation for the k-token KL.
            batch_size: prompts per forward pass.
            chat: chat-format the prompts.

        Returns:
            The cached base side of every later :meth:`score`.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        prompts = tuple(prompts)
        continuation = greedy_continuation(model, prompts, k, batch_size, chat)
        along = teacher_forced(model, prompts, continuation, batch_size, chat)
        return cls(prompts, chat, along[:, 0], continuation, along)

    def score(self, model: HookedModel, batch_size: int = 16) -> KLScores:
        """KL of ``model`` (an edited copy, or the base under an edit's hooks) from the base,
        in one teacher-forced pass (the first position gives the first-token KL).

        Args:
            model: the edited model; it must share the base's tokenizer.
            batch_size: prompts per forward pass.

        Returns:
            First-token and k-token KL.
        """
        along = teacher_forced(model, self.prompts, self.continuation, batch_size, self.chat)
        if along.shape != self.along.shape:
            raise ValueError(
                f"vocabulary mismatch: base {tuple(self.along.shape)}, edited {tuple(along.shape)}"
            )
        first = along[:, 0]
        kl_first = kl_divergence(self.first, first)
        kl_along = kl_divergence(self.along, along).mean(dim=1)
        return KLScores(
            first_token=kl_first.mean().item(),
            k_token=kl_along.mean().item(),
            k=self.k,
            per_prompt_first=tuple(kl_first.tolist()),
            per_prompt_k=tuple(kl_along.tolist()),
        )

    def save(self, path: str | Path) -> None:
        """Write the baseline as safetensors (prompts and settings in the metadata)."""
        meta = {"prompts": json.dumps(list(self.prompts)), "chat": json.dumps(self.chat)}
        tensors = {"first": self.first, "continuation": self.continuation, "along": self.along}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> KLBaseline:
        """Read a baseline written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        tensors = load_file(str(path))
        return cls(
            tuple(json.loads(meta["prompts"])),
            json.loads(meta["chat"]),
            tensors["first"],
            tensors["continuation"],
            tensors["along"],
        )
