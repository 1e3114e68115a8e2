"""The validation suite: its statistics against hand-computed values, then (slow) the small
mode of ``experiments/validate.py`` end to end on the refusal organism, twice (the second
run is a cache hit)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from circuitlab.validation import (
    AcceptanceRule,
    cohens_d,
    compare,
    comparison_figure,
    front_area,
    front_summary,
    markdown_table,
    min_detectable_effect,
    paired_differences_figure,
    paired_p,
    paired_test,
    render_markdown,
    spread,
    verdicts,
)

# Paired t with 2 degrees of freedom has a closed form: two-sided p = 1 - t / sqrt(2 + t^2).
BASE = [0.5, 0.4, 0.6]
ARM = [0.2, 0.3, 0.1]  # differences 0.3, 0.1, 0.5: mean 0.3, std 0.2, t = 1.5 sqrt(3)


def p_two_dof(t: float) -> float:
    return 1 - abs(t) / math.sqrt(2 + t * t)


def rows(arm: str, refusals, kls, seeds=(0, 1, 2), capability=None) -> list[dict]:
    return [
        {"organism": "org", "arm": arm, "seed": s, "refusal_rate": r, "kl_first": k,
         "kl_k": 2 * k, "capability_delta": capability}
        for s, r, k in zip(seeds, refusals, kls, strict=True)
    ]  # fmt: skip


def test_spread_is_mean_and_sample_std():
    s = spread([1.0, 2.0, 3.0, 4.0, None])
    assert (s.n, s.mean) == (4, 2.5) and s.std == pytest.approx(math.sqrt(5 / 3))
    assert s.format(2) == "2.50 ± 1.29"
    one = spread([0.25])
    assert one.n == 1 and one.mean == 0.25 and math.isnan(one.std) and one.format() == "0.250"
    assert spread([None, float("nan")]).n == 0 and spread([]).format() == "–"


def test_paired_t_test_and_cohens_d_by_hand():
    t = 1.5 * math.sqrt(3)
    assert paired_p(BASE, ARM) == pytest.approx(p_two_dof(t))  # 0.1217
    assert paired_p(BASE, ARM) == pytest.approx(0.121690, abs=1e-6)
    # One-sided: the arm is lower, so "arm greater" is far from significant.
    assert paired_p(BASE, ARM, "less") == pytest.approx(p_two_dof(t) / 2)
    assert paired_p(BASE, ARM, "greater") == pytest.approx(1 - p_two_dof(t) / 2)
    assert cohens_d(BASE, ARM) == pytest.approx(0.3 / 0.2)
    assert cohens_d(ARM, BASE) == pytest.approx(-1.5)


def test_degenerate_samples():
    assert math.isnan(paired_p([0.5], [0.2])) and math.isnan(cohens_d([0.5], [0.2]))
    assert math.isnan(paired_p([0.5, 0.4], [0.5, 0.4])) and math.isnan(cohens_d([0.5], [0.5]))
    # Identical non-zero differences (7/98 - 5/98 in floating point differs in the last bit).
    assert paired_p([7 / 98, 9 / 98], [5 / 98, 7 / 98]) == 0.0
    assert cohens_d([7 / 98, 9 / 98], [5 / 98, 7 / 98]) == math.inf
    with pytest.raises(ValueError):
        paired_p([1.0, 2.0], [1.0])


def test_acceptance_rule():
    rule = AcceptanceRule()
    assert rule.verdict(0.01, 0.5, True, 0.5) == (True, "all conditions met")
    assert rule.verdict(0.01, 0.5, True, float("nan"))[0]  # identical KLs are not worse
    assert not rule.verdict(0.06, 5.0, True, 0.5)[0]
    assert not rule.verdict(0.01, 0.2, True, 0.5)[0]
    assert "KL" in rule.verdict(0.01, 0.5, True, 0.01)[1]
    assert "not lower" in rule.verdict(0.01, -0.5, False, 0.5)[1]
    assert "no test" in rule.verdict(float("nan"), float("nan"), True, float("nan"))[1]


def test_compare_pairs_by_seed_and_applies_the_rule():
    data = (
        rows("baseline", BASE, [0.1, 0.2, 0.3], capability=-0.02)
        # differences 0.3, 0.28, 0.32: mean 0.3, std 0.02, t = 15 sqrt(3), d = 15
        + rows("good", [0.2, 0.12, 0.28], [0.1, 0.2, 0.3])
        + rows("weak", ARM, [0.1, 0.2, 0.3])
        # far fewer refusals (p 0.013, d 5), but KL higher on every seed (by 0.4, 0.6, 0.4)
        + rows("costly", [0.0, 0.0, 0.0], [0.5, 0.8, 0.7])
        + rows("partial", [0.2, 0.3], [0.1, 0.2], seeds=(0, 5))
    )
    found = {c.arm: c for c in compare(data)}
    assert [c.arm for c in compare(data)][0] == "baseline"
    base = found["baseline"]
    assert base.accepted is None and math.isnan(base.p_refusal)
    assert base.metrics["capability_delta"].mean == pytest.approx(-0.02)
    good = found["good"]
    assert good.p_refusal == pytest.approx(p_two_dof(15 * math.sqrt(3)))  # 0.00148
    assert good.d_refusal == pytest.approx(15) and good.accepted is True
    assert math.isnan(good.p_kl_worse)  # identical KLs: no difference to test
    assert good.metrics["refusal_rate"].mean == pytest.approx(0.2)
    assert good.metrics["kl_k"].mean == pytest.approx(0.4)
    assert good.metrics["capability_delta"].n == 0
    weak = found["weak"]
    assert weak.p_refusal == pytest.approx(0.121690, abs=1e-6) and weak.accepted is False
    costly = found["costly"]
    assert costly.p_kl_worse < 0.05 and costly.accepted is False and "KL" in costly.reason
    partial = found["partial"]
    assert partial.paired == (0,) and partial.seeds == (0, 5) and not partial.accepted
    assert math.isnan(partial.p_refusal)
    row = good.as_row()
    assert row["n"] == 3 and row["accepted"] is True and row["refusal_rate_std"] > 0


def test_markdown_table_and_figures():
    data = rows("baseline", BASE, [0.1, 0.2, 0.3]) + rows("good", [0.2], [0.1], seeds=(0,))
    comparisons = compare(data)
    table = markdown_table(comparisons)
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| organism | arm | n | refusals")
    assert "| org | baseline | 3 | 0.500 ± 0.100 |" in table
    assert "| org | good | 1 | 0.200 | 0.100 | 0.200 | – | nan | nan | nan | no |" in table
    assert "good: no test possible" in "; ".join(
        f"{a}: {v}" for a, v in verdicts(comparisons).items()
    )
    for fig in (comparison_figure(comparisons), paired_differences_figure(data)):
        assert len(fig.axes) == 1


def test_front_summary_by_hand():
    # The unedited model refuses 0.9 at KL 0; trials at (0.2, 0.05), (0.5, 0.1), (0.0, 0.6).
    points = [(0.5, 0.1), (0.0, 0.6), (0.2, 0.05), (float("nan"), 0.01)]
    summary = front_summary(points, 0.9, (0.01, 0.05, 0.5, 0.7), kl_ref=1.0)
    assert summary["refusal@KL<=0.01"] == 0.9  # only the unedited model qualifies
    assert summary["refusal@KL<=0.05"] == summary["refusal@KL<=0.5"] == 0.2
    assert summary["refusal@KL<=0.7"] == 0.0
    # 0.9 over [0, 0.05), 0.2 over [0.05, 0.6), 0 over [0.6, 1]: 0.045 + 0.11.
    assert summary["front_area"] == pytest.approx(0.155)
    # kl_ref cuts the area: over [0, 0.5] only, 0.045 + 0.2 * 0.45 = 0.135, / 0.5.
    assert front_area(points, 0.9, 0.5) == pytest.approx(0.27)
    assert front_area([], 0.75, 1.0) == 0.75  # no trial: the unedited model everywhere
    with pytest.raises(ValueError):
        front_area(points, 0.9, 0.0)


def test_minimum_detectable_effect():
    # Paired t at 80 % power, alpha 0.05 two-sided: d_z = 1.6814 at 5 pairs, 0.9962 at 10
    # (the standard power tables); large n approaches the normal (1.96 + 0.8416) / sqrt(n).
    assert min_detectable_effect(5, 1.0) == pytest.approx(1.6814, abs=2e-3)
    assert min_detectable_effect(10, 0.5) == pytest.approx(0.5 * 0.9962, abs=1e-3)
    assert min_detectable_effect(400, 1.0) == pytest.approx(2.8016 / 20, rel=0.01)
    assert min_detectable_effect(5, 1.0, power=0.9) > min_detectable_effect(5, 1.0)
    assert math.isnan(min_detectable_effect(1, 1.0)) and min_detectable_effect(3, 0.0) == 0
    t = paired_test(BASE, ARM)
    assert (t.n, t.mean, t.sd) == (3, pytest.approx(0.3), pytest.approx(0.2))
    assert t.p == pytest.approx(paired_p(BASE, ARM)) and t.d == pytest.approx(1.5)
    half = 4.302653 * 0.2 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (t.ci_low, t.ci_high) == (pytest.approx(0.3 - half), pytest.approx(0.3 + half))
    assert t.mde == pytest.approx(min_detectable_effect(3, 0.2))
    assert t.mde > t.mean  # the observed 0.3 is below what three seeds can detect


def front_rows(arm: str, areas, organism="org") -> list[dict]:
    return [
        {**r, "organism": organism, "front_area": a, "refusal@KL<=0.1": a + 0.1}
        for r, a in zip(rows(arm, [0.1] * 3, [0.3] * 3), areas, strict=True)
    ]


def test_primary_front_metric_verdicts_over_organisms_and_render():
    rule = AcceptanceRule(primary="front_area")
    data = (
        front_rows("baseline", [0.5, 0.4, 0.6]) + front_rows("good", [0.2, 0.12, 0.28])
        + front_rows("baseline", [0.5, 0.4, 0.6], "gemma")
        + front_rows("good", [0.5, 0.41, 0.6], "gemma")
    )  # fmt: skip
    found = {(c.organism, c.arm): c for c in compare(data, rule=rule)}
    org, gemma = found[("org", "good")], found[("gemma", "good")]
    # Identical chosen points, so only the front metric separates them.
    assert math.isnan(org.p_refusal) and org.accepted is True
    assert org.tests["front_area"].mean == pytest.approx(0.3) and "refusal@KL<=0.1" in org.tests
    assert gemma.accepted is False and "not lower" in gemma.reason
    line = verdicts(compare(data, rule=rule))["good"]
    assert line.startswith("wins on org only") and "MDE" in line and "gemma: Δ -0.003" in line
    with pytest.raises(ValueError, match="no metric"):
        compare(data, rule=AcceptanceRule(primary="front_areaa"))
    text = render_markdown({"rule": {"alpha": 0.05, "min_d": 0.3, "primary": "front_area"},
                            "intro": "Intro.", "rows": data})  # fmt: skip
    assert "front area" in text and "(MDE)" in text and "- **good**: wins on org only" in text
    assert text == render_markdown({"rule": vars(rule), "intro": "Intro.", "rows": data})


def test_verdict_table_says_better_worse_or_what_it_could_not_see():
    """One plain row per arm: per organism the primary difference with its interval and a
    word (better by the rule, worse when the interval is below zero, otherwise the smallest
    effect the seeds could have seen), then where it helps."""
    from circuitlab.validation import reading, verdict_table

    rule = AcceptanceRule(primary="front_area")
    data = (
        front_rows("baseline", [0.5, 0.4, 0.6]) + front_rows("good", [0.2, 0.12, 0.28])
        + front_rows("bad", [0.8, 0.72, 0.9]) + front_rows("same", [0.55, 0.35, 0.6])
        + front_rows("baseline", [0.5, 0.4, 0.6], "gemma")
        + front_rows("good", [0.5, 0.41, 0.6], "gemma")
        + front_rows("bad", [0.7, 0.62, 0.8], "gemma")
        + front_rows("same", [0.4, 0.5, 0.62], "gemma")
    )  # fmt: skip
    comparisons = compare(data, rule=rule)
    found = {(c.organism, c.arm): c for c in comparisons}
    assert reading(found[("org", "good")]) == "better"
    assert reading(found[("org", "bad")]) == reading(found[("gemma", "bad")]) == "worse"
    mde = found[("gemma", "same")].tests["front_area"].mde
    assert reading(found[("gemma", "same")]) == f"no difference (MDE {mde:.2f})"
    assert reading(found[("org", "baseline")]) == "no test"  # the baseline is not compared
    columns, rows = verdict_table(comparisons, {"good": "a better direction"})
    assert columns == ["arm", "what it changes", "org: Δ front area [95 % CI]",
                       "gemma: Δ front area [95 % CI]", "helps?"]  # fmt: skip
    table = {row[0]: row for row in rows}
    assert list(table) == ["good", "bad", "same"]  # the baseline has no row
    assert table["good"][1] == "a better direction" and table["good"][2].startswith("+0.300 [")
    assert table["good"][4] == "on org only"
    assert table["bad"][4] == "no: worse on org, gemma"
    assert table["same"][4] == "no effect detected"
    # An arm not (yet) run on an organism says so rather than "no effect".
    partial = [r for r in data if not (r["arm"] == "same" and r["organism"] == "gemma")]
    _, rows = verdict_table(compare(partial, rule=rule))
    assert {row[0]: row for row in rows}["same"][3:] == [
        "–",
        "no effect detected (not tested on gemma)",
    ]
    assert "Does each improvement help?" in render_markdown(
        {"rule": vars(rule), "intro": "Intro.", "rows": data}
    )


# --------------------------------------------------------------------- the suite, small
def _validate_module():
    """experiments/validate.py, imported by path (experiments/ is not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "experiments" / "validate.py"
    spec = importlib.util.spec_from_file_location("validate_experiment", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_small_validation_runs_end_to_end_and_resumes(cache_dir, tmp_path, capsys):
    """Every arm once on the organism (2 trials, 4 prompts), outputs written; the second run
    reads every result back without loading the model and writes the same CSV."""
    from circuitlab.engine import HookedModel
    from circuitlab.models import ModelSpec
    from circuitlab.testbed import NAME

    validate = _validate_module()
    loaded, models = [], {}

    def load(name: str) -> HookedModel:
        loaded.append(name)
        if name not in models:
            models[name] = HookedModel.load(ModelSpec(name, cache_dir=cache_dir))
        return models[name]

    argv = ["--small", "--work", str(tmp_path / "work"), "--cache-dir", str(cache_dir)]
    first = validate.main([*argv, "--out", str(tmp_path / "first")], load=load)
    assert loaded == [NAME]
    config = validate.Config.load(validate.HERE / "validate_small.toml")
    lines = first["csv"].read_text().splitlines()
    assert len(lines) == 1 + len(config.arms) and lines[0].startswith("organism,arm,seed,")
    assert all(",ok," in line for line in lines[1:]), lines
    found = (tmp_path / "work" / "runs").rglob("*-s0.json")
    runs = {r["arm"]: r for r in map(_json, found)}
    assert set(runs) == set(config.arms)
    # Every search-front trial scored on the test split, the chosen one among them.
    for run in runs.values():
        assert run["front_n"] == len(run["front"]) >= 1 and 0 <= run["front_area"] <= 1
        assert run["chosen_trial"] in [p["trial"] for p in run["front"]]
        assert run["front_area"] <= run["base_refusal_rate"]
    assert runs["sae"]["interventions"] == ["SubspaceAblation"]
    (trained,) = (tmp_path / "work" / "sae").glob("*/training.json")
    assert _json(trained)["cpu_seconds"] > 0 and _json(trained)["layer"] == config.sae_layer
    data = _json(first["json"])
    from circuitlab.validation import render_markdown

    assert render_markdown(data) == first["markdown"].read_text()
    assert runs["heads"]["interventions"] == ["DirectionalAblation", "HeadAblation"]
    assert len(runs["heads"]["heads"]) == config.heads_top_k
    assert runs["warm_start"]["profile"] == "llama" and runs["baseline"]["profile"] is None
    assert all(r["base_refusal_rate"] >= 0.75 for r in runs.values())  # the organism refuses
    summary = first["markdown"].read_text()
    assert "| organism | arm | n | refusals" in summary
    # One row per arm in the summary, one per arm but the baseline in the tests' table.
    assert summary.count(f"| {NAME} |") == 2 * len(config.arms) - 1 and "| nan |" in summary
    assert "- **sae** (SAE refusal features" in summary and "no test possible" in summary
    for name in ("refusal_vs_kl", "paired_differences"):
        assert first[name].read_bytes().startswith(b"\x89PNG") and first[name].stat().st_size > 5e3
    page = first["report"].read_text()
    assert ">Summary</h2>" in page and page.count("data:image/png;base64,") == 2

    started = time.perf_counter()
    second = validate.main([*argv, "--out", str(tmp_path / "second")], load=load)
    assert loaded == [NAME], "a cache hit must not load the model"
    assert time.perf_counter() - started < 30
    assert second["csv"].read_text() == first["csv"].read_text()
    assert second["markdown"].read_text() == summary
    assert "written:" in capsys.readouterr().out

    # Runs are filed under the organism's weights: another build would not reuse them.
    folder = f"{validate.slug(NAME)}-{validate.weights_id(NAME, cache_dir)}"
    assert [p.name for p in (tmp_path / "work" / "runs").iterdir()] == [folder]

    # One result lost, its study kept: rescored alone, with the base card from disk, it
    # must score the same (the KL baseline comes from the unedited model).
    lost = tmp_path / "work" / "runs" / folder / "caa-s0.json"
    lost.unlink()
    validate.main([*argv, "--out", str(tmp_path / "third")], load=load)
    assert loaded == [NAME, NAME]
    again = _json(lost)
    for key in ("refusal_rate", "kl_first", "kl_k", "capability_delta", "chosen_trial"):
        assert again[key] == pytest.approx(runs["caa"][key]), key
    # Each run records the code that made it; a cache resumed after the code changed says so.
    assert again["code"] == runs["caa"]["code"] == validate.code_version()
    assert "versions of the code" not in summary
    lost.write_text(json.dumps({**again, "code": "0000000"}))
    mixed = validate.main([*argv, "--no-run", "--out", str(tmp_path / "mixed")], load=load)
    assert f"results of {NAME} come from 2 versions of the code" in mixed["markdown"].read_text()
    lost.write_text(json.dumps(again))
    assert again["kl_first"] > 0  # an activation addition always moves the harmless logits

    # --no-run: the outputs of what is cached, nothing loaded; --only: just that arm's
    # missing run, no outputs.
    (tmp_path / "work" / "runs" / folder / "massive-s0.json").unlink()
    partial = validate.main([*argv, "--no-run", "--out", str(tmp_path / "partial")], load=load)
    assert loaded == [NAME, NAME] and ",massive," not in partial["csv"].read_text()
    assert len(partial["csv"].read_text().splitlines()) == len(config.arms)
    assert validate.main([*argv, "--only", "massive"], load=load) == {}
    assert _json(tmp_path / "work" / "runs" / folder / "massive-s0.json")["arm"] == "massive"
    with pytest.raises(SystemExit, match="not among"):
        validate.main([*argv, "--only", "nope"], load=load)
    with pytest.raises(SystemExit, match="not in the config"):
        validate.main([*argv, "--organisms", "nope"], load=load)


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_validation_json_becomes_a_results_record_for_the_readme(tmp_path):
    """The README's validation table is rendered from the suite's JSON by the results script:
    one row per arm and organism with its paired differences, the verdicts as notes; the
    method and the rule only on the results page."""
    from circuitlab.report.results import (
        from_validation,
        from_validation_verdicts,
        readme_block,
        results_page,
    )

    data = front_rows("baseline", [0.5, 0.4, 0.6]) + front_rows("good", [0.2, 0.12, 0.28])
    path = tmp_path / "validation.json"
    path.write_text(json.dumps({"rule": {"alpha": 0.05, "min_d": 0.3, "primary": "front_area"},
                                "intro": "Intro.", "rows": data,
                                "changes": {"good": "a better direction"}}))  # fmt: skip
    record = from_validation(path, "validation", "python experiments/validate.py", "t")
    assert record.columns[:3] == ["organism", "arm", "pairs"]
    assert [row[:3] for row in record.rows] == [["org", "good", "3"]]
    assert any(c.startswith("Δ front area") for c in record.columns)
    assert record.details[0] == "Intro."
    assert record.notes[-1].startswith("good (a better direction)")
    assert "Intro." in results_page([record]) and "Intro." not in readme_block(record)
    short = from_validation_verdicts(path, "validation-verdicts", "python x.py", "t", readme=True)
    assert short.columns[0] == "arm" and short.columns[-1] == "helps?"
    assert short.rows == [
        ["good", "a better direction", short.rows[0][2], "yes, on every organism"]
    ]
    assert "Method and rules" in readme_block(short) and "Intro." in results_page([short])


def test_a_suite_run_in_parts_keeps_the_earlier_arms_in_its_records(tmp_path):
    """`--keep-earlier`: arms measured in an earlier part (the same settings) keep their rows
    and verdict notes beside the arms measured now, each part dated; a re-measured arm
    replaces its rows; a record of other settings is refused instead of mixed in."""
    from circuitlab.report.results import PARTS, ResultRecord, main

    records = tmp_path / "records"
    base = front_rows("baseline", [0.5, 0.4, 0.6]) + front_rows("baseline", [0.5, 0.4, 0.6], "g")

    def part(arms: dict[str, list[float]], intro="Intro.") -> str:
        data = base + [
            r for arm, a in arms.items() for o in ("org", "g") for r in front_rows(arm, a, o)
        ]
        path = tmp_path / f"{'-'.join(arms)}-{intro}.json"
        rule = {"alpha": 0.05, "min_d": 0.3, "primary": "front_area"}
        path.write_text(json.dumps({"rule": rule, "intro": intro, "rows": data}))
        return str(path)

    def record(source: str, name="validation", flag="--from-validation", keep=True) -> ResultRecord:
        argv = [flag, source, "--name", name, "--title", "t", "--command", "c"]
        argv += ["--records", str(records), "--page", str(tmp_path / "r.md"), "--readme", ""]
        assert main(argv + (["--keep-earlier"] if keep else [])) == 0
        return ResultRecord.load(records / f"{name}.json")

    good, cones = [0.2, 0.12, 0.28], [0.5, 0.41, 0.6]
    record(part({"good": good, "probe": good}))
    merged = record(part({"cones": cones}))
    assert [r[:2] for r in merged.rows] == [
        [o, a] for o in ("org", "g") for a in ("good", "probe", "cones")
    ]
    assert [n.split(":", 1)[0] for n in merged.notes] == ["good", "probe", "cones"]
    assert merged.details[-1].startswith(PARTS) and "good, probe: " in merged.details[-1]
    assert merged.details[-1].count(": ") == 3  # the prefix, then one date per part
    # Probe re-measured: its new rows replace the old; good stays from the first part.
    again = record(part({"probe": cones}))
    assert [r[:2] for r in again.rows][:3] == [["org", "good"], ["org", "probe"], ["org", "cones"]]
    assert again.rows[1] == merged.rows[2][:1] + ["probe"] + merged.rows[2][2:]
    assert "good: " in again.details[-1] and "cones: " in again.details[-1]
    short = ("validation-verdicts", "--from-validation-verdicts")
    assert record(part({"good": good}), *short).rows[0][0] == "good"
    assert [r[0] for r in record(part({"cones": cones}), *short).rows] == ["good", "cones"]
    # A part that ran an arm on one organism only: the verdict row takes the other
    # organism's cell from the earlier part and says where the arm helps over both.
    partial = base + front_rows("good", [0.6, 0.5, 0.7])
    partial += [r for o in ("org", "g") for r in front_rows("cones", cones, o)]
    path = tmp_path / "partial.json"
    rule = {"alpha": 0.05, "min_d": 0.3, "primary": "front_area"}
    path.write_text(json.dumps({"rule": rule, "intro": "Intro.", "rows": partial}))
    both = record(str(path), *short).rows[0]
    assert both[0] == "good" and both[2].endswith("worse") and both[3].endswith("better")
    assert both[-1] == "on g only; worse on org"
    full = record(str(path)).rows
    assert [r[:2] for r in full if r[1] == "good"] == [["org", "good"], ["g", "good"]]
    assert full[0][-4:] != full[3][-4:]  # org's good re-measured, g's kept from before
    with pytest.raises(ValueError, match="other weights or settings"):
        record(part({"cones": cones}, intro="Other seeds."))
    # Without the flag a record is replaced whole, as before.
    assert [r[1] for r in record(part({"cones": cones}), keep=False).rows] == ["cones", "cones"]
