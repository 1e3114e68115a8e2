"""Export: fold validated interventions into Hugging Face weights, prove parity, save.

``export(model, interventions, out, options)`` runs the three stages: :func:`plan_fold` (which
tensors change and how), :func:`verify_in_place` (the hooked model against the same loaded
modules holding the folded weights, with a tolerance fitted to the dtype) and
:func:`save_streamed` (the source safetensors folded shard by shard into the output). For a
model without source files the in-memory stages stay usable alone:
:func:`fold` (interventions -> :class:`FoldedWeights`), :func:`verify` (hooked vs folded on
held-out prompts -> :class:`Parity`, raising over tolerance; built from :func:`reference`,
:func:`run_plain` and :func:`compare`) and :func:`save` (atomic write of safetensors,
config, tokenizer, ``circuitlab_manifest.json``, the planned edits' tensors
``circuitlab_edits.safetensors`` and a model card).

Example:
    >>> result = export(model, [ablation], "cache/exports/smollm-ablated")
    >>> result.parity.max_abs_logit_diff < 1e-3
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab.errors import UnsupportedArchitectureError
from circuitlab.export.fold import (
    FAMILIES,
    ExportError,
    Family,
    FoldedWeights,
    FoldPlan,
    check_exportable,
    check_foldable,
    fold,
    plan_fold,
    plan_fold_edits,
)
from circuitlab.export.options import ExportOptions
from circuitlab.export.save import (
    MANIFEST,
    check_destination,
    describe,
    manifest,
    save,
    save_streamed,
)
from circuitlab.export.stream import check_source
from circuitlab.export.verify import (
    HELD_OUT_PROMPTS,
    Parity,
    Reference,
    compare,
    derive_tolerance,
    reference,
    run_plain,
    verify,
    verify_in_place,
)
from circuitlab.interventions import Intervention
from circuitlab.models.loading import is_quantized, source_files
from circuitlab.progress import note

__all__ = [
    "FAMILIES",
    "HELD_OUT_PROMPTS",
    "MANIFEST",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "Family",
    "FoldPlan",
    "FoldedWeights",
    "Parity",
    "Reference",
    "check_destination",
    "check_exportable",
    "check_foldable",
    "compare",
    "derive_tolerance",
    "describe",
    "export",
    "fold",
    "manifest",
    "plan_fold",
    "plan_fold_edits",
    "reference",
    "run_plain",
    "save",
    "save_streamed",
    "verify",
    "verify_in_place",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """Where the export went, the parity it proved and the manifest written with it."""

    path: Path
    parity: Parity
    manifest: dict[str, Any]


def export(
    model,
    interventions: Sequence[Intervention],
    out: str | Path,
    options: ExportOptions | None = None,
    *,
    scorecard: Any = None,
) -> ExportResult:
    """Fold, verify against the hooks, and only then write the edited model.

    Args:
        model: the hooked model the interventions were validated on.
        interventions: foldable interventions, in the order they were applied.
        out: destination folder (must not exist unless ``options.force``; never the source).
        options: the parity check, the destination and the layout (:class:`ExportOptions`;
            ``client`` is the adapter's and ignored here).
        scorecard: evaluation results to record in the manifest and card (dict, dataclass
            or anything with ``as_dict``).

    Returns:
        The :class:`ExportResult`.

    Raises:
        ExportError: nothing foldable, a refused intervention, an unknown architecture,
            failed parity, or a destination that may not be written; nothing is written
            in any of these cases.
    """
    o = options or ExportOptions()
    force, stream = o.force, o.stream
    interventions = list(interventions)
    if not interventions:
        raise ExportError("nothing to export: give at least one intervention")
    check_destination(out, model, force)  # before minutes of folding and checking
    try:
        plan = plan_fold(model, interventions)
    except UnsupportedArchitectureError as exc:
        raise ExportError(str(exc)) from None
    files = source_files(model.resolved) if stream is not False else []
    if files and stream is None and not is_quantized(model.hf_model):
        try:
            check_source(plan, files)
        except ExportError as exc:
            # transformers renames some checkpoints on load (fused MoE experts, multimodal
            # wrappers): the files' keys are not the modules'; fold the loaded weights.
            log.info("folding in memory: %s", exc)
            files = []
    elif files:
        check_source(plan, files)
    elif stream or is_quantized(model.hf_model):
        raise ExportError(
            f"{model.resolved.location} has no safetensors files to fold from; a quantized "
            "load can only be exported from its source weights"
        )
    source = f"{len(files)} safetensors file(s), streamed" if files else "the loaded weights"
    note(f"export: {len(plan.planned)} planned edit(s), folded from {source}", o.progress)
    parity, digests = verify_in_place(
        model, interventions, plan, files, o.prompts, chat=o.chat, tolerance=o.tolerance,
        max_new_tokens=o.max_new_tokens, progress=o.progress,
    )  # fmt: skip
    data = manifest(model, interventions, plan, parity, scorecard, o.seed)
    if o.command:
        data["command"] = o.command
    note(f"export: parity {parity.max_abs_logit_diff:.1e}, writing {out}", o.progress)
    if files:
        path = save_streamed(plan, model, files, out, data, force=force, digests=digests)
    else:
        hf_model = fold(model, interventions).build()
        path = save(
            hf_model, model, out, data, force=force, max_shard_size=o.max_shard_size,
            edits=plan.planned,
        )  # fmt: skip
    return ExportResult(path, parity, data)
