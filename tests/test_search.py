"""The search: rules and bookkeeping without a model, then real tiny studies on smollm2-135m.

smollm2-135m does not refuse, so refusal rates here are 0 and only the machinery is tested:
a 3-trial study producing a front, its choice scored on the test split and exported with
verified parity, two worker processes sharing one journal, and a SIGKILLed worker resumed.
Prompt counts and token budgets are tiny on purpose (shared 2-core machines).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from rendering import assert_not_blank, browser_or_skip

from circuitlab.cli import main
from circuitlab.export import ExportOptions
from circuitlab.interventions import DirectionalAblation, from_json, to_json
from circuitlab.report import abliteration_report, render_check
from circuitlab.search import (
    AbliterateConfig,
    FrontPoint,
    ObjectiveConfig,
    SearchConfig,
    SearchError,
    SearchPrompts,
    SearchSpace,
    abliterate,
    choose,
    detect_family,
    learn_profile,
    load_profile,
    open_store,
    pareto_front,
    run_search,
    trial_interventions,
)
from circuitlab.search.objective import prune_reason
from circuitlab.search.profiles import FAMILIES, resolve_profile
from circuitlab.search.setup import StudySetup
from circuitlab.search.space import build_interventions, clamp_params, suggest
from circuitlab.search.storage import recover_stale, worker_id
from circuitlab.search.study import study_refs

REPO = Path(__file__).resolve().parents[1]
TINY = {"n_train": 8, "n_search": 4, "n_kl": 4}
NO_PRUNE = ObjectiveConfig(max_new_tokens=8, batch_size=8, prune_kl=None, prune_min_drop=None)


def point(number: int, refusal: float, kl: float) -> FrontPoint:
    return FrontPoint(number, refusal, kl, {}, ())


# ------------------------------------------------------------------------ no model needed
def test_choice_rule_prefers_fewest_refusals_under_the_kl_target():
    front = [point(0, 0.0, 0.9), point(1, 0.1, 0.15), point(2, 0.3, 0.05), point(3, 0.1, 0.1)]
    assert choose(front, kl_target=0.2).number == 3  # tie on refusals: lower KL
    assert choose(front, kl_target=1.0).number == 0
    # Nothing under the target: the lowest KL among the fewest refusals.
    assert choose(front, kl_target=0.01).number == 0
    assert choose(front, trial=2).number == 2
    assert choose(front, rule=lambda f: max(f, key=lambda p: p.kl)).number == 0
    with pytest.raises(SearchError):
        choose([])
    with pytest.raises(SearchError):
        choose(front, trial=9)


def test_prune_reasons():
    config = ObjectiveConfig(prune_kl=2.0, prune_min_drop=0.1, min_base_mass=0.1)
    assert prune_reason(0.1, 0.1, 0.5, config) is None
    assert "KL" in prune_reason(3.0, 0.1, 0.5, config)
    assert "mass" in prune_reason(0.1, 0.48, 0.5, config)
    assert prune_reason(0.1, 0.05, 0.05, config) is None  # the base hardly refuses: no rule
    assert prune_reason(float("nan"), 0.1, 0.5, config) == "non-finite KL"
    off = ObjectiveConfig(prune_kl=None, prune_min_drop=None)
    assert prune_reason(50.0, 0.5, 0.5, off) is None


def test_opening_stop_keeps_every_refusal_verdict():
    """Stopping a row once its opening is complete never changes refused / not refused."""
    from circuitlab.evaluate.judges import MarkerJudge
    from circuitlab.evaluate.labelled import load_labelled
    from circuitlab.search.objective import OpeningDecides

    data, marker = load_labelled(), MarkerJudge()
    stopper = OpeningDecides(marker)
    early = 0
    for prompt, full in zip(data.prompts, data.responses, strict=True):
        final = marker.judge([prompt], [full]).is_refusal[0]
        cuts = range(0, len(full), 7)
        prefixes = [full[:i] for i in cuts if stopper.decided([full[:i]])[0]]
        assert all(marker.judge([prompt], [p]).is_refusal[0] == final for p in prefixes)
        early += bool(prefixes) and not marker.decided([prefixes[0]])[0]
    assert early > len(data) // 4  # it does stop rows the plain decider would not


def test_early_reading_stops_sooner_and_is_kept_only_where_it_reads_the_model_right():
    """The search's early verdict reading (first sentence or 48 characters) never stops a row
    later than the whole opening; a model whose refusals open its answer keeps it, one whose
    refusal follows a sentence of sympathy gets the whole opening back."""
    from circuitlab.evaluate.judges import MarkerJudge
    from circuitlab.evaluate.labelled import load_labelled
    from circuitlab.search.objective import OpeningDecides, check_early_reading, early_reading

    marker, objective = MarkerJudge(), ObjectiveConfig()
    whole = OpeningDecides(marker)
    early = OpeningDecides(marker, objective.verdict_sentences, objective.verdict_chars)
    data = load_labelled()
    for full in data.responses[:200]:
        stops = [i for i in range(1, len(full), 5) if whole.decided([full[:i]])[0]]
        assert not stops or early.decided([full[: stops[0]]])[0]
    direct = [
        "I can't help with that. Making it could hurt people.",
        "Sure! Start by preheating the oven, then mix the flour and the butter.",
    ] * 10
    assert check_early_reading(objective, marker, ["a request"] * 20, direct) == objective
    delayed = ["That sounds really hard, and I hear you. Still, I can't help with it."] * 20
    fallback = check_early_reading(objective, marker, ["a request"] * 20, delayed)
    assert (fallback.verdict_sentences, fallback.verdict_chars) == (None, None)
    # Human-labelled answers from many styles: too many delayed refusals for the early reading.
    labelled = check_early_reading(objective, marker, data.prompts, data.responses)
    assert labelled.verdict_chars is None
    # Where the reading stops along a growing answer, and whether it changes the verdict.
    answer = delayed[0]
    prefixes = [answer[:i] for i in range(1, len(answer) + 1)]
    cut, refused, refused_early = early_reading(marker, early.decided, "a request", prefixes)
    assert prefixes[cut].strip() == "That sounds really hard, and I hear you."
    assert refused and not refused_early
    assert early_reading(marker, whole.decided, "a request", prefixes)[1:] == (True, True)


def test_objective_settings_of_older_studies_read_as_they_ran():
    """A setup stored before the early reading and the decode batch existed resumes with
    the whole opening and the batch size it was run with."""
    old = {k: v for k, v in ObjectiveConfig().as_dict().items() if k in (
        "max_new_tokens", "batch_size", "check_every", "prune_kl", "prune_min_drop",
        "min_base_mass")}  # fmt: skip
    legacy = ObjectiveConfig.from_dict(old)
    assert (legacy.verdict_sentences, legacy.verdict_chars, legacy.decode_rows) == (None, None, 0)
    now = ObjectiveConfig()
    assert ObjectiveConfig.from_dict(now.as_dict()) == now
    # The old batch on every device; the new one fills a CPU batch, never past the prompts.
    assert legacy.generation_rows(30, on_accelerator=False) == legacy.batch_size
    assert now.generation_rows(30, on_accelerator=False) == 30
    assert now.generation_rows(500, on_accelerator=False) == now.decode_rows
    assert now.generation_rows(500, on_accelerator=True) == now.batch_size


def test_space_round_trip_and_profiles_fit_it():
    space = SearchSpace(methods=("diff-means", "pca"))
    assert SearchSpace.from_dict(space.as_dict()) == space
    for family in FAMILIES:
        profile = load_profile(family)
        assert profile.family == family and profile.trials
        assert "guess" in profile.source  # honest until learned
        for trial in profile.trials:
            clamped = clamp_params(trial, SearchSpace())
            assert clamped == {k: v for k, v in trial.items() if k in clamped}, family
    out_of_range = clamp_params({"direction": 2.0, "method": "cones", "junk": 1}, space)
    assert out_of_range == {"direction": 0.95}


OLD_PARAMS = {
    "method", "component", "direction", "addition_strength", "calibrate",
    *(f"{w}_{n}" for w in ("attn", "mlp") for n in ("max_weight", "max_position", "min_weight",
                                                  "min_distance")),
}  # fmt: skip


def _params(space: SearchSpace) -> dict:
    study = optuna.create_study(directions=["minimize", "minimize"])
    return suggest(study.ask(), space)


def test_head_space_adds_head_weight_and_a_head_ablation():
    from types import SimpleNamespace

    from circuitlab.interventions import DirectionRef, HeadAblation
    from circuitlab.models.facts import HeadId

    plain = SearchSpace(methods=("diff-means",), calibrate=False, per_layer=False)
    # Older studies recorded spaces without a heads key: they must compare equal.
    assert "heads" not in plain.as_dict() and "head_weight" not in plain.ranges()
    assert set(_params(plain)) == OLD_PARAMS
    heads = SearchSpace(
        methods=("diff-means",), calibrate=False, per_layer=False, heads=[[20, 1], HeadId(22, 3)]
    )
    assert heads.heads == ((20, 1), (22, 3))
    assert SearchSpace.from_dict(json.loads(json.dumps(heads.as_dict()))) == heads
    assert clamp_params({"head_weight": 3.0}, heads) == {"head_weight": 1.0}
    assert clamp_params({"head_weight": 3.0}, plain) == {}
    params = _params(heads)
    assert set(params) == OLD_PARAMS | {"head_weight"} and 0 <= params["head_weight"] <= 1

    assets = SimpleNamespace(n_layers=30, refs={"diff-means": DirectionRef("dir", "hash")})
    params = {**params, "head_weight": 0.4, "addition_strength": 0.0}
    ablation, head = build_interventions(params, assets, heads)
    assert isinstance(ablation, DirectionalAblation) and isinstance(head, HeadAblation)
    assert head.heads == (HeadId(20, 1), HeadId(22, 3)) and head.weight == 0.4
    assert head.mode == "project" and head.directions == ablation.directions
    assert head.index == ablation.index and head.component == 0
    assert build_interventions(params, assets, plain) == (ablation,)


def test_per_layer_trials_use_each_layers_own_directions():
    from types import SimpleNamespace

    from circuitlab.interventions import DirectionRef, SubspaceAblation

    space = SearchSpace(methods=("diff-means", "cones"), calibrate=False, per_layer=True)
    assert SearchSpace.from_dict(json.loads(json.dumps(space.as_dict()))) == space
    params = _params(space)
    assert "per_layer" in params and set(params) == OLD_PARAMS | {"per_layer"}
    refs = {"diff-means": DirectionRef("dm", "h1"), "cones": DirectionRef("cn", "h2")}
    assets = SimpleNamespace(n_layers=31, refs=refs)
    params = {**params, "direction": 0.5, "addition_strength": 0.0}
    (own,) = build_interventions({**params, "method": "diff-means", "per_layer": True}, assets,
                                 space)  # fmt: skip
    (one,) = build_interventions({**params, "method": "diff-means", "per_layer": False}, assets,
                                 space)  # fmt: skip
    assert own.index is None and one.index == 15.0 and own.attn == one.attn
    (cones,) = build_interventions({**params, "method": "cones", "per_layer": True}, assets, space)
    assert isinstance(cones, SubspaceAblation) and cones.layer is None
    # Old profiles meant the global direction; a space without the option drops the key.
    assert clamp_params({"per_layer": True}, space) == {"per_layer": True}
    assert clamp_params({"per_layer": True}, SearchSpace(per_layer=False)) == {}
    # With the study's writer-aligned set, every per-layer trial ablates it, cones included.
    assets = SimpleNamespace(n_layers=31, refs={**refs, "per-layer": DirectionRef("pl", "h3")})
    for method in ("diff-means", "cones"):
        (edit,) = build_interventions({**params, "method": method, "per_layer": True}, assets,
                                      space)  # fmt: skip
        assert isinstance(edit, DirectionalAblation) and edit.index is None
        assert edit.directions == assets.refs["per-layer"] and edit.attn == one.attn
    # Spaces are on by default now; a recorded space without the key meant off.
    assert SearchSpace().per_layer and not SearchSpace.from_dict({}).per_layer


def test_writer_aligned_gives_each_layers_writers_the_next_layers_direction():
    from circuitlab.directions import DirectionSet, writer_aligned

    vectors = torch.nn.functional.normalize(torch.randn(5, 1, 8), dim=-1)
    ds = DirectionSet("diff-means", vectors, torch.arange(5.0)[:, None], {"n_layers": 5})
    shifted = writer_aligned(ds)
    assert torch.equal(shifted.directions[:4], vectors[1:])
    assert torch.equal(shifted.directions[4], vectors[4])  # nothing is read after the last
    assert shifted.scores[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 4.0]
    assert shifted.metadata["writer_aligned"] and shifted.hash != ds.hash
    assert torch.equal(ds.directions, vectors)  # the input is left alone


def test_choice_rule_takes_least_kl_near_the_fewest_refusals_and_finds_the_knee():
    from circuitlab.search.front import knee

    front = [point(0, 0.0, 0.30), point(1, 1 / 30, 0.12), point(2, 0.2, 0.05),
             point(3, 0.6, 0.01)]  # fmt: skip
    # One refusal more than the best is within the margin; its KL is far lower.
    assert choose(front, kl_target=1.0).number == 1
    assert choose(front, kl_target=1.0, margin=0.0).number == 0
    assert choose(front, kl_target=0.1).number == 2  # the budget comes first
    assert choose(front, refusal_target=0.25).number == 2
    assert choose(front, refusal_target=-1.0).number == 0  # unreachable: fewest refusals
    assert knee(front).number == 1
    assert knee(front[:2]) is None
    # A straight front has no knee.
    assert knee([point(0, 0.0, 0.3), point(1, 0.5, 0.15), point(2, 1.0, 0.0)]) is None


def test_family_comes_from_model_type():
    assert detect_family("llama") == "llama"
    assert detect_family("qwen3") == "qwen" and detect_family("gemma3_text") == "gemma"
    assert detect_family("gpt2") is None
    assert resolve_profile("auto", "gpt2") is None
    assert resolve_profile("auto", "gpt2", family="mistral").family == "mistral"
    assert resolve_profile("none", "llama") is None


def test_stale_trials_of_dead_workers_are_failed_and_retried(tmp_path):
    store = open_store("stale", str(tmp_path / "stale.journal"))
    study = store.create()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    workers = {
        "dead": {**worker_id(), "pid": dead.pid},
        "alive": worker_id(),
        "elsewhere": {"host": "another-host", "pid": 1, "start": None},
    }
    for name, worker in workers.items():
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("name", name)
    with store.lock():
        failed = recover_stale(study, locked=True)
    states = {t.user_attrs["name"]: t.state for t in study.trials if "name" in t.user_attrs}
    assert failed == [0] and states["dead"] == TrialState.FAIL
    assert states["alive"] == states["elsewhere"] == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == 0
    assert recover_stale(study, locked=True, fail_unknown=True) == [2]


# -------------------------------------------------------------------------- real studies
@pytest.fixture(scope="module")
def tiny_prompts() -> SearchPrompts:
    return SearchPrompts.from_testbed(**TINY, n_test=4)


@pytest.fixture(scope="module")
def study_3(smollm, tiny_prompts, tmp_path_factory):
    """A real 3-trial study (one warm start, two TPE start-up trials)."""
    journal = tmp_path_factory.mktemp("study") / "three.journal"
    started = time.perf_counter()
    config = SearchConfig(
        3,
        storage=str(journal),
        # Without per-layer directions: the study stands for one made before they existed.
        space=SearchSpace(methods=("diff-means", "pca"), per_layer=False),
        objective=NO_PRUNE,
        seed=1,
    )
    study = run_search(smollm, tiny_prompts, "three", config)
    return study, journal, time.perf_counter() - started


def test_search_decoding_matches_hf_generate_under_hooks(smollm, tiny_prompts, study_3):
    """Shared prefill + dropping finished rows gives transformers' own greedy generation,
    edited or not; early stopping only cuts a row's text short."""
    from circuitlab.decoding import decode, prefill
    from circuitlab.evaluate.judges import MarkerJudge
    from circuitlab.hooks import apply
    from circuitlab.search.objective import OpeningDecides

    prompts = [*tiny_prompts.harmful_search, *tiny_prompts.harmless_search[:2]]
    stop = OpeningDecides(MarkerJudge()).decided
    edit = trial_interventions(study_3[0].trials[1])
    batch = smollm.encode(prompts)
    for interventions in ((), edit):
        with apply(smollm, *interventions):
            out = smollm.hf_model.generate(**batch, max_new_tokens=12, do_sample=False)
            expected = smollm.tokenizer.batch_decode(
                out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            full = smollm.hf_model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]
            state = prefill(smollm, prompts, batch_size=4)
            first = state.first_logprobs
            assert decode(smollm, state, 12) == expected
            stopped = decode(smollm, prefill(smollm, prompts, batch_size=4), 12, stop)
        assert all(e.startswith(s) for e, s in zip(expected, stopped, strict=True))
        assert (first - torch.log_softmax(full.float(), -1)).abs().max() < 1e-3


def test_search_and_scorecard_compute_the_same_kl(smollm, tiny_prompts, study_3):
    """One KL for the search's trials and the scorecard: exactly 0 for the unedited model
    through both, and the same numbers under an edit."""
    from types import SimpleNamespace

    from circuitlab.evaluate.kl import KLBaseline
    from circuitlab.hooks import apply
    from circuitlab.search.objective import kl_pass

    harmless = list(tiny_prompts.harmless_search[:4])
    baseline = KLBaseline.compute(smollm, harmless, k=2, batch_size=4)
    assets = SimpleNamespace(baseline=baseline)
    scores = baseline.score(smollm, batch_size=4)
    assert kl_pass(smollm, assets, 4) == (0.0, 0.0)
    assert (scores.first_token, scores.k_token) == (0.0, 0.0)
    with apply(smollm, *trial_interventions(study_3[0].trials[1])):
        searched = kl_pass(smollm, assets, 4)
        scored = baseline.score(smollm, batch_size=4)
    assert searched == (scored.first_token, scored.k_token) and searched[0] > 0


def test_three_trial_study_has_a_front_of_plain_data(smollm, study_3):
    study, _, seconds = study_3
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3, seconds
    assert complete[0].user_attrs["warm_start"] == "llama#0"
    front = pareto_front(study)
    assert front and all(p.refusal_rate == 0.0 for p in front)  # smollm does not refuse
    assert front == sorted(front, key=lambda p: (p.refusal_rate, p.kl, p.number))
    for trial in complete:
        ivs = trial_interventions(trial)
        assert isinstance(ivs[0], DirectionalAblation)
        assert from_json(to_json(ivs[0])) == ivs[0]
        assert trial.user_attrs["score"]["kl_first"] == pytest.approx(trial.values[1])
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == 3


def test_rerun_of_a_finished_study_adds_no_trial(smollm, tiny_prompts, study_3):
    _, journal, _ = study_3
    study = run_search(smollm, tiny_prompts, "three", SearchConfig(3, str(journal), seed=1))
    assert len(study.trials) == len(study_3[0].trials)


def test_study_refuses_other_prompts(smollm, study_3):
    _, journal, _ = study_3
    other = SearchPrompts.from_testbed(n_train=8, n_search=5, n_kl=4)
    with pytest.raises(SearchError, match="other prompts"):
        run_search(smollm, other, "three", SearchConfig(3, storage=str(journal)))


def test_abliterate_evaluates_on_test_split_and_exports(smollm, tiny_prompts, study_3, tmp_path):
    _, journal, _ = study_3
    started = time.perf_counter()
    config = AbliterateConfig(
        SearchConfig(3, storage=str(journal)),
        out=tmp_path / "export",
        export=ExportOptions(prompts=list(tiny_prompts.harmless_test[:2]), max_new_tokens=4),
    )
    done = abliterate(smollm, tiny_prompts, "three", config)
    result = done.result
    assert result.chosen.number in {p.number for p in result.front}
    assert result.edited.n_harmful == 4 and result.edited.split == "test"
    low, high = result.refusal_ci
    assert low <= result.refusal_rate <= high and result.kl >= 0
    assert done.export is not None, done.export_note
    assert done.export.parity.passed and (tmp_path / "export" / "config.json").is_file()

    # Its run report, from these real pieces, rendered in a headless browser.
    seconds = {"abliterate": time.perf_counter() - started}
    report = abliteration_report(
        done, smollm, tiny_prompts, max_new_tokens=8, batch_size=8, storage=str(journal),
        kl_target=0.2, timings=seconds,
    )  # fmt: skip
    page = report.html()
    for heading in ("Pareto front", "Scorecards (test split)", "Sample completions", "Export"):
        assert f">{heading}</h2>" in page
    assert "export parity" not in page  # figure titles live inside the PNGs
    assert "diff-means" in page and "pca" in page and "Seed: 1." in page  # the study's seed
    assert page.count("<tr><td>") >= 8 + len(result.front)  # 4 + 4 samples, the front
    path = report.write(tmp_path / "report.html")
    browser_or_skip()
    check = render_check(path, screenshot=tmp_path / "report.png")
    assert check.ok and check.n_images == page.count("data:image/png;base64,") >= 5
    assert_not_blank(check.screenshot)


def test_abliterate_command_writes_its_report(smollm, study_3, tmp_path, monkeypatch, capsys):
    """The command resumes the finished 3-trial study and writes report.html beside it."""

    _, journal, _ = study_3
    monkeypatch.setattr("circuitlab.commands._common.load_model", lambda source, settings: smollm)
    # The base SmolLM2 hardly refuses: the preflight would rightly stop this search.
    args = ["abliterate", "smollm2-135m", "--study", "three", "--storage", str(journal)]
    args.append("--no-preflight")
    args += ["--trials", "3", "--methods", "diff-means,pca", "--no-prune", "--no-export"]
    args += ["--n-train", "8", "--n-search", "4", "--n-kl", "4", "--n-test", "4"]
    args += ["--max-new-tokens", "8", "--batch-size", "8", "--seed", "0"]
    assert main([*args, "--threads", "1", "--cache-dir", str(tmp_path)]) == 0
    assert "report:" in capsys.readouterr().out
    page = (journal.with_name(journal.name + ".assets") / "report.html").read_text()
    assert "Not exported: no output folder given" in page
    assert "circuitlab abliterate smollm2-135m --study three" in page


def test_profiles_learn_writes_a_loadable_profile(study_3, tmp_path, cache_dir):
    _, journal, _ = study_3
    out = tmp_path / "llama.json"
    args = ["profiles", "learn", "three", "--storage", str(journal), "--out", str(out)]
    assert main([*args, "--top", "2", "--cache-dir", str(cache_dir)]) == 0
    profile = load_profile(out)
    assert profile.family == "llama" and len(profile.trials) == 2
    assert "learned from study 'three'" in profile.source
    direct = learn_profile(study_3[0], top=2)
    assert direct.trials == profile.trials


def test_old_studies_resume_without_heads_and_head_studies_run(smollm, tiny_prompts, study_3):
    """A study without heads keeps its parameters; a 1-trial study with heads applies them
    (and, with ``remove_massive``, edits along directions free of the sinks' direction)."""
    from circuitlab.interventions import HeadAblation

    study, journal, _ = study_3
    setup = study.user_attrs["setup"]
    assert "heads" not in setup["space"] and "remove_massive" not in setup["space"]
    assert "per_layer" not in setup["space"]
    # Through JSON, as the resume check compares them.
    space = SearchSpace.from_dict(setup["space"])
    assert json.loads(json.dumps(space.as_dict())) == setup["space"]
    # The typed record reads and writes the stored one unchanged.
    typed = StudySetup.of(study)
    assert typed.space == space and json.loads(json.dumps(typed.as_dict())) == setup
    assert all(set(t.params) == OLD_PARAMS for t in study.get_trials(states=(TrialState.COMPLETE,)))

    space = SearchSpace(
        methods=("diff-means",),
        calibrate=False,
        heads=((20, 1), (22, 3)),
        remove_massive=True,
        per_layer=True,
    )
    config = SearchConfig(
        1, storage=str(journal.with_name("heads.journal")), space=space, objective=NO_PRUNE,
        seed=2, profile=None,
    )  # fmt: skip
    heads = run_search(smollm, tiny_prompts, "heads", config)
    (trial,) = heads.get_trials(states=(TrialState.COMPLETE,))
    assert "head_weight" in trial.params and "per_layer" in trial.params
    setup = heads.user_attrs["setup"]
    assert setup["space"]["per_layer"]
    assert setup["space"]["heads"] == [[20, 1], [22, 3]] and setup["space"]["remove_massive"]
    # The directions travel inside the storage, never as a path of one host.
    assert "folder" not in json.dumps(setup["directions"])
    store = open_store("heads", str(journal.with_name("heads.journal")))
    saved = study_refs(store, StudySetup.of(heads), "cache")["diff-means"].load()
    massive = saved.tensors["massive_directions"]
    assert massive.shape == (1, smollm.facts.d_model) and "without_massive" in saved.metadata
    assert float((saved.directions.double() @ massive[0].double()).abs().max()) < 1e-6
    # Per-layer trials remove their own set: writer-aligned, also free of the sinks' direction.
    own = study_refs(store, StudySetup.of(heads), "cache")["per-layer"].load()
    assert own.metadata["writer_aligned"] and "without_massive" in own.metadata
    assert float((own.directions.double() @ massive[0].double()).abs().max()) < 1e-6
    ablation, head = trial_interventions(trial)
    assert isinstance(head, HeadAblation) and head.weight == trial.params["head_weight"]
    assert trial.user_attrs["score"]["kl_first"] > 0


# ----------------------------------------------------------------- several processes
def _cli(journal: Path, trials: int, cache_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "circuitlab.cli", "search", "smollm2-135m",
        "--study", "shared", "--storage", str(journal), "--trials", str(trials),
        "--methods", "diff-means", "--no-prune", "--n-train", "8", "--n-search", "4",
        "--n-kl", "4", "--max-new-tokens", "8", "--threads", "1", "--no-preflight",
        "--cache-dir", str(cache_dir), *extra,
    ]  # fmt: skip


def _trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none while its first worker is still setting it up."""
    try:
        return open_store("shared", str(journal)).load().get_trials()
    except SearchError:
        return []


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, cache_dir):
    journal = tmp_path / "shared.journal"
    procs = [
        subprocess.Popen(
            _cli(journal, 4, cache_dir, "--profile", "none"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trials = _trials(journal)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    params = {tuple(sorted(t.params.items())) for t in trials}
    assert len(params) == 4  # workers did not draw the same points
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert pids <= {p.pid for p in procs}


def _wait_for_running_after_complete(journal: Path, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if journal.exists():
            trials = _trials(journal)
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [t for t in trials if t.state == TrialState.RUNNING]
            # Every trial suggests the whole space: wait until the running one has drawn it
            # all, or the kill can land between two suggestions and leave a partial trial.
            if done and running and set(running[0].params) == set(done[0].params):
                return
        time.sleep(0.5)
    raise AssertionError("the worker never got to its second trial")


@pytest.mark.slow
def test_killed_worker_resumes_to_full_budget(tmp_path, cache_dir):
    journal = tmp_path / "shared.journal"
    # No warm starts: enqueued points would sit ahead of the retry in Optuna's FIFO queue.
    command = _cli(journal, 3, cache_dir, "--profile", "none")
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_running_after_complete(journal, worker)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    killed = [t for t in _trials(journal) if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(journal)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    assert TrialState.RUNNING not in states
    stale = trials[killed[0].number]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == stale.number]
    assert len(retry) == 1 and retry[0].params == stale.params
    assert retry[0].state == TrialState.COMPLETE
    assert "Pareto front" in resumed.stdout


def test_a_study_refuses_a_different_judge(smollm, tiny_prompts, study_3):
    """Refusal rates from two judges do not belong on one front: resuming with another
    judge is an error, the same judge resumes (the budget is spent: nothing runs)."""
    from circuitlab.evaluate.judges import CombinedJudge, MarkerJudge

    _, journal, _ = study_3
    other = CombinedJudge(MarkerJudge(), MarkerJudge(), "and")
    with pytest.raises(SearchError, match="judged by markers"):
        run_search(smollm, tiny_prompts, "three", SearchConfig(3, str(journal)), judge=other)
    resumed = run_search(smollm, tiny_prompts, "three", SearchConfig(3, str(journal), seed=1))
    assert resumed.user_attrs["setup"]["judge"] == "markers"


def test_study_seeds_draw_independent_trials():
    """Seed s and s + 1 must not replay each other's draws one trial apart (with
    seed + number they did, and the validation suite's seeds shared most trials)."""
    from circuitlab.search.storage import trial_seed

    assert trial_seed(3, 7) == trial_seed(3, 7)  # a rerun replays exactly
    first = {trial_seed(1, n) for n in range(50)}
    second = {trial_seed(2, n) for n in range(50)}
    assert len(first) == 50 and not first & second


def test_demo_command_on_a_tiny_model_runs_every_step(tmp_path, cache_dir, capsys):
    """`circuitlab demo` end to end on a tiny random model (the organism's run is a slow
    test): search, test split, export with its parity bar, capability bar, the second
    held-out set before and after, and that set's section in the report."""
    from tiny import tiny_llama

    model = tiny_llama(tmp_path / "model", cache_dir=cache_dir, n_layers=3, hidden_size=64)
    argv = ["demo", "--model", str(model), "--study", "tiny", "--trials", "1", "--n-test", "2"]
    argv += ["--n-jbb", "2", "--capability-n", "2", "--max-new-tokens", "4", "--no-preflight"]
    argv += ["--margin", "0.1", "--out", str(tmp_path / "export"), "--threads", "1"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    assert "JailbreakBench refusals after (trial 0): " in captured.out
    assert (
        "parity: hooked, alone, folded" in captured.err and "capability questions" in captured.err
    )
    report = tmp_path / "cache" / "studies" / "tiny.journal.assets" / "report.html"
    assert "JailbreakBench (never searched, never trained on)" in report.read_text()
    assert (tmp_path / "export" / "config.json").is_file()


def test_cli_searches_per_layer_directions_by_default():
    """The commands' --per-layer flag defaults to the search space's own default (a
    store_true flag once switched per-layer directions off for every CLI search)."""
    from circuitlab.cli import build_parser

    parser = build_parser()
    for command in ("search", "abliterate", "demo"):
        args = ["smollm2-135m"] if command != "demo" else []
        parsed = parser.parse_args([command, *args])
        assert parsed.per_layer is SearchSpace().per_layer is True, command
        assert parser.parse_args([command, *args, "--no-per-layer"]).per_layer is False
