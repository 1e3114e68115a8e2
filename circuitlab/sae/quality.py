"""How good an SAE is on held-out text: variance explained, loss spliced in, latent usage.

* Fraction of variance unexplained (FVU): ``sum |x - x_hat|^2 / sum |x - mean|^2`` over
  held-out non-sink tokens; L0: active latents per token.
* Dead latents never fire on those tokens; dense ones fire on more than ``DENSE`` of them.
* Next-token cross-entropy with the reconstruction spliced in at the SAE's hook (every
  non-sink token replaced by ``x_hat``; sinks are kept, the SAE never saw them), against
  the clean model and against mean ablation (every non-sink token replaced by the mean
  training activation). ``ce_recovered = (CE_mean - CE_sae) / (CE_mean - CE_clean)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.engine import HookedModel
from circuitlab.sae.data import sequence_batches, sink_mask
from circuitlab.sae.format import SAE

__all__ = ["DENSE", "SAEQuality", "reconstruction_stats", "spliced_ce", "sae_quality"]

# A latent active on more than this share of tokens is "dense" (it says little about any).
DENSE = 0.1


@dataclass(frozen=True)
class SAEQuality:
    """An SAE's figures on held-out text (see the module docstring)."""

    n_tokens: int
    fvu: float
    l0: float
    dead: int
    dense: int
    d_sae: int
    ce_clean: float
    ce_sae: float
    ce_mean_ablated: float

    @property
    def ce_increase(self) -> float:
        return self.ce_sae - self.ce_clean

    @property
    def ce_recovered(self) -> float:
        gap = self.ce_mean_ablated - self.ce_clean
        return (self.ce_mean_ablated - self.ce_sae) / gap if gap > 0 else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return {
            **asdict(self),
            "ce_increase": self.ce_increase,
            "ce_recovered": self.ce_recovered,
            "dead_fraction": self.dead / self.d_sae,
            "dense_fraction": self.dense / self.d_sae,
        }


@torch.no_grad()
def reconstruction_stats(
    sae: SAE, acts: Float[Tensor, "token d_in"], batch_size: int = 4096
) -> dict[str, float | int]:
    """FVU, L0 and per-latent firing counts (dead, dense) on token activations."""
    mean = acts.double().mean(0)
    error = total = active = 0.0
    counts = torch.zeros(sae.d_sae, dtype=torch.long)
    for start in range(0, len(acts), batch_size):
        x = acts[start : start + batch_size].float()
        f = sae.encode(x)
        error += float((sae.decode(f, like=x) - x).double().pow(2).sum())
        total += float((x.double() - mean).pow(2).sum())
        fired = f > 0
        active += float(fired.sum())
        counts += fired.sum(0)
    n = len(acts)
    return {
        "n_tokens": n,
        "fvu": error / total,
        "l0": active / n,
        "dead": int((counts == 0).sum()),
        "dense": int((counts > DENSE * n).sum()),
    }


@torch.no_grad()
def spliced_ce(
    model: HookedModel,
    texts: Sequence[str],
    sae: SAE,
    mean: Float[Tensor, " d_in"],
    batch_size: int = 8,
) -> tuple[float, float, float]:
    """Mean next-token CE (clean, SAE spliced in, mean-ablated) over the texts' tokens."""
    sae = sae.to(model.device, model.hf_model.dtype)
    mean = mean.to(model.device, model.hf_model.dtype)
    mode: dict[str, object] = {}

    def splice(x: Tensor, hook) -> Tensor | None:
        if mode["kind"] == "clean":
            return None
        keep = sink_mask(x, mode["keep"]).to(x.device)[..., None]
        new = sae.reconstruct(x) if mode["kind"] == "sae" else mean.expand_as(x)
        return torch.where(keep, new.to(x.dtype), x)

    sums = {"clean": 0.0, "sae": 0.0, "mean": 0.0}
    count = 0
    with model.hooks([(sae.hook_name, splice)]):
        for batch in sequence_batches(model, texts, batch_size):
            targets = batch.input_ids[:, 1:]
            # Predictions made at a real token (the sink's own prediction included).
            valid = (batch.attention_mask[:, :-1] * batch.attention_mask[:, 1:]).bool()
            count += int(valid.sum())
            mode["keep"] = batch.keep
            for kind in sums:
                mode["kind"] = kind
                logits = model.hf_model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    use_cache=False,
                ).logits[:, :-1].float()  # fmt: skip
                ce = torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2), targets, reduction="none"
                )
                sums[kind] += float(ce[valid].sum())
    return sums["clean"] / count, sums["sae"] / count, sums["mean"] / count


def sae_quality(
    model: HookedModel,
    sae: SAE,
    texts: Sequence[str],
    held_out: Float[Tensor, "token d_in"],
    train_mean: Float[Tensor, " d_in"],
    batch_size: int = 8,
) -> SAEQuality:
    """Every figure of :class:`SAEQuality` on held-out ``texts`` and their activations."""
    sae.check_model(model)
    stats = reconstruction_stats(sae, held_out)
    clean, spliced, ablated = spliced_ce(model, texts, sae, train_mean, batch_size)
    return SAEQuality(d_sae=sae.d_sae, ce_clean=clean, ce_sae=spliced, ce_mean_ablated=ablated,
                      **stats)  # fmt: skip
