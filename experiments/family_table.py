"""Render the README's supported-families table from the family matrix.

Runs the same checks as ``tests/test_families.py`` (:func:`families.check_family`: bridge vs
HF logits, directional-ablation export with parity and a plain-``transformers`` reload,
head-level fold parity) on tiny random models built from configs, writes the results as
JSON and prints the Markdown table. Nothing in the table is typed by hand.

Usage:
    PYTHONPATH=$PWD python experiments/family_table.py --out /tmp/families.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def render(results: list[dict]) -> str:
    """The Markdown table: one row per family, a mark per column, the worst parity figure."""
    sys.path.insert(0, str(REPO / "tests"))
    from families import passes

    lines = [
        "| family | architecture | hooks | circuits | export | max \\|Δlogit\\| | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        ok = passes(result)
        figures = [result.get(k) for k in ("bridge_vs_hf", "export_parity", "head_parity")]
        worst = max((f for f in figures if f is not None), default=None)
        notes = []
        if result.get("moe"):
            notes.append("MoE: every expert's output projection folded")
        if result.get("vision_identical"):
            notes.append("multimodal: vision tower byte-identical")
        if "error" in result:
            notes.append(result["error"])
        lines.append(
            f"| `{result['family']}` | {result['architecture']} | {_mark(ok['hooks'])} "
            f"| {_mark(ok['circuits'])} | {_mark(ok['export'])} "
            f"| {'–' if worst is None else f'{worst:.1e}'} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "cache")
    parser.add_argument("families", nargs="*", help="default: every family of the matrix")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "tests"))
    from families import FAMILIES, check_family

    with tempfile.TemporaryDirectory() as work:
        results = [
            check_family(family, Path(work), args.cache_dir)
            for family in (args.families or FAMILIES)
        ]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    sys.stdout.write(render(results) + "\n")


if __name__ == "__main__":
    main()
