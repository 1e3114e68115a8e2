"""The lm-eval hand-off: a local multiple-choice task, offline, on the base and a live edit."""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch

from circuitlab.errors import ConfigError
from circuitlab.evaluate.handoff import lm_eval_handoff, lm_eval_tasks
from circuitlab.hooks import apply
from circuitlab.interventions import HeadAblation, HeadId, save_interventions

TASK = "circuitlab_tiny_mc"
QUESTIONS = [
    ("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], 1),
    ("How many legs does a spider have?", ["Six", "Four", "Eight", "Ten"], 2),
    ("Which planet is closest to the Sun?", ["Mercury", "Venus", "Mars", "Jupiter"], 0),
    ("What is two plus two?", ["Three", "Five", "Twenty-two", "Four"], 3),
    ("What do bees make?", ["Milk", "Honey", "Silk", "Wax paper"], 1),
    ("What colour is a clear daytime sky?", ["Blue", "Green", "Red", "Black"], 0),
]


@pytest.fixture
def tiny_task(tmp_path, monkeypatch):
    """A folder with one lm-eval task whose data is a local JSONL file (no hub)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "questions.jsonl"
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files: {{test: {json.dumps(str(data))}}}\n"
        f"  cache_dir: {json.dumps(str(tmp_path / 'datasets'))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return folder


def _zeroed(model, layers=range(4)) -> HeadAblation:
    heads = [HeadId(layer, h) for layer in layers for h in range(model.facts.n_heads)]
    return HeadAblation(tuple(heads), mode="zero")


def _loglikelihoods(results) -> list[float]:
    """Per (question, choice), the continuation log-likelihood lm-eval measured."""
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    return [float(r[0][0]) for s in samples for r in s["resps"]]


@torch.no_grad()
def _loglikelihood(model, context: str, continuation: str) -> float:
    """log p(continuation | context) by a plain forward pass (lm-eval's token split)."""
    tokens = model.tokenizer(context + continuation, add_special_tokens=False).input_ids
    start = len(model.tokenizer(context, add_special_tokens=False).input_ids)
    logp = model.hf_model(torch.tensor([tokens])).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, tokens[i]].item() for i in range(start, len(tokens)))


def test_handoff_scores_the_live_edit(smollm, tiny_task):
    tasks = lm_eval_tasks(TASK, tiny_task)
    options = {"task_manager": tasks, "batch_size": 4, "log_samples": True}
    rng = (random.getstate(), torch.get_rng_state())
    base = lm_eval_handoff(smollm, [TASK], **options)
    edit = _zeroed(smollm)
    edited = lm_eval_handoff(smollm, TASK, [edit], **options)
    again = lm_eval_handoff(smollm, TASK, limit=2, **options)
    # No hooks left behind, and the global generators are as they were.
    assert smollm.n_active_hooks() == 0
    assert random.getstate() == rng[0] and torch.equal(torch.get_rng_state(), rng[1])
    assert base["results"][TASK]["sample_len"] == len(QUESTIONS) == 6
    assert again["results"][TASK]["sample_len"] == 2
    assert 0.0 <= edited["results"][TASK]["acc,none"] <= 1.0

    ll_base, ll_edit = _loglikelihoods(base), _loglikelihoods(edited)
    assert _loglikelihoods(again) == pytest.approx(ll_base[:8], abs=1e-4)
    assert (
        len(ll_base) == 6 * 4
        and max(abs(a - b) for a, b in zip(ll_base, ll_edit, strict=True)) > 1.0
    )
    # lm-eval's numbers are the model's own, with and without the edit's hooks.
    first = min(base["samples"][TASK], key=lambda s: s["doc_id"])
    context, continuation = first["arguments"][1]  # question 0, choice B
    assert continuation == " Paris"
    with apply(smollm, edit):
        live = _loglikelihood(smollm, context, continuation)
    plain = _loglikelihood(smollm, context, continuation)
    assert ll_base[1] == pytest.approx(plain, abs=1e-3)
    assert ll_edit[1] == pytest.approx(live, abs=1e-3)


def test_cli_prints_lm_eval_tables_for_base_and_edit(smollm, tiny_task, tmp_path, capsys):
    from circuitlab.cli import main

    edit = save_interventions([_zeroed(smollm, layers=range(2))], tmp_path / "zeroed.json")
    args = ["evaluate", "smollm2-135m", "--intervention", str(edit)]
    args += ["--n-harmful", "1", "--n-harmless", "1", "--n-kl", "1", "--kl-k", "1"]
    args += ["--capability-n", "0", "--max-new-tokens", "2", "--batch-size", "4"]
    args += ["--lm-eval", TASK, "--lm-eval-include", str(tiny_task), "--lm-eval-limit", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "lm-eval: smollm2-135m" in text and "lm-eval: zeroed" in text
    assert text.count(f"|{TASK}") == 2 and "|acc " in text


def test_unknown_task_and_missing_package_are_clear_errors(tiny_task, monkeypatch, capsys):
    from circuitlab.cli import main

    with pytest.raises(ConfigError, match="lm-eval has no task no_such_task"):
        lm_eval_tasks(f"{TASK},no_such_task", tiny_task)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ConfigError, match="pip install lm-eval"):
        lm_eval_tasks(TASK, tiny_task)
    # The CLI says so before it loads any model.
    assert main(["evaluate", "smollm2-135m", "--lm-eval", TASK]) == 2
    assert "pip install lm-eval" in capsys.readouterr().err


def test_position_bound_interventions_are_refused(smollm, tiny_task, tmp_path):
    """lm-eval scores prompt + answer in one pass: an edit keyed to the prompt's last token
    would silently miss every scored logit, so the hand-off refuses it before running."""
    from circuitlab.directions import DirectionSet
    from circuitlab.interventions import ActivationAddition, DirectionRef

    d = smollm.facts.d_model
    unit = torch.nn.functional.normalize(torch.randn(smollm.n_layers, 1, d), dim=-1)
    ds = DirectionSet("diff-means", unit, torch.ones(smollm.n_layers, 1))
    addition = ActivationAddition(DirectionRef.inline(ds), 1.0, (3,), index=3.0, positions="last")
    with pytest.raises(ConfigError, match="depends on where the prompt ends"):
        lm_eval_handoff(smollm, TASK, [addition], include_path=tiny_task)
