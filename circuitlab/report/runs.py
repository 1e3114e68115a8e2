"""The run reports of ``extract``, ``discover`` and ``abliterate`` (also used by ``demo``).

Each builder takes a run's results (plain values) and returns a :class:`Report`; the caller
writes it. Only :func:`abliteration_report` touches the model: it generates a few before /
after completions, which the search's numbers cannot show.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitlab.circuits import head_scores_figure
from circuitlab.directions import DirectionSet
from circuitlab.evaluate.scorecard import scorecard_rows
from circuitlab.export import describe
from circuitlab.hooks import apply
from circuitlab.report import plots, tables
from circuitlab.report.html import Report
from circuitlab.search import SearchError, open_store
from circuitlab.search.storage import stored_copy

if TYPE_CHECKING:
    import optuna

    from circuitlab.circuits import HeadScores, RefusalCircuit
    from circuitlab.directions import DirectionSet
    from circuitlab.engine import HookedModel
    from circuitlab.interventions import Intervention
    from circuitlab.search import Abliteration, FrontPoint, SearchPrompts

__all__ = [
    "Clock",
    "abliteration_report",
    "circuit_report",
    "command_line",
    "directions_report",
    "sample_completions",
]

log = logging.getLogger(__name__)

Timings = Mapping[str, float]


class Clock:
    """Named laps of wall time, in order: ``clock.lap("activations")`` records the seconds
    since the previous lap (or since the clock started) in ``clock.laps``."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now
        return self.laps[name]


def command_line(args: Any) -> str | None:
    """The command as typed (``args.argv``, recorded by ``circuitlab.cli.main``)."""
    argv = getattr(args, "argv", None)
    return None if argv is None else shlex.join(["circuitlab", *argv])


def _key_values(report: Report, heading: str, values: Mapping[str, Any]) -> None:
    rows = [(k, v if isinstance(v, int | float | str) else repr(v)) for k, v in values.items()]
    report.section(heading).table(["", "value"], rows)


def _timings(report: Report, timings: Timings | None) -> None:
    if timings:
        report.section("Timings").timings(timings)


# ---------------------------------------------------------------------------------- extract
def _direction_summary(ds: DirectionSet) -> str:
    meta = ds.metadata
    text = (
        f"Method {ds.method}: {ds.k} component(s) per layer over {ds.n_layers} layers "
        f"(d_model {ds.d_model}) from {meta.get('n_harmful', '?')} harmful and "
        f"{meta.get('n_harmless', '?')} harmless prompts; scores are "
        f"{meta.get('score_kind', 'unnamed')}."
    )
    if meta.get("degenerate_layers"):
        text += f" No difference (zero direction) at layers {meta['degenerate_layers']}."
    if "fallback" in meta:
        text += f" Fallback from {meta['fallback'].get('from')}: {meta['fallback']['reason']}."
    return text


def add_directions(report: Report, ds: DirectionSet, mark: float | None = None) -> None:
    """A DirectionSet's summary, per-layer curves and (for one set alone) its layer table."""
    report.text(_direction_summary(ds))
    fig = plots.direction_curves(ds, mark)
    if fig is not None:
        caption = "per-layer curves recorded by the extractor"
        if mark is not None:
            caption += f"; dashed line: the chosen direction index {mark:.2f}"
        report.figure(fig, caption)


def directions_report(
    ds: DirectionSet,
    title: str,
    *,
    labels: tuple[Sequence[bool], Sequence[bool]] | None = None,
    command: str | None = None,
    seed: int | None = None,
    timings: Timings | None = None,
) -> Report:
    """The report of an ``extract`` run.

    Args:
        ds: the extracted DirectionSet (its metadata holds the per-layer curves).
        title: the page title.
        labels: the judged refusals of harmful and harmless prompts (supervised methods).
        command, seed: for the footer.
        timings: named durations in seconds.
    """
    report = Report(title, command=command, seed=seed, subtitle=str(ds.metadata.get("model", "")))
    report.section("Directions")
    add_directions(report, ds)
    if labels is not None:
        harmful, harmless = labels
        report.text(
            f"The model's own greedy answers, judged by markers: {sum(harmful)} of "
            f"{len(harmful)} harmful and {sum(harmless)} of {len(harmless)} harmless refused."
        )
    columns, rows = tables.layer_rows(ds)
    report.table(columns, rows, caption=tables.cone_caption(ds))
    provenance = {k: ds.metadata[k] for k in ("harmful", "harmless", "position", "hook", "seed")
                  if k in ds.metadata}  # fmt: skip
    _key_values(report, "Provenance", {"hash": ds.hash, **provenance})
    _timings(report, timings)
    return report


# --------------------------------------------------------------------------------- discover
def circuit_report(
    circuit: RefusalCircuit,
    scores: HeadScores,
    *,
    top: int = 10,
    command: str | None = None,
    seed: int | None = None,
    timings: Timings | None = None,
) -> Report:
    """The report of a ``discover`` run: heat map and top heads.

    Args:
        circuit: the ranked circuit.
        scores: the scores it was ranked from (drawn as the heat map).
        top: query heads listed.
    """
    title = f"{circuit.model}: {circuit.method} patching of {circuit.metric}"
    report = Report(title, command=command, seed=seed, subtitle="circuitlab discover")
    report.section("Heads")
    report.text(
        f"Metric {circuit.clean:.4f} on {scores.n_prompts} harmful prompts and "
        f"{circuit.counterfactual:.4f} on the counterfactual "
        f"({circuit.metadata.get('counterfactual', '?')}); importance is the drop of the metric "
        "when a head's output is patched from the counterfactual run (red: towards refusal)."
    )
    report.figure(head_scores_figure(scores, title), "importance by layer and head")
    columns, rows = tables.circuit_rows(circuit, top)
    report.table(columns, rows, caption=f"top {top} query heads and the top KV heads")
    _key_values(report, "Provenance", circuit.metadata)
    _timings(report, timings)
    return report


# ------------------------------------------------------------------------------- abliterate
def sample_completions(
    model: HookedModel,
    prompts: Sequence[str],
    interventions: Sequence[Intervention],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
) -> list[tuple[str, str, str]]:
    """Greedy completions of ``prompts`` without and with the interventions' hooks.

    Returns:
        ``(prompt, before, after)`` per prompt.
    """
    options = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "chat": model.facts.has_chat_template,
    }
    before = model.generate(list(prompts), **options)
    with apply(model, *interventions):
        after = model.generate(list(prompts), **options)
    return [(p, b.strip(), a.strip()) for p, b, a in zip(prompts, before, after, strict=True)]


def _load_study(name: str, storage: str | None, cache_dir: str | Path) -> optuna.Study | None:
    try:
        return open_store(name, storage, cache_dir).load()
    except SearchError as exc:
        log.warning("report without the study's trials: %s", exc)
        return None


def _complete(study: optuna.Study | None) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    if study is None:
        return []
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _summary(report: Report, done: Abliteration, n_trials: int) -> None:
    result = done.result
    chosen, base, edited = result.chosen, result.base, result.edited
    report.section("Summary").text(
        f"Study {result.study}: {n_trials} complete trial(s), {len(result.front)} on the "
        f"Pareto front. Chosen: trial {chosen.number} ({result.rule}). On the test split, "
        "which the search never read, refusals went from "
        f"{base.refused} to {edited.refused} and over-refusals from {base.over_refused} to "
        f"{edited.over_refused}; first-token KL on harmless test prompts "
        + ("–" if edited.kl_first is None else f"{edited.kl_first:.3f}")
        + "."
    )
    # Float noise off the parameters (23.200000000000003 -> 23.2).
    rows = [
        (type(iv).__name__, re.sub(r"\d+\.\d{7,}", lambda m: f"{float(m[0]):.6g}", describe(iv)))
        for iv in chosen.interventions
    ]
    report.table(["intervention", "as applied"], rows, caption="the chosen edit")


def _front(report: Report, done: Abliteration, trials: list, kl_target: float | None) -> None:
    result = done.result
    points = [(t.values[0], t.values[1]) for t in trials]
    report.section("Pareto front")
    fig = plots.pareto_figure(result.front, result.chosen, points, kl_target)
    report.figure(fig, "grey: every complete trial; blue: the front; star: the chosen trial")
    columns, rows = tables.front_rows(result.front, result.chosen)
    report.table(columns, rows, caption="refusals on the search split; KL first token, nats")


def _scorecards(report: Report, done: Abliteration) -> None:
    cards = (done.result.base, done.result.edited)
    report.section("Scorecards (test split)")
    report.figure(plots.scorecard_figure(cards), "rates with 95 % Wilson intervals")
    rows = [(label, *values) for label, values in scorecard_rows(*cards).items()]
    report.table(["", *(c.model for c in cards)], rows, caption="KL in nats")


def _samples(report: Report, model, done: Abliteration, prompts: SearchPrompts, n: int, options):
    chosen = done.result.chosen
    harmful = list(prompts.harmful_test or prompts.harmful_search)[:n]
    harmless = list(prompts.harmless_test or prompts.harmless_search)[:n]
    rows = sample_completions(model, harmful + harmless, chosen.interventions, **options)
    report.section("Sample completions")
    report.text(
        f"Greedy, {options['max_new_tokens']} new tokens, before and with trial "
        f"{chosen.number}'s hooks; the first prompts of the test split."
    )
    report.samples("harmful prompts", rows[: len(harmful)])
    report.samples("harmless prompts", rows[len(harmful) :])


def _directions(report: Report, study, chosen: FrontPoint, cache_dir: str | Path) -> None:
    saved = {} if study is None else study.user_attrs.get("setup", {}).get("directions", {})
    if not saved:
        return
    report.section("Directions")
    for method, ref in saved.items():
        report.subheading(method)
        try:
            # This host's copy of the set stored in the study (older studies: a folder).
            ds = DirectionSet.load(ref.get("folder") or stored_copy(cache_dir, ref["hash"]))
        except (OSError, ValueError, KeyError) as exc:
            report.text(f"not readable: {exc}")
            continue
        mark = chosen.params.get("direction") if chosen.params.get("method") == method else None
        add_directions(report, ds, mark)


def _export(report: Report, done: Abliteration) -> None:
    report.section("Export")
    if done.export is None:
        report.text(f"Not exported: {done.export_note}.")
        return
    parity = done.export.parity
    report.text(f"Exported to {done.export.path}: {parity.summary()}.")
    report.figure(plots.parity_figure(parity), "the folded weights against the hooked model")
    report.table(*tables.parity_rows(parity))


def _trial_seconds(trials: list) -> dict[str, float]:
    seconds = [float(t.user_attrs.get("score", {}).get("seconds", 0.0)) for t in trials]
    if not seconds:
        return {}
    return {
        f"search: {len(seconds)} complete trial(s), summed": sum(seconds),
        "search: mean per trial": sum(seconds) / len(seconds),
    }


def abliteration_report(
    done: Abliteration,
    model: HookedModel,
    prompts: SearchPrompts,
    *,
    n_samples: int = 4,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    storage: str | None = None,
    cache_dir: str | Path = "cache",
    kl_target: float | None = None,
    command: str | None = None,
    seed: int | None = None,
    timings: Timings | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Report:
    """The report of an abliteration: front, scorecards, samples, directions, export, timings.

    Args:
        done: what :func:`circuitlab.search.abliterate` returned.
        model: the base model (unedited; the chosen edit is applied for the samples).
        prompts: the run's prompts; samples come from the test split.
        n_samples: harmful and harmless prompts completed before / after (each).
        max_new_tokens, batch_size: the sample generation.
        storage, cache_dir: where the study is (its trials and saved directions).
        kl_target: the choice rule's KL budget (drawn on the front).
        command, seed: for the footer (seed default: the study's).
        timings: named durations in seconds (the trials' own times are added).
        settings: the run's settings, shown as a table.
    """
    study = _load_study(done.result.study, storage, cache_dir)
    trials = _complete(study)
    if seed is None and study is not None:
        seed = study.user_attrs.get("setup", {}).get("seed")
    title = f"abliterate: {done.result.study}"
    subtitle = str(study.user_attrs["setup"].get("model_name", "")) if study else None
    report = Report(title, command=command, seed=seed, subtitle=subtitle)
    _summary(report, done, len(trials))
    _front(report, done, trials, kl_target)
    _scorecards(report, done)
    started = time.perf_counter()
    options = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    _samples(report, model, done, prompts, n_samples, options)
    sampled = time.perf_counter() - started
    _directions(report, study, done.result.chosen, cache_dir)
    _export(report, done)
    if settings:
        _key_values(report, "Settings", settings)
    _timings(report, {**(timings or {}), **_trial_seconds(trials), "sample completions": sampled})
    return report
