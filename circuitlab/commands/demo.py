"""``circuitlab demo``: the main job on the embedded default model, start to finish.

Builds the refusal organism on first use (SmolLM2-135M safety-tuned on CPU), finds its
refusal direction, ablates it through hooks, and shows refusals and KL before and after on
held-out prompts, then shows the same direction inducing refusals when added.
"""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from circuitlab.config import Settings


def _rate(pair: tuple[int, int]) -> str:
    from circuitlab.evaluate.stats import wilson_interval

    refused, n = pair
    low, high = wilson_interval(refused, n)
    return f"{refused}/{n} = {refused / n:.0%} [{low:.0%}, {high:.0%}]"


def _report(result, model_name: str) -> None:
    from circuitlab.cli import out

    table = Table(title=f"{model_name}: refusals (marker judge, greedy, 95 % Wilson intervals)")
    for column in ("held-out set", "before", f"after ablating layer {result.layer}'s direction"):
        table.add_column(column)
    for name in result.refusal_before:
        table.add_row(name, _rate(result.refusal_before[name]), _rate(result.refusal_after[name]))
    out.print(table)
    out.print(
        f"harmless KL(base ‖ ablated): first token {result.kl_first_token:.3f}, "
        f"4 tokens {result.kl_k_token:.3f}"
    )
    out.print(
        f"adding the direction (×{result.addition_strength:.1f}) at layer {result.layer} to "
        f"harmless prompts: refused {_rate(result.harmless_refused_with_addition)}"
    )
    for name, rows in result.samples.items():
        for prompt, before, after in rows[:2]:
            out.rule(f"[bold]{name}[/]: {prompt}")
            out.print(f"[dim]before:[/] {before.strip()[:240]}")
            out.print(f"[dim]after:[/]  {after.strip()[:240]}")
    out.print(f"timings (s): {json.dumps(result.seconds)}")


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.cli import err, load_model
    from circuitlab.evaluate.judges import MarkerJudge
    from circuitlab.pipeline import classic_ablation
    from circuitlab.testbed import NAME, build_testbed, testbed_data

    if args.model == NAME:
        err.print("building the refusal organism if needed (first run only)…")
        build_testbed(settings.cache_dir, progress=True)
    model = load_model(args.model, settings)
    data = testbed_data()
    n = args.n
    with err.status("extracting directions, choosing a layer, evaluating…"):
        result, _ = classic_ablation(
            model,
            train=(data.harmful_train.take(96), data.harmless_train.take(96)),
            val=(data.harmful_val.take(32), data.harmless_val.take(32)),
            test_sets={
                "JailbreakBench": data.jailbreakbench.take(min(n, 100)),
                "StrongREJECT": data.strongreject.take(n),
                "harmless (held out)": data.harmless_test.take(n),
            },
            harmless_test=data.harmless_test.take(32),
            judge=MarkerJudge(),
            candidates=range(model.n_layers // 4, model.n_layers - 2),
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            cache_dir=settings.cache_dir,
        )
    _report(result, args.model)
    return 0


def register(command) -> None:
    p = command("demo", _demo, "Run the main job on the embedded default model.")
    p.add_argument("--model", default="smollm2-135m-refusal", help="model to run on")
    p.add_argument("--n", type=int, default=50, help="prompts per held-out set")
