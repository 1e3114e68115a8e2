"""The whole job in one call: search → choose → test-split evaluation → export.

Export goes through :mod:`circuitlab.export` (fold, verify against the hooks, save). Only
foldable edits are exported; with the default search space every trial is (the activation
addition, which is not, is off unless ``SearchSpace.addition_max > 0``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from circuitlab.engine import HookedModel
from circuitlab.errors import UnsupportedArchitectureError
from circuitlab.evaluate.capability import load_mmlu
from circuitlab.evaluate.judges import Judge, MarkerJudge
from circuitlab.export import ExportError, ExportOptions, check_exportable, export
from circuitlab.export.memory import check_export_memory
from circuitlab.interventions import save_interventions
from circuitlab.models.loading import is_quantized, source_files
from circuitlab.progress import note as progress_note
from circuitlab.search.assets import SearchPrompts
from circuitlab.search.config import AbliterateConfig
from circuitlab.search.front import (
    Rule,
    SearchResult,
    choose,
    evaluate_choice,
    knee,
    pareto_front,
    rule_name,
)
from circuitlab.search.objective import ObjectiveConfig
from circuitlab.search.setup import StudySetup
from circuitlab.search.space import SearchSpace
from circuitlab.search.storage import open_store
from circuitlab.search.study import run_search

__all__ = ["Abliteration", "abliterate", "check_export_plan", "export_choice"]

log = logging.getLogger(__name__)


def _measured_batch(
    model: HookedModel, prompts: SearchPrompts, objective: ObjectiveConfig, cap: int
) -> ObjectiveConfig:
    if not model.on_accelerator:  # the scorecards' generations want full batches too
        return replace(objective, batch_size=objective.generation_rows(cap, False))
    size = model.measure_batch_size(
        list(prompts.harmful_train), objective.max_new_tokens, objective.batch_size, cap
    )
    return objective if size == objective.batch_size else replace(objective, batch_size=size)


@dataclass(frozen=True)
class Abliteration:
    """What :func:`abliterate` did.

    Attributes:
        result: the chosen edit, the front and the test-split scorecards.
        export: the export result (``circuitlab.export.ExportResult``), or None.
        export_note: why nothing was exported, when nothing was.
        interventions_path: the chosen trial's interventions as JSON (``--intervention``).
    """

    result: SearchResult
    export: Any = None
    export_note: str | None = None
    interventions_path: Path | None = None


def export_choice(
    model: HookedModel,
    result: SearchResult,
    out: str | Path,
    options: ExportOptions | None = None,
):
    """Fold the chosen edit into the weights, verify it against the hooks and save it.

    Args:
        options: passed to ``circuitlab.export.export`` (parity prompts, tolerance, ...).

    Returns:
        ``(export_result, None)``, or ``(None, reason)`` when the edit cannot be exported.
    """
    chosen = result.chosen
    if not chosen.foldable:
        notes = "; ".join(iv.fold_note for iv in chosen.interventions if not iv.foldable)
        return None, f"trial {chosen.number} cannot be folded into weights: {notes}"
    try:
        done = export(model, list(chosen.interventions), out, options, scorecard=result.as_dict())
    except (ExportError, UnsupportedArchitectureError) as exc:
        # e.g. an addition on an architecture without the bias it needs: the search's
        # results still stand, and the caller still writes its report
        return None, f"trial {chosen.number} cannot be exported: {exc}"
    return done, None


def check_export_plan(model: HookedModel, space: SearchSpace | None = None) -> None:
    """What would stop the export, raised before the first trial rather than after the
    last: an architecture the fold has no table for, or a machine without the memory for
    the streamed fold and the parity check. A space whose trials may add an activation
    addition (which cannot be folded) is only warned about: trials without one export."""
    try:
        check_exportable(model)
    except Exception as exc:  # UnsupportedArchitectureError, ExportError
        raise ExportError(f"this model cannot be exported, so no search was run: {exc}") from None
    files = source_files(model.resolved)
    if not files and is_quantized(model.hf_model):
        raise ExportError(
            "a quantized model is exported from its source safetensors, and "
            f"{model.resolved.location} has none; search without --out, or load it unquantized"
        )
    check_export_memory(model)
    if space is not None and space.addition_max > 0:
        log.warning("trials with an activation addition cannot be exported (not foldable)")


def abliterate(
    model: HookedModel,
    prompts: SearchPrompts,
    study_name: str,
    config: AbliterateConfig,
    *,
    judge: Judge | None = None,
    test_judge: Judge | None = None,
    rule: Rule | None = None,
) -> Abliteration:
    """Search (or resume) a study, choose a trial, score it on the test split, export it.

    Args:
        model: the base model.
        prompts: all splits, including the test split.
        study_name: the study's name in the storage.
        config: the search, the choice, the scorecard and the export
            (:class:`~circuitlab.search.config.AbliterateConfig`).
        judge: refusal judge of the search trials (default ``MarkerJudge``).
        test_judge: refusal judge of the test-split scorecard (default: ``judge``); a
            slower, better judge belongs here (``neural_detection_for_optuna`` off).
        rule: a custom choice rule (see :func:`circuitlab.search.choose`).

    Returns:
        The :class:`Abliteration`.
    """
    judge = judge or MarkerJudge()
    search = config.search
    if config.out is not None:
        check_export_plan(model, search.space)
    objective = _measured_batch(model, prompts, search.objective, config.batch_cap)
    search = replace(search, objective=objective)
    study = run_search(model, prompts, study_name, search, judge=judge)
    front = pareto_front(study, search.cache_dir)  # this host's copies of the study's directions
    margin, target = config.margin, config.refusal_target
    chosen = choose(front, config.kl_target, rule, margin=margin, refusal_target=target)
    bend = knee(front)
    bend = None if bend is None or bend.number == chosen.number else bend
    objective = StudySetup.of(study).objective
    base, edited, *knee_card = evaluate_choice(
        model, chosen, prompts.harmful_test, prompts.harmless_test, test_judge or judge,
        max_new_tokens=objective.max_new_tokens, batch_size=objective.batch_size,
        questions=load_mmlu(config.capability_n, search.seed) if config.capability_n else (),
        also=(bend,) if bend is not None and config.score_knee else (),
        progress=search.progress,
    )  # fmt: skip
    how = "custom" if rule is not None else rule_name(config.kl_target, margin, target)
    result = SearchResult(
        study_name, how, chosen, tuple(front), base, edited, bend,
        knee_card[0] if knee_card else None,
    )  # fmt: skip
    # The choice as a file `evaluate`, `steer` and `export` read with --intervention.
    store = open_store(study_name, search.storage, search.cache_dir)
    chosen_path = save_interventions(chosen.interventions, store.assets_dir / "chosen.json")
    if config.out is None:
        return Abliteration(result, None, "no output folder given", chosen_path)
    out, options = config.out, config.export
    seed = search.seed if options.seed is None else options.seed
    options = replace(options, seed=seed, progress=options.progress or search.progress)
    progress_note(f"export: fold trial {chosen.number}, prove parity, write {out}", search.progress)
    exported, note = export_choice(model, result, out, options)
    return Abliteration(result, exported, note, chosen_path)
