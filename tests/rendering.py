"""Helpers for tests that open reports in headless Chromium (skip when there is none)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuitlab.report import BrowserNotFoundError, find_browser


def browser_or_skip() -> str:
    """The browser, or skip the test saying why."""
    try:
        return find_browser()
    except BrowserNotFoundError as exc:
        pytest.skip(f"no headless browser to render with ({exc}); `make browser` installs one")


def assert_not_blank(path: Path) -> None:
    """A screenshot of a real page: full size, with many distinct colours (text, plots)."""
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000, pixels.shape
    distinct = torch.from_numpy((pixels[..., :3] * 255).round().reshape(-1, 3)).unique(dim=0)
    assert len(distinct) > 50, f"{len(distinct)} distinct colours: a blank page?"
