"""Progress display that library code can ask for without configuring any global state.

On a terminal: a rich bar with ETA on stderr. Elsewhere (CI logs, ``nohup``, pipes), where a
live bar would print nothing useful: a plain line on stderr every 10 %, or every 20 seconds
while work goes on (``advance(0)`` ticks without progress, so a long batch still prints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["note", "progress_bar"]

LOG_EVERY_S = 20.0


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


@contextmanager
def _plain(total: int, description: str, console: Console) -> Iterator[Callable[[int], None]]:
    start = time.monotonic()
    state = {"done": 0, "logged_at": start, "logged_step": 0}

    def advance(n: int = 1) -> None:
        state["done"] += n
        done, now = state["done"], time.monotonic()
        step = 10 * done // max(total, 1)
        if step == state["logged_step"] and now - state["logged_at"] < LOG_EVERY_S:
            return
        state["logged_at"], state["logged_step"] = now, step
        elapsed = now - start
        eta = elapsed / done * (total - done) if done else float("nan")
        eta_text = _clock(eta) if done else "?"
        console.print(
            f"{description}: {done}/{total}, {_clock(elapsed)} elapsed, eta {eta_text}",
            highlight=False,
        )

    yield advance


def note(message: str, enabled: bool = True) -> None:
    """One line on stderr saying which long step starts now (so no phase runs silent)."""
    if enabled:
        Console(stderr=True).print(
            f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", highlight=False
        )


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows progress with an ETA only when ``enabled``."""
    if not enabled:
        yield lambda n=1: None
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        with _plain(total, description, console) as advance:
            yield advance
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
