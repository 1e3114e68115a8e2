"""Activation collection on SmolLM2: shapes, the content-addressed cache, response labels."""

from __future__ import annotations

import pytest
import torch

from circuitlab.activations import (
    collect_activations,
    generate_completions,
    model_fingerprint,
    response_labels,
    select_position,
)
from circuitlab.prompts import load_prompts, prompts_hash

PROMPTS = list(load_prompts("harmless").take(4).prompts)


def forbid(monkeypatch, model, method: str) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"{method} ran: the cache was not used")

    monkeypatch.setattr(model, method, fail)


def test_collect_caches_and_reuses(smollm, tmp_path, monkeypatch):
    first = collect_activations(smollm, PROMPTS, cache_dir=tmp_path)
    assert first.shape == (4, smollm.n_layers, 1, smollm.facts.d_model)
    assert first.dtype == torch.float32
    files = list((tmp_path / "activations").rglob("*.safetensors"))
    assert len(files) == 1 and files[0].name.startswith(prompts_hash(PROMPTS))
    forbid(monkeypatch, smollm, "collect")
    again = collect_activations(smollm, PROMPTS, cache_dir=tmp_path)
    assert torch.equal(first, again)


def test_cache_matches_a_direct_collection(smollm, tmp_path):
    cached = collect_activations(smollm, PROMPTS[:2], layers=[0, 7], cache_dir=tmp_path)
    direct = smollm.collect(PROMPTS[:2], [0, 7])
    torch.testing.assert_close(cached, direct, rtol=0, atol=1e-5)


def test_cache_key_separates_positions_layers_and_prompts(smollm, tmp_path):
    post = collect_activations(
        smollm, PROMPTS[:2], positions="post_instruction", layers=[3], cache_dir=tmp_path
    )
    assert post.shape == (2, 1, smollm.post_instruction_length(), smollm.facts.d_model)
    last = collect_activations(smollm, PROMPTS[:2], layers=[3], cache_dir=tmp_path)
    # The last template token is the same position in both collections.
    torch.testing.assert_close(select_position(post), select_position(last), rtol=0, atol=1e-5)
    collect_activations(smollm, PROMPTS[1:3], layers=[3], cache_dir=tmp_path)
    assert len(list((tmp_path / "activations").rglob("*.safetensors"))) == 3


def test_cache_is_bypassed_while_hooks_are_attached(smollm, tmp_path):
    def zero(x, hook):
        return torch.zeros_like(x)

    clean = collect_activations(smollm, PROMPTS[:1], layers=[2], cache_dir=tmp_path)
    with smollm.hooks([("blocks.1.hook_resid_post", zero)]):
        hooked = collect_activations(smollm, PROMPTS[:1], layers=[2], cache_dir=tmp_path)
    assert not torch.allclose(clean, hooked)
    assert torch.equal(
        clean, collect_activations(smollm, PROMPTS[:1], layers=[2], cache_dir=tmp_path)
    )


def test_fingerprint_sees_weight_edits(smollm):
    before = model_fingerprint(smollm)
    assert model_fingerprint(smollm) == before
    weight = smollm.hf_model.model.layers[3].mlp.down_proj.weight
    with torch.no_grad():
        weight.mul_(2)
        try:
            assert model_fingerprint(smollm) != before
        finally:
            weight.div_(2)
    assert model_fingerprint(smollm) == before


def test_select_position():
    acts = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(select_position(acts), acts[:, :, -1])
    assert torch.equal(select_position(acts, 1), acts[:, :, 1])
    torch.testing.assert_close(select_position(acts, "mean"), acts.mean(2))
    with pytest.raises(ValueError, match="prompt, layer, pos"):
        select_position(acts[:, :, 0])


def test_response_labels_use_the_judge_and_cache_completions(smollm, tmp_path, monkeypatch):
    seen = {}

    def judge(prompts, responses):
        seen["responses"] = list(responses)
        return [i == 0 for i in range(len(responses))]

    labels = response_labels(smollm, PROMPTS[:2], judge, max_new_tokens=4, cache_dir=tmp_path)
    assert labels == [True, False] and all(isinstance(r, str) for r in seen["responses"])
    forbid(monkeypatch, smollm, "generate")
    again = generate_completions(smollm, PROMPTS[:2], max_new_tokens=4, cache_dir=tmp_path)
    assert again == seen["responses"]


def test_response_labels_accept_judgements(smollm, tmp_path):
    from circuitlab.evaluate.judges import MarkerJudge

    labels = response_labels(
        smollm, PROMPTS[:2], MarkerJudge().judge, max_new_tokens=4, cache_dir=tmp_path
    )
    assert len(labels) == 2 and all(isinstance(v, bool) for v in labels)
