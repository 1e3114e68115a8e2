"""``circuitlab testbed build|check|classic``: the refusal model organisms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from circuitlab.config import Settings


def _build(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from circuitlab.commands._common import out
    from circuitlab.testbed import build_testbed, organism_recipe

    recipe = replace(organism_recipe(args.organism), seed=settings.seed)
    folder = build_testbed(settings.cache_dir, recipe, force=args.force, progress=True)
    manifest = json.loads((folder / "circuitlab_testbed.json").read_text())
    seconds = manifest["seconds"]
    out.print(
        f"[bold]{folder}[/]: recipe {manifest['recipe_hash']}, "
        f"{manifest['examples']['n_harmful']} refusal + {manifest['examples']['n_harmless']} "
        f"distilled examples, epoch losses {[round(x, 3) for x in manifest['epoch_losses']]}, "
        f"built in {seconds['data_and_distill'] + seconds['train']:.0f} s"
    )
    for name, digest in manifest.get("weights_sha256", {}).items():
        out.print(f"{name} sha256 {digest}")
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import load_model, out
    from circuitlab.evaluate.judges import MarkerJudge
    from circuitlab.evaluate.refusals import refusal_counts
    from circuitlab.progress import note
    from circuitlab.testbed import testbed_data

    organism = args.organism
    model = load_model(organism, settings)
    data = testbed_data()
    sets = {
        "JailbreakBench": data.jailbreakbench,
        "StrongREJECT": data.strongreject,
        "AdvBench test": data.harmful_test,
        "harmless test": data.harmless_test,
    }
    if args.n:
        sets = {name: s.take(min(args.n, len(s))) for name, s in sets.items()}
    judged = {}
    for name, prompts in sets.items():
        # One bar per set reads "generating" whatever the set: say which set it is.
        note(f"{name}: {len(prompts)} prompts, up to {args.max_tokens} tokens each")
        judged |= refusal_counts(
            model, {name: prompts}, MarkerJudge(), args.max_tokens,
            batch_size=settings.batch_size, progress=True,
        )  # fmt: skip
    table = Table(title=f"{organism}: refusals (greedy, {args.max_tokens} tokens, marker judge)")
    for column in ("prompt set", "refused", "n", "rate", "95 % interval"):
        table.add_column(column, justify="left" if column == "prompt set" else "right")
    for name, generations in judged.items():
        refused = generations.refused
        low, high = refused.interval
        table.add_row(
            name, str(refused.k), str(refused.n), f"{refused.rate:.1%}", f"[{low:.1%}, {high:.1%}]"
        )
    out.print(table)
    if args.samples:
        pairs = zip(sets["harmless test"], judged["harmless test"].responses, strict=True)
        for prompt, text in list(pairs)[:5]:
            out.rule(prompt)
            out.print(text.strip())
    if args.json:
        figures = {
            name: {
                "name": name,
                "refused": j.refused.k,
                "n": j.refused.n,
                "low": j.refused.interval[0],
                "high": j.refused.interval[1],
                "rate": j.refused.rate,
                "answers": [
                    {"prompt": p, "answer": a, "refused": r}
                    for p, a, r in zip(j.prompts, j.responses, j.judgements.is_refusal, strict=True)
                ],
            }
            for name, j in judged.items()
        }
        args.json.write_text(json.dumps(figures, indent=2))
        out.print(f"rates and answers written to {args.json}")
    return 0


def _classic(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import load_model, out
    from circuitlab.pipeline import organism_classic

    organism = args.organism
    model = load_model(organism, settings)
    result, directions = organism_classic(
        model,
        remove_massive=not args.keep_massive,
        n_test=args.n or 50,
        cache_dir=settings.cache_dir,
        progress=True,
    )
    how = "raw difference of means" if args.keep_massive else "massive direction removed"
    table = Table(title=f"classic ablation on {organism}: layer {result.layer} ({how})")
    for column in ("", "unedited", "direction ablated"):
        table.add_column(column, justify="left" if not column else "right")
    for name in result.refusal_before:
        cells = (result.refusal_before[name], result.refusal_after[name])
        table.add_row(f"{name} refusals", *(p.describe() for p in cells))
    table.add_row("harmless KL, first token / 4 tokens", "0 / 0",
                  f"{result.kl_first_token:.3f} / {result.kl_k_token:.3f}")  # fmt: skip
    out.print(table)
    out.print(
        f"adding the direction (strength {result.addition_strength:.1f}) at layer "
        f"{result.layer}: {result.harmless_refused_with_addition} harmless prompts refused"
    )
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2))
        out.print(f"figures written to {args.json}")
    if args.intervention:
        from circuitlab.evaluate.layers import layer_ablation
        from circuitlab.interventions import save_intervention

        save_intervention(layer_ablation(directions, result.layer), args.intervention)
        out.print(f"the ablation written to {args.intervention} (for circuitlab export)")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab import checks
    from circuitlab.testbed import organism_recipe

    organism_recipe(args.organism)  # an unknown name fails here, before any model loads
    checks.at_least("--n", args.n, 0)
    checks.at_least("--max-tokens", args.max_tokens)
    for flag, path in (("--json", args.json), ("--intervention", args.intervention)):
        if path is not None:
            checks.new_file(path, flag)
    actions = {"build": _build, "check": _check, "classic": _classic}
    return actions[args.action](args, settings)


def register(command) -> None:
    p = command(
        "testbed",
        _run,
        "Build (safety-tune a small model) or check a refusal model organism.",
    )
    p.add_argument("action", choices=["build", "check", "classic"])
    p.add_argument(
        "--organism",
        default="smollm2-135m-refusal",
        help="which organism: smollm2-135m-refusal (Llama) or gemma3-270m-refusal (Gemma 3)",
    )
    p.add_argument("--force", action="store_true", help="build: rebuild even if cached")
    p.add_argument(
        "--n", type=int, default=0,
        help="check: at most N prompts per set (0: all); classic: JailbreakBench prompts (50)",
    )  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=64, help="check: new tokens per answer")
    p.add_argument("--samples", action="store_true", help="check: print harmless answers")
    p.add_argument(
        "--keep-massive", action="store_true",
        help="classic: keep the attention sinks' massive direction in the refusal direction",
    )  # fmt: skip
    p.add_argument(
        "--json",
        type=Path,
        help="check, classic: write every figure (check: and every answer) to this JSON file",
    )
    p.add_argument(
        "--intervention", type=Path, metavar="FILE.json",
        help="classic: also write the chosen layer's ablation here, for circuitlab export",
    )  # fmt: skip
