"""How the offline judges agree with labels nobody trained them on; writes JSON.

For each judge (markers, classifier, combined; a model judge with ``--model-judge``):
refusal precision, recall, F1 and accuracy with 95 % bootstrap intervals on

* the held-out part of our labelled set (prompt-grouped split; the classifier never saw it),
* JailbreakBench's human labels (100 responses by other people's models, three human votes
  each; never trained or tuned on),

plus the judges JailbreakBench itself compared (their recorded verdicts), and the
classifier's calibration on the held-out part (expected calibration error of its top label
with and without the fitted temperature).

    python experiments/judge_benchmark.py --out /tmp/judge_benchmark.json --write-agreement

``--write-agreement`` also refreshes ``circuitlab/data/judge_agreement.json``, the figures
scorecards print beside each judge's rates.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from circuitlab.evaluate.factory import JudgeOptions, build_judge
from circuitlab.evaluate.judges import LABELS
from circuitlab.evaluate.labelled import (
    bootstrap_intervals,
    jailbreakbench_reference,
    judge_accuracy,
    labelled_split,
    load_jailbreakbench,
    load_labelled,
)

AGREEMENT = Path(__file__).resolve().parents[1] / "circuitlab/data/judge_agreement.json"


def calibration_error(probs: np.ndarray, truth: list[str], bins: int = 10) -> float:
    """Expected calibration error of the top label's probability (equal-width bins)."""
    top = probs.max(1)
    right = probs.argmax(1) == np.array([LABELS.index(t) for t in truth])
    edges = np.linspace(0, 1, bins + 1)
    err = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        rows = (top > low) & (top <= high)
        if rows.any():
            err += rows.mean() * abs(top[rows].mean() - right[rows].mean())
    return float(err)


def classifier_calibration(cache_dir: Path | None, held) -> dict:
    from circuitlab.evaluate.classifier import ClassifierJudge

    judge = ClassifierJudge.load(cache_dir)
    probs = judge.probabilities(list(held.prompts), list(held.responses))
    t = judge.temperature
    # Undo the folded temperature to see the uncalibrated model.
    raw = ClassifierJudge(judge.coef * t, judge.intercept * t, judge.embedder, temperature=1.0)
    raw_probs = raw.probabilities(list(held.prompts), list(held.responses))
    return {
        "temperature": round(t, 4),
        "ece_calibrated": round(calibration_error(probs, list(held.labels)), 4),
        "ece_uncalibrated": round(calibration_error(raw_probs, list(held.labels)), 4),
        "data": held.name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--judges", default="markers,classifier,combined")
    parser.add_argument("--model-judge", default="", help="also this model judge spec")
    parser.add_argument("--device", default="cpu", help="device of the model judge")
    parser.add_argument("--cache-dir", type=Path, default=None, help="circuitlab cache")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--write-agreement", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    held = labelled_split(load_labelled())[1]
    bench = load_jailbreakbench()
    options = [JudgeOptions(kind=k) for k in args.judges.split(",") if k]
    if args.model_judge:
        options.append(
            JudgeOptions(kind="model", model_judge=args.model_judge, neural_device=args.device)
        )
    results, agreement = [], {}
    for option in options:
        judge = build_judge(option, args.cache_dir)
        for data in (held, bench):
            start = time.perf_counter()
            report = judge_accuracy(judge, data, n_boot=args.n_boot)
            seconds = time.perf_counter() - start
            results.append({"judge": judge.name, **report.figures(), "seconds": seconds})
            if data is bench:
                agreement[judge.name] = report.figures()
    truth = [label == "hard_refusal" for label in bench.labels]
    for name, refused in jailbreakbench_reference().items():
        ci = bootstrap_intervals(truth, refused, args.n_boot)
        hits = sum(t == r for t, r in zip(truth, refused, strict=True))
        results.append(
            {
                "judge": f"ref:{name}",
                "data": bench.name,
                "n": len(truth),
                "accuracy": hits / len(truth),
                "accuracy_ci": [round(v, 4) for v in ci["accuracy"]],
            }
        )
    out = {"results": results}
    if any(o.kind in ("classifier", "combined") for o in options):
        out["calibration"] = classifier_calibration(args.cache_dir, held)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    if args.write_agreement:
        note = "written by experiments/judge_benchmark.py; scorecards print these figures"
        AGREEMENT.write_text(json.dumps({"note": note, "judges": agreement}, indent=1) + "\n")
    for row in results:
        low, high = row["accuracy_ci"]
        line = f"{row['judge']:32s} {row['data']:26s} acc {row['accuracy']:.3f}"
        print(f"{line} [{low:.2f}, {high:.2f}]")  # noqa: T201


if __name__ == "__main__":
    main()
