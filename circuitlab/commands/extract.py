"""``circuitlab extract MODEL --method ...``: refusal directions from a model's activations.

Prompts come from the *train* split of the one split policy (:mod:`circuitlab.prompt_data`,
a fixed seed, not ``--seed``), so search and test never see them; JailbreakBench and
StrongREJECT are held out of the other packaged harmful sets, as the testbed does.
Supervised methods label prompts by the model's own greedy answers, judged by
``MarkerJudge``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.table import Table

from circuitlab._resources import json_hash
from circuitlab.commands._common import last_token_activations, prompt_sets
from circuitlab.config import Settings
from circuitlab.prompt_data import SOURCE_HELP

METHODS = ("diff-means", "pca", "probe", "ensemble", "cones", "compliance")
SUPERVISED = {"probe", "ensemble", "compliance"}


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("extract", cmd_extract, "Extract refusal directions from a model's activations.")
    p.add_argument("model", help="preset name, HF folder, .gguf file or hub id")
    p.add_argument("--method", choices=METHODS, default="diff-means", help="extractor")
    p.add_argument(
        "--harmful", default="advbench", metavar="SRC", help=f"harmful prompts: {SOURCE_HELP}"
    )
    p.add_argument("--harmless", default="harmless", metavar="SRC", help="harmless prompt source")
    p.add_argument("--n", type=int, default=128, help="prompts per side (train split)")
    p.add_argument("--k", type=int, default=4, help="components per layer (pca)")
    p.add_argument("--n-cones", type=int, default=None, help="cones (default: by silhouette)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the DirectionSet")
    p.add_argument("--plot", action="store_true", help="also write the per-layer curves as PNG")
    p.add_argument(
        "--remove-massive",
        action="store_true",
        help="take the attention sinks' massive-activation direction out of the directions",
    )


def _labels(model, harmful, harmless, settings: Settings) -> tuple[list[bool], list[bool]]:
    from circuitlab.activations import response_labels
    from circuitlab.evaluate.judges import MarkerJudge

    judge = MarkerJudge().judge
    options = {
        "max_new_tokens": settings.max_new_tokens,
        "batch_size": settings.batch_size,
        "chat": model.facts.has_chat_template,
        "cache_dir": settings.cache_dir,
        "progress": True,
    }
    return (
        response_labels(model, harmful.prompts, judge, **options),
        response_labels(model, harmless.prompts, judge, **options),
    )


def run_method(method: str, harmful, harmless, labels, args: argparse.Namespace, seed: int):
    """Call the extractor for ``method`` with the CLI's options."""
    from circuitlab.directions.extract import extract

    return extract(method, harmful, harmless, labels, pca_k=args.k, n_cones=args.n_cones, seed=seed)


def layer_table(ds, title: str) -> Table:
    """Layer by layer: every per-layer curve the extractor recorded."""
    from circuitlab.report.tables import cone_caption, layer_rows

    columns, rows = layer_rows(ds)
    table = Table(title=title, caption=cone_caption(ds))
    for name in columns:
        table.add_column(name, justify="left" if name == "source" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def plot_curves(ds, path: Path) -> Path:
    """The per-layer curves (:func:`circuitlab.report.plots.direction_curves`) as a PNG."""
    from circuitlab.report.plots import direction_curves

    fig = direction_curves(ds)
    if fig is None:
        raise ValueError(f"{ds.method} directions recorded no per-layer curve to plot")
    fig.savefig(path, dpi=120)
    return path


def _default_out(settings: Settings, model_name: str, method: str, key: dict) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name).name).strip("-")
    digest = json_hash(key, 12)
    return Path(settings.cache_dir) / "directions" / f"{slug}-{method}-{digest}"


def check_directions_out(out: str | None) -> None:
    """An ``--out`` folder that saving a DirectionSet may replace: new, empty, or an earlier
    set (saving replaces the folder: never one holding other files)."""
    from circuitlab import checks
    from circuitlab.errors import ConfigError

    if out is None:
        return
    folder = checks.new_folder(out, "--out")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "directions.json").is_file():
        raise ConfigError(
            f"--out {folder} holds files that are not a saved direction set; choose another"
        )


def cmd_extract(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab import checks
    from circuitlab.activations import model_fingerprint
    from circuitlab.commands import _common as common
    from circuitlab.report import Clock, command_line, directions_report

    clock = Clock()
    checks.at_least("--n", args.n, 2)
    checks.at_least("--k", args.k)
    checks.at_least("--n-cones", args.n_cones)
    check_directions_out(args.out)
    harmful, harmless = prompt_sets(args, settings)  # a bad source fails before the model
    model = common.load_model(args.model, settings)
    clock.lap("load model and prompts")
    acts = last_token_activations(model, (harmful, harmless), settings, progress=True)
    clock.lap("activations")
    labels = _labels(model, harmful, harmless, settings) if args.method in SUPERVISED else None
    if labels is not None:
        clock.lap("labels (generate and judge)")
    ds = run_method(args.method, *acts, labels, args, settings.seed)
    if args.remove_massive:
        from circuitlab.activations import massive_directions
        from circuitlab.directions import without_massive

        found = massive_directions(model, harmless.prompts, chat=model.facts.has_chat_template)
        ds = without_massive(ds, found)
        common.err.print(f"removed {len(found)} massive-activation direction(s)")
    clock.lap(f"extract ({args.method})")
    provenance = {
        "model": args.model,
        "model_fingerprint": model_fingerprint(model),
        "harmful": {"source": args.harmful, "n": len(harmful), "hash": harmful.hash},
        "harmless": {"source": args.harmless, "n": len(harmless), "hash": harmless.hash},
        "position": "last",
        "hook": "hook_resid_pre",
        "seed": settings.seed,
    }
    ds = replace(ds, metadata={**ds.metadata, **provenance})
    key = {**provenance, "method": args.method, "k": args.k, "n_cones": args.n_cones}
    if args.remove_massive:
        key["remove_massive"] = True  # older folders keep their names
    folder = ds.save(args.out or _default_out(settings, args.model, args.method, key))
    title = f"{args.model}: {ds.method} directions ({len(harmful)} + {len(harmless)} prompts)"
    common.out.print(layer_table(ds, title))
    if "fallback" in ds.metadata:
        common.err.print(f"[yellow]fallback:[/] {ds.metadata['fallback']['reason']}")
    if labels is not None:
        common.out.print(
            f"refused: {sum(labels[0])}/{len(labels[0])} harmful, "
            f"{sum(labels[1])}/{len(labels[1])} harmless"
        )
    if args.plot:
        common.out.print(f"plot: {plot_curves(ds, folder / 'curves.png')}")
    common.out.print(f"saved: {folder}")
    report = directions_report(
        ds, title, labels=labels, command=command_line(args), seed=settings.seed,
        timings=clock.laps,
    )  # fmt: skip
    common.out.print(f"report: {report.write(folder / 'report.html')}")
    return 0
