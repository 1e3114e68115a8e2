"""The validation suite: does each improvement beat the baseline search?

Every arm runs what ``abliterate`` does short of exporting (search, choice by the KL-target
rule, test-split scorecards) with the same trial budget, seeds and prompts as the baseline,
and changes one thing against it:

=========== ==============================================================================
baseline    difference of means, tent layer kernels, search; no calibration, no addition,
            no warm start
probe       supervised probe directions instead of difference of means
ensemble    probe + PCA ensemble directions
calibrated  calibrated weights offered to the search (``SearchSpace.calibrate``)
cones       concept-cone directions (every cone direction ablated as one subspace)
caa         plus an activation addition against refusal (``addition_max``; at every
            position, so it folds into a bias where the architecture has one)
heads       plus a head-level ablation of the direction from the top-k heads of a circuit
            found by attribution patching on the organism's train prompts (cached)
warm_start  the baseline with the family's warm-start profile (on the SmolLM2 organism
            optimistic: the llama profile was learned on that organism's search split)
massive     the attention sinks' massive-activation direction taken out of the directions
            (``SearchSpace.remove_massive``, :mod:`circuitlab.directions.massive`)
sae         SAE refusal features instead of difference of means: the top ``sae_features``
            latents (ranked on the train split) of the organism's SAE at layer
            ``sae_layer``, their decoder directions ablated as one subspace, how many of
            them searched (the SAE is trained once by ``experiments/sae_organism.py``)
=========== ==============================================================================

Seeds vary the search (sampler and extraction seeds) and the MMLU sample, not the prompt
splits: the organism was trained on its own train split, so every run uses that split's
held-out test prompts. Seed ``s`` of an arm is paired with seed ``s`` of the baseline
(:mod:`circuitlab.validation` has the statistics and the acceptance rule).

Each organism × arm × seed result is a JSON file under ``WORK/runs/<organism>-<weights
hash>/`` (WORK defaults to ``cache/validate/<config hash>/``), written atomically; a rerun
skips finished ones, a killed run resumes its Optuna study from ``WORK/studies/``, and a
rebuilt organism (other weights) gets runs of its own. The hash covers the settings
that change a run (not the lists of organisms, seeds and arms, nor the acceptance rule), so
adding a seed reuses the others. Outputs, in ``--out`` (default: WORK): ``results.csv``,
``summary.md``, ``refusal_vs_kl.png``, ``paired_differences.png`` and ``report.html``.

Usage:
    .venv/bin/python experiments/validate.py            # experiments/validate.toml (benchmark)
    .venv/bin/python experiments/validate.py --small    # experiments/validate_small.toml (CI)
    .venv/bin/python experiments/validate.py --config FILE [--out DIR] [--work DIR]
    .venv/bin/python experiments/validate.py --only massive   # just these arms' runs, e.g.
        # in a second process beside a full run (no outputs: run without --only for them)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
import torch

from circuitlab._resources import atomic_write, json_hash
from circuitlab.validation import (
    AcceptanceRule,
    compare,
    comparison_figure,
    paired_differences_figure,
    summary_markdown,
    validation_report,
    write_csv,
)

HERE = Path(__file__).resolve().parent
ARMS = (
    "baseline", "probe", "ensemble", "calibrated", "cones", "caa", "heads", "warm_start",
    "massive", "sae",
)  # fmt: skip
# Bump when a run computes something else for the same settings (invalidates the cache).
FORMAT = 3  # 3: per-trial sampler seeds mixed from (seed, trial) (commit 1787b13)
CSV_COLUMNS = (
    "organism", "arm", "seed", "refusal_rate", "kl_first", "kl_k", "capability_delta",
    "over_refusal_rate", "degenerate", "base_refusal_rate", "base_over_refusal_rate",
    "n_harmful", "n_harmless", "capability_n", "chosen_trial", "trials_complete",
    "trials_pruned", "profile", "model", "seconds", "status",
)  # fmt: skip


# Columns of results.csv left out of the report's table of runs (it would not fit a page).
RESULTS_ONLY = {"n_harmful", "n_harmless", "capability_n", "profile", "model", "degenerate"}


@dataclass(frozen=True)
class Config:
    """One validation run's settings (a flat TOML table; every key optional).

    Attributes:
        organisms: refusal model organisms (preset names, HF folders).
        seeds: search seeds; each arm runs every seed.
        arms: arms to run (``baseline`` is always needed for the statistics).
        trials: trial budget of every search.
        n_train, n_search, n_kl, n_test: prompts per side of each split.
        max_new_tokens, batch_size: generation budget and batch size (search and test).
        prune: prune hopeless trials (off for tiny budgets: a fully pruned study has no
            front, and its arm falls back to the unedited model).
        capability_n: MMLU questions in the test scorecards (0: none).
        kl_target: the KL budget of the choice rule (the demo's 1.0 on the organism).
        addition_max: largest addition strength of the ``caa`` arm.
        heads_top_k, heads_n_pairs: heads of the ``heads`` arm, and the harmful/harmless
            train prompt pairs attribution patching ranks them on.
        alpha, min_d: the acceptance rule (:class:`circuitlab.validation.AcceptanceRule`).
        sae_layer, sae_features: the ``sae`` arm's SAE (``CACHE/sae/<organism>-L<layer>``)
            and the most features a trial ablates.
    """

    organisms: tuple[str, ...] = ("smollm2-135m-refusal",)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    trials: int = 16
    n_train: int = 64
    n_search: int = 30
    n_kl: int = 30
    n_test: int = 64
    max_new_tokens: int = 48
    batch_size: int = 16
    prune: bool = True
    capability_n: int = 50
    kl_target: float = 1.0
    addition_max: float = 1.0
    heads_top_k: int = 8
    heads_n_pairs: int = 16
    alpha: float = 0.05
    min_d: float = 0.3
    sae_layer: int = 25
    sae_features: int = 8

    @classmethod
    def load(cls, path: str | Path) -> Config:
        data = tomllib.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
        config = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        bad = sorted(set(config.arms) - set(ARMS))
        if bad or "baseline" not in config.arms:
            raise SystemExit(f"{path}: arms must include baseline and come from {ARMS}")
        return config

    def key(self) -> str:
        """Hash of the settings that change a run's result."""
        skip = {"organisms", "seeds", "arms", "alpha", "min_d"}
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        # The sae arm's settings join the hash only when changed: older runs keep their ids.
        for name in ("sae_layer", "sae_features"):
            if data[name] == getattr(Config, name):
                del data[name]
        text = json.dumps({"format": FORMAT, **data}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def arm_search(arm: str, config: Config, heads: tuple = (), sae: str | None = None):
    """(search space, warm-start profile) of an arm: the baseline's, with one change."""
    from circuitlab.search import SearchSpace

    methods = {"probe": ("probe",), "ensemble": ("ensemble",), "cones": ("cones",)}
    space = SearchSpace(
        methods=methods.get(arm, ("diff-means",)),
        calibrate=arm == "calibrated",
        remove_massive=arm == "massive",  # explicit: the baseline keeps raw directions
    )
    if arm == "caa":
        space = dataclasses.replace(space, addition_max=config.addition_max)
    if arm == "heads":
        space = dataclasses.replace(space, heads=heads)
    if arm == "sae":
        space = dataclasses.replace(
            space, methods=("sae",), sae=sae, sae_max_features=config.sae_features
        )
    return space, ("auto" if arm == "warm_start" else None)


def write_json(path: Path, data: dict) -> dict:
    """Write JSON atomically (a temporary file renamed into place); returns ``data``."""
    atomic_write(path, json.dumps(data, indent=1) + "\n")
    return data


def slug(organism: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(organism).name)


@functools.cache
def weights_id(organism: str, cache_dir: Path) -> str:
    """Hash of the organism's weight files (a hub id: the id itself), without loading it.

    Runs, studies, circuits and base scorecards are filed under it, so a rebuilt organism
    (a new testbed recipe) gets new runs instead of the old weights' cached results.
    """
    from circuitlab._resources import file_sha256
    from circuitlab.models import ModelSpec
    from circuitlab.models.loading import resolve_source

    resolved = resolve_source(ModelSpec(organism, cache_dir=cache_dir))
    if resolved.kind == "hub":
        parts = [resolved.location]
    else:
        parts = [file_sha256(p) for p in sorted(Path(resolved.location).glob("*.safetensors"))]
    return json_hash(parts, 12)


def top_heads(model, name: str, prompts, config: Config, work: Path) -> tuple:
    """The ``heads_top_k`` heads of a circuit found by attribution patching on the train
    split's harmful/harmless pairs (the circuit is cached as JSON under ``WORK/circuits``)."""
    from circuitlab.circuits import RefusalCircuit, RefusalTokenMetric, attribution_patching

    path = work / "circuits" / f"{slug(name)}-{config.heads_n_pairs}.json"
    if not path.is_file():
        n = config.heads_n_pairs
        harmful, harmless = prompts.harmful_train[:n], prompts.harmless_train[:n]
        metric = RefusalTokenMetric.from_openings(model.tokenizer)
        started = time.perf_counter()
        scores = attribution_patching(
            model, list(harmful), list(harmless), metric, batch_size=config.batch_size,
            chat=model.facts.has_chat_template,
        )  # fmt: skip
        seconds = round(time.perf_counter() - started, 2)
        RefusalCircuit.from_scores(scores, model.facts, name, seconds=seconds).save(path)
    circuit = RefusalCircuit.load(path)
    return tuple((h.layer, h.head) for h in circuit.top(config.heads_top_k))


def sae_folder(organism: str, config: Config, cache_dir: Path) -> str:
    """The organism's SAE at ``sae_layer``, as ``experiments/sae_organism.py`` saves it."""
    folder = cache_dir / "sae" / f"{slug(organism)}-L{config.sae_layer}"
    if not (folder / "cfg.json").is_file():
        raise SystemExit(
            f"the sae arm needs the organism's SAE in {folder}: run "
            f"python experiments/sae_organism.py {organism} --layer {config.sae_layer} "
            f"--cache-dir {cache_dir}"
        )
    return str(folder.resolve())


def _study_facts(name: str, storage: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    from circuitlab.search import open_store

    study = open_store(name, storage).load()
    states = [t.state for t in study.get_trials(deepcopy=False)]
    setup = study.user_attrs.get("setup", {})
    return {
        "trials_complete": states.count(TrialState.COMPLETE),
        "trials_pruned": states.count(TrialState.PRUNED),
        "profile": setup.get("profile"),
        "model": setup.get("model"),
        "space": setup.get("space"),
    }


@dataclass(frozen=True)
class Suite:
    """What every run shares: the settings, the folders and the prompt splits."""

    config: Config
    work: Path
    cache_dir: Path
    prompts: Any  # SearchPrompts

    @classmethod
    def create(cls, config: Config, work: Path, cache_dir: Path) -> Suite:
        from circuitlab.search import SearchPrompts
        from circuitlab.testbed import Recipe

        c = config
        # The organism's own split: its test prompts are the ones it was not trained on.
        prompts = SearchPrompts.from_testbed(
            c.n_train, c.n_search, c.n_kl, c.n_test, Recipe().split_seed
        )
        return cls(config, Path(work), Path(cache_dir), prompts)

    def folder(self, organism: str) -> str:
        """The organism's name in WORK's paths: its slug and its weights' hash."""
        return f"{slug(organism)}-{weights_id(organism, self.cache_dir)}"

    def result_path(self, organism: str, arm: str, seed: int) -> Path:
        return self.work / "runs" / self.folder(organism) / f"{arm}-s{seed}.json"

    def storage(self, organism: str, study: str) -> str:
        return str(self.work / "studies" / self.folder(organism) / f"{study}.journal")


@dataclass
class Scoring:
    """Test-split scorecards of one organism, as ``abliterate`` scores its choice
    (:func:`circuitlab.search.evaluate_choice`), with the work shared between arms: the KL
    baseline is computed once, the base model's scorecard once per seed (its MMLU sample
    depends on the seed) and kept as JSON under ``WORK/base``."""

    suite: Suite
    organism: str
    model: Any
    _kl: Any = None

    def _options(self, seed: int) -> dict[str, Any]:
        from circuitlab.evaluate.capability import load_mmlu
        from circuitlab.evaluate.judges import MarkerJudge
        from circuitlab.evaluate.kl import KLBaseline

        c, prompts = self.suite.config, self.suite.prompts
        if self._kl is None:
            if self.model.n_active_hooks():
                raise RuntimeError("the KL baseline needs the unedited model: hooks are attached")
            self._kl = KLBaseline.compute(self.model, list(prompts.harmless_test), 4, c.batch_size)
        return {
            "harmful": list(prompts.harmful_test),
            "harmless": list(prompts.harmless_test),
            "judge": MarkerJudge(),
            "split": "test",
            "kl_baseline": self._kl,
            "max_new_tokens": c.max_new_tokens,
            "batch_size": c.batch_size,
            "questions": load_mmlu(c.capability_n, seed) if c.capability_n else (),
        }

    def base(self, seed: int):
        from circuitlab.evaluate.scorecard import Scorecard, score_model

        path = self.suite.work / "base" / f"{self.suite.folder(self.organism)}-s{seed}.json"
        if path.is_file():
            return Scorecard.from_json(path.read_text())
        card, _ = score_model(self.model, "base", **self._options(seed))
        write_json(path, json.loads(card.to_json()))
        return card

    def edited(self, seed: int, chosen):
        from circuitlab.evaluate.scorecard import score_model
        from circuitlab.hooks import apply

        # Options first: the KL baseline must come from the unedited model, not under hooks.
        base, options = self.base(seed), self._options(seed)
        with apply(self.model, *chosen.interventions):
            card, _ = score_model(self.model, f"trial {chosen.number}", base=base, **options)
        return base, card


def _search(scoring: Scoring, arm: str, seed: int, heads: tuple, sae: str | None = None):
    """The arm's study (run or resumed) and the choice; without a complete trial (all
    pruned) the choice is the unedited model."""
    from circuitlab.evaluate.judges import MarkerJudge
    from circuitlab.search import FrontPoint, ObjectiveConfig, choose, pareto_front, run_search
    from circuitlab.search.config import SearchConfig

    suite, config = scoring.suite, scoring.suite.config
    space, profile = arm_search(arm, config, heads, sae)
    prune = {} if config.prune else {"prune_kl": None, "prune_min_drop": None}
    objective = ObjectiveConfig(config.max_new_tokens, config.batch_size, **prune)
    name, storage = f"{arm}-s{seed}", suite.storage(scoring.organism, f"{arm}-s{seed}")
    search = SearchConfig(
        config.trials, storage=storage, space=space, objective=objective, seed=seed,
        profile=profile, cache_dir=suite.cache_dir,
    )  # fmt: skip
    study = run_search(scoring.model, suite.prompts, name, search, judge=MarkerJudge())
    front = pareto_front(study)
    if not front:
        return FrontPoint(-1, float("nan"), float("nan"), {}, ()), "unedited: no complete trial"
    chosen = choose(front, config.kl_target)
    return chosen, "ok"


def run_one(scoring: Scoring, arm: str, seed: int, heads: tuple, sae: str | None = None) -> dict:
    """One organism × arm × seed: search, choose, score on the test split (a result row)."""
    started = time.perf_counter()
    chosen, status = _search(scoring, arm, seed, heads, sae)
    base, edited = scoring.edited(seed, chosen)
    name = f"{arm}-s{seed}"
    facts = {"study": name, **_study_facts(name, scoring.suite.storage(scoring.organism, name))}
    organism = scoring.organism
    return {
        "organism": organism,
        "arm": arm,
        "seed": seed,
        "refusal_rate": edited.refusal_rate,
        "kl_first": edited.kl_first,
        "kl_k": edited.kl_k,
        "capability_delta": edited.capability_delta,
        "over_refusal_rate": edited.over_refusal_rate,
        "degenerate": edited.degenerate,
        "base_refusal_rate": base.refusal_rate,
        "base_over_refusal_rate": base.over_refusal_rate,
        "n_harmful": edited.n_harmful,
        "n_harmless": edited.n_harmless,
        "capability_n": edited.capability_n,
        "chosen_trial": chosen.number,
        "chosen_params": chosen.params,
        "interventions": [type(iv).__name__ for iv in chosen.interventions],
        "heads": [list(h) for h in heads] if arm == "heads" else [],
        "seconds": round(time.perf_counter() - started, 1),
        "status": status,
        "scorecards": {"base": json.loads(base.to_json()), "edited": json.loads(edited.to_json())},
        **facts,
    }


def load_organism(name: str, cache_dir: Path):
    from circuitlab.engine import HookedModel
    from circuitlab.models import ModelSpec

    return HookedModel.load(ModelSpec(name, cache_dir=cache_dir))


def run_all(
    suite: Suite,
    load: Callable[[str], Any] | None = None,
    log=print,
    only: tuple[str, ...] = (),
) -> list[dict]:
    """Every organism × seed × arm, seed-major (a stopped run leaves complete pairs); cached
    results are read back, and an organism is loaded only when one of its runs is missing.

    Args:
        suite: settings, folders and prompts.
        load: organism name -> HookedModel (default: :func:`load_organism`).
        log: progress lines.
        only: run just these arms (the others are read if cached, else skipped).

    Returns:
        The result rows.
    """
    load = load or (lambda name: load_organism(name, suite.cache_dir))
    config, rows = suite.config, []
    for organism in config.organisms:
        scoring, heads = None, ()
        for seed in config.seeds:
            for arm in config.arms:
                path = suite.result_path(organism, arm, seed)
                if path.is_file():
                    rows.append(json.loads(path.read_text()))
                    continue
                if only and arm not in only:
                    continue
                if scoring is None:
                    scoring = Scoring(suite, organism, load(organism))
                if arm == "heads" and not heads:
                    heads = top_heads(
                        scoring.model, suite.folder(organism), suite.prompts, config, suite.work
                    )
                sae = sae_folder(organism, config, suite.cache_dir) if arm == "sae" else None
                log(f"{organism} {arm} seed {seed}: {config.trials} trials")
                row = write_json(path, run_one(scoring, arm, seed, heads, sae))
                rows.append(row)
                log(
                    f"  refusals {row['refusal_rate']:.3f} (base {row['base_refusal_rate']:.3f})"
                    f", KL {row['kl_first']:.3f}, {row['seconds']:.0f} s [{row['status']}]"
                )
    return rows


# ------------------------------------------------------------------------------- outputs
def _intro(config: Config) -> str:
    return (
        f"Held-out test split ({config.n_test} harmful and {config.n_test} harmless prompts), "
        f"{config.trials} trials per search, seeds {list(config.seeds)}; mean ± std over "
        "seeds. Refusals are rates; KL in nats (first token, and along the base's first 4 "
        f"greedy tokens); capability Δ is MMLU accuracy minus the base's ({config.capability_n}"
        " questions). p (refusals): paired two-sided t-test against the baseline; d: Cohen's "
        "d of baseline minus arm refusal rates (positive: the arm removes more); p (KL worse):"
        " paired one-sided t-test that the arm's first-token KL is higher."
    )


def _mixed_models(rows: list[dict]) -> list[str]:
    """Organisms whose results come from more than one set of weights (rebuilt meanwhile)."""
    seen: dict[str, set] = {}
    for row in rows:
        seen.setdefault(row["organism"], set()).add(row.get("model"))
    return [
        f"results of {o} come from different model weights" for o, m in seen.items() if len(m) > 1
    ]


def write_outputs(config: Config, rows: list[dict], out: Path, command, seconds) -> dict:
    """results.csv, summary.md, two PNG figures and report.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["organism"], r["seed"], ARMS.index(r["arm"])))
    rule = AcceptanceRule(config.alpha, config.min_d)
    comparisons = compare(rows, rule=rule)
    paths = {"csv": write_csv(rows, out / "results.csv", CSV_COLUMNS)}
    paths["markdown"] = out / "summary.md"
    text = summary_markdown(comparisons, _intro(config), rule, _mixed_models(rows))
    paths["markdown"].write_text(text)
    figures = {
        "refusal_vs_kl": comparison_figure(comparisons),
        "paired_differences": paired_differences_figure(rows),
    }
    for name, fig in figures.items():
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=100)
    report = validation_report(
        comparisons, rows, rule=rule, intro=_intro(config),
        run_columns=[c for c in CSV_COLUMNS if c not in RESULTS_ONLY],
        settings=dataclasses.asdict(config), timings=seconds, command=command,
        subtitle=f"organisms {', '.join(config.organisms)}; seeds {list(config.seeds)}; "
        f"{config.trials} trials per search; config {config.key()}",
    )  # fmt: skip
    paths["report"] = report.write(out / "report.html")
    return paths


# ---------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=HERE / "validate.toml", help="TOML settings")
    p.add_argument("--small", action="store_true", help="use experiments/validate_small.toml")
    p.add_argument("--work", type=Path, help="cache of runs (default CACHE/validate/HASH)")
    p.add_argument("--out", type=Path, help="outputs (default: the work folder)")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"), help="models, activations")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("-v", "--verbose", action="store_true", help="log every trial")
    p.add_argument(
        "--only",
        type=lambda text: tuple(a.strip() for a in text.split(",") if a.strip()),
        default=(),
        metavar="ARM[,ARM]",
        help="run only these arms' missing runs and write no outputs (for a second process)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None, load: Callable[[str], Any] | None = None) -> dict:
    """Run (or resume) the suite and write its outputs; returns the output paths."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    config = Config.load(HERE / "validate_small.toml" if args.small else args.config)
    work = args.work or args.cache_dir / "validate" / config.key()
    out = args.out or work
    suite = Suite.create(config, work, args.cache_dir)
    unknown = sorted(set(args.only) - set(config.arms))
    if unknown:
        raise SystemExit(f"--only {unknown}: not among the config's arms {list(config.arms)}")
    started = time.perf_counter()
    rows = run_all(suite, load, only=args.only)
    if args.only:
        print(f"ran {', '.join(args.only)}: {len(rows)} runs cached in {work}")
        return {}
    seconds = {"runs (this invocation)": time.perf_counter() - started}
    seconds |= {"runs (all, as cached)": sum(r["seconds"] for r in rows)}
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/validate.py", *given])
    paths = write_outputs(config, rows, out, command, seconds)
    print((out / "summary.md").read_text())
    print("written:", *(str(p) for p in paths.values()), sep="\n  ")
    return paths


if __name__ == "__main__":
    main()
