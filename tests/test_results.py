"""Result records and the pages rendered from them (docs/results.md, the README's table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitlab.report.results import (
    README_BEGIN,
    README_END,
    ResultRecord,
    load_records,
    readme_block,
    render,
)

ROOT = Path(__file__).resolve().parent.parent


def _record(rows, weights="aaaa", **kw) -> ResultRecord:
    return ResultRecord.new(
        "demo", "demo on the organism", ["", "before", "after"], rows,
        command="make demo", weights=weights, readme=True, **kw,
    )  # fmt: skip


def test_rerun_keeps_the_old_table_as_dated_history(tmp_path):
    _record([["refusals", "64/64", "2/64"]], date="2026-01-01").save(tmp_path)
    _record([["refusals", "64/64", "1/64"]], weights="bbbb").save(tmp_path)
    (rec,) = load_records(tmp_path)
    assert rec.rows == [["refusals", "64/64", "1/64"]]
    assert [h["date"] for h in rec.history] == ["2026-01-01"]
    assert rec.history[0]["rows"][0][2] == "2/64" and rec.history[0]["weights"] == "aaaa"
    # The same table again is not history.
    _record([["refusals", "64/64", "1/64"]], weights="bbbb").save(tmp_path)
    assert len(load_records(tmp_path)[0].history) == 1
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_render_splices_the_readme_and_check_sees_staleness(tmp_path):
    records = tmp_path / "records"
    _record([["refusals", "64/64", "2/64"]]).save(records)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold\n{README_END}\n\nmore\n")
    page = tmp_path / "results.md"
    assert set(render(records, page, readme, check=True)) == {page, readme}
    render(records, page, readme)
    assert render(records, page, readme, check=True) == []
    text = readme.read_text()
    assert text.startswith("# x\n") and text.endswith("\n\nmore\n")
    assert "| refusals | 64/64 | 2/64 |" in text and "`make demo`" in text
    assert "| refusals | 64/64 | 2/64 |" in page.read_text()
    # A rerun with a new figure makes both pages stale until rendered again.
    _record([["refusals", "64/64", "3/64"]]).save(records)
    assert set(render(records, page, readme, check=True)) == {page, readme}


def test_record_of_another_format_is_refused(tmp_path):
    path = _record([["a", "b", "c"]]).save(tmp_path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        load_records(tmp_path)


def test_readme_without_markers_is_an_error(tmp_path):
    _record([["a", "b", "c"]]).save(tmp_path / "r")
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        render(tmp_path / "r", tmp_path / "p.md", tmp_path / "README.md")


@pytest.mark.skipif(not (ROOT / "docs" / "results").is_dir(), reason="no records committed")
def test_committed_pages_are_rendered_from_the_committed_records():
    """The README's results table and docs/results.md are the renderer's output, unedited."""
    stale = render(ROOT / "docs" / "results", ROOT / "docs" / "results.md", ROOT / "README.md",
                   check=True)  # fmt: skip
    assert stale == [], f"run `make results`: {stale} differ from docs/results/*.json"
    assert readme_block(load_records(ROOT / "docs" / "results")) in (ROOT / "README.md").read_text()
