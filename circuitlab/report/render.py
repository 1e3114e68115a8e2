"""Render a report in headless Chromium: count its images and the ones that did not decode.

The report's own script writes the broken-image count to ``body[data-broken-images]`` after
the page's load event; ``--dump-dom`` prints the DOM after load, so the count is read from
it. A screenshot can be taken in the same run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from circuitlab.errors import CircuitlabError

__all__ = ["BROWSERS", "BrowserNotFoundError", "RenderCheck", "find_browser", "render_check"]

# Tried in order on PATH when CIRCUITLAB_BROWSER is not set.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run")


class BrowserNotFoundError(CircuitlabError):
    """No headless Chromium to render a report with."""


@dataclass(frozen=True)
class RenderCheck:
    """What a headless browser saw of a report.

    Attributes:
        broken_images: images that did not decode (``None``: the page's check never ran).
        n_images: ``<img>`` elements in the rendered DOM.
        screenshot: the PNG written, if one was asked for.
        browser: the browser executable used.
    """

    broken_images: int | None
    n_images: int
    screenshot: Path | None
    browser: str

    @property
    def ok(self) -> bool:
        return self.broken_images == 0


def find_browser() -> str:
    """The Chromium to use: ``$CIRCUITLAB_BROWSER``, else the first of :data:`BROWSERS`.

    Raises:
        BrowserNotFoundError: none found.
    """
    named = os.environ.get("CIRCUITLAB_BROWSER")
    if named:
        found = shutil.which(named)
        if found is None:
            raise BrowserNotFoundError(f"CIRCUITLAB_BROWSER={named!r} is not an executable")
        return found
    for name in BROWSERS:
        found = shutil.which(name)
        if found is not None:
            return found
    raise BrowserNotFoundError(
        f"no headless browser found (tried {', '.join(BROWSERS)} on PATH): install Chromium "
        "(Debian: apt-get install chromium) or set CIRCUITLAB_BROWSER"
    )


def render_check(
    path: str | Path,
    screenshot: str | Path | None = None,
    *,
    browser: str | None = None,
    timeout: float = 120.0,
) -> RenderCheck:
    """Open ``path`` in headless Chromium and count its images and broken images.

    Args:
        path: the HTML file.
        screenshot: also write a 1280 x 2000 PNG of the top of the page here.
        browser: the executable (default :func:`find_browser`).
        timeout: seconds before the browser is given up on.

    Returns:
        The :class:`RenderCheck`.

    Raises:
        BrowserNotFoundError: no browser.
        CircuitlabError: the browser failed or timed out.
    """
    browser = browser or find_browser()
    url = Path(path).resolve().as_uri()
    extra = []
    if screenshot is not None:
        screenshot = Path(screenshot).resolve()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        extra = [f"--screenshot={screenshot}", "--window-size=1280,2000"]
    # A fresh profile per run: concurrent checks would otherwise fight over one lock.
    with tempfile.TemporaryDirectory(
        prefix="circuitlab-browser-", ignore_cleanup_errors=True
    ) as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, "--dump-dom", url]
        returncode, stdout, stderr = _run_group(command, timeout, f"{browser} on {path}")
    if returncode != 0 or "<body" not in stdout:
        tail = stderr.strip().splitlines()[-3:]
        raise CircuitlabError(f"{browser} failed on {path} (exit {returncode}): {tail}")
    found = re.search(r'<body[^>]*\bdata-broken-images="(\d+)"', stdout)
    return RenderCheck(
        broken_images=int(found.group(1)) if found else None,
        n_images=len(re.findall(r"<img\b", stdout)),
        screenshot=screenshot if screenshot is not None and screenshot.is_file() else None,
        browser=browser,
    )


def _run_group(command: list[str], timeout: float, what: str) -> tuple[int, str, str]:
    """Run ``command`` in its own process group; on timeout kill the whole group (Chromium's
    renderer and zygote children would otherwise outlive it)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise CircuitlabError(f"{what}: no page after {timeout:g} s") from exc
    return process.returncode, stdout, stderr
