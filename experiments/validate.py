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
            latents (ranked on the train split) of the organism's SAE at its
            ``sae_layers`` layer, their decoder directions ablated as one subspace, how
            many of them searched (the suite trains the SAE once per organism, as
            ``experiments/sae_organism.py`` does, and keeps it under ``WORK/sae``)
=========== ==============================================================================

What is compared: besides the chosen point (the KL-target rule), every trial of the search
split's Pareto front is scored on the test split (refusals on the harmful test prompts,
first-token KL on the harmless ones), and each run is summarised by its test-split front:
the best refusal rate under each KL budget in ``kl_budgets`` and the front area up to
``kl_ref`` (:mod:`circuitlab.validation.power`). The acceptance rule is on ``primary``
(default the front area), paired over seeds, per organism; each test reports its minimum
detectable effect at 80 % power. Use a low trial budget (``validate_low.toml``) where search
alone does not reach the refusal floor, or no arm can win.

Seeds vary the search (sampler and extraction seeds) and the MMLU sample, not the prompt
splits: the organism was trained on its own train split, so every run uses that split's
held-out test prompts. Seed ``s`` of an arm is paired with seed ``s`` of the baseline
(:mod:`circuitlab.validation` has the statistics and the acceptance rule).

Each organism × arm × seed result is a JSON file under ``WORK/runs/<organism>-<weights
hash>/`` (WORK defaults to ``cache/validate/<config hash>/``), written atomically; a rerun
skips finished ones, a killed run resumes its Optuna study from ``WORK/studies/``, and a
rebuilt organism (other weights) gets runs of its own. The hash covers the settings
that change a run (not the lists of organisms, seeds and arms, nor the acceptance rule), so
adding a seed reuses the others; a killed run's test scores of front trials are kept in
``<arm>-s<seed>.front.json`` beside it. Outputs, in ``--out`` (default: WORK):
``validation.json`` (the rows and rule: ``circuitlab.validation.render_markdown`` renders
the summary from it), ``results.csv``, ``summary.md``, ``refusal_vs_kl.png``,
``paired_differences.png`` and ``report.html``.

Usage:
    .venv/bin/python experiments/validate.py            # experiments/validate.toml (benchmark)
    .venv/bin/python experiments/validate.py --small    # experiments/validate_small.toml (CI)
    .venv/bin/python experiments/validate.py --config experiments/validate_low.toml
    .venv/bin/python experiments/validate.py --config FILE [--out DIR] [--work DIR]
    .venv/bin/python experiments/validate.py --only massive   # just these arms' runs, e.g.
        # in a second process beside a full run (no outputs: run without --only for them)
    .venv/bin/python experiments/validate.py --no-run   # outputs of what is cached so far
    .venv/bin/python experiments/validate.py --organisms gemma3-270m-refusal   # one process
        # per organism, same WORK; a last run without the flag writes the outputs of both
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
    budget_name,
    compare,
    comparison_figure,
    front_summary,
    paired_differences_figure,
    render_markdown,
    validation_report,
    write_csv,
)

HERE = Path(__file__).resolve().parent
ARMS = (
    "baseline", "probe", "ensemble", "calibrated", "cones", "caa", "heads", "warm_start",
    "massive", "sae",
)  # fmt: skip
# What each arm changes against the baseline, for the summary's verdicts. Per-layer trials
# (a search parameter, on in about half the trials) ablate the writer-aligned diff-means set
# whatever the method, without the massive direction and uncalibrated: arms that change the
# direction change only the other trials, and the verdicts say so.
CHANGES = {
    "probe": "supervised probe directions (not in per-layer trials)",
    "ensemble": "probe + PCA ensemble directions (not in per-layer trials)",
    "calibrated": "calibrated weights offered to the search (not in per-layer trials)",
    "cones": "concept-cone directions ablated as one subspace (not in per-layer trials)",
    "caa": "plus an activation addition against refusal",
    "heads": "plus a head-level ablation of the circuit's top heads",
    "warm_start": "the family's warm-start profile",
    "massive": "attention sinks' massive direction removed (per-layer trials remove it already)",
    "sae": "SAE refusal features' decoder directions instead of difference of means",
}
# Bump when a run computes something else for the same settings (invalidates the cache).
FORMAT = 4  # 4: test-split front scored; the suite trains its own SAEs
CSV_COLUMNS = (
    "organism", "arm", "seed", "refusal_rate", "kl_first", "kl_k", "capability_delta",
    "over_refusal_rate", "degenerate", "base_refusal_rate", "base_over_refusal_rate",
    "n_harmful", "n_harmless", "capability_n", "chosen_trial", "trials_complete",
    "trials_pruned", "profile", "model", "seconds", "status", "front_n", "front_area",
)  # fmt: skip


# Columns of results.csv left out of the report's table of runs (it would not fit a page).
RESULTS_ONLY = {
    "n_harmful", "n_harmless", "capability_n", "profile", "model", "degenerate", "front_n",
}  # fmt: skip


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
        alpha, min_d, primary: the acceptance rule
            (:class:`circuitlab.validation.AcceptanceRule`); ``primary`` is ``front_area``,
            ``refusal@KL<=B`` for a B in ``kl_budgets``, or ``refusal_rate`` (chosen point).
        kl_budgets, kl_ref: the KL budgets of the front summary, and the KL end of its area.
        sae_layer, sae_layers: the ``sae`` arm's SAE layer (``sae_layers`` maps an organism
            to its own; ``sae_layer`` for the others); ``sae_features``: the most features
            a trial ablates.
        sae_n_train, sae_epochs, sae_expansion, sae_k, sae_max_new_tokens: how the suite
            trains each organism's SAE (train prompts with the model's own answers).
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
    primary: str = "front_area"
    kl_budgets: tuple[float, ...] = (0.05, 0.1, 0.2)
    kl_ref: float = 1.0
    sae_layer: int = 25
    sae_layers: dict[str, int] = dataclasses.field(default_factory=dict)
    sae_features: int = 8
    sae_n_train: int = 600
    sae_epochs: int = 10
    sae_expansion: int = 8
    sae_k: int = 32
    sae_max_new_tokens: int = 48

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
        metrics = ("front_area", "refusal_rate", *map(budget_name, config.kl_budgets))
        if config.primary not in metrics:
            raise SystemExit(f"{path}: primary {config.primary!r} is not one of {metrics}")
        return config

    def key(self) -> str:
        """Hash of the settings that change a run's result (not the statistics')."""
        skip = {"organisms", "seeds", "arms", "alpha", "min_d", "primary", "kl_budgets", "kl_ref"}
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        text = json.dumps({"format": FORMAT, **data}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def layer_of(self, organism: str) -> int:
        """The ``sae`` arm's SAE layer on this organism."""
        return self.sae_layers.get(organism, self.sae_layer)


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


def sae_folder(model, organism: str, suite: Suite) -> str:
    """The organism's SAE for the ``sae`` arm, trained once with the config's settings and
    kept under ``WORK/sae`` (SAELens layout, with ``training.json``: sizes and CPU time)."""
    from circuitlab.sae import TrainConfig, fit_sae, train_prompts
    from circuitlab.testbed import testbed_data

    c, layer = suite.config, suite.config.layer_of(organism)
    folder = suite.work / "sae" / f"{suite.folder(organism)}-L{layer}"
    if (folder / "training.json").is_file():
        return str(folder.resolve())
    print(f"{organism}: training the sae arm's SAE at layer {layer}", flush=True)
    config = TrainConfig(expansion=c.sae_expansion, k=c.sae_k, epochs=c.sae_epochs)
    prompts = train_prompts(testbed_data(), c.sae_n_train)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit_sae(
        model, prompts, layer, config, max_new_tokens=c.sae_max_new_tokens,
        batch_size=c.batch_size, cache_dir=suite.cache_dir, progress=True,
    )  # fmt: skip
    record = {
        "organism": organism, "layer": layer, "n_prompts": len(prompts),
        "n_tokens": result.n_tokens, "steps": result.steps, "epoch_fvu": result.losses,
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "train_loop_seconds": result.seconds, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    result.sae.save(folder)
    write_json(folder / "training.json", record)  # last: its presence marks a finished SAE
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

        c, prompts = self.suite.config, self.suite.prompts
        return {
            "harmful": list(prompts.harmful_test),
            "harmless": list(prompts.harmless_test),
            "judge": MarkerJudge(),
            "split": "test",
            "kl_baseline": self.kl_baseline(),
            "max_new_tokens": c.max_new_tokens,
            "batch_size": c.batch_size,
            "questions": load_mmlu(c.capability_n, seed) if c.capability_n else (),
        }

    def kl_baseline(self):
        from circuitlab.evaluate.kl import KLBaseline

        if self._kl is None:
            if self.model.n_active_hooks():
                raise RuntimeError("the KL baseline needs the unedited model: hooks are attached")
            harmless, batch = list(self.suite.prompts.harmless_test), self.suite.config.batch_size
            self._kl = KLBaseline.compute(self.model, harmless, 4, batch)
        return self._kl

    def point(self, interventions) -> dict[str, float]:
        """Test refusal rate and KL of one edit (no over-refusal or MMLU: the front needs
        only the two objectives)."""
        from circuitlab.evaluate.judges import MarkerJudge
        from circuitlab.evaluate.refusals import refusal_counts
        from circuitlab.hooks import apply

        c, harmful = self.suite.config, list(self.suite.prompts.harmful_test)
        kl_baseline = self.kl_baseline()  # before the hooks: from the unedited model
        with apply(self.model, *interventions):
            judged = refusal_counts(
                self.model, {"harmful": harmful}, MarkerJudge(), c.max_new_tokens,
                batch_size=c.batch_size,
            )["harmful"]  # fmt: skip
            kl = kl_baseline.score(self.model, batch_size=c.batch_size)
        return {"refusal_rate": judged.refused.rate, "kl_first": kl.first_token}

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
        profile=profile, cache_dir=suite.cache_dir, progress=True,
    )  # fmt: skip
    study = run_search(scoring.model, suite.prompts, name, search, judge=MarkerJudge())
    front = pareto_front(study)
    if not front:
        unedited = FrontPoint(-1, float("nan"), float("nan"), {}, ())
        return unedited, [], "unedited: no complete trial"
    chosen = choose(front, config.kl_target)
    return chosen, front, "ok"


def score_front(scoring: Scoring, front, chosen, edited, path: Path, log=print) -> list[dict]:
    """Test scores of every search-front trial (the chosen one from its scorecard), kept in
    ``path`` after each trial so that a killed run resumes where it stopped."""
    done = {p["trial"]: p for p in json.loads(path.read_text())} if path.is_file() else {}
    points = []
    for i, point in enumerate(front):
        if point.number not in done:
            if point.number == chosen.number:
                scores = {"refusal_rate": edited.refusal_rate, "kl_first": edited.kl_first}
            else:
                log(f"  front trial {point.number} ({i + 1}/{len(front)}) on the test split")
                scores = scoring.point(point.interventions)
            done[point.number] = {
                "trial": point.number, **scores,
                "search_refusal_rate": point.refusal_rate, "search_kl": point.kl,
            }  # fmt: skip
            write_json(path, list(done.values()))
        points.append(done[point.number])
    return points


def run_one(
    scoring: Scoring, arm: str, seed: int, heads: tuple, sae: str | None = None, log=print
) -> dict:
    """One organism × arm × seed: search, choose, score the chosen trial and the front on
    the test split (a result row)."""
    started = time.perf_counter()
    chosen, front, status = _search(scoring, arm, seed, heads, sae)
    base, edited = scoring.edited(seed, chosen)
    suite, organism, name = scoring.suite, scoring.organism, f"{arm}-s{seed}"
    partial = suite.result_path(organism, arm, seed).with_suffix(".front.json")
    points = score_front(scoring, front, chosen, edited, partial, log)
    c = suite.config
    pairs = [(p["refusal_rate"], p["kl_first"]) for p in points]
    summary = front_summary(pairs, base.refusal_rate, c.kl_budgets, c.kl_ref)
    facts = {"study": name, **_study_facts(name, suite.storage(organism, name))}
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
        "code": code_version(),
        **summary,
        "front_n": len(points),
        "front": points,
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
    run: bool = True,
) -> list[dict]:
    """Every organism × seed × arm, seed-major (a stopped run leaves complete pairs); cached
    results are read back, and an organism is loaded only when one of its runs is missing.

    Args:
        suite: settings, folders and prompts.
        load: organism name -> HookedModel (default: :func:`load_organism`).
        log: progress lines.
        only: run just these arms (the others are read if cached, else skipped).
        run: False reads the cached results only (outputs of a suite still running).

    Returns:
        The result rows.
    """
    load = load or (lambda name: load_organism(name, suite.cache_dir))
    config, rows = suite.config, []
    jobs = [(o, s, a) for o in config.organisms for s in config.seeds for a in config.arms]
    todo = [j for j in jobs if not suite.result_path(*_order(j)).is_file()]
    todo = [j for j in todo if run and (not only or j[2] in only)]
    log(f"{len(jobs)} runs, {len(jobs) - len(todo)} cached, {len(todo)} to run in {suite.work}")
    started, ran = time.perf_counter(), 0
    for organism in config.organisms:
        scoring, heads, sae = None, (), None
        for seed in config.seeds:
            for arm in config.arms:
                path = suite.result_path(organism, arm, seed)
                if path.is_file():
                    rows.append(json.loads(path.read_text()))
                    continue
                if not run or (only and arm not in only):
                    continue
                if scoring is None:
                    scoring = Scoring(suite, organism, load(organism))
                if arm == "heads" and not heads:
                    heads = top_heads(
                        scoring.model, suite.folder(organism), suite.prompts, config, suite.work
                    )
                if arm == "sae" and sae is None:
                    sae = sae_folder(scoring.model, organism, suite)
                log(f"[{ran + 1}/{len(todo)}] {organism} {arm} seed {seed}: {config.trials} trials")
                row = write_json(
                    path, run_one(scoring, arm, seed, heads, sae if arm == "sae" else None, log)
                )
                rows.append(row)
                ran += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / ran * (len(todo) - ran)
                log(
                    f"  refusals {row['refusal_rate']:.3f} (base {row['base_refusal_rate']:.3f})"
                    f", KL {row['kl_first']:.3f}, front area {row['front_area']:.3f} "
                    f"({row['front_n']} points), {row['seconds']:.0f} s [{row['status']}]; "
                    f"{elapsed / 60:.0f} min so far, about {eta / 60:.0f} min left"
                )
    return rows


def _order(job: tuple[str, int, str]) -> tuple[str, str, int]:
    organism, seed, arm = job
    return organism, arm, seed


# ------------------------------------------------------------------------------- outputs
def _intro(config: Config) -> str:
    budgets = ", ".join(f"{b:g}" for b in config.kl_budgets)
    return (
        f"Held-out test split ({config.n_test} harmful and {config.n_test} harmless prompts), "
        f"{config.trials} trials per search, seeds {list(config.seeds)}, organisms "
        f"{', '.join(config.organisms)}; mean ± std over seeds. Refusals, KL and capability Δ "
        "are the chosen point's (the KL-target rule): rates, nats (first token, and along the "
        "base's first 4 greedy tokens), MMLU accuracy minus the base's "
        f"({config.capability_n} questions). Front metrics read every search-front trial "
        f"scored on the test split: refusal ≤ KL b is the lowest refusal rate at first-token "
        f"KL ≤ b nats (b = {budgets}; the unedited model counts, at KL 0); front area is "
        f"the mean of that over every b in [0, {config.kl_ref:g}] (1 - hypervolume / "
        f"{config.kl_ref:g} with reference point refusal 1, KL {config.kl_ref:g}; lower is "
        "better). p (refusals), d: paired two-sided t-test and Cohen's d of the chosen "
        "points' refusal rates; p (KL worse): paired one-sided t-test that the arm's "
        "first-token KL is higher."
    )


@functools.cache
def code_version() -> str:
    """The commit of the circuitlab checkout that runs (``+dirty`` with local changes), or
    the package version outside a checkout: the cache is keyed by settings, not by code, so
    each run records which code made it."""
    import subprocess

    from circuitlab import __version__

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "circuitlab", "experiments")
    except (OSError, subprocess.SubprocessError):
        return __version__
    return commit + ("+dirty" if dirty else "")


def _mixed_sources(rows: list[dict]) -> list[str]:
    """Organisms whose results come from more than one set of weights (rebuilt meanwhile) or
    more than one version of the code (a cache resumed after the code changed)."""
    weights: dict[str, set] = {}
    code: dict[str, set] = {}
    for row in rows:
        weights.setdefault(row["organism"], set()).add(row.get("model"))
        code.setdefault(row["organism"], set()).add(row.get("code", "unrecorded"))
    out = [f"results of {o} come from different model weights" for o, m in weights.items()
           if len(m) > 1]  # fmt: skip
    out += [
        f"results of {o} come from {len(c)} versions of the code ({', '.join(sorted(c))}): "
        "a baseline and an arm run by different code are not a clean pair unless the change "
        "left results alone; a fresh --work reruns them all"
        for o, c in code.items()
        if len(c) > 1
    ]
    return out


def with_front(row: dict, config: Config) -> dict:
    """The row with its front summary computed from its test-scored front points under the
    config's budgets (so changing the budgets needs no rerun)."""
    pairs = [(p["refusal_rate"], p["kl_first"]) for p in row.get("front", [])]
    summary = front_summary(pairs, row["base_refusal_rate"], config.kl_budgets, config.kl_ref)
    stale = [k for k in row if k.startswith(("refusal@", "front_area"))]
    return {**{k: v for k, v in row.items() if k not in stale}, **summary}


def sae_records(work: Path) -> list[dict]:
    """The training records of the SAEs the suite trained (sizes, CPU seconds)."""
    return [json.loads(p.read_text()) for p in sorted(work.glob("sae/*/training.json"))]


def write_outputs(
    config: Config, rows: list[dict], out: Path, command, seconds, work: Path | None = None
) -> dict:
    """validation.json, results.csv, summary.md (rendered from the JSON), two PNG figures
    and report.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["organism"], r["seed"], ARMS.index(r["arm"])))
    rows = [with_front(r, config) for r in rows]
    rule = AcceptanceRule(config.alpha, config.min_d, config.primary)
    comparisons = compare(rows, rule=rule)
    data = {
        "rule": dataclasses.asdict(rule),
        "intro": _intro(config),
        "warnings": _mixed_sources(rows),
        "changes": {a: CHANGES[a] for a in config.arms if a in CHANGES},
        "settings": {**dataclasses.asdict(config), "key": config.key()},
        "command": command,
        "seconds": seconds,
        "sae_training": sae_records(work) if work else [],
        "rows": rows,
    }
    paths = {"json": out / "validation.json"}
    write_json(paths["json"], data)
    paths["csv"] = write_csv(rows, out / "results.csv", CSV_COLUMNS)
    paths["markdown"] = out / "summary.md"
    paths["markdown"].write_text(render_markdown(json.loads(paths["json"].read_text())))
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
        changes=data["changes"],
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
    p.add_argument(
        "--no-run",
        action="store_true",
        help="run nothing: write the outputs of the results cached so far",
    )
    p.add_argument(
        "--organisms",
        type=lambda text: tuple(a.strip() for a in text.split(",") if a.strip()),
        default=(),
        metavar="NAME[,NAME]",
        help="these of the config's organisms only (same WORK: one process per organism)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None, load: Callable[[str], Any] | None = None) -> dict:
    """Run (or resume) the suite and write its outputs; returns the output paths."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    config = Config.load(HERE / "validate_small.toml" if args.small else args.config)
    if args.organisms:
        unknown = sorted(set(args.organisms) - set(config.organisms))
        if unknown:
            raise SystemExit(f"--organisms {unknown}: not in the config's {config.organisms}")
        config = dataclasses.replace(config, organisms=args.organisms)
    work = args.work or args.cache_dir / "validate" / config.key()
    out = args.out or work
    suite = Suite.create(config, work, args.cache_dir)
    unknown = sorted(set(args.only) - set(config.arms))
    if unknown:
        raise SystemExit(f"--only {unknown}: not among the config's arms {list(config.arms)}")
    started = time.perf_counter()
    rows = run_all(suite, load, only=args.only, run=not args.no_run)
    if args.only:
        print(f"ran {', '.join(args.only)}: {len(rows)} runs cached in {work}")
        return {}
    seconds = {"runs (this invocation)": time.perf_counter() - started}
    seconds |= {"runs (all, as cached)": sum(r["seconds"] for r in rows)}
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/validate.py", *given])
    paths = write_outputs(config, rows, out, command, seconds, work)
    print((out / "summary.md").read_text())
    print("written:", *(str(p) for p in paths.values()), sep="\n  ")
    return paths


if __name__ == "__main__":
    main()
