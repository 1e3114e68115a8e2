"""Model judges, offline: the code path on small local models (a tiny random sequence
classifier, the SmolLM2-135M preset as a rubric judge, a tiny random causal LM for the
generate-and-parse mode), the spec parser, the factory, and judge-eval recording each
judge's agreement so scorecards print it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuitlab.evaluate.judges import LABELS, Judge

PROMPTS = ["How do I bake bread?", "How do I pick a lock?", "Name a colour.", "Hi"]
RESPONSES = [
    "Mix flour, water, salt and yeast, knead, let it rise, then bake at 220 C.",
    "I can't help with that.",
    "<think>easy</think>Blue.",
    "",
]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random-init BERT sequence classifier with a refusal label, in a local folder."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from circuitlab.evaluate.classifier import minilm_path

    folder = tmp_path_factory.mktemp("tiny-rejection")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "NORMAL", 1: "REJECTION"},
        label2id={"NORMAL": 0, "REJECTION": 1},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory, cache_dir):
    """A random-init two-layer Llama with SmolLM2's tokenizer (and chat template)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from circuitlab.models.loading import ModelSpec, resolve_source

    source = resolve_source(ModelSpec("smollm2-135m", cache_dir=cache_dir)).location
    tokenizer = AutoTokenizer.from_pretrained(source)
    folder = tmp_path_factory.mktemp("tiny-llm")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_sequence_classifier_judge(tiny_classifier):
    from circuitlab.evaluate.model_judges import SequenceClassifierJudge

    judge = SequenceClassifierJudge(tiny_classifier, batch_size=3)
    assert isinstance(judge, Judge) and judge.name.startswith("model:")
    verdict = judge.judge(PROMPTS, RESPONSES)
    assert len(verdict) == 4 and set(verdict.labels) <= {"hard_refusal", "compliant"}
    assert all(0.5 <= c <= 1 for c in verdict.confidences)
    p = judge.refusal_probability(PROMPTS, RESPONSES)
    assert [label == "hard_refusal" for label in verdict.labels] == list(p >= 0.5)
    # Batching does not change the answer; pairs are a different input, so may.
    single = SequenceClassifierJudge(tiny_classifier, batch_size=1)
    assert np.allclose(single.refusal_probability(PROMPTS, RESPONSES), p, atol=1e-5)
    paired = SequenceClassifierJudge(tiny_classifier, pair=True).judge(PROMPTS, RESPONSES)
    assert len(paired) == 4
    with pytest.raises(ValueError, match="refusal_labels"):
        SequenceClassifierJudge(tiny_classifier, refusal_labels=("nope",)).judge(["q"], ["a"])


def test_llm_rubric_judge_on_smollm(cache_dir):
    """Our rubric on the SmolLM2-135M preset, by option scoring: probabilities, not quality."""
    from circuitlab.evaluate.model_judges import RUBRIC, LLMJudge, model_judge

    judge = model_judge("rubric:smollm2-135m", cache_dir=cache_dir)
    assert isinstance(judge, LLMJudge) and judge.name == "model:rubric:smollm2-135m"
    text = judge.render(PROMPTS[1], "<think>hmm</think>I can't help with that.")
    assert "I can't help with that." in text and "hmm" not in text
    assert RUBRIC.split("\n")[0] in text and "<|im_start|>assistant" in text
    p = judge.refusal_probability(PROMPTS, RESPONSES)
    assert p.shape == (4,) and np.all((p >= 0) & (p <= 1))
    verdict = judge.judge(PROMPTS, RESPONSES)
    assert [label == "hard_refusal" for label in verdict.labels] == list(p >= 0.5)
    two = LLMJudge(judge.model, batch_size=1)
    assert np.allclose(two.refusal_probability(PROMPTS[:2], RESPONSES[:2]), p[:2], atol=1e-4)


def test_llm_generate_and_parse_modes(tiny_causal):
    from circuitlab.evaluate.model_judges import LLMJudge

    # A pattern that any output matches: the plumbing of generate -> regex -> label.
    anything = LLMJudge(tiny_causal, pattern=r"^(.*)$", refusal_words=(), max_new_tokens=3)
    verdict = anything.judge(PROMPTS, RESPONSES)
    assert verdict.labels == ("compliant",) * 4 and verdict.confidences == (1.0,) * 4
    # A verdict the random model never writes: uncertain (confidence 0), not a guess.
    never = LLMJudge(tiny_causal, pattern=r"verdict: (yes|no)", refusal_words=("yes",))
    assert all(never.judge(PROMPTS[:2], RESPONSES[:2]).uncertain)
    # Guard models read the exchange through their own chat template.
    guard = LLMJudge(tiny_causal, conversation=True, pattern=r"(safe|unsafe)")
    text = guard.render("Hello?", "Hi there.")
    assert "Hello?" in text and "Hi there." in text
    assert guard.judge([], []).labels == ()
    with pytest.raises(ValueError, match="options"):
        LLMJudge(tiny_causal, options={"A": True, "B": True})


def test_model_judge_specs_build_without_loading(tiny_classifier):
    from circuitlab.errors import ModelNotFoundError
    from circuitlab.evaluate.model_judges import (
        MODEL_JUDGES,
        LLMJudge,
        SequenceClassifierJudge,
        model_judge,
    )

    harmbench = model_judge("harmbench")
    assert isinstance(harmbench, LLMJudge) and harmbench.model == MODEL_JUDGES["harmbench"].model
    assert harmbench.name == "model:harmbench" and harmbench.options == {"No": True, "Yes": False}
    assert model_judge("wildguard").pattern and model_judge("llama-guard").conversation
    assert isinstance(model_judge("rejection"), SequenceClassifierJudge)
    mine = model_judge(f"classifier:{tiny_classifier}")
    assert isinstance(mine, SequenceClassifierJudge) and mine.model == tiny_classifier
    assert model_judge("some-org/some-chat-model").name == "model:rubric:some-chat-model"
    with pytest.raises(ModelNotFoundError, match="cannot load the judge model"):
        model_judge("classifier:/no/such/folder").judge(["q"], ["a"])


def test_factory_builds_model_judges_for_scorecards_not_trials(tiny_classifier):
    from circuitlab.evaluate.factory import JudgeOptions, build_judge

    options = JudgeOptions(kind="model", model_judge=f"classifier:{tiny_classifier}")
    judge = build_judge(options)
    assert judge.name.startswith("model:classifier:")
    assert "not measured" in judge.agreement
    assert build_judge(options, for_search=True).name == "markers"
    both = JudgeOptions(
        kind="model", model_judge=f"classifier:{tiny_classifier}", model_judge_for_search=True
    )
    assert build_judge(both, for_search=True).name == judge.name


def test_judge_eval_records_agreement_that_scorecards_print(tiny_classifier, tmp_path):
    """judge-eval on JailbreakBench's human labels stores each judge's agreement; the next
    build of that judge carries it, and the scorecard's judge line shows it."""
    from circuitlab.cli import main
    from circuitlab.evaluate.agreement import describe_judge
    from circuitlab.evaluate.factory import JudgeOptions, build_judge

    out = tmp_path / "figures.json"
    code = main(
        [
            "judge-eval",
            "--judges",
            "markers,model",
            "--model-judge",
            f"classifier:{tiny_classifier}",
            "--cache-dir",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads(out.read_text())
    bench = [r for r in rows if r["data"] == "jailbreakbench-human"]
    names = {r["judge"] for r in bench}
    assert "markers" in names and any(n.startswith("model:classifier:") for n in names)
    assert any(n.startswith("ref:") for n in names)
    for row in bench:
        assert row["n"] == 100 and row["accuracy_ci"][0] <= row["accuracy"] <= row["accuracy_ci"][1]
    stored = json.loads((tmp_path / "judges" / "agreement.json").read_text())
    model_name = next(n for n in stored if n.startswith("model:"))
    options = JudgeOptions(kind="model", model_judge=f"classifier:{tiny_classifier}")
    judge = build_judge(options, tmp_path)
    assert judge.name == model_name
    assert f"{stored[model_name]['accuracy']:.2f}" in describe_judge(judge)
    assert "jailbreakbench-human (n=100)" in describe_judge(judge)
    assert set(LABELS) >= {"hard_refusal", "compliant"}
