"""How far each judge agrees with human labels, carried beside every rate it produces.

Two sources, the later winning: the packaged ``circuitlab/data/judge_agreement.json``
(written by ``experiments/judge_benchmark.py`` for the offline judges) and
``<cache>/judges/agreement.json`` (written by ``circuitlab judge-eval`` for every judge it
measures on JailbreakBench's human labels, model judges included). A judge that was never
measured says so instead of borrowing a figure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

from circuitlab._resources import atomic_write

__all__ = [
    "BENCHMARK",
    "agreement_note",
    "describe_judge",
    "load_agreements",
    "record_agreement",
    "with_agreement",
]

log = logging.getLogger(__name__)

BENCHMARK = "jailbreakbench-human"


def _cache_file(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "judges" / "agreement.json"


def load_agreements(cache_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Judge name -> its measured agreement (packaged figures, then this cache's)."""
    text = files("circuitlab").joinpath("data/judge_agreement.json").read_text(encoding="utf-8")
    out = dict(json.loads(text).get("judges", {}))
    if cache_dir is not None and _cache_file(cache_dir).is_file():
        try:
            out.update(json.loads(_cache_file(cache_dir).read_text(encoding="utf-8")))
        except json.JSONDecodeError:
            log.warning("ignoring unreadable %s", _cache_file(cache_dir))
    return out


def record_agreement(cache_dir: str | Path, judge: str, figures: dict[str, Any]) -> Path:
    """Store one judge's agreement under the cache (replacing its earlier figures)."""
    path = _cache_file(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    current[judge] = figures
    return atomic_write(path, json.dumps(current, indent=1, sort_keys=True) + "\n")


def agreement_note(judge: str, cache_dir: str | Path | None = None) -> str:
    """A short phrase: the judge's accuracy against human labels with its interval, or that
    it was never measured."""
    figures = load_agreements(cache_dir).get(judge)
    if not figures:
        return "agreement with human labels not measured (run circuitlab judge-eval)"
    low, high = figures["accuracy_ci"]
    return (
        f"{figures['accuracy']:.2f} [{low:.2f}, {high:.2f}] accuracy on "
        f"{figures.get('data', BENCHMARK)} (n={figures['n']})"
    )


def with_agreement(judge: Any, cache_dir: str | Path | None = None) -> Any:
    """The judge with its ``agreement`` note set (a copy for frozen dataclasses)."""
    note = agreement_note(judge.name, cache_dir)
    if dataclasses.is_dataclass(judge) and judge.__dataclass_params__.frozen:
        if "agreement" in {f.name for f in dataclasses.fields(judge)}:
            return dataclasses.replace(judge, agreement=note)
        return judge
    judge.agreement = note
    return judge


def describe_judge(judge: Any) -> str:
    """The judge's name, and its agreement with human labels where it is known."""
    note = getattr(judge, "agreement", "")
    return f"{judge.name} ({note})" if note else judge.name
