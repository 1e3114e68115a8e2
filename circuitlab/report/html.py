"""Report: one self-contained static HTML page (inline CSS, images as data URIs).

A report must open anywhere, years later, with no network and no files beside it: every
image is a base64 PNG inside the page, the style sheet is inline, and nothing is fetched.
The one script only counts images that failed to decode and writes the count to
``document.body.dataset.brokenImages``, so a headless browser can prove the page renders
(see :func:`circuitlab.report.render_check`).

Example:
    >>> report = Report("extract smollm2-135m", command="circuitlab extract ...", seed=0)
    >>> report.section("Directions").text("Difference of means at every layer.")
    >>> report.table(["layer", "norm"], [[0, 0.0], [1, 1.5]])
    >>> report.write("cache/directions/run/report.html")
"""

from __future__ import annotations

import base64
import html
import io
import platform
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from circuitlab._resources import atomic_write

__all__ = ["Report", "VERSIONED", "versions"]

# The packages whose versions decide what a run computes.
VERSIONED = ("torch", "transformers", "transformer-lens", "optuna", "matplotlib", "circuitlab")

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24;
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
p.meta, nav { color: #57606a; }
nav a { margin-right: 12px; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 10px 0 16px; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; color: #57606a; font-size: 0.9em; padding-top: 4px;
          text-align: left; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 0.9em; }
table.samples td { white-space: pre-wrap; max-width: 380px; font-size: 0.9em; }
footer { margin-top: 3em; border-top: 1px solid #d0d7de; padding-top: 8px; color: #57606a;
         font-size: 0.88em; }
code { font-size: 0.92em; background: #f6f8fa; padding: 1px 4px; }
"""

# After load, count images that did not decode; a headless browser's --dump-dom shows it.
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var broken = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (!img.complete || img.naturalWidth === 0) { broken++; }
  }
  document.body.dataset.brokenImages = String(broken);
});
"""


def versions() -> dict[str, str]:
    """Python and the installed versions of :data:`VERSIONED` ("not installed" if absent)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    """A table cell: numbers right-aligned (floats to 4 significant digits), all escaped."""
    if isinstance(value, bool) or value is None:
        return f"<td>{'–' if value is None else _e(value)}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{_e(value)}</td>"


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


class Report:
    """A run report, built block by block and written as one HTML file.

    Every method escapes what it is given and returns the report, so calls chain.

    Args:
        title: the page title and heading.
        command: the command line of the run (shown in the footer).
        seed: the run's seed (footer).
        subtitle: one line under the title (model, study, ...).
    """

    def __init__(
        self,
        title: str,
        *,
        command: str | None = None,
        seed: int | None = None,
        subtitle: str | None = None,
    ) -> None:
        self.title = title
        self.command = command
        self.seed = seed
        self.subtitle = subtitle
        self._blocks: list[str] = []
        self._sections: list[tuple[str, str]] = []

    def section(self, heading: str) -> Report:
        """Start a section (listed in the page's table of contents)."""
        anchor = _slug(heading, {a for a, _ in self._sections})
        self._sections.append((anchor, heading))
        self._blocks.append(f'<h2 id="{anchor}">{_e(heading)}</h2>')
        return self

    def subheading(self, heading: str) -> Report:
        self._blocks.append(f"<h3>{_e(heading)}</h3>")
        return self

    def text(self, text: str) -> Report:
        """A paragraph of plain text (escaped; blank lines start new paragraphs)."""
        for para in re.split(r"\n\s*\n", text.strip()):
            self._blocks.append(f"<p>{_e(para)}</p>")
        return self

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        caption: str | None = None,
        css_class: str | None = None,
    ) -> Report:
        """A table; floats are shown to 4 significant digits, None as a dash."""
        head = "".join(f"<th>{_e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
        cap = f"<caption>{_e(caption)}</caption>" if caption else ""
        cls = f' class="{_e(css_class)}"' if css_class else ""
        self._blocks.append(f"<table{cls}>{cap}<thead><tr>{head}</tr></thead>{body}</table>")
        return self

    def image(self, png: bytes, caption: str | None = None, alt: str | None = None) -> Report:
        """Embed PNG bytes as a data URI."""
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
        alt_text = _e(alt or caption or "figure")
        self._blocks.append(
            f'<figure><img alt="{alt_text}" src="data:image/png;base64,{data}">{cap}</figure>'
        )
        return self

    def figure(self, fig, caption: str | None = None, alt: str | None = None) -> Report:
        """Embed a matplotlib figure as PNG and close it (if pyplot knows it)."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
        return self.image(buffer.getvalue(), caption, alt)

    def samples(self, title: str, rows: Iterable[tuple[str, str, str]]) -> Report:
        """Completions side by side: (prompt, before, after) per row."""
        self.subheading(title)
        return self.table(["prompt", "before", "after"], rows, css_class="samples")

    def timings(self, seconds: Mapping[str, float]) -> Report:
        """A table of named durations in seconds."""
        rows = [(name, round(float(value), 2)) for name, value in seconds.items()]
        return self.table(["step", "seconds"], rows)

    def html(self) -> str:
        """The whole page."""
        nav = " ".join(f'<a href="#{a}">{_e(h)}</a>' for a, h in self._sections)
        subtitle = f'<p class="meta">{_e(self.subtitle)}</p>' if self.subtitle else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(self.title)}</title><style>{STYLE}</style></head>\n<body>"
            f"<h1>{_e(self.title)}</h1>{subtitle}"
            + (f"<nav>{nav}</nav>" if nav else "")
            + "\n".join(self._blocks)
            + self._footer()
            + f"<script>{CHECK_SCRIPT}</script></body></html>\n"
        )

    def _footer(self) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        parts = [f"{_e(k)} {_e(v)}" for k, v in versions().items()]
        lines = [
            f"<p>Written {stamp} by circuitlab. Seed: {_e(self.seed)}.</p>",
            f"<p>Command: <code>{_e(self.command or '(library call)')}</code></p>",
            f"<p>Versions: {' · '.join(parts)}</p>",
        ]
        return "<footer>" + "".join(lines) + "</footer>"

    def write(self, path: str | Path) -> Path:
        """Write the page atomically (a temporary file renamed into place).

        Returns:
            The path written.
        """
        return atomic_write(path, self.html())
