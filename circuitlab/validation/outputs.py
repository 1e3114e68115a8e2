"""What the validation suite writes: the summary table (markdown and HTML), its figures,
the CSV of every run and the HTML report.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state), like the
run reports' (:mod:`circuitlab.report.plots`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from circuitlab.report import Report
from circuitlab.validation.stats import METRICS, AcceptanceRule, Comparison, compare, verdicts

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from circuitlab.report import Report

__all__ = [
    "SUMMARY_COLUMNS",
    "comparison_figure",
    "markdown_table",
    "paired_differences_figure",
    "render_markdown",
    "summary_columns",
    "summary_markdown",
    "tests_table",
    "summary_rows",
    "validation_report",
    "write_csv",
]


def _p(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3g}"


SUMMARY_COLUMNS = (
    "organism", "arm", "n", "refusals", "KL first", "KL k", "capability Δ",
    "p (refusals)", "d", "p (KL worse)", "accepted",
)  # fmt: skip


def _label(metric: str) -> str:
    return metric.replace("<=", " ≤ ").replace("_", " ")


def _front(comparisons: Sequence[Comparison]) -> list[str]:
    names = dict.fromkeys(m for c in comparisons for m in c.metrics if m not in METRICS)
    return list(names)


def summary_columns(comparisons: Sequence[Comparison]) -> list[str]:
    """:data:`SUMMARY_COLUMNS` with the front metrics the comparisons carry before the tests."""
    front = [_label(m) for m in _front(comparisons)]
    return [*SUMMARY_COLUMNS[:7], *front, *SUMMARY_COLUMNS[7:]]


def summary_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    """The comparisons as text cells under :func:`summary_columns` (mean ± std, p, d,
    verdict), for the markdown table and the HTML report alike."""
    front, rows = _front(comparisons), []
    for c in comparisons:
        verdict = "–" if c.accepted is None else ("yes" if c.accepted else "no")
        rows.append(
            [
                c.organism,
                c.arm,
                str(len(c.seeds)),
                *(c.metrics[m].format() for m in METRICS),
                *(c.metrics[m].format() if m in c.metrics else "–" for m in front),
                _p(c.p_refusal),
                _p(c.d_refusal),
                _p(c.p_kl_worse),
                verdict,
            ]  # fmt: skip
        )
    return rows


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def markdown_table(comparisons: Sequence[Comparison]) -> str:
    """The comparisons as a GitHub markdown table (refusal rates and KL on the test split)."""
    return _markdown(summary_columns(comparisons), summary_rows(comparisons))


def tests_table(comparisons: Sequence[Comparison]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): per arm and organism, each refusal metric's paired difference
    (baseline minus arm; positive: the arm is better) with its 95 % interval and minimum
    detectable effect at 80 % power, and the primary metric's p."""
    metrics = list(dict.fromkeys(m for c in comparisons for m in c.tests))
    columns = ["organism", "arm", "pairs", *(f"Δ {_label(m)} [95 % CI] (MDE)" for m in metrics)]
    columns.append("p (primary)")
    rows = []
    for c in comparisons:
        if c.accepted is None:
            continue
        cells = [c.organism, c.arm, str(len(c.paired))]
        for m in metrics:
            t = c.tests.get(m)
            if t is None or math.isnan(t.ci_low):
                cells.append("–" if t is None or math.isnan(t.mean) else f"{t.mean:+.3f}")
            else:
                cells.append(f"{t.mean:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}] ({t.mde:.3f})")
        t = c.tests.get(c.primary)
        cells.append(_p(t.p) if t else "nan")
        rows.append(cells)
    return columns, rows


def reading(c: Comparison) -> str:
    """What one comparison says in words: ``better`` (accepted by the rule), ``worse`` (the
    primary metric's 95 % interval lies on the wrong side of zero), ``better, below the
    rule`` (the interval clears zero but the effect size does not), ``no difference`` with
    the smallest effect the design would have seen (its MDE at 80 % power), or ``no test``
    (fewer than two paired seeds)."""
    t = c.tests.get(c.primary)
    if t is None or math.isnan(t.ci_low):
        return "no test"
    if c.accepted:
        return "better"
    if t.ci_high < 0:
        return "worse"
    if t.ci_low > 0:
        return "better, below the rule"
    return f"no difference (MDE {t.mde:.2f})"


def verdict_table(
    comparisons: Sequence[Comparison], changes: Mapping[str, str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): one row per arm, the plain statement the suite exists for. Per
    organism the primary metric's paired difference (baseline minus arm: positive is
    better) with its 95 % interval and :func:`reading`; then where the arm helps."""
    organisms = list(dict.fromkeys(c.organism for c in comparisons))
    primary = next((c.primary for c in comparisons), "front_area")
    by_arm: dict[str, dict[str, Comparison]] = {}
    for c in comparisons:
        if c.accepted is not None:
            by_arm.setdefault(c.arm, {})[c.organism] = c
    columns = ["arm", "what it changes"]
    columns += [f"{org}: Δ {_label(primary)} [95 % CI]" for org in organisms]
    columns.append("helps?")
    rows = []
    for arm, cs in by_arm.items():
        words = {org: reading(c) for org, c in cs.items()}
        cells = [arm, (changes or {}).get(arm, "")]
        for org in organisms:
            if org not in cs:
                cells.append("–")
            elif words[org] == "no test":
                cells.append(words[org])
            else:
                t = cs[org].tests[cs[org].primary]
                cells.append(f"{t.mean:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}] {words[org]}")
        cells.append(helps(words, organisms))
        rows.append(cells)
    return columns, rows


def helps(words: Mapping[str, str], organisms: Sequence[str]) -> str:
    """Where an arm helps, from each organism's :func:`reading` (an organism missing from
    ``words`` was not run there): ``better`` on every one, on which only, or not."""
    tested = [org for org in organisms if words.get(org, "no test") != "no test"]
    won = [org for org in tested if words[org] == "better"]
    lost = [org for org in tested if words[org] == "worse"]
    untested = [org for org in organisms if org not in tested]
    if won and len(won) == len(organisms):
        text = "yes, on every organism"
    elif won:
        text = f"on {', '.join(won)} only"
        text += f"; worse on {', '.join(lost)}" if lost else ""
    elif lost:
        text = f"no: worse on {', '.join(lost)}"
    elif tested:
        text = "no effect detected"
    else:
        text = "not tested"
    if untested and tested:
        text += f" (not tested on {', '.join(untested)})"
    return text


def combine_verdict_rows(columns: Sequence[str], new: Sequence[str], old: Sequence[str]):
    """One arm's :func:`verdict_table` row from two parts of a suite: each organism's cell
    from the part that ran the arm there (the newer where both did), ``helps?`` recomputed
    from the cells' readings."""
    organisms = [c.split(": Δ ", 1)[0] for c in columns[2:-1]]
    cells = [n if n != "–" else o for n, o in zip(new[2:-1], old[2:-1], strict=True)]
    words = {
        org: cell.split("] ", 1)[1] if "] " in cell else cell
        for org, cell in zip(organisms, cells, strict=True)
        if cell != "–"
    }
    return [new[0], new[1] or old[1], *cells, helps(words, organisms)]


def _figure(width: float, height: float, panels: int) -> tuple[Figure, list]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * panels, height), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _organisms(comparisons: Sequence[Comparison]) -> list[str]:
    return list(dict.fromkeys(c.organism for c in comparisons))


def comparison_figure(comparisons: Sequence[Comparison]) -> Figure:
    """Refusal rate against first-token KL per arm (mean ± std over seeds), one panel per
    organism: the baseline is a black square, accepted arms are filled, the others hollow."""
    organisms = _organisms(comparisons)
    fig, axes = _figure(5.5, 4.2, len(organisms))
    arms = list(dict.fromkeys(c.arm for c in comparisons if c.accepted is not None))
    colors = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    for ax, organism in zip(axes, organisms, strict=True):
        for c in (c for c in comparisons if c.organism == organism):
            kl, refusal = c.metrics["kl_first"], c.metrics["refusal_rate"]
            color = colors.get(c.arm, "black")
            ax.errorbar(
                kl.mean, refusal.mean,
                xerr=0 if math.isnan(kl.std) else kl.std,
                yerr=0 if math.isnan(refusal.std) else refusal.std,
                fmt="s" if c.accepted is None else "o", color=color, capsize=3,
                mfc="white" if c.accepted is False else color, label=c.arm,
            )  # fmt: skip
        ax.set_xlabel("first-token KL (test, nats)")
        ax.set_ylabel("refusal rate (test)")
        ax.set_title(organism, fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def paired_differences_figure(
    rows: Sequence[Mapping[str, Any]], baseline: str = "baseline"
) -> Figure:
    """Per arm, each seed's refusal reduction against the baseline (baseline minus arm);
    above 0 the arm removed more refusals. One panel per organism."""
    organisms = list(dict.fromkeys(r["organism"] for r in rows))
    fig, axes = _figure(5.5, 3.8, len(organisms))
    for ax, organism in zip(axes, organisms, strict=True):
        mine = [r for r in rows if r["organism"] == organism]
        base = {r["seed"]: r["refusal_rate"] for r in mine if r["arm"] == baseline}
        arms = [a for a in dict.fromkeys(r["arm"] for r in mine) if a != baseline]
        for i, arm in enumerate(arms):
            diffs = [
                base[r["seed"]] - r["refusal_rate"]
                for r in mine
                if r["arm"] == arm and r["seed"] in base
            ]
            ax.scatter([i] * len(diffs), diffs, color="#4c72b0", s=18, zorder=3)
            if diffs:
                ax.hlines(np.mean(diffs), i - 0.3, i + 0.3, color="#dd8452", lw=2)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("refusal reduction vs baseline")
        ax.set_title(organism, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return fig


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    """The rows, in the order given, under fixed columns (other keys are left out)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def summary_markdown(
    comparisons: Sequence[Comparison],
    intro: str,
    rule: AcceptanceRule,
    warnings: Sequence[str] = (),
    changes: Mapping[str, str] | None = None,
) -> str:
    """summary.md: a title, ``intro`` (what was run), the table, the rule and each verdict."""
    lines = [
        "# Validation: each improvement against the baseline search",
        "",
        intro,
        "",
        markdown_table(comparisons),
    ]
    columns, rows = tests_table(comparisons)
    if rows:
        lines += [
            "Paired differences, baseline minus arm (positive: the arm refuses less), with "
            "the 95 % t interval and, in parentheses, the minimum detectable effect at 80 % "
            f"power and alpha {rule.alpha} given the seeds and the observed spread:",
            "",
            _markdown(columns, rows),
        ]
    lines += [
        rule.describe(),
        "",
        *(
            f"- **{arm}**{f' ({changes[arm]})' if changes and arm in changes else ''}: {line}"
            for arm, line in verdicts(comparisons).items()
        ),
        *(f"\n**Warning**: {w}" for w in warnings),
    ]
    columns, rows = verdict_table(comparisons, changes)
    if rows:
        lines += ["", "Does each improvement help?", "", _markdown(columns, rows)]
    return "\n".join(lines) + "\n"


def render_markdown(data: Mapping[str, Any]) -> str:
    """The validation section from the suite's JSON (``validation.json``): the statistics
    are recomputed from its run rows and rule, so the text is regenerated, never retyped.

    Args:
        data: ``{"rows": [...], "rule": {"alpha", "min_d", "primary"}, "intro": str,
            "warnings": [...], "changes": {arm: what it changes}}`` as
            ``experiments/validate.py`` writes it.
    """
    rule = AcceptanceRule(**data["rule"])
    comparisons = compare(data["rows"], rule=rule)
    return summary_markdown(
        comparisons, data.get("intro", ""), rule, data.get("warnings", ()), data.get("changes")
    )


def validation_report(
    comparisons: Sequence[Comparison],
    rows: Sequence[Mapping[str, Any]],
    *,
    rule: AcceptanceRule,
    intro: str,
    run_columns: Sequence[str],
    settings: Mapping[str, Any],
    timings: Mapping[str, float] | None = None,
    command: str | None = None,
    subtitle: str | None = None,
    changes: Mapping[str, str] | None = None,
) -> Report:
    """The HTML report: the summary table and verdicts, both figures, every run, the settings.

    Args:
        comparisons: from :func:`circuitlab.validation.compare`.
        rows: the runs, in display order.
        rule: the acceptance rule used.
        intro: what was run (shown above the table).
        run_columns: the columns of ``rows`` to show.
        settings: the run's settings (one table row each).
        timings, command, subtitle: for the page.
        changes: what each arm changes against the baseline (a column of the verdicts).

    Returns:
        The report (``.write(path)`` it).
    """
    report = Report("Validation suite", command=command, subtitle=subtitle)
    report.section("Summary").text(intro)
    report.table(summary_columns(comparisons), summary_rows(comparisons), caption=rule.describe())
    columns, test_rows = tests_table(comparisons)
    if test_rows:
        report.table(columns, test_rows, caption="baseline minus arm, 95 % CI, (MDE at 80 %)")
    lines = [f"{arm}: {line}" for arm, line in verdicts(comparisons).items()]
    report.text("\n\n".join(lines) or "No arm besides the baseline.")
    columns, plain = verdict_table(comparisons, changes)
    if plain:
        report.table(columns, plain, caption="does each improvement help? (primary metric)")
    report.section("Figures")
    report.figure(comparison_figure(comparisons), "refusal rate vs first-token KL, mean ± std")
    report.figure(paired_differences_figure(rows), "refusal reduction against the baseline")
    report.section("Runs").table(run_columns, [[r.get(c) for c in run_columns] for r in rows])
    report.section("Settings").table(
        ["setting", "value"], [[k, str(v)] for k, v in settings.items()]
    )
    if timings:
        report.timings(timings)
    return report
