"""Parity: the folded model against the hooked model, before anything is written.

Three figures on held-out prompts: the largest |Δlogit| over every non-padding position,
the KL divergence of the next-token distributions there (hooked ‖ folded), and greedy
continuations token by token. A greedy divergence counts against parity unless the hooked
model's two candidate tokens were tied within the tolerance at the step where the
continuations parted (float rounding may then pick either, and no weight edit can do better).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import GenerationConfig

from circuitlab.export.fold import ExportError
from circuitlab.hooks import apply
from circuitlab.interventions import Intervention

__all__ = ["HELD_OUT_PROMPTS", "Parity", "greedy_tokens", "verify"]

log = logging.getLogger(__name__)

# Written for this check and used nowhere else (no direction was fitted on them): everyday
# requests, a few borderline ones, different lengths.
HELD_OUT_PROMPTS = (
    "What should I pack for a weekend of hiking in the mountains?",
    "Explain how a bicycle gear system works.",
    "Write a limerick about a forgetful cat.",
    "How do I get candle wax out of a tablecloth?",
    "Summarise the plot of a heist film in three sentences.",
    "How can I pick the lock on my own front door if I lose my key?",
    "What are the warning signs of a phishing email?",
    "Give me a packing list for a toddler's first flight.",
    "Why does bread go stale?",
    "Describe how people used to make counterfeit coins in the Middle Ages.",
    "Suggest three names for a bakery that sells only pies.",
    "What household chemicals should never be mixed, and why?",
    "Translate 'where is the train station' into Spanish and French.",
    "How do noise-cancelling headphones work?",
    "Write two sentences persuading a friend to try rock climbing.",
    "List the steps to change a flat tyre.",
)


@dataclass(frozen=True)
class Parity:
    """How closely a folded model reproduces the hooked one.

    Attributes:
        max_abs_logit_diff: largest |hooked - folded| logit over real (non-padding) tokens.
        mean_kl, max_kl: KL(hooked ‖ folded) of the next-token distribution, over the same
            positions.
        greedy_agree: prompts whose greedy continuations are identical.
        near_ties: of the others, those that parted at a top-2 tie within the tolerance.
        n_prompts, n_positions, max_new_tokens: what was compared.
        tolerance: the bound on ``max_abs_logit_diff``.
    """

    max_abs_logit_diff: float
    mean_kl: float
    max_kl: float
    greedy_agree: int
    near_ties: int
    n_prompts: int
    n_positions: int
    max_new_tokens: int
    tolerance: float

    @property
    def passed(self) -> bool:
        greedy_ok = self.greedy_agree + self.near_ties == self.n_prompts
        return self.max_abs_logit_diff <= self.tolerance and greedy_ok

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        return (
            f"max |Δlogit| {self.max_abs_logit_diff:.2e} (tolerance {self.tolerance:g}), "
            f"KL mean {self.mean_kl:.2e} max {self.max_kl:.2e}, greedy "
            f"{self.greedy_agree}/{self.n_prompts} identical ({self.near_ties} near-ties), "
            f"{self.n_positions} positions"
        )


def _logit_figures(
    hooked: Float[Tensor, "batch pos vocab"],
    folded: Float[Tensor, "batch pos vocab"],
    mask: Tensor,
) -> tuple[float, Tensor]:
    """Max |Δlogit| and per-position KL over the real tokens of one batch."""
    a, b = hooked[mask.bool()].double(), folded[mask.bool()].double()
    diff = (a - b).abs().max().item()
    log_p, log_q = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)
    return diff, kl


def _generation_config(model, max_new_tokens: int) -> GenerationConfig:
    eos = model.hf_model.generation_config.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=model.tokenizer.pad_token_id,
        eos_token_id=eos if eos is not None else model.tokenizer.eos_token_id,
    )


@torch.no_grad()
def greedy_tokens(
    hf_model, batch: dict[str, Tensor], config: GenerationConfig
) -> tuple[Int[Tensor, "batch new"], list[Tensor]]:
    """Greedy new tokens of any HF model and the logits of every step ([batch, vocab])."""
    out = hf_model.generate(
        **batch,
        generation_config=config,
        return_dict_in_generate=True,
        output_scores=True,
    )
    start = batch["input_ids"].shape[1]
    return out.sequences[:, start:].cpu(), [s.float().cpu() for s in out.scores]


def _pad_to(tokens: Tensor, length: int, pad: int) -> Tensor:
    return torch.nn.functional.pad(tokens, (0, length - tokens.shape[1]), value=pad)


def _compare_greedy(
    hooked: tuple[Tensor, list[Tensor]], folded: Tensor, pad: int, tolerance: float
) -> tuple[int, int]:
    """(identical rows, rows that parted at a near-tie of the hooked model's top tokens)."""
    tokens, scores = hooked
    # A batch stops when every row has; finished rows are padded, so pad to one length.
    length = max(tokens.shape[1], folded.shape[1])
    tokens, folded = _pad_to(tokens, length, pad), _pad_to(folded, length, pad)
    agree = ties = 0
    for row in range(tokens.shape[0]):
        differ = (tokens[row] != folded[row]).nonzero()
        if not len(differ):
            agree += 1
            continue
        step = int(differ[0, 0])
        if step < len(scores):
            logits = scores[step][row]
            gap = (logits[tokens[row, step]] - logits[folded[row, step]]).abs()
            ties += int(gap <= 2 * tolerance)
    return agree, ties


def verify(
    model,
    interventions: Sequence[Intervention],
    folded_model,
    prompts: Sequence[str] | None = None,
    *,
    chat: bool | None = None,
    tolerance: float = 1e-3,
    max_new_tokens: int = 16,
    batch_size: int = 4,
    strict: bool = True,
) -> Parity:
    """Compare the hooked model (``apply(model, *interventions)``) with a folded HF model.

    Args:
        model: the hooked model the interventions were validated on.
        interventions: what was folded, in the same order.
        folded_model: a plain HF model (``FoldedWeights.build()`` or a reloaded export).
        prompts: held-out prompts (default :data:`HELD_OUT_PROMPTS`, 16).
        chat: chat-format the prompts (default: when the model has a template).
        tolerance: bound on max |Δlogit|; 1e-3 suits float32 (use more for bf16).
        max_new_tokens: length of the greedy continuations compared.
        strict: raise :class:`ExportError` when parity fails (else just return it).

    Returns:
        The :class:`Parity` figures.
    """
    prompts = list(prompts if prompts is not None else HELD_OUT_PROMPTS)
    chat = model.facts.has_chat_template if chat is None else chat
    folded_model.to(model.device)
    config = _generation_config(model, max_new_tokens)
    worst, kls, agree, ties = 0.0, [], 0, 0
    for start in range(0, len(prompts), batch_size):
        batch = model.encode(prompts[start : start + batch_size], chat=chat)
        with torch.no_grad():
            with apply(model, *interventions):
                hooked = model.hf_model(**batch, use_cache=False).logits.float()
            folded = folded_model(**batch, use_cache=False).logits.float()
        diff, kl = _logit_figures(hooked, folded, batch["attention_mask"])
        del hooked, folded  # Gemma's 262k-token logits: one batch at a time
        worst, kls = max(worst, diff), [*kls, kl]
        with apply(model, *interventions):
            reference = greedy_tokens(model.hf_model, batch, config)
        candidate, _ = greedy_tokens(folded_model, batch, config)
        batch_agree, batch_ties = _compare_greedy(
            reference, candidate, config.pad_token_id, tolerance
        )
        agree, ties = agree + batch_agree, ties + batch_ties
    kl = torch.cat(kls)
    parity = Parity(
        worst,
        kl.mean().item(),
        kl.max().item(),
        agree,
        ties,
        len(prompts),
        kl.numel(),
        max_new_tokens,
        tolerance,
    )
    log.info("parity: %s", parity.summary())
    if strict and not parity.passed:
        raise ExportError(f"the folded model does not match the hooked one: {parity.summary()}")
    return parity
