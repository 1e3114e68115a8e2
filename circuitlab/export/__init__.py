"""Export: fold validated interventions into Hugging Face weights, prove parity, save.

``export(model, interventions, out)`` runs the three stages; each is usable alone:
:func:`fold` (interventions -> :class:`FoldedWeights`), :func:`verify` (hooked vs folded on
held-out prompts -> :class:`Parity`, raising over tolerance; built from :func:`reference`,
:func:`run_plain` and :func:`compare`) and :func:`save` (atomic write of safetensors,
config, tokenizer, ``circuitlab_manifest.json`` and a model card).

Example:
    >>> result = export(model, [ablation], "cache/exports/smollm-ablated")
    >>> result.parity.max_abs_logit_diff < 1e-3
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab.export.fold import (
    FAMILIES,
    ExportError,
    Family,
    FoldedWeights,
    check_foldable,
    fold,
)
from circuitlab.export.save import MANIFEST, check_destination, describe, manifest, save
from circuitlab.export.verify import (
    HELD_OUT_PROMPTS,
    Parity,
    Reference,
    compare,
    reference,
    run_plain,
    verify,
)
from circuitlab.interventions import Intervention

__all__ = [
    "FAMILIES",
    "HELD_OUT_PROMPTS",
    "MANIFEST",
    "ExportError",
    "ExportResult",
    "Family",
    "FoldedWeights",
    "Parity",
    "Reference",
    "check_destination",
    "check_foldable",
    "compare",
    "describe",
    "export",
    "fold",
    "manifest",
    "reference",
    "run_plain",
    "save",
    "verify",
]


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
    *,
    prompts: Sequence[str] | None = None,
    chat: bool | None = None,
    tolerance: float = 1e-3,
    max_new_tokens: int = 16,
    force: bool = False,
    scorecard: Any = None,
    seed: int | None = None,
    max_shard_size: str | int = "4GB",
) -> ExportResult:
    """Fold, verify against the hooks, and only then write the edited model.

    Args:
        model: the hooked model the interventions were validated on.
        interventions: foldable interventions, in the order they were applied.
        out: destination folder (must not exist unless ``force``; never the source).
        prompts, chat, tolerance, max_new_tokens: the parity check (see :func:`verify`).
        scorecard: evaluation results to record in the manifest and card (dict, dataclass
            or anything with ``as_dict``).
        seed: the seed the interventions were found with, for the manifest.
        max_shard_size: bound per safetensors file.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ExportError: nothing foldable, a refused intervention, failed parity, or a
            destination that may not be written; nothing is written in any of these cases.
    """
    interventions = list(interventions)
    if not interventions:
        raise ExportError("nothing to export: give at least one intervention")
    check_destination(out, model, force)  # before minutes of folding and checking
    folded = fold(model, interventions)
    hf_model = folded.build()
    parity = verify(
        model,
        interventions,
        hf_model,
        prompts,
        chat=chat,
        tolerance=tolerance,
        max_new_tokens=max_new_tokens,
    )
    data = manifest(model, interventions, folded, parity, scorecard, seed)
    path = save(hf_model, model, out, data, force=force, max_shard_size=max_shard_size)
    return ExportResult(path, parity, data)
