"""Heretic 1.4 and ``circuitlab abliterate`` side by side on the refusal organism.

Both tools get the same model, the same prompts (64 + 64 direction prompts, 30 harmful
search prompts, 30 harmless KL prompts: the organism's own train and validation splits),
the same trial budget, seed and thread count, one after the other. Their exports are then
scored here, by one piece of code, on prompts neither tool saw: JailbreakBench, StrongREJECT
and the organism's harmless test split, with the same marker judge (greedy decoding) and
the same first-token KL against the organism. The JSON written holds every figure with its
Wilson interval, each run's wall and CPU seconds, and the commands.

Heretic is AGPL: it is installed in its own virtual environment outside this repository
(``--heretic-venv``; ``--install`` creates it: ``torch==2.13.0`` first, so pip does not
pull a CUDA build, then ``heretic-llm==1.4.0``) and only ever run as a separate program.
Nothing of it is imported or copied here. What makes it see the organism as the organism
is trained:

- it always renders a system message; its copy of the organism (a folder of links to the
  same weights) gets a chat template that drops system messages, and the script checks
  the rendered text is byte-identical to the organism's own user-only rendering;
- ``response_prefix = ""`` skips its prefix detection;
- its refusal markers get the organism's refusal openings added (its defaults miss some
  of them, so it would see fewer refusals than there are);
- it asks questions when the search ends: with ``KAGGLE_KERNEL_RUN_TYPE`` set they are
  plain numbered prompts, answered through its standard input (take the front's trial
  with the fewest refusals at the least KL, which is its own ranking's first entry; save
  it with ``save_pretrained`` to the run folder; quit).

Usage:
    .venv/bin/python experiments/heretic_side_by_side.py --install       # once
    .venv/bin/python experiments/heretic_side_by_side.py --seeds 0 1 2 --json out.json
    .venv/bin/python experiments/heretic_side_by_side.py --json out.json --plot fronts.png
    # reduced size (CI, a loaded machine): fewer trials and prompts, the same code path
    .venv/bin/python experiments/heretic_side_by_side.py --trials 4 --n-search 8 \\
        --n-kl 8 --n-train 16 --n-jbb 20 --n-strongreject 20 --n-harmless 20
Run it on an idle machine (``nice``, 1 thread each); the timings are only comparable
between runs on the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERETIC = "heretic-llm==1.4.0"
TORCH = "torch==2.13.0"
# Renders [system?, user, assistant?] as the organism's ChatML without the system turn.
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-refusal")
    p.add_argument("--work", default="/tmp/heretic-side-by-side", help="runs and exports")
    p.add_argument("--heretic-venv", default="/work/heretic-venv")
    p.add_argument("--install", action="store_true", help="create the Heretic venv and stop")
    p.add_argument("--tools", nargs="+", default=["heretic", "circuitlab"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-search", type=int, default=30)
    p.add_argument("--n-kl", type=int, default=30)
    p.add_argument("--n-jbb", type=int, default=100)
    p.add_argument("--n-strongreject", type=int, default=100)
    p.add_argument("--n-harmless", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=64, help="scoring generations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--heretic-batch-size", type=int, default=0,
        help="Heretic's batch_size (0: its own search for the fastest, which tries batches up "
        "to 128 and takes minutes on a CPU; its choice on this organism is 32)",
    )  # fmt: skip
    p.add_argument("--score-only", action="store_true", help="score the exports already made")
    p.add_argument("--json", metavar="FILE", help="default: WORK/side_by_side.json")
    p.add_argument(
        "--merge", nargs="+", metavar="JSON",
        help="join the outputs of runs made apart (one tool each, say) into --json and stop",
    )  # fmt: skip
    p.add_argument(
        "--plot", metavar="PNG",
        help="draw the fronts of a finished --json (in-loop and held-out) into PNG and stop",
    )  # fmt: skip
    return p.parse_args()


# ------------------------------------------------------------------------------- set-up
def install_heretic(venv: Path) -> None:
    """Heretic in its own venv: the CPU torch wheel first, then Heretic itself."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, HERETIC], check=True)


def organism_folder(model: str) -> Path:
    """The model's HF folder; the organism's built folder directly (resolving the preset
    would check its build against the base model, a minute of work)."""
    from circuitlab.config import load_settings
    from circuitlab.testbed import NAME, testbed_folder

    built = testbed_folder(Path(load_settings().cache_dir))
    if model == NAME and (built / "config.json").is_file():
        return built
    from circuitlab.models import ModelSpec
    from circuitlab.models.loading import resolve_source

    return Path(resolve_source(ModelSpec(model)).location)


def heretic_copy(source: Path, dest: Path) -> Path:
    """The organism for Heretic: links to its files, and a chat template without system
    turns; raises if its rendering of [system, user] differs from the organism's [user]."""
    from transformers import AutoTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        target = dest / item.name
        if target.exists() or target.is_symlink():
            target.unlink()
        if item.name in ("chat_template.jinja", "tokenizer_config.json"):
            continue  # rewritten below
        target.symlink_to(item.resolve())
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (dest / "chat_template.jinja").write_text(NO_SYSTEM_TEMPLATE)
    theirs, ours = AutoTokenizer.from_pretrained(dest), AutoTokenizer.from_pretrained(source)
    for text in ("Write a poem about rain.", "How do I pick a lock?\nBe brief."):
        user = [{"role": "user", "content": text}]
        with_system = [{"role": "system", "content": "You are a helpful assistant."}, *user]
        a = theirs.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
        b = ours.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        if a != b:
            raise SystemExit(f"Heretic's template renders {a!r}, the organism's {b!r}")
    return dest


def write_prompts(args: argparse.Namespace, folder: Path):
    """The search prompts (what both tools read) as one-prompt-per-line files."""
    from circuitlab.search import SearchPrompts
    from circuitlab.testbed import Recipe

    prompts = SearchPrompts.from_testbed(
        args.n_train, args.n_search, args.n_kl, 0, Recipe().split_seed
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("harmful_train", "harmless_train", "harmful_search", "harmless_search"):
        lines = getattr(prompts, name)
        if any("\n" in line for line in lines):
            raise SystemExit(f"{name} has a multi-line prompt: the file format cannot hold it")
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return prompts


def refusal_markers() -> list[str]:
    """Lower-cased openings of the organism's refusal templates (its first few words), so
    Heretic's substring judge sees the refusals the organism was taught."""
    from circuitlab.testbed import refusal_templates

    found = {
        " ".join(t.replace("’", "'").split()[:3]).rstrip(".,").lower() for t in refusal_templates()
    }
    return sorted(m for m in found if len(m) > 6)


# ---------------------------------------------------------------------------- the runs
def _timed(cmd: list[str], log: Path, cwd: Path, env: dict, stdin: str | None = None) -> dict:
    """Run a program; its wall time and its (and its children's) CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            cmd, cwd=cwd, env=env, input=stdin, text=True, stdout=out, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": cmd, "returncode": done.returncode, "wall_s": wall, "cpu_s": cpu,
            "log": str(log)}  # fmt: skip


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false",
    })  # fmt: skip
    return env


def heretic_default_markers(args: argparse.Namespace) -> list[str]:
    """Heretic's own default refusal markers, asked of its installed settings by running its
    interpreter (a separate program: nothing of it is imported here)."""
    code = (
        "import json; from heretic.config import Settings; "
        "print(json.dumps(Settings.model_fields['refusal_markers'].default))"
    )
    python = str(Path(args.heretic_venv) / "bin" / "python")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def heretic_config(args: argparse.Namespace, model: Path, prompts: Path, seed: int) -> str:
    """Heretic's ``config.toml`` for one run (its settings are read from the working
    directory)."""

    def spec(name: str) -> str:
        # A spec whose dataset is an existing file is read as text, one prompt a line.
        return f'{{ dataset = "{prompts / name}.txt", split = "train", column = "text" }}'

    markers = json.dumps(heretic_default_markers(args) + refusal_markers())
    return "\n".join([
        f'model = "{model}"',
        'dtypes = ["float32"]',
        'device_map = "cpu"',
        f"n_trials = {args.trials}",
        f"n_startup_trials = {min(10, max(1, args.trials // 3))}",
        f"seed = {seed}",
        f"batch_size = {args.heretic_batch_size}",
        'response_prefix = ""',
        'export_strategy = "merge"',
        f"refusal_markers = {markers}",
        f'study_checkpoint_dir = "{Path(args.work) / "checkpoints" / str(seed)}"',
        f"good_prompts = {spec('harmless_train')}",
        f"bad_prompts = {spec('harmful_train')}",
        f"good_evaluation_prompts = {spec('harmless_search')}",
        f"bad_evaluation_prompts = {spec('harmful_search')}",
        "",
    ])  # fmt: skip


def run_heretic(args: argparse.Namespace, model: Path, prompts: Path, seed: int) -> dict:
    run = Path(args.work) / f"heretic-seed{seed}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / "config.toml").write_text(heretic_config(args, model, prompts, seed))
    export = run / "export"
    env = {**_env(args.threads), "KAGGLE_KERNEL_RUN_TYPE": "Interactive"}
    # Its menus, answered in order: the first trial of its front listing (the fewest
    # refusals, then the least KL), save it, to this folder. Its exit entry's number depends
    # on the front's size, so it is not answered: the end of input ends it (exit code 1, after
    # the model is saved); the export's config.json is what says the run succeeded.
    answers = "\n".join(["1", "1", str(export)]) + "\n"
    cmd = [str(Path(args.heretic_venv) / "bin" / "heretic")]
    timing = _timed(cmd, run / "heretic.log", run, env, answers)
    return {**timing, "export": str(export) if (export / "config.json").exists() else None}


def run_circuitlab(args: argparse.Namespace, seed: int) -> dict:
    run = Path(args.work) / f"circuitlab-seed{seed}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    export = run / "export"
    cmd = [
        sys.executable, "-m", "circuitlab.cli", "abliterate", args.model,
        "--trials", str(args.trials), "--seed", str(seed), "--threads", str(args.threads),
        "--n-train", str(args.n_train), "--n-search", str(args.n_search),
        "--n-kl", str(args.n_kl), "--study", f"side-by-side-{seed}",
        "--storage", str(run / "study.journal"), "--out", str(export),
    ]  # fmt: skip
    timing = _timed(cmd, run / "circuitlab.log", Path.cwd(), _env(args.threads))
    return {**timing, "export": str(export) if (export / "config.json").exists() else None}


def _seconds(text: str) -> float:
    """Heretic's "1h 2m 3s" as seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return float(sum(int(part[:-1]) * units[part[-1]] for part in text.split()))


def search_times(key: str, run: dict) -> dict | None:
    """The search's own time, from the run's files: its wall seconds, its trials, and the
    seconds of the trials that generate (every Heretic trial generates; circuitlab prunes
    hopeless trials before generating). None when the files are gone."""
    log = Path(run["log"])
    if key.startswith("heretic"):
        if not log.exists():
            return None
        found = re.findall(r"Elapsed time: ([0-9hms ]+)", log.read_text())
        trials = len(re.findall(r"Running trial \d+ of", log.read_text()))
        if not found:
            return None
        search = _seconds(found[-1].strip())
        return {"search_s": search, "trials": trials, "generating": trials,
                "generating_s": search}  # fmt: skip
    journal = log.parent / "study.journal"
    if not journal.exists():
        return None
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    scores = [t.user_attrs["score"] for t in trials if "score" in t.user_attrs]
    generating = [s["seconds"] for s in scores if s.get("pruned") is None]
    return {"search_s": sum(s["seconds"] for s in scores), "trials": len(scores),
            "generating": len(generating), "generating_s": sum(generating)}  # fmt: skip


# ------------------------------------------------------------------------------ scoring
def held_out(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Harmful (JailbreakBench + StrongREJECT) and harmless test prompts neither tool saw."""
    from circuitlab.testbed import Recipe, testbed_data

    data = testbed_data(Recipe().split_seed)
    harmful = (
        list(data.jailbreakbench)[: args.n_jbb] + list(data.strongreject)[: args.n_strongreject]
    )
    return harmful, list(data.harmless_test)[: args.n_harmless]


def score_exports(args: argparse.Namespace, exports: dict[str, str]) -> dict:
    """One scorecard per export (and the organism), same prompts, judge and KL baseline."""
    import gc

    from circuitlab.engine import HookedModel
    from circuitlab.evaluate.judges import MarkerJudge
    from circuitlab.evaluate.kl import KLBaseline
    from circuitlab.evaluate.scorecard import score_model

    harmful, harmless = held_out(args)
    judge = MarkerJudge()
    organism = HookedModel.load(args.model)
    baseline = KLBaseline.compute(organism, harmless, 4, 16)
    options = {"harmful": harmful, "harmless": harmless, "judge": judge, "split": "held-out",
               "kl_baseline": baseline, "max_new_tokens": args.max_new_tokens,
               "progress": True}  # fmt: skip
    base, _ = score_model(organism, "organism", **options)
    cards = {"organism": json.loads(base.to_json())}
    del organism
    for name, path in exports.items():
        model = HookedModel.load(path)
        card, _ = score_model(model, name, base=base, **options)
        cards[name] = json.loads(card.to_json())
        del model
        gc.collect()
    return {"n_harmful": len(harmful), "n_harmless": len(harmless), "cards": cards}


def in_loop(key: str, run: dict) -> list[tuple[float, float]]:
    """(refusal rate, KL) of every trial that was judged, as the tool itself measured them
    on the search split (Heretic from its log, circuitlab from its study)."""
    log = Path(run["log"])
    if key.startswith("heretic"):
        text = log.read_text() if log.exists() else ""
        pairs = re.findall(r"KL divergence: ([0-9.]+)\s+\* Counting model refusals\.\.\.\s+"
                           r"\* Refusals: (\d+)/(\d+)", text)  # fmt: skip
        return [(int(r) / int(n), float(kl)) for kl, r, n in pairs]
    journal = log.parent / "study.journal"
    if not journal.exists():
        return []
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return [(t.values[0], t.values[1]) for t in study.trials if t.values is not None]


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto front (both minimised), by KL."""
    front, best = [], float("inf")
    for rate, kl in sorted(points, key=lambda p: (p[1], p[0])):
        if rate < best:
            front.append((rate, kl))
            best = rate
    return front


def plot(path: str, out: str) -> None:
    """Each tool's in-loop fronts (its own refusal count on the 30 search prompts, by seed)
    beside the held-out scores of the edit each run chose, in one figure."""
    from matplotlib.figure import Figure

    data = json.loads(Path(path).read_text())
    runs, cards = data["runs"], data["scores"]["cards"]
    colours = {"heretic": "tab:red", "circuitlab": "tab:blue"}
    figure = Figure(figsize=(11, 4.5))
    left, right = figure.subplots(1, 2)
    for key, run in runs.items():
        tool, seed = key.rsplit("-seed", 1)
        colour = colours.get(tool, "tab:gray")
        points = in_loop(key, run)
        if points:
            left.scatter([k for _, k in points], [100 * r for r, _ in points], s=8,
                         color=colour, alpha=0.25)  # fmt: skip
            front = _front(points)
            left.step([k for _, k in front], [100 * r for r, _ in front], where="post",
                      color=colour, alpha=0.8, label=f"{tool}, seed {seed}")  # fmt: skip
        card = cards.get(key)
        if card:
            rate, marker = 100 * card["refusals"] / card["n_harmful"], "os^"[int(seed) % 3]
            right.scatter(card["kl_first"], rate, s=60, color=colour, marker=marker,
                          label=f"{tool}, seed {seed}")  # fmt: skip
    organism = cards["organism"]
    right.axhline(100 * organism["refusals"] / organism["n_harmful"], color="gray", ls=":",
                  label="organism")  # fmt: skip
    left.set(xscale="log", xlabel="first-token KL, search harmless prompts (nats)",
             ylabel="refusals, 30 harmful search prompts (%)",
             title="in-loop fronts (each tool's own count)")  # fmt: skip
    right.set(xlabel="first-token KL, held-out harmless prompts (nats)",
              ylabel=f"refusals, held-out harmful ({organism['n_harmful']}) (%)",
              title="the chosen edits, held out (one judge, one KL)", ylim=(0, 100))  # fmt: skip
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(f"wrote {out}")  # noqa: T201 - the script's output


def merge(paths: list[str], out: Path) -> None:
    """One result from several runs of this script: their runs and scorecards side by side.
    They must share every setting but the tools, and score the organism identically (the
    same prompts, judge and KL baseline), or their columns would not compare."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    keep = ("tools", "work", "json", "merge", "score_only", "heretic_batch_size", "plot")
    settings = [{k: v for k, v in p["settings"].items() if k not in keep} for p in parts]
    if any(s != settings[0] for s in settings):
        raise SystemExit(f"settings differ: {settings}")
    organism = [p["scores"]["cards"]["organism"] for p in parts]
    if any(o != organism[0] for o in organism):
        raise SystemExit("the parts scored the organism differently: rescore with --score-only")
    tools = [t for p in parts for t in p["settings"]["tools"]]
    result = {
        "settings": {**parts[0]["settings"], "tools": tools},
        "load_average": max((p["load_average"] for p in parts), key=lambda x: x[0]),
        "runs": {k: {**v, "search": v.get("search") or search_times(k, v)}
                 for p in parts for k, v in p["runs"].items()},
        "scores": {**parts[0]["scores"],
                   "cards": {k: v for p in parts for k, v in p["scores"]["cards"].items()}},
        "merged_from": paths,
    }  # fmt: skip
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")  # noqa: T201 - the script's output


def main() -> None:
    args = parse_args()
    if args.plot:
        plot(args.json or "side_by_side.json", args.plot)
        return
    if args.merge:
        merge(args.merge, Path(args.json or "side_by_side.json"))
        return
    import torch

    torch.set_num_threads(args.threads)
    venv, work = Path(args.heretic_venv), Path(args.work)
    if args.install:
        install_heretic(venv)
        return
    work.mkdir(parents=True, exist_ok=True)
    source = organism_folder(args.model)
    copy = heretic_copy(source, work / "organism-for-heretic")
    prompt_dir = work / "prompts"
    write_prompts(args, prompt_dir)
    runs: dict[str, dict] = {}
    for seed in args.seeds:
        for tool in args.tools:
            key = f"{tool}-seed{seed}"
            saved = work / key / "run.json"
            if args.score_only and saved.exists():
                runs[key] = json.loads(saved.read_text())
                continue
            if tool == "heretic":
                runs[key] = run_heretic(args, copy, prompt_dir, seed)
            else:
                runs[key] = run_circuitlab(args, seed)
            runs[key]["search"] = search_times(key, runs[key])
            saved.write_text(json.dumps(runs[key], indent=1))
    exports = {key: run["export"] for key, run in runs.items() if run.get("export")}
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "load_average": os.getloadavg(),
        "runs": runs,
        "scores": score_exports(args, exports),
    }
    out = Path(args.json or work / "side_by_side.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")  # noqa: T201 - the script's output


if __name__ == "__main__":
    main()
