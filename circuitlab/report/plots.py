"""Figures for run reports: each function takes plain results and returns a matplotlib Figure.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: no global figure
registry, no backend to choose, nothing to close; saving a PNG renders with Agg. The head
heat map lives with the scores it draws (:func:`circuitlab.circuits.head_scores_figure`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from circuitlab.directions import DirectionSet
    from circuitlab.evaluate.scorecard import Scorecard
    from circuitlab.export.verify import Parity
    from circuitlab.search.front import FrontPoint

__all__ = [
    "CURVE_LABELS",
    "direction_curves",
    "pareto_figure",
    "parity_figure",
    "scorecard_figure",
]

# Per-layer curves an extractor may record in ``metadata["per_layer"]``, in display order.
CURVE_LABELS = {
    "mean_diff_norm": "‖Δμ‖",
    "explained_variance": "expl. var",
    "cv_accuracy": "probe acc",
    "silhouette": "silhouette",
    "compliance_norm": "‖μ_comply − μ_refuse‖",
    "refusal_cosine": "cos(refusal)",
}
BASE, EDIT, CHOSEN, GREY = "#4c72b0", "#dd8452", "#c44e52", "#b0b0b0"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def direction_curves(
    ds: DirectionSet, mark: float | None = None, title: str | None = None
) -> Figure | None:
    """One panel per per-layer curve of a DirectionSet (norms, explained variance, probe
    accuracy, cone silhouettes); ``mark`` draws a vertical line at a (fractional) layer.

    Returns:
        The figure, or None when the set recorded no per-layer curve.
    """
    from matplotlib.ticker import MaxNLocator

    per_layer = ds.metadata.get("per_layer", {})
    curves = [(name, per_layer[name]) for name in CURVE_LABELS if name in per_layer]
    if not curves:
        return None
    fig = _figure(7.5, 0.6 + 1.9 * len(curves))
    axes = fig.subplots(len(curves), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, curves, strict=True):
        ys = [math.nan if v is None else float(v) for v in values]
        ax.plot(range(len(ys)), ys, marker="o", markersize=3, color=BASE)
        if mark is not None:
            ax.axvline(mark, color=CHOSEN, linestyle="--", linewidth=1)
        ax.set_ylabel(CURVE_LABELS[name])
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("layer")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or f"{ds.method} directions")
    return fig


def pareto_figure(
    front: Sequence[FrontPoint],
    chosen: FrontPoint | None = None,
    trials: Sequence[tuple[float, float]] = (),
    kl_target: float | None = None,
) -> Figure:
    """Refusal rate against KL: every complete trial, the front, and the chosen trial.

    Args:
        front: the Pareto front.
        chosen: the point picked by the choice rule (a red star).
        trials: (refusal_rate, kl) of every complete trial (grey), if known.
        kl_target: the choice rule's KL budget (a dashed line).
    """
    fig = _figure(7.0, 4.2)
    ax = fig.subplots()
    if trials:
        ax.scatter([k for _, k in trials], [r for r, _ in trials], s=14, c=GREY, label="trials")
    points = sorted(front, key=lambda p: p.kl)
    xs, ys = [p.kl for p in points], [p.refusal_rate for p in points]
    ax.step(xs, ys, where="post", color=BASE, alpha=0.6)
    ax.scatter(xs, ys, s=28, c=BASE, label="Pareto front", zorder=3)
    for p in points:
        ax.annotate(str(p.number), (p.kl, p.refusal_rate), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    if chosen is not None:
        ax.scatter([chosen.kl], [chosen.refusal_rate], s=180, marker="*", c=CHOSEN, zorder=4,
                   label=f"chosen: trial {chosen.number}")  # fmt: skip
    if kl_target is not None:
        ax.axvline(kl_target, color="0.4", linestyle="--", linewidth=1, label="KL target")
    ax.set_xlabel("KL(base ‖ edit), first token, harmless search prompts (nats)")
    ax.set_ylabel("refusal rate, search prompts")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _rate_rows(card: Scorecard) -> list[tuple[str, float, tuple[float, float]]]:
    rows = [
        ("refusals (harmful)", card.refusal_rate, card.refusal_ci),
        ("over-refusals (harmless)", card.over_refusal_rate, card.over_refusal_ci),
    ]
    if card.capability_accuracy is not None:
        label = f"capability ({card.capability_source})"
        rows.append((label, card.capability_accuracy, card.capability_ci))
    return rows


def scorecard_figure(cards: Sequence[Scorecard]) -> Figure:
    """Rates of each scorecard as bars with their 95 % Wilson intervals."""
    fig = _figure(7.0, 1.2 + 0.9 * len(_rate_rows(cards[0])))
    ax = fig.subplots()
    labels = [name for name, _, _ in _rate_rows(cards[0])]
    height = 0.8 / len(cards)
    colours = [BASE, EDIT, CHOSEN, GREY]
    for i, card in enumerate(cards):
        rows = _rate_rows(card)[: len(labels)]
        ys = [j + (i - (len(cards) - 1) / 2) * height for j in range(len(rows))]
        rates = [r for _, r, _ in rows]
        errors = [[r - ci[0] for _, r, ci in rows], [ci[1] - r for _, r, ci in rows]]
        ax.barh(ys, rates, height=height, xerr=errors, capsize=3, label=card.model,
                color=colours[i % len(colours)])  # fmt: skip
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("rate (bars: 95 % Wilson interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def parity_figure(parity: Parity) -> Figure:
    """Export parity: logit and KL gaps (log scale) beside the tolerance and the hooked
    model's own float32 noise, and how many greedy continuations matched."""
    fig = _figure(9.0, 3.2)
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    names = ["max |Δlogit|", "tolerance", "noise floor", "mean KL", "max KL"]
    values = [
        parity.max_abs_logit_diff,
        parity.tolerance,
        parity.noise_floor,
        parity.mean_kl,
        parity.max_kl,
    ]
    floor = 1e-12  # exact zeros would vanish on a log axis
    shown = [max(v, floor) if math.isfinite(v) else floor for v in values]
    colours = [CHOSEN if parity.max_abs_logit_diff > parity.tolerance else BASE, GREY, GREY]
    left.bar(names, shown, color=[*colours, EDIT, EDIT])
    left.set_yscale("log")
    left.set_title(f"folded vs hooked over {parity.n_positions} positions", fontsize=10)
    left.tick_params(axis="x", labelsize=8)
    differed = parity.n_prompts - parity.greedy_agree - parity.near_ties
    right.bar(["identical", "near-tie", "differed"], [parity.greedy_agree, parity.near_ties,
              differed], color=[BASE, GREY, CHOSEN])  # fmt: skip
    right.set_title(
        f"greedy {parity.max_new_tokens} tokens, {parity.n_prompts} prompts", fontsize=10
    )
    right.set_ylim(0, max(parity.n_prompts, 1))
    fig.suptitle("export parity: " + ("passed" if parity.passed else "FAILED"))
    return fig
