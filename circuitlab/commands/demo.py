"""``circuitlab demo``: the main job on the embedded default model, start to finish.

Builds the refusal organism on first use (SmolLM2-135M safety-tuned on CPU), then runs
``abliterate`` on it with a small trial budget: directions → Optuna search (refusals vs KL)
→ choice → scorecard on the test split the search never saw → export with verification.
It ends with JailbreakBench refusals before and after (a second set the search never saw)
and a few completions side by side. Rerunning resumes the study instead of starting over.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from circuitlab.commands._common import search_option_flags
from circuitlab.config import Settings
from circuitlab.prompt_data import SOURCE_HELP

# The demo's search sizes (abliterate's defaults).
DEMO_SIZES = {"n_train": 64, "n_search": 30, "n_kl": 30}


def register(command) -> None:
    p = command("demo", _demo, "Run the main job (abliterate) on the embedded default model.")
    p.add_argument("--model", default="smollm2-135m-refusal", help="model to run on")
    p.add_argument(
        "--study",
        metavar="NAME",
        help="study name (default: demo-MODEL-WEIGHTS-seedN, WEIGHTS a hash of the weights)",
    )
    p.add_argument("--out", metavar="DIR", help="export folder (default: CACHE/exports/STUDY)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out folder (only an earlier export, or an empty one)",
    )
    p.add_argument("--trials", type=int, default=16, help="trial budget of the search")
    p.add_argument("--n-test", type=int, default=64, help="test prompts per side")
    p.add_argument(
        "--harmful", default="advbench", metavar="SRC", help=f"harmful prompts: {SOURCE_HELP}"
    )
    p.add_argument("--harmless", default="harmless", metavar="SRC", help="harmless prompts")
    p.add_argument("--harmful-test", metavar="SRC", help="separate harmful test set")
    p.add_argument("--harmless-test", metavar="SRC", help="separate harmless test set")
    p.add_argument("--n-jbb", type=int, default=50, help="JailbreakBench prompts (0: skip)")
    p.add_argument("--capability-n", type=int, default=50, help="MMLU questions (0: skip)")
    # The organism pays more first-token KL than chat models for the same edit (its refusal
    # is trained into a 135M model), so the demo's budget is wider than abliterate's.
    p.add_argument(
        "--kl-target",
        type=float,
        default=1.0,
        help="KL budget of the choice rule (default 1.0 for the organism; abliterate's is 0.2)",
    )
    search_option_flags(p)


def _check_sizes(args: argparse.Namespace, settings: Settings) -> None:
    """Bad sizes, names and paths fail now, not after a quarter of an hour of search."""
    from circuitlab import checks
    from circuitlab.commands._common import (
        check_capability_n,
        check_export_destination,
        check_search_options,
    )
    from circuitlab.errors import ConfigError

    checks.at_least("--trials", args.trials)
    checks.at_least("--n-test", args.n_test)
    checks.at_least("--kl-target", args.kl_target, 0.0)
    check_search_options(args)
    if not 0 <= args.n_jbb <= 100:
        raise ConfigError(f"--n-jbb must be between 0 and 100 (JailbreakBench), got {args.n_jbb}")
    check_capability_n(args.capability_n, settings.seed)
    if args.study is not None:
        checks.study_name(args.study)
    checks.new_folder(Path(settings.cache_dir) / "studies", "--cache-dir")
    if args.out is not None:
        check_export_destination(args.out, args.model, settings, args.force)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import (
        err,
        facts_table,
        front_table,
        load_model,
        out,
        quiet_optuna,
        report_path,
        search_judges,
        search_prompts,
        slug,
    )
    from circuitlab.evaluate.scorecard import scorecard_table
    from circuitlab.export import ExportOptions
    from circuitlab.pipeline import before_after, demo_study, report_before_after
    from circuitlab.report import Clock, abliteration_report, command_line
    from circuitlab.search import SearchSpace, abliterate
    from circuitlab.search.config import AbliterateConfig, SearchConfig
    from circuitlab.testbed import NAME, build_testbed

    clock = Clock()
    quiet_optuna()
    _check_sizes(args, settings)
    # By the one split policy; a bad source fails now, before the organism is built.
    prompts = search_prompts(argparse.Namespace(**vars(args), **DEMO_SIZES), args.n_test)
    if args.model == NAME:
        err.print(
            "building the refusal organism if needed (first run only, ~7 minutes on two cores)…"
        )
        build_testbed(settings.cache_dir, progress=True)
        clock.lap("build the organism")
    model = load_model(args.model, settings)
    out.print(facts_table(model))
    clock.lap("load the model")
    own = (args.harmful, args.harmless) != ("advbench", "harmless")
    study = args.study or demo_study(slug(args.model), model, prompts, settings.seed, own)
    judge, test_judge = search_judges(settings)
    search = SearchConfig(
        n_trials=args.trials, space=SearchSpace(per_layer=args.per_layer), seed=settings.seed,
        cache_dir=settings.cache_dir, progress=True, preflight=settings.preflight,
        response_prefix=settings.response_prefix,
    )  # fmt: skip
    config = AbliterateConfig(
        search,
        # The default folder is the demo's own, replaced on every run; --out is the user's.
        out=args.out or Path(settings.cache_dir) / "exports" / study,
        export=ExportOptions(force=args.force or args.out is None),
        capability_n=args.capability_n,
        kl_target=args.kl_target,
        margin=args.margin,
        refusal_target=args.refusal_target,
    )
    done = abliterate(model, prompts, study, config, judge=judge, test_judge=test_judge)
    clock.lap("search, choice, test split and export")
    result = done.result
    out.print(front_table(result.front, result.chosen, f"Pareto front of {study}"))
    out.print(
        scorecard_table(result.base, result.edited, title="AdvBench test split (never searched)")
    )
    if done.export is not None:
        out.print(f"exported to {done.export.path}: {done.export.parity.summary()}")
    else:
        out.print(f"not exported: {done.export_note}")
    out.print(f"chosen edit: {done.interventions_path} (use with --intervention)")
    jbb = None
    if args.n_jbb:
        jbb = before_after(
            model, result.chosen.interventions, test_judge, n=args.n_jbb,
            label=f"after (trial {result.chosen.number})", max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size, progress=True,
        )  # fmt: skip
        for which, refused, interval in jbb.rows():
            out.print(f"{jbb.name} refusals {which}: {refused} {interval}")
        for prompt, a, b in jbb.samples(3):
            out.rule(f"[bold]{prompt}")
            out.print(f"[dim]before:[/] {a.strip()[:240]}")
            out.print(f"[dim]after:[/]  {b.strip()[:240]}")
        clock.lap("JailbreakBench before and after")
    report = abliteration_report(
        done, model, prompts, max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size, cache_dir=settings.cache_dir, kl_target=args.kl_target,
        command=command_line(args), seed=settings.seed, timings=clock.laps,
        settings=settings.model_dump(mode="json"),
    )  # fmt: skip
    if jbb is not None:
        report_before_after(report, jbb, test_judge.name)
    out.print(f"report: {report.write(report_path(study, None, settings.cache_dir))}")
    out.print(f"demo finished in {sum(clock.laps.values()):.0f} s")
    return 0 if done.export is not None else 1
