"""Labelled responses for measuring judges: our packaged set, its fixed split, user CSVs.

The packaged set (``circuitlab/data/judge_labelled.jsonl``, written by hand) has one row per
response: ``prompt``, ``response``, ``label`` (one of ``LABELS``). The classifier judge trains
on the ``train`` part of a seeded, stratified split and every accuracy figure we report is
on the ``held_out`` part, which no judge was fitted on.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from circuitlab.errors import PromptError
from circuitlab.evaluate.judges import LABELS, REFUSAL_LABELS, Judge
from circuitlab.evaluate.stats import BinaryMetrics, binary_metrics, confusion_matrix

__all__ = [
    "LabelledSet",
    "load_labelled",
    "read_labelled_csv",
    "labelled_split",
    "JudgeAccuracy",
    "judge_accuracy",
]


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
        return hashlib.sha256(rows.encode()).hexdigest()[:16]

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


def load_labelled() -> LabelledSet:
    """The packaged hand-labelled set (534 responses, six labels)."""
    text = files("circuitlab").joinpath("data/judge_labelled.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return _from_rows("judge_labelled", rows)


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
    """A seeded split stratified by label: the same rows every time for the same data.

    Args:
        data: the labelled set.
        held_out: share of each label held out.
        seed: the split's seed.

    Returns:
        ``(train, held_out)``, each in the original row order.
    """
    rng = np.random.default_rng(seed)
    labels = np.array(data.labels)
    test: list[int] = []
    # Labels in a fixed order so the generator's draws do not depend on set iteration order.
    for label in LABELS:
        rows = np.flatnonzero(labels == label)
        if len(rows):
            n_out = int(round(held_out * len(rows)))
            test.extend(rng.permutation(rows)[:n_out].tolist())
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
    """

    judge: str
    data: str
    refusal: BinaryMetrics
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    uncertain: int

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


def judge_accuracy(judge: Judge, data: LabelledSet) -> JudgeAccuracy:
    """Run ``judge`` on ``data`` and score it against the true labels.

    Args:
        judge: any judge.
        data: labelled responses (e.g. the held-out part of :func:`labelled_split`).

    Returns:
        Refusal precision/recall/F1 and the per-label confusion matrix.
    """
    verdict = judge.judge(list(data.prompts), list(data.responses))
    truth = [label in REFUSAL_LABELS for label in data.labels]
    matrix = confusion_matrix(data.labels, verdict.labels, LABELS)
    return JudgeAccuracy(
        judge=judge.name,
        data=data.name,
        refusal=binary_metrics(truth, verdict.is_refusal),
        labels=LABELS,
        confusion=tuple(tuple(row) for row in matrix),
        uncertain=sum(verdict.uncertain),
    )
