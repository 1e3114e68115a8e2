"""Hand a model, live edit included, to EleutherAI's lm-evaluation-harness (``lm-eval``).

The harness is optional (``pip install lm-eval``, or circuitlab's ``lmeval`` extra) and is
imported only here, when asked for. Its Hugging Face wrapper gets the very module the hooks
are registered on (``model.hf_model``), and the run happens inside :func:`apply`, so every
forward pass the harness makes goes through the edit.

Task data: the harness's own tasks download from the Hugging Face hub. Offline, point
``include_path`` at a folder of task YAML files whose data is local (``dataset_path: json``
with ``dataset_kwargs: {data_files: ...}``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitlab.engine import HookedModel
from circuitlab.errors import ConfigError, HubUnreachableError
from circuitlab.hooks import apply
from circuitlab.interventions import Intervention

__all__ = ["lm_eval_handoff", "lm_eval_tasks", "require_lm_eval"]

log = logging.getLogger(__name__)


def require_lm_eval():
    """The ``lm_eval`` package, or a :class:`ConfigError` saying how to install it."""
    try:
        import lm_eval
    except ImportError as exc:
        raise ConfigError(
            "the lm-eval hand-off needs EleutherAI's harness: pip install lm-eval "
            "(or circuitlab[lmeval])"
        ) from exc
    return lm_eval


def _names(tasks: str | Sequence[str]) -> list[str]:
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError("lm-eval: no task named")
    return names


def lm_eval_tasks(tasks: str | Sequence[str], include_path: str | Path | None = None):
    """lm-eval's ``TaskManager`` that knows every task in ``tasks``, checked before any
    model runs.

    A folder given as ``include_path`` is indexed alone first: when it has every task, the
    harness's own index (thousands of files, seconds to read) is skipped.

    Args:
        tasks: task, group or tag names (a list, or one comma-separated string).
        include_path: a folder of the user's task YAML files.

    Returns:
        The task manager.

    Raises:
        ConfigError: lm-eval is not installed, or a name is not a task it knows.
    """
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    names = _names(tasks)
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise ConfigError(f"lm-eval task folder {include_path} does not exist")
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(n in manager.all_tasks for n in names):
            return manager
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [n for n in names if n not in manager.all_tasks and not Path(n).is_file()]
    if unknown:
        raise ConfigError(f"lm-eval has no task {', '.join(unknown)}")
    return manager


@contextmanager
def _rng_kept() -> Iterator[None]:
    """The harness seeds Python's, NumPy's and torch's global generators; put them back."""
    py, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def _check_position_free(interventions: Sequence[Intervention]) -> None:
    """lm-eval scores prompt + answer in one pass, so "the prompt's last token" is not known
    to the hooks: routed and dynamic edits would decide on the answer's last token, and an
    addition at the last or generated positions would land after every scored logit."""
    for iv in interventions:
        if iv.per_prompt:
            raise ConfigError(
                f"{type(iv).__name__} depends on where the prompt ends, which lm-eval's "
                "log-likelihood passes hide; use its foldable_alternative() (or an addition "
                "with positions='all') for lm-eval, or circuitlab's own generation-based "
                "scorecard"
            )


def lm_eval_handoff(
    model: HookedModel,
    tasks: str | Sequence[str],
    interventions: Sequence[Intervention] = (),
    limit: int | float | None = None,
    batch_size: int = 8,
    include_path: str | Path | None = None,
    task_manager: Any = None,
    **options: Any,
) -> dict:
    """Run lm-eval ``tasks`` on ``model`` under ``interventions`` (applied live).

    Args:
        model: the hooked model; the harness wraps its ``hf_model`` and ``tokenizer``.
        tasks: lm-eval task, group or tag names (a list, or one comma-separated string).
        interventions: edits applied for the whole run, in order (none: the base model).
        limit: examples per task (a fraction when below 1; None: all).
        batch_size: sequences per forward pass.
        include_path: a folder of the user's task YAML files (for offline, local tasks).
        task_manager: a :func:`lm_eval_tasks` result to reuse (default: built here).
        options: passed to ``lm_eval.simple_evaluate`` (``num_fewshot``, ``log_samples``,
            ``apply_chat_template``, ``bootstrap_iters``...).

    Returns:
        lm-eval's results dict (``results`` per task; ``lm_eval.utils.make_table`` prints
        it).

    Raises:
        ConfigError: lm-eval is not installed, a task name it does not know, or an
            intervention that depends on where the prompt ends (see below).
        HubUnreachableError: a task's data could not be downloaded.

    Example:
        >>> results = lm_eval_handoff(model, "arc_easy", [ablation], limit=100)
        >>> results["results"]["arc_easy"]["acc,none"]
    """
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    names = _names(tasks)
    manager = task_manager or lm_eval_tasks(names, include_path)
    _check_position_free(interventions)
    lm = HFLM(pretrained=model.hf_model, tokenizer=model.tokenizer, batch_size=batch_size)
    options.setdefault("log_samples", False)
    try:
        with _rng_kept(), apply(model, *interventions):
            return lm_eval.simple_evaluate(
                model=lm, tasks=names, limit=limit, task_manager=manager, **options
            )
    except ConnectionError as exc:
        raise HubUnreachableError(f"lm-eval could not fetch task data: {exc}") from exc
