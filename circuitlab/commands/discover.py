"""``circuitlab discover MODEL``: which attention heads carry refusal, by patching.

Harmful prompts (train split) are the clean run; the counterfactual is the paired harmless
prompts (default) or the harmful prompts with the refusal direction ablated. Every query
head and KV head (and with ``--blocks`` every attention block and MLP) is scored; the
ranked circuit is saved as JSON under ``cache/circuits/`` with a heat map and an HTML run
report next to it, and the top heads are printed. An estimate (attribution, integrated
gradients) is checked against exact patching on a sample of heads, and the agreement is
printed and stored with the circuit.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from circuitlab._resources import json_hash
from circuitlab.config import Settings

METHODS = ("attribution", "integrated-gradients", "activation")
METRICS = ("refusal-logodds", "refusal-logprob", "refusal-projection")
COUNTERFACTUALS = ("harmless", "ablated")
# Below this sampled Spearman the command suggests a more exact method.
AGREEMENT_WARNING = 0.8
# Where the refusal direction is taken when no layer is given: about three quarters of the
# depth (layers 21-23 of 30 worked on the SmolLM2 organism, see DESIGN.md).
DIRECTION_DEPTH = 0.75


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("discover", cmd_discover, "Score every attention head's share in refusal.")
    p.add_argument("model", help="preset name, HF folder, .gguf file or hub id")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="integrated-gradients",
        help="patching method (integrated-gradients: estimate every site along the clean-to-"
        "counterfactual path, then re-score the leaders exactly, see --refine)",
    )
    p.add_argument("--top", type=int, default=10, metavar="K", help="heads to print")
    p.add_argument("--harmful", default="advbench", metavar="SRC", help="harmful prompt source")
    p.add_argument("--harmless", default="harmless", metavar="SRC", help="harmless prompt source")
    p.add_argument("--n", type=int, default=32, help="prompts per side (train split)")
    p.add_argument("--metric", choices=METRICS, default="refusal-logodds", help="what to patch")
    p.add_argument(
        "--ig-steps",
        type=int,
        default=4,
        metavar="N",
        help="path points of --method integrated-gradients",
    )
    p.add_argument(
        "--check",
        type=int,
        default=16,
        metavar="N",
        help="heads patched exactly to check an estimate's ranking (0: no check)",
    )
    p.add_argument(
        "--refine",
        type=int,
        default=40,
        metavar="K",
        help="re-score an estimate's top K heads by exact patching (0: keep the estimate); "
        "integrated gradients add plain attribution's top K",
    )
    p.add_argument("--blocks", action="store_true", help="also score every attention block and MLP")
    p.add_argument(
        "--openings",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="refusal openings whose first tokens refusal-logprob/-logodds score (default: I, "
        "Sorry, I'm, As, Unfortunately, No)",
    )
    p.add_argument(
        "--counterfactual", choices=COUNTERFACTUALS, default="harmless", help="source run"
    )
    p.add_argument(
        "--directions",
        default=None,
        metavar="DIR",
        help="saved DirectionSet for refusal-projection and ablated (default: difference of "
        "means of the same prompts)",
    )
    p.add_argument(
        "--direction-layer",
        type=int,
        default=None,
        metavar="L",
        help="layer whose direction is used (default: about 3/4 of the depth); the "
        "projection is read at the final layer",
    )
    p.add_argument(
        "--positions",
        default="post_instruction",
        help="patched positions: post_instruction, last, all (ablated only) or a number",
    )
    p.add_argument("--no-kv", action="store_true", help="skip the KV heads")
    p.add_argument(
        "--out",
        default=None,
        metavar="JSON",
        help="circuit file (heat map PNG and HTML report beside it)",
    )


def _positions(text: str):
    return int(text) if text.isdigit() else text


def _check_args(args: argparse.Namespace, settings: Settings) -> None:
    """Sizes, positions, the direction folder and layer, and the output file: checked
    before the model loads, so a bad value writes nothing."""
    from circuitlab import checks
    from circuitlab.commands._common import model_shape, source_config
    from circuitlab.errors import ConfigError
    from circuitlab.interventions import DirectionRef

    checks.at_least("--top", args.top)
    checks.at_least("--n", args.n)
    positions = _positions(args.positions)
    known = ("post_instruction", "last", "all")
    if isinstance(positions, str) and positions not in known:
        raise ConfigError(f"--positions {args.positions!r}: use {', '.join(known)} or a number")
    if positions == "all" and args.counterfactual != "ablated":
        raise ConfigError("--positions all needs --counterfactual ablated")
    if args.openings is not None and not all(o.strip() for o in args.openings):
        raise ConfigError("--openings: every opening needs some text")
    if args.out:
        checks.new_file(args.out, "--out")
    layers, width, _ = model_shape(source_config(args.model, settings)[1])
    layer = args.direction_layer
    if layer is not None and not 0 <= layer < (layers if layers is not None else layer + 1):
        raise ConfigError(f"--direction-layer {layer} out of range [0, {layers})")
    if args.directions:
        ds = DirectionRef(folder=args.directions).load()
        if width is not None and ds.d_model != width:
            raise ConfigError(
                f"--directions {args.directions}: d_model {ds.d_model}, the model's is {width}"
            )


def _direction_set(model, args: argparse.Namespace, harmful, harmless, settings: Settings):
    """The refusal directions: a saved set, or difference of means of these prompts."""
    from circuitlab.commands._common import last_token_activations
    from circuitlab.directions import DirectionSet, extract_diff_means

    if args.directions:
        return DirectionSet.load(args.directions)
    return extract_diff_means(*last_token_activations(model, (harmful, harmless), settings))


def _setup(model, args: argparse.Namespace, harmful, harmless, settings: Settings):
    """(metric, counterfactual, provenance) for the command's options."""
    from circuitlab.circuits import DirectionMetric, RefusalTokenMetric
    from circuitlab.directions.base import interpolate_direction
    from circuitlab.evaluate.openings import REFUSAL_OPENINGS
    from circuitlab.interventions import DirectionalAblation, DirectionRef

    info: dict = {"counterfactual": args.counterfactual}
    ds = layer = None
    if args.metric == "refusal-projection" or args.counterfactual == "ablated":
        ds = _direction_set(model, args, harmful, harmless, settings)
        layer = args.direction_layer
        if layer is None:
            layer = round(DIRECTION_DEPTH * (model.n_layers - 1))
        info["direction"] = {"source": args.directions or "diff-means", "layer": layer}
    if args.metric == "refusal-projection":
        metric = DirectionMetric(interpolate_direction(ds.directions[:, 0], float(layer)))
    else:
        openings = args.openings or REFUSAL_OPENINGS
        log_odds = args.metric == "refusal-logodds"
        metric = RefusalTokenMetric.from_openings(model.tokenizer, openings, log_odds)
        info["token_ids"] = list(metric.token_ids)
    if args.counterfactual == "ablated":
        ref = DirectionRef.from_folder(args.directions) if args.directions else None
        counterfactual = DirectionalAblation(ref or DirectionRef.inline(ds), index=float(layer))
    else:
        counterfactual = list(harmless.prompts)
    return metric, counterfactual, info


def _default_out(settings: Settings, model_name: str, method: str, key: dict) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name).name).strip("-")
    digest = json_hash(key, 12)
    return Path(settings.cache_dir) / "circuits" / f"{slug}-{method}-{digest}.json"


def circuit_table(circuit, k: int) -> Table:
    """The top ``k`` query heads, and the top KV heads when they were patched."""
    from circuitlab.report.tables import circuit_rows

    table = Table(
        title=f"{circuit.model}: top {k} heads by {circuit.method} patching of {circuit.metric}",
        caption=f"metric {circuit.clean:.3f} on harmful prompts, {circuit.counterfactual:.3f} "
        "on the counterfactual; importance = drop of the metric when the head is patched",
    )
    columns, rows = circuit_rows(circuit, k)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def cmd_discover(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.circuits import (
        RefusalCircuit,
        activation_patching,
        attribution_patching,
        check_agreement,
        plot_head_scores,
        refine,
    )
    from circuitlab.commands import _common as common
    from circuitlab.commands._common import prompt_sets
    from circuitlab.report import circuit_report, command_line

    _check_args(args, settings)
    harmful, harmless = prompt_sets(args, settings)  # a bad source fails before the model
    model = common.load_model(args.model, settings)
    n = min(len(harmful), len(harmless))  # counterfactual prompts pair one-to-one
    harmful, harmless = harmful.take(n), harmless.take(n)
    metric, counterfactual, info = _setup(model, args, harmful, harmless, settings)
    run = activation_patching if args.method == "activation" else attribution_patching
    extra = {"ig_steps": args.ig_steps} if args.method == "integrated-gradients" else {}
    chat, positions = model.facts.has_chat_template, _positions(args.positions)
    if not chat and positions == "post_instruction":
        # Raw text has no template tokens after the prompt: only the last token is shared.
        positions = "last"
        common.err.print("no chat template: patching the last position only")
    started = time.perf_counter()
    scores = run(
        model,
        harmful.prompts,
        counterfactual,
        metric,
        positions=positions,
        kv=not args.no_kv,
        blocks=args.blocks,
        batch_size=settings.batch_size,
        chat=chat,
        progress=True,
        **extra,
    )
    checks = []
    if args.method != "activation" and args.check:
        # Per-layer MLP scores get the same check as heads: refusal may live in the MLPs.
        for kind in ("heads", "mlp") if args.blocks else ("heads",):
            check = check_agreement(
                model, harmful.prompts, counterfactual, metric, scores, sample=args.check,
                seed=settings.seed, kind=kind, positions=positions,
                batch_size=settings.batch_size, chat=chat, progress=True,
            )  # fmt: skip
            checks.append(check)
            info["agreement_check" if kind == "heads" else f"agreement_check_{kind}"] = (
                check.to_dict()
            )
    if args.method != "activation" and args.refine:
        screens = []
        if args.method == "integrated-gradients":
            # One more pass: the heads the path average misses are often plain
            # attribution's leaders (and the other way round), so both lists are re-scored.
            screens.append(
                attribution_patching(
                    model,
                    harmful.prompts,
                    counterfactual,
                    metric,
                    positions=positions,
                    kv=False,
                    batch_size=settings.batch_size,
                    chat=chat,
                )  # fmt: skip
            )
        scores = refine(
            model, harmful.prompts, counterfactual, metric, scores, top=args.refine,
            screens=screens, positions=positions, batch_size=settings.batch_size, chat=chat,
            progress=True,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    provenance = {
        "harmful": {"source": args.harmful, "n": n, "hash": harmful.hash},
        "harmless": {"source": args.harmless, "n": n, "hash": harmless.hash},
        "positions": positions,
        "seed": settings.seed,
        **info,
    }
    circuit = RefusalCircuit.from_scores(
        scores, model.facts, args.model, **provenance, seconds=round(seconds, 2)
    )
    key = {"model": args.model, "method": args.method, "metric": args.metric, **provenance}
    path = Path(args.out) if args.out else _default_out(settings, args.model, args.method, key)
    circuit.save(path)
    png = plot_head_scores(scores, path.with_suffix(".png"), title=f"{args.model}: {run.__name__}")
    common.out.print(circuit_table(circuit, args.top))
    common.out.print(f"{args.method} patching over {n} harmful prompts took {seconds:.1f} s")
    for check in checks:
        a, what = check.agreement, "heads" if check.kind == "heads" else f"{check.kind}s"
        common.out.print(
            f"agreement with exact patching on {len(check.sites)} sampled {what} "
            f"({check.seconds:.1f} s): Spearman {a.spearman:.3f} over the estimate's top "
            f"{a.k}, top-1 {'matches' if a.top1_match else 'differs'}, {check.missed} of "
            f"{len(check.sites) - a.k} other {what} should have ranked among them"
        )
        if a.spearman < AGREEMENT_WARNING or check.missed:
            common.err.print(
                f"the estimate ranks {what} poorly here: keep --refine (or raise it), or use "
                "--method activation"
            )
    common.out.print(f"saved: {path}\nheat map: {png}")
    report = circuit_report(
        circuit, scores, top=args.top, command=command_line(args), seed=settings.seed,
        timings={f"{args.method} patching": seconds},
    )  # fmt: skip
    common.out.print(f"report: {report.write(path.with_suffix('.html'))}")
    return 0
