"""Result records and the pages rendered from them (docs/results.md, the README's table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitlab.report.results import (
    ResultRecord,
    load_records,
    readme_block,
    readme_markers,
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
    begin, end = readme_markers("demo")
    readme.write_text(f"# x\n\n{begin}\nold\n{end}\n\nmore\n")
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
    readme = (ROOT / "README.md").read_text()
    for record in load_records(ROOT / "docs" / "results"):
        assert not record.readme or readme_block(record) in readme


def test_records_read_what_the_runs_wrote(tmp_path):
    """A `testbed check --json` file and an export manifest's scorecards become tables."""
    from circuitlab.report.results import from_export, from_testbed_check

    check = tmp_path / "check.json"
    check.write_text(json.dumps({"JBB": {"name": "JBB", "refused": 9, "n": 10, "low": 0.6,
                                         "high": 0.98, "rate": 0.9, "answers": []}}))  # fmt: skip
    rec = from_testbed_check(check, "c", "circuitlab testbed check", "t")
    assert rec.rows == [["JBB", "9/10 [60.0%, 98.0%]"]]

    card = {"judge": "markers", "kl_k_tokens": 4, "degenerate": 1, "capability_n": 0}
    derived = {"refusal_ci": [0.9, 1.0], "over_refusal_ci": [0.0, 0.1]}
    base = {**card, "model": "base", "refusals": 8, "n_harmful": 8, "over_refusals": 0,
            "n_harmless": 8, "kl_first": 0.0, "kl_k": 0.0, "derived": derived}  # fmt: skip
    edited = {**base, "model": "trial 3", "refusals": 1, "kl_first": 0.25, "kl_k": 0.125}
    parity = {"max_abs_logit_diff": 2e-4, "tolerance": 1e-3, "greedy_agree": 4, "n_prompts": 4}
    scorecard = {"study": "demo-m-abcd1234-seed0", "rule": "r", "chosen": {"trial": 3},
                 "test": {"base": base, "edited": edited}}  # fmt: skip
    (tmp_path / "circuitlab_manifest.json").write_text(
        json.dumps({"scorecard": scorecard, "parity": parity})
    )
    rec = from_export(tmp_path, "demo", "make demo", "demo")
    assert rec.weights == "abcd1234" and rec.columns == ["", "base", "trial 3"]
    assert rec.rows[0][1:] == ["8/8 [90.0%, 100.0%]", "1/8 [90.0%, 100.0%]"]
    assert rec.rows[2][2] == "0.250 / 0.125" and "greedy 4/4" in rec.rows[-1][2]
    (tmp_path / "circuitlab_manifest.json").write_text(json.dumps({"parity": parity}))
    with pytest.raises(ValueError, match="no test-split scorecards"):
        from_export(tmp_path, "demo", "make demo", "demo")


def test_side_by_side_pools_each_tool_over_its_seeds(tmp_path):
    """The side-by-side script's JSON becomes one column per tool: refusals pooled over seeds
    (and per seed), KL as mean [min, max]."""
    from circuitlab.report.results import from_side_by_side

    def card(refusals, kl):
        return {"judge": "markers", "refusals": refusals, "n_harmful": 10, "over_refusals": 0,
                "n_harmless": 5, "kl_first": kl, "kl_k": 2 * kl, "kl_k_tokens": 4,
                "degenerate": 0}  # fmt: skip

    cards = {"organism": card(9, 0.0), "heretic-seed0": card(1, 0.1),
             "heretic-seed1": card(2, 0.3), "circuitlab-seed0": card(0, 0.2)}  # fmt: skip
    runs = {k: {"wall_s": 60.0, "cpu_s": 50.0} for k in cards if k != "organism"}
    settings = {"trials": 4, "threads": 1, "seeds": [0, 1], "n_train": 8, "n_search": 4,
                "n_kl": 4, "max_new_tokens": 16}  # fmt: skip
    path = tmp_path / "sbs.json"
    path.write_text(json.dumps({"settings": settings, "runs": runs, "load_average": [1, 1, 1],
                                "scores": {"cards": cards}}))  # fmt: skip
    rec = from_side_by_side(path, "side-by-side", "python experiments/heretic_side_by_side.py", "t")
    assert rec.columns[2:] == ["Heretic 1.4 (2 seeds)", "circuitlab abliterate (1 seed)"]
    assert rec.rows[0][2].startswith("3/20 [") and "per seed 1, 2 of 10" in rec.rows[0][2]
    assert rec.rows[0][3].startswith("0/10 [")
    assert rec.rows[2][2:] == ["0.200 [0.100, 0.300]", "0.200"]
    assert not any(row[0].startswith("search:") for row in rec.rows)  # no trial times: no row
    times = {"heretic-seed0": (120.0, 4, 4), "heretic-seed1": (80.0, 4, 4),
             "circuitlab-seed0": (20.0, 3, 4)}  # fmt: skip
    for key, (seconds, generating, trials) in times.items():
        runs[key]["search"] = {"search_s": seconds + 1, "trials": trials,
                               "generating": generating, "generating_s": seconds}  # fmt: skip
    path.write_text(json.dumps({"settings": settings, "runs": runs, "load_average": [1, 1, 1],
                                "scores": {"cards": cards}}))  # fmt: skip
    rec = from_side_by_side(path, "side-by-side", "python experiments/heretic_side_by_side.py", "t")
    assert rec.rows[-1][2:] == ["25.0 [20.0, 30.0] (8/8)", "6.7 (3/4)"]
