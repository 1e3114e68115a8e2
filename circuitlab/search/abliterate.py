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
from circuitlab.export import ExportError, check_exportable, export
from circuitlab.export.memory import check_export_memory
from circuitlab.interventions import save_interventions
from circuitlab.models.loading import is_quantized, source_files
from circuitlab.progress import note as progress_note
from circuitlab.search.assets import SearchPrompts
from circuitlab.search.front import (
    DEFAULT_KL_TARGET,
    DEFAULT_MARGIN,
    Rule,
    SearchResult,
    choose,
    evaluate_choice,
    knee,
    pareto_front,
    rule_name,
)
from circuitlab.search.objective import ObjectiveConfig
from circuitlab.search.space import SearchSpace
from circuitlab.search.storage import open_store
from circuitlab.search.study import run_search

__all__ = ["Abliteration", "abliterate", "check_export_plan", "export_choice"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_CAP = 64


def _measured_batch(
    model: HookedModel, prompts: SearchPrompts, objective: ObjectiveConfig, cap: int
) -> ObjectiveConfig:
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
    force: bool = False,
    **options: Any,
):
    """Fold the chosen edit into the weights, verify it against the hooks and save it.

    Args:
        options: passed to ``circuitlab.export.export`` (``prompts``, ``tolerance``, ...).

    Returns:
        ``(export_result, None)``, or ``(None, reason)`` when the edit cannot be exported.
    """
    chosen = result.chosen
    if not chosen.foldable:
        notes = "; ".join(iv.fold_note for iv in chosen.interventions if not iv.foldable)
        return None, f"trial {chosen.number} cannot be folded into weights: {notes}"
    try:
        done = export(
            model,
            list(chosen.interventions),
            out,
            force=force,
            scorecard=result.as_dict(),
            **options,
        )
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
    n_trials: int,
    *,
    out: str | Path | None = None,
    force: bool = False,
    storage: str | None = None,
    space: SearchSpace | None = None,
    objective: ObjectiveConfig | None = None,
    judge: Judge | None = None,
    test_judge: Judge | None = None,
    capability_n: int = 0,
    kl_target: float = DEFAULT_KL_TARGET,
    rule: Rule | None = None,
    margin: float = DEFAULT_MARGIN,
    refusal_target: float | None = None,
    score_knee: bool = True,
    seed: int = 0,
    profile: str | Path | None = "auto",
    family: str | None = None,
    cache_dir: str | Path = "cache",
    progress: bool = False,
    fail_unknown: bool = False,
    export_options: dict[str, Any] | None = None,
    batch_cap: int = DEFAULT_BATCH_CAP,
    preflight: bool = False,
    response_prefix: str | None = "auto",
) -> Abliteration:
    """Search (or resume) a study, choose a trial, score it on the test split, export it.

    Args:
        model: the base model.
        prompts: all splits, including the test split.
        study_name, n_trials, storage, space, objective, seed, profile, family, cache_dir,
            progress, fail_unknown, preflight, response_prefix: as for
            :func:`circuitlab.search.run_search`.
        out: export folder; None: do not export.
        force: replace ``out`` if it exists.
        judge: refusal judge of the search trials (default ``MarkerJudge``).
        test_judge: refusal judge of the test-split scorecard (default: ``judge``); a
            slower, better judge belongs here (``neural_detection_for_optuna`` off).
        capability_n: MMLU questions in the test scorecards (0: no capability check).
        kl_target, rule, margin, refusal_target: the choice (see
            :func:`circuitlab.search.choose`).
        score_knee: also score the front's knee on the test split when it is not the
            chosen point (one more scorecard).
        export_options: passed to ``circuitlab.export.export`` (e.g. the parity prompts);
            the parity tolerance fits the model's dtype unless ``tolerance`` is given.
        batch_cap: on an accelerator the batch size is measured (the largest power of two
            up to this that fits); on CPU the objective's batch size stands.

    Returns:
        The :class:`Abliteration`.
    """
    judge = judge or MarkerJudge()
    if out is not None:
        check_export_plan(model, space)
    objective = _measured_batch(model, prompts, objective or ObjectiveConfig(), batch_cap)
    study = run_search(
        model, prompts, study_name, n_trials, storage=storage, space=space,
        objective=objective, judge=judge, seed=seed, profile=profile, family=family,
        cache_dir=cache_dir, progress=progress, fail_unknown=fail_unknown,
        preflight=preflight, response_prefix=response_prefix,
    )  # fmt: skip
    front = pareto_front(study, cache_dir)  # this host's copies of the study's directions
    chosen = choose(front, kl_target, rule, margin=margin, refusal_target=refusal_target)
    bend = knee(front)
    bend = None if bend is None or bend.number == chosen.number else bend
    objective = ObjectiveConfig(**study.user_attrs["setup"]["objective"])
    base, edited, *knee_card = evaluate_choice(
        model, chosen, prompts.harmful_test, prompts.harmless_test, test_judge or judge,
        max_new_tokens=objective.max_new_tokens, batch_size=objective.batch_size,
        questions=load_mmlu(capability_n, seed) if capability_n else (),
        also=(bend,) if bend is not None and score_knee else (), progress=progress,
    )  # fmt: skip
    how = "custom" if rule is not None else rule_name(kl_target, margin, refusal_target)
    result = SearchResult(
        study_name, how, chosen, tuple(front), base, edited, bend,
        knee_card[0] if knee_card else None,
    )  # fmt: skip
    # The choice as a file `evaluate`, `steer` and `export` read with --intervention.
    store = open_store(study_name, storage, cache_dir)
    chosen_path = save_interventions(chosen.interventions, store.assets_dir / "chosen.json")
    if out is None:
        return Abliteration(result, None, "no output folder given", chosen_path)
    options = {"seed": seed, **(export_options or {})}
    progress_note(f"export: fold trial {chosen.number}, prove parity, write {out}", progress)
    exported, note = export_choice(model, result, out, force, **options)
    return Abliteration(result, exported, note, chosen_path)
