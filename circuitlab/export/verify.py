"""Parity: the folded model against the hooked model, before anything is written.

Three figures on held-out prompts: the largest |Δlogit| over every non-padding position,
the KL divergence of the next-token distributions there (hooked ‖ folded), and greedy
continuations token by token. A greedy divergence counts against parity unless the hooked
model's two candidate tokens were tied within the tolerance at the step where the
continuations parted (float rounding may then pick either, and no weight edit can do better).

:func:`verify` is :func:`reference` (the hooked model's outputs, once), :func:`run_plain`
(a plain HF model's outputs on the same batches) and :func:`compare`; the stages are public
so that a reloaded export -- even one run in another process -- is compared the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import GenerationConfig

from circuitlab.decoding import Runner, generate_tokens, generation_config, runner
from circuitlab.export.fold import ExportError, FoldPlan
from circuitlab.export.inplace import folded_in_place
from circuitlab.hooks import apply
from circuitlab.interventions import Intervention
from circuitlab.models.loading import input_device, is_quantized
from circuitlab.progress import progress_bar

__all__ = [
    "HELD_OUT_PROMPTS",
    "Parity",
    "Reference",
    "compare",
    "derive_tolerance",
    "reference",
    "run_plain",
    "verify",
    "verify_in_place",
]

log = logging.getLogger(__name__)

FLOAT32_TOLERANCE = 1e-3  # the bar float32 exports have always met
# A fold rounds each edited weight once in the model's dtype where the hooks round each
# activation; measured on tiny bf16/fp16 models the fold's error stayed within a few times
# the model's own batch-composition noise, so the bound is a multiple of that noise.
NOISE_FACTOR = 4.0
TOP_K = 8  # logits kept per greedy step: enough to recognise a near-tie at the top
KL_CHUNK = 128  # positions per float64 KL block (Gemma: 262k-token vocabulary)

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
        noise_floor: how far the hooked model differs from *itself* between a padded batch
            and each prompt run alone: rounding in the model's dtype, which no fold can
            beat. A heavy edit can make a model ill-conditioned enough that this approaches
            the tolerance.
        tolerance_rule: where the tolerance came from (given, the float32 bar, or a
            multiple of the measured noise in the model's dtype).
        enforced: False where the logit bound cannot hold by construction (a quantized
            load compared with re-quantized folded weights): the figures are a report.
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
    noise_floor: float = float("nan")
    tolerance_rule: str = "given"
    enforced: bool = True

    @property
    def passed(self) -> bool:
        if not self.enforced:
            return True
        greedy_ok = self.greedy_agree + self.near_ties == self.n_prompts
        return self.max_abs_logit_diff <= self.tolerance and greedy_ok

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        return (
            f"max |Δlogit| {self.max_abs_logit_diff:.2e} (tolerance {self.tolerance:.3g}: "
            f"{self.tolerance_rule}{'' if self.enforced else '; not enforced'}), "
            f"KL mean {self.mean_kl:.2e} max {self.max_kl:.2e}, greedy "
            f"{self.greedy_agree}/{self.n_prompts} identical ({self.near_ties} near-ties), "
            f"{self.n_positions} positions, hooked model's own noise {self.noise_floor:.2e}"
        )


@dataclass(eq=False)
class Reference:
    """The hooked model's outputs on held-out batches (computed once, compared many times).

    Attributes:
        batches: the encoded, left-padded batches (``input_ids``, ``attention_mask``).
        logits: per batch, the logits of its real tokens, float32 ``[real_tokens, vocab]``.
        tokens: per batch, the greedy new tokens ``[batch, new]``.
        top_values, top_indices: per batch, the :data:`TOP_K` largest logits of each greedy
            step ``[batch, new, k]`` (to tell a near-tie from a real divergence).
        config: the greedy generation settings (shared by every model compared).
        noise_floor: max |Δlogit| of the hooked model, batched vs each prompt alone.
    """

    batches: list[dict[str, Tensor]]
    logits: list[Float[Tensor, "real vocab"]]
    tokens: list[Int[Tensor, "batch new"]]
    top_values: list[Float[Tensor, "batch new k"]]
    top_indices: list[Int[Tensor, "batch new k"]]
    config: GenerationConfig
    noise_floor: float = float("nan")


@torch.no_grad()
def _outputs(hf_model, batch: dict[str, Tensor], config: GenerationConfig, scores: bool):
    """Real-token logits, greedy new tokens and (optionally) each step's top logits."""
    logits = hf_model(**batch, use_cache=False).logits
    real = logits[batch["attention_mask"].bool()].float().cpu()
    del logits  # Gemma's 262k-token logits: hold one copy at a time
    mask = batch["attention_mask"].bool()
    rows = [ids[keep].tolist() for ids, keep in zip(batch["input_ids"], mask, strict=True)]
    run = Runner(hf_model, batch["input_ids"].device, config.pad_token_id)
    found = generate_tokens(
        run, rows, config.max_new_tokens, config.eos_token_id, batch_size=len(rows),
        top_k=TOP_K if scores else 0,
    )  # fmt: skip
    # Rows that ended early are padded, as a batch generation would leave them.
    width = max(len(t) for t in found.tokens)
    tokens = torch.full((len(rows), width), config.pad_token_id, dtype=torch.long)
    for row, new in enumerate(found.tokens):
        tokens[row, : len(new)] = torch.tensor(new, dtype=torch.long)
    if not scores:
        return real, tokens, None
    values = torch.full((len(rows), width, TOP_K), float("-inf"))
    indices = torch.full((len(rows), width, TOP_K), -1, dtype=torch.long)
    for row, (top_values, top_indices) in enumerate(found.top):
        values[row, : len(top_values)] = top_values
        indices[row, : len(top_indices)] = top_indices
    return real, tokens, (values, indices)


def reference(
    model,
    interventions: Sequence[Intervention],
    prompts: Sequence[str] | None = None,
    *,
    chat: bool | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    advance: Callable[[int], None] | None = None,
) -> Reference:
    """The hooked model's outputs under ``apply(model, *interventions)``.

    Args:
        prompts: held-out prompts (default :data:`HELD_OUT_PROMPTS`, 16).
        chat: chat-format the prompts (default: when the model has a template).
        max_new_tokens: length of the greedy continuations.
        batch_size: prompts per forward pass (logits take ``tokens x vocab x 4`` bytes).
        advance: called with the number of prompts after each pass (a progress bar's;
            each prompt is run twice: in its batch and alone, for the noise floor).
    """
    advance = advance or (lambda n: None)
    prompts = list(prompts if prompts is not None else HELD_OUT_PROMPTS)
    chat = model.facts.has_chat_template if chat is None else chat
    config = generation_config(model.hf_model, model.tokenizer, max_new_tokens)
    ref = Reference([], [], [], [], [], config)
    with apply(model, *interventions):
        net = runner(model).net  # the plain view under linear edits, else the bridge
        for start in range(0, len(prompts), batch_size):
            batch = model.encode(prompts[start : start + batch_size], chat=chat)
            real, tokens, (values, indices) = _outputs(net, batch, config, True)
            ref.batches.append(batch)
            ref.logits.append(real)
            ref.tokens.append(tokens)
            ref.top_values.append(values)
            ref.top_indices.append(indices)
            advance(len(batch["input_ids"]))
        ref.noise_floor = _noise_floor(model, ref, advance)
    return ref


@torch.no_grad()
def _noise_floor(model, ref: Reference, advance: Callable[[int], None]) -> float:
    """The hooked model against itself: each prompt alone (no padding) vs its batch."""
    worst = 0.0
    for batch, logits in zip(ref.batches, ref.logits, strict=True):
        rows = logits.split(batch["attention_mask"].sum(-1).tolist())
        pairs = zip(batch["input_ids"], batch["attention_mask"], rows, strict=True)
        for ids, mask, batched in pairs:
            alone = model.hf_model(input_ids=ids[mask.bool()][None], use_cache=False).logits[0]
            worst = max(worst, (alone.float().cpu() - batched).abs().max().item())
            advance(1)
    return worst


def run_plain(
    hf_model, ref: Reference, advance: Callable[[int], None] | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """A plain HF model's real-token logits and greedy tokens on the reference's batches
    (``advance`` is called with each batch's number of prompts)."""
    advance = advance or (lambda n: None)
    device = input_device(hf_model)
    logits, tokens = [], []
    for batch in ref.batches:
        real, new, _ = _outputs(
            hf_model, {k: v.to(device) for k, v in batch.items()}, ref.config, False
        )
        logits.append(real)
        tokens.append(new)
        advance(len(batch["input_ids"]))
    return logits, tokens


def _kl(a: Tensor, b: Tensor) -> Tensor:
    """KL(softmax a ‖ softmax b) per row, in float64, a block of rows at a time."""
    out = []
    for start in range(0, a.shape[0], KL_CHUNK):
        log_p = torch.log_softmax(a[start : start + KL_CHUNK].double(), -1)
        log_q = torch.log_softmax(b[start : start + KL_CHUNK].double(), -1)
        out.append((log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0))
    return torch.cat(out)


def _greedy(ref: Reference, i: int, tokens: Tensor, tolerance: float) -> tuple[int, int]:
    """(identical rows, rows that parted at a near-tie of the hooked model's top logits)."""
    mine, pad = ref.tokens[i], ref.config.pad_token_id
    # A batch stops when every row has; finished rows are padded, so pad to one length.
    length = max(mine.shape[1], tokens.shape[1])
    mine = torch.nn.functional.pad(mine, (0, length - mine.shape[1]), value=pad)
    tokens = torch.nn.functional.pad(tokens, (0, length - tokens.shape[1]), value=pad)
    agree = ties = 0
    for row in range(mine.shape[0]):
        differ = (mine[row] != tokens[row]).nonzero()
        if not len(differ):
            agree += 1
            continue
        step = int(differ[0, 0])
        if step >= ref.top_values[i].shape[1]:
            continue
        values, indices = ref.top_values[i][row, step], ref.top_indices[i][row, step]
        other = (indices == tokens[row, step]).nonzero()
        ties += int(len(other) > 0 and values[0] - values[other[0, 0]] <= 2 * tolerance)
    return agree, ties


def compare(
    ref: Reference, logits: Sequence[Tensor], tokens: Sequence[Tensor], tolerance: float = 1e-3
) -> Parity:
    """Parity of another model's outputs (as :func:`run_plain` gives them) with the reference."""
    if len(logits) != len(ref.logits) or len(tokens) != len(ref.tokens):
        raise ExportError("outputs and reference cover different batches")
    worst, kls, agree, ties = 0.0, [], 0, 0
    for i, (mine, theirs) in enumerate(zip(ref.logits, logits, strict=True)):
        if mine.shape != theirs.shape:
            raise ExportError(f"batch {i}: logits {tuple(theirs.shape)} vs {tuple(mine.shape)}")
        diff = (mine - theirs).abs().max().item()
        worst = max(worst, diff if diff == diff else float("inf"))  # NaN must fail, not vanish
        kls.append(_kl(mine, theirs))
        batch_agree, batch_ties = _greedy(ref, i, tokens[i], tolerance)
        agree, ties = agree + batch_agree, ties + batch_ties
    kl = torch.cat(kls)
    n_prompts = sum(t.shape[0] for t in ref.tokens)
    new = ref.config.max_new_tokens
    return Parity(
        worst,
        kl.mean().item(),
        kl.max().item(),
        agree,
        ties,
        n_prompts,
        kl.numel(),
        new,
        tolerance,
        ref.noise_floor,
    )


def verify(
    model,
    interventions: Sequence[Intervention],
    folded_model,
    prompts: Sequence[str] | None = None,
    *,
    chat: bool | None = None,
    tolerance: float = 1e-3,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    strict: bool = True,
) -> Parity:
    """Compare the hooked model (``apply(model, *interventions)``) with a folded HF model.

    Args:
        model: the hooked model the interventions were validated on.
        interventions: what was folded, in the same order.
        folded_model: a plain HF model (``FoldedWeights.build()`` or a reloaded export).
        prompts, chat, max_new_tokens, batch_size: as for :func:`reference`.
        tolerance: bound on max |Δlogit|; 1e-3 suits float32 (use more for bf16).
        strict: raise :class:`ExportError` when parity fails (else just return it).

    Returns:
        The :class:`Parity` figures.
    """
    ref = reference(
        model,
        interventions,
        prompts,
        chat=chat,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    parity = compare(ref, *run_plain(folded_model, ref), tolerance=tolerance)
    log.info("parity: %s", parity.summary())
    if strict and not parity.passed:
        hint = ""
        if parity.max_abs_logit_diff <= 4 * parity.noise_floor:
            hint = (
                "; the hooked model varies as much against itself (float32 rounding of a "
                "heavily edited model), so a larger tolerance is justified"
            )
        raise ExportError(
            f"the folded model does not match the hooked one: {parity.summary()}{hint}"
        )
    return parity


def derive_tolerance(dtype: torch.dtype, noise: float, max_logit: float) -> tuple[float, str]:
    """The logit tolerance that fits a dtype, and the rule that gave it.

    float32 (and float64) keep the fixed :data:`FLOAT32_TOLERANCE`. Half precision gets
    :data:`NOISE_FACTOR` times the hooked model's measured noise in that dtype (itself
    against itself with a different batch composition), and never less than two units in
    the last place at the largest logit (where the noise happens to measure zero).
    """
    if dtype in (torch.float32, torch.float64):
        return FLOAT32_TOLERANCE, "float32 bar"
    exponent = int(torch.tensor(max(abs(max_logit), 1.0)).log2().floor())
    ulp = torch.finfo(dtype).eps * 2.0**exponent
    name = str(dtype).removeprefix("torch.")
    if NOISE_FACTOR * noise >= 2 * ulp:
        return NOISE_FACTOR * noise, f"{NOISE_FACTOR:g} x the measured {name} noise"
    return 2 * ulp, f"2 ulp of {name} at |logit| {abs(max_logit):.3g}"


def verify_in_place(
    model,
    interventions: Sequence[Intervention],
    plan: FoldPlan,
    files: Sequence = (),
    prompts: Sequence[str] | None = None,
    *,
    chat: bool | None = None,
    tolerance: float | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    strict: bool = True,
    progress: bool = False,
) -> tuple[Parity, dict[str, str]]:
    """The hooked model against the *same* modules holding the folded weights.

    No second model is built: the folded tensors are swapped into the loaded modules (on
    their devices, in their dtype), compared, and the originals are put back.

    Args:
        plan: the fold (:func:`circuitlab.export.plan_fold`).
        files: the source safetensors (read for quantized or offloaded tensors).
        tolerance: bound on max |Δlogit|; None derives it (:func:`derive_tolerance`).
        prompts, chat, max_new_tokens, batch_size, strict: as for :func:`verify`.
        progress: a bar over the hooked, the alone (noise floor) and the folded passes.

    Returns:
        The :class:`Parity` and the digests of the tensors that were checked.
    """
    n = len(prompts if prompts is not None else HELD_OUT_PROMPTS)
    with progress_bar(3 * n, "parity: hooked, alone, folded", progress) as advance:
        ref = reference(
            model, interventions, prompts, chat=chat, max_new_tokens=max_new_tokens,
            batch_size=batch_size, advance=advance,
        )  # fmt: skip
        with folded_in_place(model, plan, files) as digests:
            logits, tokens = run_plain(model.hf_model, ref, advance)
    rule = "given"
    if tolerance is None:
        largest = max(float(x.abs().max()) for x in ref.logits)
        tolerance, rule = derive_tolerance(model.hf_model.dtype, ref.noise_floor, largest)
    parity = compare(ref, logits, tokens, tolerance=tolerance)
    quantized = is_quantized(model.hf_model)
    if quantized:
        rule += "; quantized load vs re-quantized folded weights"
    parity = replace(parity, tolerance_rule=rule, enforced=not quantized)
    log.info("parity: %s", parity.summary())
    if strict and not parity.passed:
        raise ExportError(f"the folded model does not match the hooked one: {parity.summary()}")
    return parity, digests
