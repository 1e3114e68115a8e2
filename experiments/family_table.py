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


COLUMNS = ["family", "architecture", "hooks", "circuits", "export", "max |Δlogit|", "notes"]


def rows(results: list[dict]) -> list[list[str]]:
    """One row per family: a mark per column, the worst parity figure, notes."""
    sys.path.insert(0, str(REPO / "tests"))
    from families import passes

    out = []
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
        out.append(
            [f"`{result['family']}`", result["architecture"], _mark(ok["hooks"]),
             _mark(ok["circuits"]), _mark(ok["export"]),
             "–" if worst is None else f"{worst:.1e}", "; ".join(notes)]
        )  # fmt: skip
    return out


def render(results: list[dict]) -> str:
    """The Markdown table of :func:`rows`."""
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows(results)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "cache")
    parser.add_argument(
        "--record", type=Path, metavar="DIR",
        help="also save the table as a result record (docs/results) for the README",
    )  # fmt: skip
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
    if args.record:
        from circuitlab.report.results import ResultRecord

        record = ResultRecord.new(
            "families",
            "Model families: hooks, circuits and export on tiny random models",
            COLUMNS,
            rows(results),
            command="python experiments/family_table.py --record docs/results",
            readme=True,
            notes=[
                "Each row: bridge vs plain transformers logits, head-ablation fold vs hooks, "
                "and a directional-ablation export reloaded with plain transformers vs hooks."
            ],
        )
        record.save(args.record)
    sys.stdout.write(render(results) + "\n")


if __name__ == "__main__":
    main()
