"""Rows of the tables that both the terminal (rich) and the HTML report show.

Each function returns ``(columns, rows)`` of plain strings and numbers; the CLI turns them
into rich tables and :class:`~circuitlab.report.Report` into HTML ones, so both say the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from circuitlab.report.plots import CURVE_LABELS

if TYPE_CHECKING:
    from circuitlab.circuits import RefusalCircuit
    from circuitlab.directions import DirectionSet
    from circuitlab.export.verify import Parity
    from circuitlab.search.front import FrontPoint

__all__ = ["circuit_rows", "cone_caption", "front_rows", "layer_rows", "parity_rows"]

Rows = tuple[list[str], list[list[Any]]]


def layer_rows(ds: DirectionSet) -> Rows:
    """Layer by layer: every per-layer curve the extractor recorded (and each layer's
    direction source when a probe fell back to PCA at some layers)."""
    per_layer = ds.metadata.get("per_layer", {})
    shown = [name for name in CURVE_LABELS if name in per_layer]
    sources = ds.metadata.get("direction_source")
    columns = ["layer", *(CURVE_LABELS[name] for name in shown), *(["source"] if sources else [])]
    rows = []
    for layer in range(ds.n_layers):
        cells = [per_layer[name][layer] for name in shown]
        row = [str(layer), *("–" if v is None else f"{v:.3f}" for v in cells)]
        rows.append(row + ([sources[layer]] if sources else []))
    return columns, rows


def cone_caption(ds: DirectionSet) -> str | None:
    """How the cones came out (None for other methods)."""
    if ds.method != "cones":
        return None
    silhouette = ds.metadata["silhouette"]
    return (
        f"{ds.metadata['n_cones']} cone(s) of sizes {ds.metadata['cone_sizes']} at layer "
        f"{ds.metadata['cone_layer']}, silhouette "
        + ("–" if silhouette is None else f"{silhouette:.3f}")
    )


def _tent(params: dict[str, Any], writer: str) -> str:
    weight, position = params.get(f"{writer}_max_weight"), params.get(f"{writer}_max_position")
    if weight is None or position is None:
        return "–"
    return f"{weight:.2f}@{position:.2f}"


def front_rows(front: Sequence[FrontPoint], chosen: FrontPoint | None = None) -> Rows:
    """The Pareto front, one row per trial, the chosen one marked with ``*``."""
    columns = ["trial", "refusals", "KL", "method", "direction", "attn tent", "mlp tent"]
    rows = []
    for p in front:
        mark = "*" if chosen is not None and p.number == chosen.number else ""
        rows.append(
            [
                f"{mark}{p.number}",
                f"{100 * p.refusal_rate:.1f}%",
                f"{p.kl:.3f}",
                p.params.get("method", "?"),
                f"{p.params.get('direction', float('nan')):.2f}",
                _tent(p.params, "attn"),
                _tent(p.params, "mlp"),
            ]
        )
    return columns, rows


def parity_rows(parity: Parity) -> Rows:
    """The export's parity figures, one per row."""
    rows = [
        ["passed", str(parity.passed)],
        ["max |Δlogit| (folded vs hooked)", f"{parity.max_abs_logit_diff:.3e}"],
        ["tolerance", f"{parity.tolerance:g}"],
        ["hooked model's own float32 noise", f"{parity.noise_floor:.3e}"],
        ["KL(hooked ‖ folded) mean / max", f"{parity.mean_kl:.2e} / {parity.max_kl:.2e}"],
        [
            "greedy continuations identical",
            f"{parity.greedy_agree} of {parity.n_prompts} ({parity.near_ties} near-ties)",
        ],
        ["positions compared", str(parity.n_positions)],
        ["new tokens per prompt", str(parity.max_new_tokens)],
    ]
    return ["figure", "value"], rows


def circuit_rows(circuit: RefusalCircuit, k: int) -> Rows:
    """The top ``k`` query heads, then the top KV heads (at most 3) when they were patched."""
    gap = circuit.clean - circuit.counterfactual
    columns = ["rank", "layer", "head", "KV group", "importance", "of gap"]
    rows = []
    for rank, head in enumerate(circuit.top(min(k, len(circuit.heads))), 1):
        share = f"{head.importance / gap:.1%}" if abs(gap) > 1e-9 else "–"
        rows.append([rank, head.layer, head.head, head.kv_group, f"{head.importance:.4f}", share])
    for rank, group in enumerate(circuit.kv_heads[: min(k, 3)], 1):
        heads = "[" + ",".join(map(str, group.heads)) + "]"
        rows.append(
            [f"KV {rank}", group.layer, heads, group.kv_group, f"{group.importance:.4f}", ""]
        )
    return columns, [[str(v) for v in row] for row in rows]
