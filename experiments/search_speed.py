"""Seconds per search trial and trials per minute, against Heretic 1.4's 28.7 s per trial.

The reference: Heretic 1.4 on SmolLM2-135M on these CPUs, 30 harmful prompts × 100 generated
tokens for refusals plus first-token KL on 30 harmless prompts, took 28.7 s per trial
(2.09 trials per minute). Our target is at least 3× its trials per minute (≤ 9.6 s per trial).

Same workload here: 30 harmful search prompts judged with generations of up to
``--max-new-tokens`` (100) tokens, stopped early once the marker judge has decided, and KL
on 30 harmless prompts; trials that are hopeless after the first-token pass are pruned
before generating (``--no-prune`` to measure without). A fresh study in a temporary folder
each run; directions come from the activation cache when present.

Reported: setup (extraction, baselines), seconds per trial (mean, median, from the wall
time between trial ends, so sampling and storage are included), trials per minute, the
speed-up over Heretic's trials per minute, pruned trials and tokens generated.

Usage: .venv/bin/python experiments/search_speed.py [MODEL] [--trials 10] [--threads 1]
MODEL defaults to the refusal organism ``smollm2-135m-refusal``. State in any report how
loaded the machine was (``uptime``): on shared 2-core machines the figures move 2-4×.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from circuitlab.engine import HookedModel
from circuitlab.models import ModelSpec
from circuitlab.search import ObjectiveConfig, SearchConfig, SearchPrompts, run_search

HERETIC_SECONDS_PER_TRIAL = 28.7


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default="smollm2-135m-refusal")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--n-harmful", type=int, default=30)
    p.add_argument("--n-kl", type=int, default=30)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-prune", action="store_true")
    p.add_argument("--profile", default="auto")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    cache = Path(args.cache_dir)
    started = time.perf_counter()
    model = HookedModel.load(ModelSpec(args.model, cache_dir=cache))
    loaded = time.perf_counter()
    prompts = SearchPrompts.from_testbed(args.n_train, args.n_harmful, args.n_kl, 0)
    prune = {"prune_kl": None, "prune_min_drop": None} if args.no_prune else {}
    objective = ObjectiveConfig(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **prune
    )
    ends, scores = [], []

    def on_trial(number, score) -> None:
        ends.append(time.perf_counter())
        scores.append(score)
        state = (
            f"pruned ({score.pruned})" if score.pruned else f"refusals {score.refusals}/{score.n}"
        )
        print(f"trial {number}: {state}, KL {score.kl_first:.3f}, {score.tokens} tokens, "
              f"{score.seconds:.1f} s", flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory() as folder:
        config = SearchConfig(
            args.trials, storage=str(Path(folder) / "speed.journal"), objective=objective,
            profile=None if args.profile == "none" else args.profile, cache_dir=cache,
        )  # fmt: skip
        run_search(model, prompts, "speed", config, on_trial=on_trial)
    first_start = ends[0] - scores[0].seconds
    per_trial = [scores[0].seconds] + [b - a for a, b in zip(ends, ends[1:], strict=False)]
    mean = statistics.mean(per_trial)
    figures = {
        "model": args.model,
        "trials": len(scores),
        "threads": args.threads,
        "load_s": round(loaded - started, 1),
        "setup_s": round(first_start - loaded, 1),
        "seconds_per_trial_mean": round(mean, 2),
        "seconds_per_trial_median": round(statistics.median(per_trial), 2),
        "trials_per_minute": round(60 / mean, 2),
        "heretic_trials_per_minute": round(60 / HERETIC_SECONDS_PER_TRIAL, 2),
        "speedup_vs_heretic": round(HERETIC_SECONDS_PER_TRIAL / mean, 2),
        "pruned": sum(s.pruned is not None for s in scores),
        "tokens_per_generated_trial": round(
            statistics.mean([s.tokens for s in scores if s.pruned is None] or [0]), 1
        ),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
