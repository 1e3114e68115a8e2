"""Render the README's supported-families table from the family matrix.

Runs the same checks as ``tests/test_families.py`` (:func:`families.check_family`: bridge vs
HF logits, directional-ablation export with parity and a plain-``transformers`` reload,
head-level fold parity) on tiny random models built from configs, writes the results as
JSON and prints the Markdown tables. Nothing in the tables is typed by hand.

``--sweep`` also builds every other architecture TransformerLens 4.3 bridges that
``transformers`` can build offline, from one generic tiny config (:func:`families.sized`),
and lists the rest with the reason none is built (remote code; not a text generator).

Usage:
    PYTHONPATH=$PWD python experiments/family_table.py --sweep --record /tmp/results
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP_SECONDS = 120  # per swept architecture: a default config may build something huge


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


COLUMNS = ["family", "architecture", "hooks", "circuits", "export", "max |Δlogit|", "notes"]
ALL_COLUMNS = ["architecture", "model_type", "how", "hooks", "circuits", "export", "notes"]


def _notes(result: dict) -> list[str]:
    notes = []
    if result.get("moe"):
        notes.append("MoE: every expert's output projection folded")
    if result.get("vision_identical"):
        notes.append("multimodal: vision tower byte-identical")
    if "error" in result:
        notes.append(result["error"])
    return notes


def rows(results: list[dict]) -> list[list[str]]:
    """One row per family: a mark per column, the worst parity figure, notes."""
    sys.path.insert(0, str(REPO / "tests"))
    from families import passes

    out = []
    for result in results:
        ok = passes(result)
        figures = [result.get(k) for k in ("bridge_vs_hf", "export_parity", "head_parity")]
        worst = max((f for f in figures if f is not None), default=None)
        out.append(
            [f"`{result['family']}`", result["architecture"], _mark(ok["hooks"]),
             _mark(ok["circuits"]), _mark(ok["export"]),
             "–" if worst is None else f"{worst:.1e}", "; ".join(_notes(result))]
        )  # fmt: skip
    return out


def all_rows(registry: list[dict], results: dict[str, dict]) -> list[list[str]]:
    """One row per bridged architecture: how it is covered and, where built, what passed."""
    sys.path.insert(0, str(REPO / "tests"))
    from families import passes

    how = {
        "matrix": "tested (hand config)",
        "sweep": "swept (generic config)",
        "remote code": "not built: remote code, needs a hub download",
        "not a text generator": "refused before loading: not a text generator",
    }
    out = []
    for row in registry:
        result = results.get(row["architecture"])
        marks = ["–"] * 3 if result is None else [_mark(v) for v in passes(result).values()]
        notes = "" if result is None else "; ".join(_notes(result))
        out.append([row["architecture"], row["model_type"] or "–", how[row["kind"]], *marks, notes])
    return out


def render(results: list[dict], columns=COLUMNS, table=None) -> str:
    """The Markdown table of :func:`rows` (or of ``table``, rows already made)."""
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|---" * len(columns) + "|"]
    body = rows(results) if table is None else table
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _timeout(*_):
    raise TimeoutError(f"over {SWEEP_SECONDS} s")


def _run(families: list[str], work: Path, cache_dir: Path, limit: int | None) -> list[dict]:
    from families import check_family

    from circuitlab.progress import note

    results = []
    for i, family in enumerate(families, 1):
        if limit:
            signal.alarm(limit)  # check_family records the TimeoutError as the family's error
        try:
            results.append(check_family(family, work, cache_dir))
        finally:
            signal.alarm(0)
        note(f"[{i}/{len(families)}] {family}: {results[-1].get('error', 'ok')[:100]}")
    return results


def _record(folder: Path, results: list[dict], registry: list[dict] | None, swept: dict) -> None:
    from families import passes

    from circuitlab.report.results import ResultRecord

    command = "python experiments/family_table.py --sweep --record docs/results"
    ResultRecord.new(
        "families",
        "Model families: hooks, circuits and export on tiny random models",
        COLUMNS,
        rows(results),
        command=command,
        readme=True,
        notes=[
            "Each row: bridge vs plain transformers logits, head-ablation fold vs hooks, "
            "and a directional-ablation export reloaded with plain transformers vs hooks."
        ],
    ).save(folder)
    if registry is not None:
        table = all_rows(registry, swept)
        built = [r for r in swept.values() if r["architecture"] not in _tested()]
        passing = sum(all(passes(r).values()) for r in built)
        ResultRecord.new(
            "families-all",
            "Every architecture TransformerLens 4.3 bridges: tested, swept, or why not built",
            ALL_COLUMNS,
            table,
            command=command,
            notes=[
                f"{len(registry)} architectures; {len(results)} in the tested matrix; "
                f"{passing} of {len(built)} swept from a generic tiny config pass all three.",
                "Swept failures are mostly the generic config (a size a family derives "
                "differently), recorded as found; a family people use gets a hand config.",
            ],
        ).save(folder)


def _tested() -> set[str]:
    from families import _configs

    return {architecture for architecture, _ in _configs().values()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "cache")
    parser.add_argument(
        "--record", type=Path, metavar="DIR",
        help="also save the tables as result records (docs/results) for the README",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", action="store_true",
        help="also build every other bridged architecture transformers has, generically",
    )  # fmt: skip
    parser.add_argument("families", nargs="*", help="default: every family of the matrix")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "tests"))
    from families import FAMILIES, architectures, sweep_configs

    signal.signal(signal.SIGALRM, _timeout)
    registry = architectures() if args.sweep else None
    with tempfile.TemporaryDirectory() as work:
        results = _run(list(args.families or FAMILIES), Path(work), args.cache_dir, None)
        swept = (
            _run(list(sweep_configs()), Path(work), args.cache_dir, SWEEP_SECONDS)
            if args.sweep
            else []
        )
    by_arch = {r["architecture"]: r for r in [*results, *swept]}
    if args.out:
        args.out.write_text(json.dumps({"matrix": results, "sweep": swept}, indent=1) + "\n")
    if args.record:
        _record(args.record, results, registry, by_arch)
    sys.stdout.write(render(results) + "\n")
    if registry is not None:
        sys.stdout.write("\n" + render([], ALL_COLUMNS, all_rows(registry, by_arch)) + "\n")


if __name__ == "__main__":
    main()
