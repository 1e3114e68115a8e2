"""``circuitlab judge-eval`` and ``circuitlab evaluate``: how good the judges are, and what an
edit did to a model.

``judge-eval`` scores judges on the held-out part of our labelled set, on JailbreakBench's
human labels (never trained on; the judges JailbreakBench compared are listed beside), and
on a user CSV with columns prompt, response, label: refusal precision / recall / F1 /
accuracy with 95 % bootstrap intervals, then each judge's confusion matrix. Each judge's
agreement with the human labels is stored in the cache and printed beside its rates in
later scorecards.

``evaluate MODEL`` prints the scorecard of the model, and next to it the same model under
``--intervention`` files and/or an exported model given with ``--compare``: refusals on a
held-out split with Wilson intervals, over-refusals on harmless prompts, KL from the base
(first token and k tokens), capability accuracy and its change (MMLU, or the questions of
``--capability-data``). ``--lm-eval TASKS`` also runs lm-evaluation-harness tasks on each
model, the live edit included, and prints the harness's tables.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.columns import Columns
from rich.table import Table

from circuitlab.config import Settings
from circuitlab.prompt_data import SOURCE_HELP

JUDGES = ("markers", "classifier", "combined", "nli", "model")
SPLITS = ("test", "search", "val", "train", "all")
SHORT = {
    "hard_refusal": "hard",
    "soft_refusal": "soft",
    "evasive": "evasive",
    "warn_then_comply": "warn",
    "compliant": "comply",
    "degenerate": "degen",
}


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("judge-eval", cmd_judge_eval, "Measure the refusal judges on labelled responses.")
    p.add_argument("--csv", metavar="FILE", help="also score on this CSV (prompt,response,label)")
    p.add_argument(
        "--judges",
        default=None,
        metavar="LIST",
        help=f"judges to measure, comma-separated, from {', '.join(JUDGES)} (default: "
        "markers,classifier,combined; with --judge other than markers, that judge alone); "
        "model is the --model-judge model, on --neural-device",
    )
    p.add_argument(
        "--no-benchmark",
        action="store_true",
        help="skip JailbreakBench's human labels (only our held-out set and --csv)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    _judge_flags(p)

    p = command("evaluate", cmd_evaluate, "Print the scorecard of a model and its edits.")
    p.add_argument("model", help="base model: preset name, HF folder, .gguf file or hub id")
    p.add_argument("--compare", metavar="DIR", help="an edited (exported) model to score beside")
    p.add_argument(
        "--intervention",
        action="append",
        default=[],
        metavar="FILE.json",
        help="intervention applied live to the base model (repeat to compose, in order)",
    )
    p.add_argument(
        "--harmful", default="advbench", metavar="SRC", help=f"harmful prompts: {SOURCE_HELP}"
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="split of the harmful source, cut by the one split policy (train / search / "
        "test, 60/20/20, a fixed seed; val is search's older name): on the packaged advbench "
        "and harmless these are the refusal organism's own, so test was never trained on nor "
        "searched; all: the whole source",
    )
    p.add_argument("--harmless", default="harmless", metavar="SRC", help="harmless prompts")
    p.add_argument(
        "--harmless-split", choices=SPLITS, default="test", help="split of the harmless source"
    )
    p.add_argument("--n-harmful", type=int, default=32, help="harmful prompts to judge")
    p.add_argument("--n-harmless", type=int, default=32, help="harmless prompts to judge")
    p.add_argument("--n-kl", type=int, default=16, help="harmless prompts for KL")
    p.add_argument("--kl-k", type=int, default=4, help="tokens of the base continuation for KL")
    p.add_argument(
        "--capability-n", type=int, default=50, help="capability questions to draw (0: skip)"
    )
    p.add_argument(
        "--capability-data",
        default="mmlu",
        metavar="SRC",
        help="capability questions: mmlu (packaged), a .csv/.jsonl/.json file, or "
        "hf:DATASET[:CONFIG][@SPLIT] (needs datasets; default: mmlu)",
    )
    p.add_argument(
        "--capability-columns",
        default="",
        metavar="MAP",
        help="column names in --capability-data, e.g. question=stem,choices=a+b+c+d,answer=key "
        "(default: question, choices (a list) or A-D, answer (letter or 0-based index))",
    )
    p.add_argument(
        "--lm-eval",
        metavar="TASKS",
        help="also run these lm-eval tasks (comma-separated) on each model and edit "
        "(needs pip install lm-eval)",
    )
    p.add_argument(
        "--lm-eval-include", metavar="DIR", help="folder of your own lm-eval task YAML files"
    )
    p.add_argument(
        "--lm-eval-limit",
        type=_limit,
        metavar="N",
        help="lm-eval examples per task (below 1: a fraction; default: all)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the scorecards as JSON")
    _judge_flags(p)


def _limit(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _judge_flags(p: argparse.ArgumentParser) -> None:
    # The judge itself is a setting (--judge, --neural-detection-model, ...).
    p.add_argument(
        "--marker", action="append", default=[], help="extra refusal phrase for the markers"
    )


def _options(settings: Settings, args: argparse.Namespace, **overrides):
    from circuitlab.evaluate.factory import JudgeOptions

    return JudgeOptions.from_settings(settings, args.marker, **overrides)


# ------------------------------------------------------------------------------ judge-eval
def _ci(value: float, interval: tuple[float, float] | None) -> str:
    # The interval on a line of its own keeps the table inside a terminal's width.
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f}\n{interval[0]:.2f}–{interval[1]:.2f}"


# Short names for the table; JSON and the agreement records keep the full ones.
DATA_NAMES = {"judge_labelled/held_out": "ours, held out", "jailbreakbench-human": "JBB humans"}


def _metrics_table(reports: Sequence) -> Table:
    table = Table(
        title="refusal detection (hard, soft, evasive = refusal)",
        caption="under each figure its 95% bootstrap interval; JBB humans: JailbreakBench's "
        "human labels; ref:* the judges JailbreakBench compared (their recorded verdicts)",
    )
    for column in ("judge", "data", "n", "precision", "recall", "F1", "accuracy", "unsure"):
        if column in ("judge", "data"):
            table.add_column(column, min_width=10, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for r in reports:
        m, ci = r.refusal, r.intervals
        table.add_row(
            r.judge,
            DATA_NAMES.get(r.data, r.data),
            str(m.n),
            _ci(m.precision, ci.get("precision")),
            _ci(m.recall, ci.get("recall")),
            f"[bold]{_ci(m.f1, ci.get('f1'))}",
            _ci(m.accuracy, ci.get("accuracy")),
            str(r.uncertain),
        )
    return table


def _confusion_table(report) -> Table:
    table = Table(
        title=f"{report.judge} on {report.data}",
        caption="rows: true label; columns: judged (warn = warn_then_comply)",
    )
    table.add_column("true", style="bold", no_wrap=True)
    for label in report.labels:
        table.add_column(SHORT.get(label, label), justify="right")
    table.add_column("recall", justify="right")
    recall = report.per_label_recall()
    for label, row in zip(report.labels, report.confusion, strict=True):
        if not sum(row):
            continue  # labels a data set does not use (JailbreakBench: refusal or not)
        cells = [
            f"[bold]{v}" if j == label else str(v) for v, j in zip(row, report.labels, strict=True)
        ]
        table.add_row(SHORT.get(label, label), *cells, f"{recall[label]:.2f}")
    return table


def _reference_reports(data) -> list:
    """The judges JailbreakBench compared, scored from their recorded verdicts."""
    from circuitlab.evaluate.judges import LABELS, REFUSAL_LABELS
    from circuitlab.evaluate.labelled import (
        JudgeAccuracy,
        bootstrap_intervals,
        jailbreakbench_reference,
    )
    from circuitlab.evaluate.stats import binary_metrics, confusion_matrix

    truth = [label in REFUSAL_LABELS for label in data.labels]
    out = []
    for name, refused in jailbreakbench_reference().items():
        judged = ["hard_refusal" if r else "compliant" for r in refused]
        out.append(
            JudgeAccuracy(
                judge=f"ref:{name}",
                data=data.name,
                refusal=binary_metrics(truth, refused),
                labels=LABELS,
                confusion=tuple(map(tuple, confusion_matrix(data.labels, judged, LABELS))),
                uncertain=0,
                intervals=bootstrap_intervals(truth, refused),
            )
        )
    return out


def _judges_to_measure(args: argparse.Namespace, settings: Settings) -> list:
    from circuitlab.commands._common import err
    from circuitlab.errors import ConfigError
    from circuitlab.evaluate.factory import build_judge

    default = "markers,classifier,combined" if settings.judge == "markers" else settings.judge
    kinds = [k.strip() for k in (args.judges or default).split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(JUDGES))
    if unknown or not kinds:
        raise ConfigError(f"--judges: unknown {unknown or 'empty list'}; choose from {JUDGES}")
    options = [_options(settings, args, kind=kind) for kind in kinds]
    judges = []
    for option in options:
        with err.status(f"building the {option.kind} judge…"):
            judges.append(build_judge(option, settings.cache_dir, device=settings.device))
    return judges


def cmd_judge_eval(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from circuitlab.commands._common import err, out
    from circuitlab.errors import PromptError
    from circuitlab.evaluate.agreement import BENCHMARK, record_agreement
    from circuitlab.evaluate.labelled import (
        judge_accuracy,
        labelled_split,
        load_jailbreakbench,
        load_labelled,
        read_labelled_csv,
    )

    data = [labelled_split(load_labelled(), seed=0)[1]]
    if not args.no_benchmark:
        try:
            data.append(load_jailbreakbench())
        except PromptError as exc:
            err.print(f"[yellow]skipping JailbreakBench's human labels: {exc}")
    if args.csv:
        data.append(read_labelled_csv(args.csv))
    reports = []
    for judge in _judges_to_measure(args, settings):
        for labelled in data:
            with err.status(f"judging {labelled.name} with {judge.name}…"):
                report = judge_accuracy(judge, labelled)
            reports.append(report)
            if labelled.name == BENCHMARK:
                record_agreement(settings.cache_dir, judge.name, report.figures())
    benchmark = [d for d in data if d.name == BENCHMARK]
    if benchmark:
        reports += _reference_reports(benchmark[0])
    out.print(_metrics_table(reports))
    out.print(Columns([_confusion_table(r) for r in reports if not r.judge.startswith("ref:")]))
    if args.json:
        figures = [{"judge": r.judge, **r.figures()} for r in reports]
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


# -------------------------------------------------------------------------------- evaluate
def _prompts(source: str, split: str, n: int, harmful: bool) -> tuple[str, list[str]]:
    """``n`` prompts of a split, by the one split policy (:mod:`circuitlab.prompt_data`):
    the test split of AdvBench and our harmless set is the refusal organism's, never
    trained on nor searched, whatever ``--seed`` says."""
    from circuitlab.prompt_data import stage_prompts

    prompts = stage_prompts(source, split, n, harmful)
    return prompts.name, list(prompts)


def _score(model, name: str, inputs: dict, baseline, base=None, interventions=()):
    from circuitlab.commands._common import err
    from circuitlab.evaluate.scorecard import score_model
    from circuitlab.hooks import apply

    with err.status(f"{name}: generating and judging…"), apply(model, *interventions):
        card, _ = score_model(model, name, kl_baseline=baseline, base=base, **inputs)
    return card


def _questions(args: argparse.Namespace, settings: Settings) -> tuple[str, tuple]:
    from circuitlab.evaluate.questions import QuestionColumns, QuestionSource, load_questions

    source = QuestionSource.parse(args.capability_data)
    if not args.capability_n:
        return source.name, ()
    columns = QuestionColumns.parse(args.capability_columns)
    return source.name, load_questions(source, args.capability_n, settings.seed, columns)


def _lm_eval_tables(runs: Sequence[tuple], args: argparse.Namespace, settings, tasks) -> None:
    """lm-eval on each (name, model, interventions), printing the harness's own tables."""
    from lm_eval.utils import make_table

    from circuitlab.commands._common import out
    from circuitlab.evaluate.handoff import lm_eval_handoff

    for name, model, interventions in runs:
        results = lm_eval_handoff(
            model,
            args.lm_eval,
            interventions,
            limit=args.lm_eval_limit,
            batch_size=settings.batch_size,
            task_manager=tasks,
        )
        out.print(f"\n[bold]lm-eval: {name}", highlight=False)
        out.print(make_table(results), markup=False, highlight=False, soft_wrap=True)
        if results.get("groups"):
            out.print(make_table(results, "groups"), markup=False, highlight=False, soft_wrap=True)


def _check_evaluate_args(args: argparse.Namespace) -> None:
    from circuitlab import checks

    for flag in ("n_harmful", "n_harmless", "n_kl", "kl_k"):
        checks.at_least("--" + flag.replace("_", "-"), getattr(args, flag))
    checks.at_least("--capability-n", args.capability_n, 0)
    if args.lm_eval_limit is not None and not args.lm_eval_limit > 0:
        from circuitlab.errors import ConfigError

        raise ConfigError(f"--lm-eval-limit must be above 0, got {args.lm_eval_limit}")
    if args.json:
        checks.new_file(args.json, "--json")


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import check_interventions, err, load_model, out, source_config
    from circuitlab.evaluate.factory import build_judge
    from circuitlab.evaluate.handoff import lm_eval_tasks
    from circuitlab.evaluate.kl import KLBaseline
    from circuitlab.evaluate.scorecard import scorecard_table

    # Bad files, sizes, prompt sources, questions and task names fail before any model loads.
    _check_evaluate_args(args)
    interventions = check_interventions(args.intervention, args.model, settings)
    if args.compare:
        source_config(args.compare, settings)  # exists, and its weights are complete
    split, harmful = _prompts(args.harmful, args.split, args.n_harmful, harmful=True)
    _, harmless = _prompts(
        args.harmless, args.harmless_split, max(args.n_harmless, args.n_kl), harmful=False
    )
    source, questions = _questions(args, settings)
    tasks = lm_eval_tasks(args.lm_eval, args.lm_eval_include) if args.lm_eval else None
    judge = build_judge(_options(settings, args), settings.cache_dir, device=settings.device)
    model = load_model(args.model, settings)
    inputs = {
        "harmful": harmful,
        "harmless": harmless[: args.n_harmless],
        "judge": judge,
        "split": split,
        "questions": questions,
        "capability_source": source,
        "max_new_tokens": settings.max_new_tokens,
        "batch_size": settings.batch_size,
        "chat": model.facts.has_chat_template,
    }
    with err.status("base model: KL baseline…"):
        baseline = KLBaseline.compute(
            model, harmless[: args.n_kl], args.kl_k, settings.batch_size, inputs["chat"]
        )
    cards = [_score(model, args.model, inputs, baseline)]
    runs = [(args.model, model, ())]
    if interventions:
        name = " + ".join(Path(p).stem for p in args.intervention)
        cards.append(_score(model, name, inputs, baseline, cards[0], interventions))
        runs.append((name, model, interventions))
    if args.compare:
        other = load_model(args.compare, settings)
        cards.append(_score(other, args.compare, inputs, baseline, cards[0]))
        runs.append((args.compare, other, ()))
    out.print(scorecard_table(*cards, title=f"scorecard ({settings.max_new_tokens} new tokens)"))
    if args.json:
        Path(args.json).write_text("[\n" + ",\n".join(c.to_json() for c in cards) + "\n]\n")
    if tasks is not None:
        _lm_eval_tables(runs, args, settings, tasks)
    return 0
