"""Run reports: one self-contained HTML page, checked in headless Chromium.

The builder tests need no browser. The render tests open real pages in the Chromium that
``make test`` installs where it can (``make browser``); without one they skip and say why.
The report of a real ``abliterate`` run is checked in tests/test_search.py.
"""

from __future__ import annotations

import base64
import re

import pytest
import torch
from rendering import assert_not_blank, browser_or_skip

from circuitlab.circuits import HeadScores, head_scores_figure
from circuitlab.directions import extract_cones, extract_diff_means, extract_pca, extract_probe
from circuitlab.evaluate.scorecard import Scorecard
from circuitlab.export import Parity
from circuitlab.report import (
    BrowserNotFoundError,
    Report,
    directions_report,
    find_browser,
    plots,
    render_check,
)
from circuitlab.search import FrontPoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Anything that would make a browser fetch: a URL in src/href/url(), or a protocol-relative one.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//|url\(\s*["']?(?:[a-z]+:)?//""")


# -------------------------------------------------------------------------- real pieces
@pytest.fixture(scope="module")
def planted():
    """Activations [n, layer, d] where harmful prompts lie along a planted direction."""
    gen = torch.Generator().manual_seed(0)
    n, layers, d = 24, 5, 16
    direction = torch.zeros(d)
    direction[3] = 1.0
    harmless = torch.randn(n, layers, d, generator=gen)
    harmful = torch.randn(n, layers, d, generator=gen)
    harmful[:, 2:] += 4.0 * direction  # from layer 2 on
    harmful[: n // 2, 2:, 5] += 3.0  # two "flavours" of harmful prompts, for the cones
    return harmful, harmless


@pytest.fixture(scope="module")
def direction_sets(planted):
    harmful, harmless = planted
    refused, complied = [True] * len(harmful), [False] * len(harmless)
    return {
        "diff-means": extract_diff_means(harmful, harmless),
        "pca": extract_pca(harmful, harmless, k=2),
        "cones": extract_cones(harmful, harmless, n_cones=2, min_cone_size=3),
        "probe": extract_probe(harmful, harmless, refused, complied, n_folds=3),
    }


def front_and_choice() -> tuple[list[FrontPoint], FrontPoint]:
    params = {"method": "pca", "direction": 2.4, "attn_max_weight": 0.8}
    front = [
        FrontPoint(4, 0.0, 0.9, params, ()),
        FrontPoint(2, 0.1, 0.15, params, ()),
        FrontPoint(7, 0.5, 0.02, params, ()),
    ]
    return front, front[1]


def scorecards() -> tuple[Scorecard, Scorecard]:
    common = {"judge": "markers", "split": "test", "kl_k_tokens": 4, "prompts_hash": "abc"}
    base = Scorecard("base", refusals=40, n_harmful=50, over_refusals=2, n_harmless=50,
                     kl_first=0.0, kl_k=0.0, capability_correct=30, capability_n=60,
                     capability_delta=None, **common)  # fmt: skip
    edited = Scorecard("trial 2", refusals=3, n_harmful=50, over_refusals=1, n_harmless=50,
                       kl_first=0.12, kl_k=0.2, capability_correct=29, capability_n=60,
                       capability_delta=-1 / 60, **common)  # fmt: skip
    return base, edited


def parity() -> Parity:
    return Parity(9.2e-5, 1e-9, 4e-8, 15, 1, 16, 640, 16, 1e-3, 3e-5)


def head_scores() -> HeadScores:
    effect = -torch.arange(15.0).reshape(5, 3) / 15
    return HeadScores("activation", "refusal-logprob", effect, effect[:, :1], 1.0, 0.2, 8, 5)


def full_report(direction_sets) -> tuple[Report, int]:
    """A report with every kind of figure, from real objects; returns it and its image count."""
    front, chosen = front_and_choice()
    report = Report("every figure", command="circuitlab test --flag", seed=7)
    report.section("Directions")
    for ds in direction_sets.values():
        report.figure(plots.direction_curves(ds, mark=2.4), f"{ds.method} curves")
    report.section("Front").figure(plots.pareto_figure(front, chosen, [(0.3, 0.4)], 0.2))
    report.section("Scorecards").figure(plots.scorecard_figure(scorecards()))
    report.section("Export").figure(plots.parity_figure(parity()))
    report.section("Heads").figure(head_scores_figure(head_scores()))
    report.samples("harmful", [("How do I <b>x</b>?", "I can't help.", "Sure: step 1 …")])
    report.timings({"search": 12.5, "report": 0.4})
    return report, len(direction_sets) + 4


# ------------------------------------------------------------------------------ builder
def test_report_escapes_text_and_embeds_images_as_data_uris(direction_sets, tmp_path):
    hostile = '<script>alert("x")</script>'
    report = Report(f"title {hostile}", command=f"circuitlab {hostile}", seed=3)
    report.section(f"section {hostile}").text(f"text {hostile} & more")
    report.table(["a<b", "n"], [[hostile, 0.123456], ["plain", None]], caption=hostile)
    report.samples("samples", [(hostile, "<img src=x onerror=alert(1)>", "after")])
    report.figure(plots.direction_curves(direction_sets["pca"]), caption="curves")
    report.image(b"\x89PNG not really", caption="bytes")
    page = report.html()

    assert hostile not in page and "<img src=x" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 6
    assert page.count("<script>") == 1  # only the broken-image check
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "<link" not in page and "@import" not in page
    assert "0.1235" in page and "–" in page  # floats to 4 significant digits, None as a dash
    for fact in ("Seed: 3", "torch", "transformers", "transformer-lens", "optuna", "UTC"):
        assert fact in page

    path = report.write(tmp_path / "out" / "report.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary left


def test_the_check_catches_external_references():
    """The URL pattern above must itself find what it is meant to find."""
    for bad in ('<img src="https://x.org/a.png">', "<a href=//cdn.example/x>", "url('http://a')"):
        assert EXTERNAL.search(bad), bad
    assert not EXTERNAL.search('<img src="data:image/png;base64,AAAA"> <a href="#front">')


def test_directions_report_has_curves_and_layer_table(direction_sets):
    page = directions_report(direction_sets["cones"], "cones run", seed=0).html()
    assert "silhouette" in page and "cone(s) of sizes" in page and "Provenance" in page
    assert page.count("data:image/png;base64,") == 1
    probe = directions_report(direction_sets["probe"], "probe run").html()
    assert "probe acc" in probe


# ------------------------------------------------------------------------------ browser
def test_browser_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CIRCUITLAB_BROWSER", "no-such-browser-here")
    with pytest.raises(BrowserNotFoundError, match="CIRCUITLAB_BROWSER"):
        find_browser()
    monkeypatch.delenv("CIRCUITLAB_BROWSER")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrowserNotFoundError, match="apt-get install chromium"):
        render_check("whatever.html")


def test_every_figure_renders_in_a_headless_browser(direction_sets, tmp_path):
    browser_or_skip()
    report, n_figures = full_report(direction_sets)
    path = report.write(tmp_path / "report.html")
    check = render_check(path, screenshot=tmp_path / "shot.png")
    assert check.ok and check.broken_images == 0
    assert check.n_images == n_figures
    assert_not_blank(check.screenshot)


def test_a_broken_image_is_detected(tmp_path):
    browser_or_skip()
    report = Report("broken").image(b"this is not a PNG", caption="garbage")
    report.image(base64.b64decode(base64.b64encode(PNG_MAGIC + b"\0" * 20)), caption="truncated")
    check = render_check(report.write(tmp_path / "broken.html"))
    assert check.n_images == 2 and check.broken_images == 2 and not check.ok
