"""The SAE report page: quality, the refusal features with their top prompts, the edits.

Takes the plain result dictionary that ``experiments/sae_organism.py`` and
``circuitlab sae features`` write (any section may be missing) and returns a
:class:`circuitlab.report.Report`. It lives with the other run reports, above the SAE
package it describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from circuitlab.report.html import Report

__all__ = ["edits_figure", "ranking_figure", "sae_report"]


def _pct(rate: float, ci: Any) -> str:
    return f"{100 * rate:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def ranking_figure(ranking: Any, n: int = 40):
    """Scores of the top ``n`` latents of a :class:`~circuitlab.sae.FeatureRanking`."""
    from matplotlib.figure import Figure

    rows = ranking.as_rows(n)
    fig = Figure(figsize=(7, 2.8), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(rows)), [s for _, s in rows], color="#4c72b0")
    ax.set_xticks(range(len(rows)), [str(i) for i, _ in rows], rotation=90, fontsize=7)
    ax.set_xlabel("latent")
    ax.set_ylabel(ranking.method)
    return fig


def edits_figure(rows: list[Mapping[str, Any]]):
    """Refusal rates (Wilson 95 %) on the harmful and harmless sets, and KL, per arm."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    names = [r["arm"] for r in rows]
    for ax, (key, ci, title) in zip(
        axes[:2],
        [("refusal_rate", "refusal_ci", "harmful refusals"),
         ("over_refusal_rate", "over_refusal_ci", "harmless refusals")],
        strict=True,
    ):  # fmt: skip
        rates = [r["derived"][key] for r in rows]
        low = [r - r_ci[0] for r, r_ci in zip(rates, (r["derived"][ci] for r in rows), strict=True)]
        high = [
            r_ci[1] - r for r, r_ci in zip(rates, (r["derived"][ci] for r in rows), strict=True)
        ]
        ax.barh(names, rates, xerr=[low, high], color="#4c72b0")
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
    axes[2].barh(names, [r["kl_first"] or 0 for r in rows], color="#dd8452")
    axes[2].set_title("first-token KL (nats)", fontsize=10)
    axes[2].invert_yaxis()
    for ax in axes[1:]:
        ax.set_yticklabels([])
    return fig


def _quality(report: Report, result: Mapping[str, Any]) -> None:
    q, t = result.get("quality"), result.get("training", {})
    report.section("SAE quality")
    if t:
        report.text(
            f"TopK SAE at {result.get('sae', '')}: {t.get('n_tokens')} training tokens, "
            f"{t.get('steps')} steps, {t.get('wall_seconds_total', 0):.0f} s wall in all "
            f"(answers, activations, training)."
        )
    if q:
        rows = [(k, q[k]) for k in ("n_tokens", "fvu", "l0", "dead", "dense", "ce_clean",
                                    "ce_sae", "ce_increase", "ce_mean_ablated", "ce_recovered")
                if k in q]  # fmt: skip
        report.table(["held-out figure", "value"], rows)


def _features(report: Report, result: Mapping[str, Any], rankings: Mapping[str, Any]) -> None:
    found = result.get("features")
    if not found:
        return
    report.section("Refusal features")
    if "diff_means_auroc_test" in found:
        report.text(
            "AUROC: each latent's mean activation over the post-instruction tokens, harmful vs "
            f"harmless test prompts; the difference-of-means projection scores "
            f"{found['diff_means_auroc_test']:.3f} on the same prompts."
        )
    for method, rows in found.get("rankings", {}).items():
        report.subheading(f"ranked by {method}")
        if method in rankings:
            report.figure(ranking_figure(rankings[method]), f"top latents by {method}")
        report.table(
            ["latent", method, "AUROC (test)", "top-activating prompts"],
            [(r["latent"], r["score"], r.get("auroc_test"),
              "\n".join(f"{a:.2f}  {p}" for p, a in r["top_prompts"][:3])) for r in rows],
            css_class="samples",
        )  # fmt: skip


def sae_report(
    result: Mapping[str, Any], rankings: Mapping[str, Any] | None = None, command: str | None = None
) -> Report:
    """The report of an SAE run (quality, features, edits; whichever the result holds)."""
    report = Report(
        f"SAE features: {result.get('model', '')} layer {result.get('layer', '')}",
        command=command, subtitle=f"SAE {result.get('sae_hash', '')}",
    )  # fmt: skip
    _quality(report, result)
    _features(report, result, rankings or {})
    rows = result.get("edits")
    if rows:
        report.section("Edits")
        report.figure(edits_figure(rows), "refusal rates with Wilson 95 % intervals, and KL")
        report.table(
            ["arm", "intervention", "harmful refusals", "harmless refusals", "KL first", "KL 4"],
            [(r["arm"], r["intervention"],
              _pct(r["derived"]["refusal_rate"], r["derived"]["refusal_ci"]),
              _pct(r["derived"]["over_refusal_rate"], r["derived"]["over_refusal_ci"]),
              r["kl_first"], r["kl_k"]) for r in rows],
        )  # fmt: skip
    return report
