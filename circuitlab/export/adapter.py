"""Export a fold as a PEFT LoRA adapter that reproduces it exactly.

Every folded edit changes a weight matrix by a low-rank term: a writer edit
``W <- W - U^T diag(w) U W`` changes ``W`` by ``B A`` with ``B = -U^T diag(w)`` and
``A = U W``; a head edit does the same to one head's ``o_proj`` columns; the embedding
``E <- E - E U^T diag(w) U`` changes every row inside ``span(U)``. So each edited tensor's
change ``dW`` (composed in float64 from the fold plan, whatever the order of the edits) has its
columns in a small known subspace ``Q`` (the edits' ``U`` rows, the addition vectors, a zeroed
head's original columns), and ``dW = Q (Q^T dW)`` exactly: ``lora_B = Q``, ``lora_A = Q^T dW``,
``lora_alpha = r`` so PEFT's scale ``alpha / r`` is 1.

What PEFT can target, and how each edit lands:

- ``o_proj`` / ``down_proj``: LoRA on ``nn.Linear``.
- ``embed_tokens``: PEFT's Embedding LoRA (``lora_embedding_A [r, vocab]``,
  ``lora_embedding_B [d_model, r]``); PEFT multiplies the delta by Gemma's ``embed_scale``
  as the base layer does, so the stored rows' change is what is written.
- biases (a folded addition past layer 0, a projected ``down_proj.bias``): ``lora_bias=True``,
  the bias of ``lora_B``. It works where the base layer has no bias at all (Llama's
  ``mlp_bias=False``), so the base config stays as it is; ``modules_to_save`` would copy
  whole matrices and could not give a bias to a module without one. PEFT refuses
  ``lora_bias`` beside an Embedding LoRA, so that one combination is refused here with the
  merged export as the way out.
- tied embeddings: the adapter wraps only the input embedding, so the tied ``lm_head``
  keeps the original matrix, exactly what the merged export's untying does.

The coupling to the fold (:func:`circuitlab.plan.plan`'s typed edits and the fold's
layout) is all in :func:`_spans`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from circuitlab.export.fold import EMBED_CHUNK, ExportError, FoldPlan, layout, plan_fold
from circuitlab.export.inplace import live_slots, stored_keys
from circuitlab.export.options import ExportOptions
from circuitlab.export.verify import Parity, Reference, compare, reference, verify_in_place
from circuitlab.interventions import Intervention
from circuitlab.models.loading import input_device

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterResult",
    "LoraFactor",
    "export_adapter",
    "lora_factors",
    "peft_parity",
]

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SPAN_RTOL = 1e-10  # singular values below this (relative) are repeats of a direction
RECONSTRUCTION_RTOL = 1e-9  # |B A - dW| / max|W|: float64 rounding, or the span was wrong


@dataclass(frozen=True)
class LoraFactor:
    """One targeted module's exact update ``dW = B @ A`` (plus ``bias``), float64.

    Attributes:
        module: the HF module name (``model.layers.3.self_attn.o_proj``).
        kind: ``linear`` or ``embedding``.
        B: ``[out, r]`` (embedding: ``[d_model, r]``).
        A: ``[r, in]`` (embedding: ``[r, vocab]``).
        bias: the output bias change, or None.
        error: max |B A - dW| relative to max |W| (how exactly the factors reproduce the fold).
    """

    module: str
    kind: str
    B: Tensor
    A: Tensor
    bias: Tensor | None
    error: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]


@dataclass(frozen=True)
class AdapterResult:
    """Where the adapter went, the parity of the fold and of the PEFT client, the manifest."""

    path: Path
    parity: Parity
    client: Parity | None
    manifest: dict[str, Any]
    reference: Reference | None = None  # the hooked outputs the client was compared with
    client_outputs: tuple[list[Tensor], list[Tensor]] | None = None  # its logits and tokens


# ---------------------------------------------------------------------------- factors
def _spans(model, interventions: Sequence[Intervention], plan: FoldPlan, original) -> dict:
    """Tensor key -> vectors spanning the columns (embedding: rows) of its change.

    The one place that reads the planned edits (:mod:`circuitlab.plan`) and the fold's
    layout; everything else works on the composed tensors.
    """
    from circuitlab.plan import HeadProjection, HeadZero, ResidualAddition, WriterProjection
    from circuitlab.plan import plan as plan_edits

    lay = layout(model)
    spans: dict[str, list[Tensor]] = {}
    d = model.facts.d_head

    def writer_key(writer: str, layer: int) -> str:
        if writer == "embed":
            return lay.embed
        if writer == "attn":
            return f"{lay.attn[layer]}.weight"
        down = lay.down_proj(layer)
        if down is None:
            raise ExportError(
                f"layer {layer}'s MLP is a mixture of experts, whose stacked expert tensors no "
                "LoRA module can adapt; export it merged (--format merged)"
            )
        return f"{down}.weight"

    for iv in interventions:
        for edit in plan_edits(model, iv):
            if isinstance(edit, ResidualAddition):
                # Only a layer-0 addition edits a matrix (the embedding rows); later ones
                # become biases.
                if edit.layer == 0:
                    spans.setdefault(lay.embed, []).append(edit.vector[None].double())
            elif isinstance(edit, HeadZero):
                key = writer_key("attn", edit.layer)
                cols = original(key)[:, edit.head * d : (edit.head + 1) * d]
                spans.setdefault(key, []).append(cols.T.double())
            elif isinstance(edit, HeadProjection):
                spans.setdefault(writer_key("attn", edit.layer), []).append(edit.basis.double())
            elif isinstance(edit, WriterProjection):
                key = writer_key(edit.writer, edit.layer)
                spans.setdefault(key, []).append(edit.basis.double())
    return spans


def _orthonormal(vectors: list[Tensor]) -> Tensor:
    """``[d, r]`` orthonormal columns spanning the given rows (repeats dropped)."""
    rows = torch.cat(vectors).cpu()
    norms = rows.norm(dim=1, keepdim=True)
    rows = rows[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
    u, s, _ = torch.linalg.svd(rows.T, full_matrices=False)
    keep = s > SPAN_RTOL * s.max() if len(s) else s > 0
    return u[:, keep]


def _original_reader(model, files: Sequence[Path]):
    """key -> the tensor as stored (the source file's where there is one, else the live one)."""
    stored = stored_keys(files) if files else {}
    slots = live_slots(model.hf_model)

    def read(key: str) -> Tensor:
        if key in stored:
            with safe_open(stored[key], framework="pt") as handle:
                return handle.get_tensor(key)
        module, attr = slots[key]
        return getattr(module, attr).detach().cpu()

    return read


def lora_factors(
    model, interventions: Sequence[Intervention], plan: FoldPlan, files: Sequence[Path] = ()
) -> dict[str, LoraFactor]:
    """Module name -> its exact LoRA update, from the fold plan (nothing is modified).

    Raises:
        ExportError: a change outside the span the edits allow (a fold this module does not
            know), or a bias beside an embedding edit (PEFT cannot hold both in one adapter).
    """
    original = _original_reader(model, files)
    spans = _spans(model, interventions, plan, original)
    factors: dict[str, LoraFactor] = {}
    weights = {k for k in plan.edits if k.endswith(".weight")}
    # A bias flag creates every bias of its kind; only those the fold edits carry anything.
    biases = {k for k in plan.edits if k.endswith(".bias")}
    embed = layout(model).embed
    for key in sorted(weights | {b.removesuffix(".bias") + ".weight" for b in biases}):
        module = key.removesuffix(".weight")
        kind = "embedding" if key == embed else "linear"
        B, A, error = _factor(key, plan, original, spans.get(key), kind)
        bias = None
        if f"{module}.bias" in biases:
            bias = _bias_change(f"{module}.bias", plan, original, key)
        factors[module] = LoraFactor(module, kind, B, A, bias, error)
    has_bias = any(f.bias is not None for f in factors.values())
    if has_bias and any(f.kind == "embedding" for f in factors.values()):
        raise ExportError(
            "these edits need a bias (an addition past layer 0, or a projected bias) and an "
            "embedding edit; PEFT cannot hold lora_bias beside an Embedding LoRA in one "
            "adapter. Export them merged (--format merged), or as two adapters"
        )
    return factors


def _factor(key: str, plan: FoldPlan, original, span, kind: str) -> tuple[Tensor, Tensor, float]:
    if key not in plan.edits:  # only its bias changes: a rank-1 zero update carries it
        shape = original(key).shape
        return (
            torch.zeros(shape[0], 1, dtype=torch.float64),
            torch.zeros(1, shape[1], dtype=torch.float64),
            0.0,
        )
    if not span:
        raise ExportError(f"{key} is edited by the fold but no edit spans its change")
    stored = original(key)
    q = _orthonormal(span)
    scale = max(float(stored.abs().max()), 1e-30)
    edit = plan.edits[key]
    if kind == "embedding":
        # E' - E = (dE Q) Q^T; PEFT adds B @ A[:, token] to a row, so B = Q, A = (dE Q)^T.
        # A block of rows at a time (Gemma's 262k rows in float64 would take 1.3 GB).
        coeffs, error = [], 0.0
        for start in range(0, stored.shape[0], EMBED_CHUNK):
            rows = stored[start : start + EMBED_CHUNK]
            delta = _composed(edit, rows) - rows.double()
            coeffs.append(delta @ q)
            error = max(error, float((coeffs[-1] @ q.T - delta).abs().max()) / scale)
        B, A = q, torch.cat(coeffs).T.contiguous()
    else:
        delta = _composed(edit, stored) - stored.double()
        coeffs = q.T @ delta
        error = float((q @ coeffs - delta).abs().max()) / scale
        B, A = q, coeffs
    if not error <= RECONSTRUCTION_RTOL:
        raise ExportError(
            f"{key}: the fold's change leaves the span of its edits (relative error {error:.1e}); "
            "this edit cannot be written as a LoRA here, export it merged"
        )
    return B, A, error


def _composed(edit, stored: Tensor) -> Tensor:
    """The edited tensor in float64, before the fold casts it back to the stored dtype
    (the cast's rounding is no part of the edit)."""
    value = stored.double()
    for op in edit.ops:
        value = op(value, stored)
    return value


def _bias_change(key: str, plan: FoldPlan, original, weight_key: str) -> Tensor:
    if key in plan.created:  # the base has no bias here: lora_B's bias is the whole of it
        shape, _ = plan.created[key]
        return _composed(plan.edits[key], torch.zeros(shape, dtype=torch.float64))
    stored = original(key)
    return _composed(plan.edits[key], stored) - stored.double()


# ----------------------------------------------------------------------------- writing
def _peft_tensors(factors: dict[str, LoraFactor], dtype: torch.dtype) -> dict[str, Tensor]:
    """PEFT's on-disk names (``base_model.model.<module>.lora_A.weight``, ...)."""
    out: dict[str, Tensor] = {}
    for module, f in factors.items():
        prefix = f"base_model.model.{module}"
        if f.kind == "embedding":
            out[f"{prefix}.lora_embedding_A"] = f.A.to(dtype).contiguous()
            out[f"{prefix}.lora_embedding_B"] = f.B.to(dtype).contiguous()
            continue
        out[f"{prefix}.lora_A.weight"] = f.A.to(dtype).contiguous()
        out[f"{prefix}.lora_B.weight"] = f.B.to(dtype).contiguous()
        if any(g.bias is not None for g in factors.values()):
            bias = f.bias if f.bias is not None else torch.zeros(f.B.shape[0])
            out[f"{prefix}.lora_B.bias"] = bias.to(dtype).contiguous()
    return out


def require_peft():
    """The peft module, or an :class:`ExportError` naming the extra to install."""
    try:
        import peft
    except ImportError:
        raise ExportError(
            'the adapter export needs peft: pip install "circuitlab[adapter]"'
        ) from None
    return peft


def _peft_config(factors: dict[str, LoraFactor], base: str):
    """PEFT's own LoraConfig (it writes every field this version of peft expects)."""
    peft = require_peft()
    ranks = {re.escape(m): f.rank for m, f in factors.items()}
    first = next(iter(factors.values())).rank
    return peft.LoraConfig(
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
        r=first,
        lora_alpha=first,
        target_modules=sorted(factors),
        # Exact names, escaped: PEFT matches rank and alpha patterns as regular expressions.
        rank_pattern=ranks,
        alpha_pattern=dict(ranks),  # alpha = r everywhere: the scale alpha / r is 1
        lora_dropout=0.0,
        bias="none",
        lora_bias=any(f.bias is not None for f in factors.values()),
        inference_mode=True,
    )


def write_adapter(factors: dict[str, LoraFactor], folder: Path, base: str) -> list[str]:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _peft_config(factors, base).save_pretrained(folder)
    # float32 whatever the base dtype: PEFT computes half-precision bases' adapters in float32
    # too (autocast_adapter_dtype), and the factors are exact only at that precision.
    save_file(_peft_tensors(factors, torch.float32), folder / ADAPTER_WEIGHTS, {"format": "pt"})
    return [ADAPTER_WEIGHTS, ADAPTER_CONFIG]


# -------------------------------------------------------------------------- the client
# Run by a fresh interpreter that never imports circuitlab: the base model from its own
# folder (or hub id) with plain transformers, the adapter with plain peft.
PEFT_CLIENT = r"""
import json, sys
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
job = json.load(open(sys.argv[1]))
base = AutoModelForCausalLM.from_pretrained(job["base"], dtype=getattr(torch, job["dtype"]))
model = PeftModel.from_pretrained(base.to(job["device"]), job["adapter"]).eval()
batches = load_file(job["batches"])
outputs = {}
with torch.no_grad():
    for i in range(job["n"]):
        ids = batches[f"input_ids.{i}"].to(job["device"])
        mask = batches[f"attention_mask.{i}"].to(job["device"])
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        outputs[f"logits.{i}"] = logits[mask.bool()].float().cpu().contiguous()
        new = model.generate(input_ids=ids, attention_mask=mask, **job["generate"])
        outputs[f"tokens.{i}"] = new[:, ids.shape[1]:].cpu().contiguous()
save_file(outputs, job["out"])
lora = [n for n, _ in model.named_modules() if n.endswith((".lora_A", ".lora_embedding_A"))]
json.dump({
    "circuitlab_imported": any(m.split(".")[0] == "circuitlab" for m in sys.modules),
    "lora_modules": len(lora),
    "lm_head_is_embedding": (
        model.get_output_embeddings().weight.data_ptr()
        == model.get_input_embeddings().get_base_layer().weight.data_ptr()
        if hasattr(model.get_input_embeddings(), "get_base_layer") else None
    ),
}, open(job["facts"], "w"))
"""


def run_peft_client(
    base: str,
    adapter: Path,
    ref: Reference,
    dtype: torch.dtype,
    work: Path,
    device: str = "cpu",
) -> tuple[list[Tensor], list[Tensor], dict]:
    """Load ``base`` + ``adapter`` with plain transformers and peft in a subprocess (on
    ``device``); its logits and greedy tokens on the reference's batches, and what it saw."""
    work.mkdir(parents=True, exist_ok=True)
    batches = {
        f"{name}.{i}": value.cpu().contiguous()
        for i, batch in enumerate(ref.batches)
        for name, value in batch.items()
    }
    save_file(batches, work / "batches.safetensors")
    config = ref.config
    job = {
        "base": base,
        "adapter": str(adapter),
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "batches": str(work / "batches.safetensors"),
        "n": len(ref.batches),
        "generate": {
            "max_new_tokens": config.max_new_tokens,
            "do_sample": False,
            "pad_token_id": config.pad_token_id,
            "eos_token_id": config.eos_token_id,
        },
        "out": str(work / "outputs.safetensors"),
        "facts": str(work / "facts.json"),
    }
    (work / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", PEFT_CLIENT, str(work / "job.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,  # not the repository: `import circuitlab` must not resolve by accident
    )
    if done.returncode != 0:
        raise ExportError(f"peft could not load the adapter: {done.stderr.strip()[-2000:]}")
    saved = load_file(work / "outputs.safetensors")
    n = len(ref.batches)
    facts = json.loads((work / "facts.json").read_text())
    return [saved[f"logits.{i}"] for i in range(n)], [saved[f"tokens.{i}"] for i in range(n)], facts


def base_location(model) -> str:
    """What ``base_model_name_or_path`` should say: the hub id, or the local HF folder."""
    return model.resolved.location


def peft_parity(
    model,
    interventions: Sequence[Intervention],
    adapter: Path,
    *,
    prompts: Sequence[str] | None = None,
    chat: bool | None = None,
    tolerance: float = 1e-3,
    max_new_tokens: int = 16,
    work: Path | None = None,
) -> tuple[Parity, dict, Reference, tuple[list[Tensor], list[Tensor]]]:
    """The hooked model against ``base + adapter`` as a real peft client loads them.

    Returns:
        The parity, what the client saw, the hooked reference and the client's outputs.
    """
    import tempfile

    ref = reference(model, interventions, prompts, chat=chat, max_new_tokens=max_new_tokens)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        device = str(input_device(model.hf_model))
        logits, tokens, facts = run_peft_client(
            base_location(model), adapter, ref, model.hf_model.dtype, Path(tmp), device
        )
    return compare(ref, logits, tokens, tolerance=tolerance), facts, ref, (logits, tokens)


# ------------------------------------------------------------------------------ export
def _versions(data: dict) -> None:
    try:
        data["versions"]["peft"] = metadata.version("peft")
    except metadata.PackageNotFoundError:
        data["versions"]["peft"] = None


def export_adapter(
    model,
    interventions: Sequence[Intervention],
    out: str | Path,
    options: ExportOptions | None = None,
    *,
    scorecard: Any = None,
) -> AdapterResult:
    """Fold, verify against the hooks, factor into an exact LoRA, check it with peft, write.

    Args:
        model, interventions, out, scorecard: as for :func:`circuitlab.export.export`.
        options: as for :func:`circuitlab.export.export` (``max_shard_size`` and
            ``stream`` are the merged format's and ignored here); ``client`` also loads
            the written adapter with plain peft on the base model in a subprocess and
            compares its logits with the hooks.

    Returns:
        The :class:`AdapterResult`; the folder holds ``adapter_model.safetensors``,
        ``adapter_config.json``, the tokenizer, the manifest and a model card.
    """
    from circuitlab.export.card import render_card
    from circuitlab.export.save import (
        _file_hashes,
        _install,
        _manifest_text,
        _partial,
        _write_edits,
        check_destination,
        manifest,
    )
    from circuitlab.models.loading import is_quantized, source_files

    o = options or ExportOptions()
    prompts, chat, max_new_tokens = o.prompts, o.chat, o.max_new_tokens
    interventions = list(interventions)
    if not interventions:
        raise ExportError("nothing to export: give at least one intervention")
    out = check_destination(out, model, o.force)
    require_peft()
    plan = plan_fold(model, interventions)
    files = source_files(model.resolved)
    if not files and is_quantized(model.hf_model):
        raise ExportError(
            f"{model.resolved.location} has no safetensors files: the factors of a quantized "
            "load must come from its source weights"
        )
    factors = lora_factors(model, interventions, plan, files)
    parity, _ = verify_in_place(
        model, interventions, plan, files, prompts, chat=chat, tolerance=o.tolerance,
        max_new_tokens=max_new_tokens, progress=o.progress,
    )  # fmt: skip
    data = manifest(model, interventions, plan, parity, scorecard, o.seed)
    _versions(data)
    data["format_kind"] = "adapter"
    data["adapter"] = {
        "base_model_name_or_path": base_location(model),
        "modules": {m: {"kind": f.kind, "rank": f.rank, "bias": f.bias is not None}
                    for m, f in factors.items()},  # fmt: skip
        "max_relative_reconstruction_error": max(f.error for f in factors.values()),
        "note": "tied lm_head keeps the original embedding (only the input embedding is "
        "adapted)" if model.facts.tied_embeddings and any(
            f.kind == "embedding" for f in factors.values()) else None,
    }  # fmt: skip
    if o.command:
        data["command"] = o.command
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(out)
    try:
        write_adapter(factors, tmp, base_location(model))
        model.tokenizer.save_pretrained(tmp)
        checked = ref = outputs = None
        if o.client:
            checked, facts, ref, outputs = peft_parity(
                model, interventions, tmp, prompts=prompts, chat=chat,
                tolerance=parity.tolerance, max_new_tokens=max_new_tokens, work=out.parent,
            )  # fmt: skip
            checked = replace(checked, tolerance_rule=parity.tolerance_rule)
            data["client_parity"] = {**checked.as_dict(), "client": "peft", **facts}
            if not checked.passed or facts["circuitlab_imported"]:
                raise ExportError(
                    f"the adapter loaded by peft does not match the hooks: {checked.summary()}"
                )
        _write_edits(tmp, plan.planned, data)
        data["files"] = _file_hashes(tmp)
        (tmp / "circuitlab_manifest.json").write_text(_manifest_text(data))
        (tmp / "README.md").write_text(render_card(data, out.name, model=model))
        _install(tmp, out)
        log.info("adapter exported to %s (%d modules)", out, len(factors))
        return AdapterResult(out, parity, checked, data, ref, outputs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
