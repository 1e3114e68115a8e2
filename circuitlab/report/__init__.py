"""Run reports: one self-contained static HTML page per run, checked in a headless browser.

:class:`Report` builds the page (inline CSS, figures as base64 PNG data URIs, nothing
fetched); :mod:`~circuitlab.report.plots` draws the figures; the builders in
:mod:`~circuitlab.report.runs` assemble the reports of ``extract``, ``discover`` and
``abliterate``; :func:`render_check` opens a page in headless Chromium and counts images
that did not decode.

Example:
    >>> report = Report("my run", command="circuitlab extract smollm2-135m", seed=0)
    >>> report.section("Directions").figure(plots.direction_curves(ds), "per-layer curves")
    >>> path = report.write("cache/directions/run/report.html")
    >>> render_check(path).broken_images
    0
"""

import lazy_loader

# Submodules load on first use of a name, so importing one light module (plain data)
# does not pull in torch-heavy siblings.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["plots"],
    submod_attrs={
        "html": ["Report", "versions"],
        "render": ["BrowserNotFoundError", "RenderCheck", "find_browser", "render_check"],
        "sae": ["sae_report"],
        "runs": [
            "Clock",
            "abliteration_report",
            "circuit_report",
            "command_line",
            "directions_report",
            "sample_completions",
        ],
    },
)
