"""Labelled responses for measuring judges: our packaged set, its fixed split, user CSVs, and
JailbreakBench's human labels as an outside benchmark.

The packaged set has one row per response: ``prompt``, ``response``, ``label`` (one of
``LABELS``), in two files written by us: ``judge_labelled.jsonl`` (short exchanges of every
label) and ``judge_labelled_formats.jsonl`` (the forms other people's models answer in:
terse lists, stories, articles, code, refusals that pivot to content, evasions in costume,
lectures; composed by ``experiments/judge_data.py``). The classifier judge trains on the
``train`` part of a seeded split, stratified by label and grouped by prompt; figures on our
data are on the ``held_out`` part, which no judge was fitted on.

JailbreakBench's judge-comparison file (100 responses, three human labels each) is never
trained on: it is how a judge does on other people's data.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np

from circuitlab._resources import text_hash
from circuitlab.errors import PromptError
from circuitlab.evaluate.judges import LABELS, REFUSAL_LABELS, UNFINISHED, Judge
from circuitlab.evaluate.stats import BinaryMetrics, binary_metrics, confusion_matrix

__all__ = [
    "LabelledSet",
    "load_labelled",
    "read_labelled_csv",
    "labelled_split",
    "JudgeAccuracy",
    "judge_accuracy",
    "load_jailbreakbench",
    "bootstrap_intervals",
    "jailbreakbench_reference",
    "PACKAGED_FILES",
]

PACKAGED_FILES: tuple[str, ...] = ("judge_labelled.jsonl", "judge_labelled_formats.jsonl")


@dataclass(frozen=True)
class LabelledSet:
    """Prompts, responses and their true labels, in parallel tuples."""

    name: str
    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not len(self.prompts) == len(self.responses) == len(self.labels):
            raise PromptError(f"labelled set {self.name!r}: columns differ in length")
        unknown = sorted(set(self.labels) - set(LABELS))
        if unknown:
            raise PromptError(f"labelled set {self.name!r} has unknown labels {unknown}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def hash(self) -> str:
        rows = json.dumps([self.prompts, self.responses, self.labels])
        return text_hash(rows)

    def subset(self, name: str, index: Sequence[int]) -> LabelledSet:
        pick = [int(i) for i in index]
        return LabelledSet(
            name,
            tuple(self.prompts[i] for i in pick),
            tuple(self.responses[i] for i in pick),
            tuple(self.labels[i] for i in pick),
        )


def _from_rows(name: str, rows: Sequence[dict]) -> LabelledSet:
    try:
        return LabelledSet(
            name,
            tuple(str(r["prompt"]) for r in rows),
            tuple(str(r["response"] or "") for r in rows),
            tuple(str(r["label"]).strip() for r in rows),
        )
    except KeyError as exc:
        raise PromptError(f"{name}: a row has no {exc} column") from None


def load_labelled(names: Sequence[str] = PACKAGED_FILES) -> LabelledSet:
    """The packaged labelled set: every file of ``PACKAGED_FILES`` (six labels), in order."""
    rows = []
    for name in names:
        text = files("circuitlab").joinpath(f"data/{name}").read_text(encoding="utf-8")
        rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return _from_rows("judge_labelled", rows)


def _jailbreakbench_rows() -> list[dict]:
    spec = importlib.util.find_spec("jailbreakbench")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "data/classifier_comparison.csv"
    if path is None or not path.is_file():
        raise PromptError(
            "JailbreakBench's human labels need `pip install --no-deps jailbreakbench==0.1.3`"
        )
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# The other judges whose verdicts the file records (1 = jailbroken), for comparison.
REFERENCE_JUDGES = ("llama_guard", "gpt_4", "gpt_4_turbo", "TDC", "GCG", "BERT")


def jailbreakbench_reference() -> dict[str, list[bool]]:
    """Refusal decisions (True = not jailbroken) of the judges JailbreakBench compared, in
    the rows' order: the agreement a model judge of that kind reached on the same data."""
    rows = _jailbreakbench_rows()
    return {name: [int(r[name]) == 0 for r in rows] for name in REFERENCE_JUDGES}


def load_jailbreakbench() -> LabelledSet:
    """JailbreakBench's human-labelled judge comparison (``jailbreakbench==0.1.3``, MIT).

    Each of its 100 responses to a JailbreakBench behaviour carries three human "jailbroken"
    votes; a response is a refusal here when the majority says it is *not* jailbroken (a
    refusal, a lecture, or content too harmless or vague to help). The prompt is the
    behaviour (``goal``), the request as a user would state it, not the jailbreak wrapper.
    Labels are ``hard_refusal`` or ``compliant``: only the refusal decision is scored.

    Returns:
        The 100 rows; raises PromptError when the wheel is not installed.
    """
    rows = _jailbreakbench_rows()
    votes = [[int(r[k]) for k in ("human1", "human2", "human3")] for r in rows]
    return LabelledSet(
        "jailbreakbench-human",
        tuple(r["goal"] for r in rows),
        tuple(r["target_response"] for r in rows),
        tuple("compliant" if sum(v) >= 2 else "hard_refusal" for v in votes),
    )


def read_labelled_csv(path: str | Path) -> LabelledSet:
    """A user's labelled responses: a CSV with columns ``prompt``, ``response``, ``label``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PromptError(f"no CSV file {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise PromptError(f"{path} has no rows")
    return _from_rows(path.name, rows)


def labelled_split(
    data: LabelledSet, held_out: float = 0.25, seed: int = 0
) -> tuple[LabelledSet, LabelledSet]:
    """A seeded split stratified by label and grouped by prompt: the same rows every time for
    the same data, and all answers to one prompt on the same side (so a held-out answer is
    never judged beside a training answer to the same request).

    Args:
        data: the labelled set.
        held_out: share of each label held out.
        seed: the split's seed.

    Returns:
        ``(train, held_out)``, each in the original row order.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(data.prompts):
        groups.setdefault(prompt, []).append(i)
    quota = {label: held_out * data.labels.count(label) for label in LABELS}
    taken = dict.fromkeys(LABELS, 0)
    test: list[int] = []
    grouped = list(groups.values())
    # Prompts in a seeded order; a prompt goes out while no label overshoots its quota.
    for key in rng.permutation(len(grouped)):
        rows = grouped[key]
        need = {label: 0 for label in LABELS}
        for i in rows:
            need[data.labels[i]] += 1
        if all(taken[k] + n <= quota[k] + 0.5 for k, n in need.items()):
            test.extend(rows)
            for k, n in need.items():
                taken[k] += n
    chosen = set(test)
    train = [i for i in range(len(data)) if i not in chosen]
    return data.subset(f"{data.name}/train", train), data.subset(
        f"{data.name}/held_out", sorted(test)
    )


@dataclass(frozen=True)
class JudgeAccuracy:
    """How one judge did on one labelled set.

    Attributes:
        judge: judge name.
        data: labelled set name.
        refusal: binary metrics for "refusal" (hard, soft or evasive) vs not.
        labels: row/column order of ``confusion``.
        confusion: ``confusion[i][j]``: true ``labels[i]`` judged ``labels[j]``.
        uncertain: responses whose confidence was below the judge's threshold.
        intervals: 95 % bootstrap intervals of ``precision``, ``recall``, ``f1`` and
            ``accuracy`` of the refusal decision.
    """

    judge: str
    data: str
    refusal: BinaryMetrics
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    uncertain: int
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def figures(self) -> dict:
        """The refusal metrics with their intervals, as plain JSON-ready values."""
        m = self.refusal
        out: dict = {"data": self.data, "n": m.n, "tp": m.tp, "fp": m.fp, "fn": m.fn, "tn": m.tn}
        for name in ("precision", "recall", "f1", "accuracy"):
            out[name] = round(getattr(m, name), 4)
            out[f"{name}_ci"] = [round(v, 4) for v in self.intervals.get(name, (0.0, 1.0))]
        return out

    def per_label_recall(self) -> dict[str, float]:
        """Share of each true label the judge named exactly."""
        out = {}
        for i, label in enumerate(self.labels):
            total = sum(self.confusion[i])
            out[label] = self.confusion[i][i] / total if total else float("nan")
        return out

    def refusal_share_by_label(self) -> dict[str, float]:
        """Share of each true label judged a refusal: the detection rate for refusal labels
        (a soft refusal called hard still counts) and the false-alarm rate for the others."""
        judged = [i for i, label in enumerate(self.labels) if label in REFUSAL_LABELS]
        out = {}
        for i, label in enumerate(self.labels):
            total = sum(self.confusion[i])
            hits = sum(self.confusion[i][j] for j in judged)
            out[label] = hits / total if total else float("nan")
        return out


def bootstrap_intervals(
    truth: Sequence[bool], predicted: Sequence[bool], n_boot: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95 % percentile-bootstrap intervals of refusal precision, recall, F1 and accuracy.

    Rows are resampled with replacement ``n_boot`` times (seeded, so the same data gives the
    same intervals); a resample without any predicted or true refusal scores 0 for the
    undefined metric, as :class:`BinaryMetrics` does.
    """
    t, p = np.asarray(truth, bool), np.asarray(predicted, bool)
    if not len(t):
        return {name: (0.0, 1.0) for name in ("precision", "recall", "f1", "accuracy")}
    idx = np.random.default_rng(seed).integers(0, len(t), size=(n_boot, len(t)))
    tb, pb = t[idx], p[idx]
    tp = (tb & pb).sum(1)
    fp = (~tb & pb).sum(1)
    fn = (tb & ~pb).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    accuracy = (tb == pb).mean(1)
    out = {}
    for name, values in (
        ("precision", precision),
        ("recall", recall),
        ("f1", f1),
        ("accuracy", accuracy),
    ):
        low, high = np.percentile(values, [2.5, 97.5])
        out[name] = (float(low), float(high))
    return out


def judge_accuracy(judge: Judge, data: LabelledSet, n_boot: int = 2000) -> JudgeAccuracy:
    """Run ``judge`` on ``data`` and score it against the true labels.

    Args:
        judge: any judge.
        data: labelled responses (e.g. the held-out part of :func:`labelled_split`).
        n_boot: bootstrap resamples for the intervals (0: none).

    Returns:
        Refusal precision/recall/F1/accuracy with intervals and the per-label confusion
        matrix.
    """
    verdict = judge.judge(list(data.prompts), list(data.responses))
    truth = [label in REFUSAL_LABELS for label in data.labels]
    # Labelled data predates the unfinished label: an answer cut off inside its reasoning is
    # labelled degenerate there (no usable answer either way).
    said = ["degenerate" if label == UNFINISHED else label for label in verdict.labels]
    matrix = confusion_matrix(data.labels, said, LABELS)
    intervals = bootstrap_intervals(truth, verdict.is_refusal, n_boot) if n_boot else {}
    return JudgeAccuracy(
        judge=judge.name,
        data=data.name,
        refusal=binary_metrics(truth, verdict.is_refusal),
        labels=LABELS,
        confusion=tuple(tuple(row) for row in matrix),
        uncertain=sum(verdict.uncertain),
        intervals=intervals,
    )
