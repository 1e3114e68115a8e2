"""The hooked engine on real models: parity with HF, generation, hook hygiene, head surgery."""

import pytest
import torch

from circuitlab.errors import ChatTemplateError, CircuitlabError

PROMPTS = [
    "Write a short poem about the sea.",
    "What is the capital of Norway?",
    "List three uses for baking soda around the house, briefly.",
    "Explain recursion to a child.",
]


def hf_logits(hf, batch):
    with torch.no_grad():
        return hf(**batch).logits


def bridge_logits(model, batch):
    with torch.no_grad():
        return model.bridge(batch["input_ids"], attention_mask=batch["attention_mask"])


@pytest.mark.parametrize("name", ["smollm", "gemma"])
def test_bridge_logits_equal_hf(name, request):
    model, hf = request.getfixturevalue(name), request.getfixturevalue(f"{name}_hf")
    batch = model.encode(PROMPTS, chat=model.facts.has_chat_template)
    assert max_diff(bridge_logits(model, batch), hf_logits(hf, batch), batch) <= 1e-4


def manual_greedy(model, prompt: str, n: int) -> list[int]:
    """Greedy decoding by full forward passes, no KV cache: the reference for generate()."""
    ids = model.encode([prompt])["input_ids"]
    out = []
    for _ in range(n):
        with torch.no_grad():
            nxt = model.bridge(ids)[0, -1].argmax().item()
        out.append(nxt)
        if nxt == model.tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_cached_generation_equals_manual_greedy_loop(smollm):
    """Guards the transformers-5.24 regression where KV-cached generation is silently wrong."""
    n = 24
    completions = smollm.generate(PROMPTS[:2], max_new_tokens=n, batch_size=2)
    for prompt, completion in zip(PROMPTS[:2], completions, strict=True):
        expected = smollm.tokenizer.decode(
            manual_greedy(smollm, prompt, n), skip_special_tokens=True
        )
        assert completion == expected


def test_batched_generation_equals_single(smollm):
    batched = smollm.generate(PROMPTS, max_new_tokens=12, batch_size=4)
    single = [smollm.generate([p], max_new_tokens=12)[0] for p in PROMPTS]
    assert batched == single


def test_hooks_fire_during_generation_and_are_removed_after_an_exception(smollm):
    calls = []

    def count(x, hook):
        calls.append(x.shape[1])

    with (
        pytest.raises(RuntimeError, match="boom"),
        smollm.hooks([("blocks.3.hook_resid_post", count)]),
    ):
        smollm.generate(PROMPTS[:1], max_new_tokens=5)
        raise RuntimeError("boom")
    assert len(calls) == 5 and calls[1:] == [1, 1, 1, 1]  # prefill, then one token per step
    assert smollm.n_active_hooks() == 0


def test_unknown_hook_name_registers_nothing(smollm):
    ok = ("blocks.0.hook_resid_pre", lambda x, hook: x)
    with (
        pytest.raises(CircuitlabError, match="unknown hook"),
        smollm.hooks([ok, ("blocks.0.nope", ok[1])]),
    ):
        pass
    assert smollm.n_active_hooks() == 0


def test_nested_hooks_unwind_in_order(smollm):
    noop = lambda x, hook: x  # noqa: E731
    with smollm.hooks([("blocks.1.hook_resid_pre", noop)]):
        with smollm.hooks([("blocks.2.hook_resid_pre", noop)]):
            assert smollm.n_active_hooks() == 2
        assert smollm.n_active_hooks() == 1
    assert smollm.n_active_hooks() == 0


def test_collect_equals_run_with_cache(smollm):
    acts = smollm.collect(PROMPTS, positions="post_instruction", batch_size=3)
    n_pos = smollm.post_instruction_length()
    assert acts.shape == (4, 30, n_pos, 576)
    batch = smollm.encode(PROMPTS)
    _, cache = smollm.bridge.run_with_cache(
        batch["input_ids"],
        attention_mask=batch["attention_mask"],
        names_filter=lambda n: n.endswith("hook_resid_pre"),
    )
    for layer in (0, 14, 29):
        ref = cache[f"blocks.{layer}.hook_resid_pre"][:, -n_pos:]
        # batches of 3 and 4 pad differently, which moves fp32 sums slightly
        assert torch.allclose(acts[:, layer], ref, rtol=1e-4, atol=1e-4)


def test_collect_subset_of_layers_gemma_raw_text(gemma):
    acts = gemma.collect(PROMPTS[:2], layers=[3, 1], chat=False)
    full = gemma.collect(PROMPTS[:2], chat=False)
    assert acts.shape == (2, 2, 1, 640)
    assert torch.equal(acts[:, 0], full[:, 3]) and torch.equal(acts[:, 1], full[:, 1])


def test_next_token_logprobs_match_full_forward(smollm):
    lp = smollm.next_token_logprobs(PROMPTS, batch_size=3)
    batch = smollm.encode(PROMPTS)
    ref = torch.log_softmax(bridge_logits(smollm, batch)[:, -1], dim=-1)
    assert lp.shape == (4, smollm.facts.vocab_size)
    assert (lp - ref).abs().max().item() < 1e-4


def test_stop_callback_ends_generation_early(smollm):
    seen = []

    def stop(texts):
        seen.append(len(texts))
        return [True] * len(texts)

    out = smollm.generate(PROMPTS[:2], max_new_tokens=40, stop=stop, stop_check_every=4)
    full = smollm.generate(PROMPTS[:2], max_new_tokens=40)
    assert seen == [2]  # asked once, at 4 tokens, then stopped
    for short, long in zip(out, full, strict=True):
        assert long.startswith(short) and len(short) < len(long)


def test_missing_chat_template_is_explicit(gemma):
    with pytest.raises(ChatTemplateError, match="no chat template"):
        gemma.format_chat(["hello"])


def test_system_prompt_goes_into_template(smollm):
    text = smollm.format_chat(["hi"], system_prompt="Be brief.")[0]
    assert "Be brief." in text and text.endswith("assistant\n")


# --------------------------------------------------------------------- head-level facts
LAYER = 5


def max_diff(a, b, batch) -> float:
    """Largest logit difference over real tokens (left-padding positions are meaningless)."""
    return (a - b).abs()[batch["attention_mask"].bool()].max().item()


def logits_with_hook(model, batch, name, fn):
    with model.hooks([(name, fn)]):
        return bridge_logits(model, batch)


def test_zeroing_query_head_at_hook_z_equals_zeroing_o_proj_columns(smollm, smollm_hf):
    d, h = smollm.facts.d_head, 4
    batch = smollm.encode(PROMPTS)

    def zero_head(z, hook):
        z[:, :, h] = 0
        return z

    hooked = logits_with_hook(smollm, batch, f"blocks.{LAYER}.attn.hook_z", zero_head)
    weight = smollm_hf.model.layers[LAYER].self_attn.o_proj.weight
    saved = weight[:, h * d : (h + 1) * d].clone()
    weight[:, h * d : (h + 1) * d] = 0
    try:
        edited = hf_logits(smollm_hf, batch)
    finally:
        weight[:, h * d : (h + 1) * d] = saved
    assert max_diff(hooked, edited, batch) < 1e-4
    assert max_diff(hooked, hf_logits(smollm_hf, batch), batch) > 1e-2  # it did something


def test_zeroing_kv_head_equals_zeroing_v_proj_rows_and_moves_exactly_its_group(smollm, smollm_hf):
    facts, d, g = smollm.facts, smollm.facts.d_head, 1
    batch = smollm.encode(PROMPTS)
    z = {}

    def zero_group(v, hook):
        assert v.shape[2] == facts.n_kv_heads  # K/V stay grouped: never indexed by query head
        v[:, :, g] = 0
        return v

    def keep_z(key):
        def fn(x, hook):
            z[key] = x.clone()

        return fn

    name_z = f"blocks.{LAYER}.attn.hook_z"
    with smollm.hooks([(name_z, keep_z("clean"))]):
        clean = bridge_logits(smollm, batch)
    with smollm.hooks([(f"blocks.{LAYER}.attn.hook_v", zero_group), (name_z, keep_z("edit"))]):
        hooked = bridge_logits(smollm, batch)
    changed = [
        h
        for h in range(facts.n_heads)
        if not torch.allclose(z["clean"][:, -1, h], z["edit"][:, -1, h])
    ]
    assert changed == facts.heads_of_group(g)

    weight = smollm_hf.model.layers[LAYER].self_attn.v_proj.weight
    saved = weight[g * d : (g + 1) * d].clone()
    weight[g * d : (g + 1) * d] = 0
    try:
        edited = hf_logits(smollm_hf, batch)
    finally:
        weight[g * d : (g + 1) * d] = saved
    assert max_diff(hooked, edited, batch) < 1e-4
    assert max_diff(hooked, clean, batch) > 1e-2
