"""``circuitlab search``, ``circuitlab abliterate`` and ``circuitlab profiles learn``.

``search MODEL --study NAME`` runs (or resumes, or joins: start it in several shells) the
trials of a study until ``--trials`` are done, then prints the Pareto front.
``abliterate MODEL`` does everything: search, choice, test-split scorecard, export.
``profiles learn STUDY`` writes a warm-start profile from a finished study's best trials.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from circuitlab.commands._common import (
    check_capability_n,
    check_export_destination,
    check_search_options,
    front_table,
    quiet_optuna,
    report_path,
    search_judges,
    search_option_flags,
    search_prompts,
    slug,
)
from circuitlab.config import Settings


def _study_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        metavar="URL",
        help="journal file (one host; default: CACHE/studies/STUDY.journal) or database URL "
        "(several hosts: postgresql://USER@HOST/DB)",
    )
    p.add_argument("--trials", type=int, default=50, help="trial budget of the study")
    p.add_argument(
        "--methods",
        default="diff-means,pca,cones",
        help="direction methods, comma-separated (diff-means, pca, cones, probe, ensemble)",
    )
    p.add_argument(
        "--profile",
        default="auto",
        help="warm start: auto (by config.model_type), none, a family or a JSON file",
    )
    p.add_argument("--family", help="model family for --profile auto (default: detected)")
    p.add_argument("--n-train", type=int, default=64, help="prompts per side for directions")
    p.add_argument("--n-search", type=int, default=30, help="harmful prompts judged per trial")
    p.add_argument("--n-kl", type=int, default=30, help="harmless prompts for the KL objective")
    p.add_argument("--no-prune", action="store_true", help="generate for every trial")
    p.add_argument(
        "--addition-max",
        type=float,
        default=0.0,
        help="largest activation-addition strength searched (0: off)",
    )
    p.add_argument(
        "--remove-massive",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="take the attention sinks' massive-activation direction out of the directions",
    )
    p.add_argument(
        "--fail-running",
        action="store_true",
        help="journal storages: also fail RUNNING trials of workers on other hosts when "
        "resuming (database storages find dead workers by their heartbeat)",
    )


def _prompt_flags(p: argparse.ArgumentParser) -> None:
    from circuitlab.prompt_data import SOURCE_HELP

    p.add_argument(
        "--harmful",
        default="advbench",
        metavar="SRC",
        help=f"harmful prompts, split train/search/test by the one split policy: {SOURCE_HELP}",
    )
    p.add_argument(
        "--harmless", default="harmless", metavar="SRC", help="harmless prompts (as --harmful)"
    )
    p.add_argument(
        "--harmful-test",
        metavar="SRC",
        help="a separate harmful test set (default: the test split of --harmful); read only "
        "after the search",
    )
    p.add_argument("--harmless-test", metavar="SRC", help="a separate harmless test set")


def _choice_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kl-target", type=float, default=0.2, help="KL budget of the choice rule")


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("search", cmd_search, "Run or resume an Optuna study of refusal edits.")
    p.add_argument("model", help="preset name, HF folder, .gguf file or hub id")
    p.add_argument("--study", required=True, metavar="NAME", help="study name")
    _study_flags(p)
    _prompt_flags(p)
    _choice_flags(p)
    search_option_flags(p)
    p.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        metavar="SECONDS",
        help="database storages: seconds between heartbeats of a running trial; a trial "
        "silent for three is re-run by another worker (default: 10)",
    )

    p = command("abliterate", cmd_abliterate, "Search, choose, evaluate on the test split, export.")
    p.add_argument("model", help="preset name, HF folder, .gguf file or hub id")
    p.add_argument("--study", metavar="NAME", help="study name (default: from the model)")
    p.add_argument("--out", metavar="DIR", help="export folder (default: CACHE/exports/...)")
    p.add_argument("--no-export", action="store_true", help="stop after the scorecard")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the export folder if it is an earlier export (or empty)",
    )
    p.add_argument("--n-test", type=int, default=64, help="test prompts per side")
    p.add_argument(
        "--capability-n", type=int, default=50, help="MMLU questions in the scorecard (0: skip)"
    )
    _study_flags(p)
    _prompt_flags(p)
    _choice_flags(p)
    search_option_flags(p)

    p = command("profiles", cmd_profiles, "Warm-start profiles: learn one from a study.")
    p.add_argument("action", choices=("learn",), help="learn: write a profile from a study")
    p.add_argument("study", metavar="STUDY", help="study name")
    p.add_argument("--storage", metavar="URL", help="as for search")
    p.add_argument("--out", metavar="FILE", help="default: CACHE/profiles/FAMILY.json")
    p.add_argument("--top", type=int, default=4, help="trials to keep")
    p.add_argument("--family", help="family (default: the study's)")
    _choice_flags(p)


# ------------------------------------------------------------------------------- helpers
def check_search_args(args: argparse.Namespace, settings: Settings, study: str | None) -> None:
    """Everything about a search that can be checked before the model loads: names, sizes,
    methods, profile and storage. Nothing is written."""
    from circuitlab import checks
    from circuitlab.errors import ConfigError
    from circuitlab.search.assets import KNOWN_METHODS
    from circuitlab.search.profiles import FAMILIES, load_profile

    if study is not None:
        checks.study_name(study)
    for flag in ("trials", "n_train", "n_search", "n_kl", "heartbeat"):
        checks.at_least("--" + flag.replace("_", "-"), getattr(args, flag, None))
    checks.at_least("--n-test", getattr(args, "n_test", None))
    checks.at_least("--addition-max", args.addition_max, 0.0)
    checks.at_least("--kl-target", args.kl_target, 0.0)
    check_search_options(args)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    checks.choices("--methods", methods, sorted(KNOWN_METHODS))
    if args.profile not in ("auto", "none"):
        try:
            load_profile(args.profile)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--profile {args.profile}: not a valid profile ({exc})") from None
    if args.family is not None and args.family not in FAMILIES:
        raise ConfigError(f"--family {args.family!r}: choose from {', '.join(sorted(FAMILIES))}")
    checks.storage(args.storage)
    if args.storage is None:
        checks.new_folder(Path(settings.cache_dir) / "studies", "--cache-dir")


def _configs(args: argparse.Namespace, settings: Settings):
    from circuitlab.search import ObjectiveConfig, SearchSpace

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    space = SearchSpace(
        methods=methods, addition_max=args.addition_max, remove_massive=args.remove_massive,
        per_layer=args.per_layer,
    )  # fmt: skip
    prune = {"prune_kl": None, "prune_min_drop": None} if args.no_prune else {}
    objective = ObjectiveConfig(
        max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, **prune
    )
    return space, objective


def search_config(args: argparse.Namespace, settings: Settings, **extra):
    """The search as one frozen value, from the command's options and the settings."""
    from circuitlab.search.config import SearchConfig

    space, objective = _configs(args, settings)
    return SearchConfig(
        n_trials=args.trials,
        storage=args.storage,
        space=space,
        objective=objective,
        seed=settings.seed,
        profile=None if args.profile == "none" else args.profile,
        family=args.family,
        cache_dir=settings.cache_dir,
        progress=True,
        fail_unknown=args.fail_running,
        preflight=settings.preflight,
        response_prefix=settings.response_prefix,
        **extra,
    )


def abliterate_config(args: argparse.Namespace, settings: Settings, out: Path | None):
    """The search, the choice and the export as one frozen value."""
    from circuitlab.export import ExportOptions
    from circuitlab.search.config import AbliterateConfig

    return AbliterateConfig(
        search_config(args, settings),
        out=out,
        export=ExportOptions(force=args.force),
        capability_n=args.capability_n,
        kl_target=args.kl_target,
        margin=args.margin,
        refusal_target=args.refusal_target,
    )


# ------------------------------------------------------------------------------ commands
def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import load_model, out
    from circuitlab.search import choose, pareto_front, run_search
    from circuitlab.search.front import rule_name

    quiet_optuna()
    check_search_args(args, settings, args.study)
    prompts = search_prompts(args)
    judge, _ = search_judges(settings)
    model = needs_chat(load_model(args.model, settings), args.model)
    config = search_config(args, settings, heartbeat=args.heartbeat)
    study = run_search(model, prompts, args.study, config, judge=judge)
    front = pareto_front(study)
    rule = {"margin": args.margin, "refusal_target": args.refusal_target}
    chosen = choose(front, args.kl_target, **rule) if front else None
    out.print(front_table(front, chosen, f"Pareto front of {args.study}"))
    if chosen is not None:
        out.print(f"chosen ({rule_name(args.kl_target, **rule)}): trial {chosen.number}")
    return 0


def cmd_abliterate(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import load_model, out
    from circuitlab.evaluate.scorecard import scorecard_table
    from circuitlab.report import Clock, abliteration_report, command_line
    from circuitlab.search import abliterate

    quiet_optuna()
    clock = Clock()
    study = args.study or f"abliterate-{slug(args.model)}-seed{settings.seed}"
    check_search_args(args, settings, study)
    check_capability_n(args.capability_n, settings.seed)
    destination = None
    if not args.no_export:
        destination = args.out or Path(settings.cache_dir) / "exports" / f"{study}"
        check_export_destination(destination, args.model, settings, args.force)
    prompts = search_prompts(args, args.n_test)
    judge, test_judge = search_judges(settings)
    model = needs_chat(load_model(args.model, settings), args.model)
    clock.lap("load model and prompts")
    config = abliterate_config(args, settings, destination)
    done = abliterate(model, prompts, study, config, judge=judge, test_judge=test_judge)
    clock.lap("search, choice, test split and export")
    result = done.result
    out.print(front_table(result.front, result.chosen, f"Pareto front of {study}"))
    out.print(scorecard_table(result.base, result.edited, title="test split (never searched)"))
    if done.export is not None:
        out.print(f"exported to {done.export.path}: {done.export.parity.summary()}")
    else:
        out.print(f"not exported: {done.export_note}")
    out.print(f"chosen edit: {done.interventions_path} (read by --intervention)")
    report = abliteration_report(
        done, model, prompts, max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size, storage=args.storage, cache_dir=settings.cache_dir,
        kl_target=args.kl_target, command=command_line(args), seed=settings.seed,
        timings=clock.laps, settings=settings.model_dump(mode="json"),
    )  # fmt: skip
    out.print(f"report: {report.write(report_path(study, args.storage, settings.cache_dir))}")
    return 1 if destination is not None and done.export is None else 0


def needs_chat(model, source: str):
    """The model, if it has a chat template: the search formats every prompt as a chat."""
    from circuitlab.errors import ChatTemplateError

    if not model.facts.has_chat_template:
        raise ChatTemplateError(
            f"{source} has no chat template, which a search needs; give one with "
            "--chat-template (Jinja text or a file)"
        )
    return model


def cmd_profiles(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab import checks
    from circuitlab.commands._common import out
    from circuitlab.search import learn_profile, open_store, save_profile

    quiet_optuna()
    checks.study_name(args.study)
    checks.at_least("--top", args.top)
    checks.at_least("--kl-target", args.kl_target, 0.0)
    if args.out:
        checks.new_file(args.out, "--out")
    checks.storage(args.storage)
    store = open_store(args.study, args.storage, settings.cache_dir, create=False)
    profile = learn_profile(store.load(), args.top, args.kl_target, args.family)
    path = args.out or Path(settings.cache_dir) / "profiles" / f"{profile.family}.json"
    save_profile(profile, path)
    table = Table(title=f"profile {profile.family} → {path}", caption=profile.source)
    for column in ("#", "method", "direction", "refusals", "KL"):
        table.add_column(column, justify="right")
    for i, (params, (rate, kl)) in enumerate(zip(profile.trials, profile.scores, strict=True)):
        direction = f"{params.get('direction', float('nan')):.2f}"
        table.add_row(str(i), params.get("method", "?"), direction, f"{rate:.1%}", f"{kl:.3f}")
    out.print(table)
    return 0
