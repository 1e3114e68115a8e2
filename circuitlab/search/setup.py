"""The record of what a study depends on, written by its first worker and checked by
every later one (and by every resumed run, on any host)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import optuna

from circuitlab.search.objective import ObjectiveConfig
from circuitlab.search.space import SearchSpace
from circuitlab.search.storage import SearchError

__all__ = ["SETUP_VERSION", "StudySetup", "check_setup"]

log = logging.getLogger(__name__)

SETUP_VERSION = 1


@dataclass(frozen=True)
class StudySetup:
    """What a study depends on, recorded once by its first worker (as plain JSON in
    ``study.user_attrs["setup"]``) and checked by every later one.

    Attributes:
        version: the record's format (:data:`SETUP_VERSION`).
        model: the weights' fingerprint.
        prompts: hashes of the prompt splits the search reads (never the test split).
        space, objective: the study's own search space and objective settings.
        directions: the stored direction sets by method (``{"hash": ...}``; studies set up
            before directions travelled in the storage also name a ``folder``).
        model_name, model_type, n_layers: what the model was (for reports).
        seed: the extraction and sampler seed.
        profile: the warm-start profile's name, or None.
        family: the model family (given or detected).
        judge: the refusal judge's name (None in studies older than the record of it).
    """

    version: int
    model: str
    prompts: Mapping[str, Any]
    space: SearchSpace
    objective: ObjectiveConfig
    directions: Mapping[str, Mapping[str, str]]
    model_name: str | None = None
    model_type: str | None = None
    n_layers: int | None = None
    seed: int | None = None
    profile: str | None = None
    family: str | None = None
    judge: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON record (the space in its minimal form, as resume checks compare it)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["space"], data["objective"] = self.space.as_dict(), self.objective.as_dict()
        data["prompts"], data["directions"] = dict(self.prompts), dict(self.directions)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySetup:
        if data.get("version") != SETUP_VERSION:
            raise SearchError(
                f"study setup version {data.get('version')}, expected {SETUP_VERSION}"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["space"] = SearchSpace.from_dict(data["space"])
        values["objective"] = ObjectiveConfig.from_dict(data["objective"])
        return cls(**values)

    @classmethod
    def of(cls, study: optuna.Study) -> StudySetup:
        """The setup a study recorded (a study still being set up has none: KeyError)."""
        return cls.from_dict(study.user_attrs["setup"])


def check_setup(
    setup: StudySetup,
    fingerprint: str,
    hashes: dict,
    space: SearchSpace,
    objective: ObjectiveConfig,
    judge: str,
) -> None:
    """Raise SearchError unless the study was run on this model, these prompts and with this
    judge; warn when the caller's space or objective differ (the study's own win)."""
    if setup.model != fingerprint:
        raise SearchError(
            f"the study was run on model {setup.model}, this is {fingerprint}; "
            "use another study name"
        )
    if setup.prompts != hashes:
        raise SearchError("the study was run on other prompts (sizes or seed); use another name")
    # Refusal rates judged differently do not belong on one front (older setups: no record).
    if setup.judge is not None and setup.judge != judge:
        raise SearchError(
            f"the study's trials were judged by {setup.judge}, this run's judge is {judge}; "
            "use the same --judge or another study name"
        )
    # Through JSON, as the stored setup went: tuples come back as lists.
    stored, asked = (
        json.loads(json.dumps({"space": s.as_dict(), "objective": o.as_dict()}))
        for s, o in ((setup.space, setup.objective), (space, objective))
    )
    if stored != asked:
        log.warning("resuming with the study's own search space and objective settings")
