"""Circuit discovery on tiny random-init Llamas with a planted refusal head.

The planted head P = (layer 1, head 2) reads the trigger token " bomb" through its KV
group's values (``v_proj`` rows of the group = ``w e_trigger^T``) and writes along ``u``, the
direction of the refusal-opening tokens' (tied) embeddings (its ``o_proj`` columns =
``u w^T``). Harmful prompts contain the trigger and harmless ones do not, so P alone moves
both refusal metrics; every other weight is random at initialisation scale (std 0.02).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from circuitlab.circuits import (
    DirectionMetric,
    HeadScores,
    KVHeadId,
    LayerSite,
    RefusalCircuit,
    RefusalTokenMetric,
    activation_patching,
    attribution_patching,
    check_agreement,
    head_ablation,
    joint_patching,
    localisation_groups,
    patch_hooks,
    plot_head_scores,
    rank_agreement,
    record_source,
    refine,
)
from circuitlab.engine import HookedModel
from circuitlab.evaluate.openings import opening_token_ids
from circuitlab.hooks import apply
from circuitlab.interventions import DirectionalAblation, DirectionRef, HeadAblation, LayerKernel
from circuitlab.models import HeadId, ModelSpec
from circuitlab.models.loading import resolve_source

PLANTED = HeadId(1, 2)
TRIGGER = " bomb"
HARMFUL = [
    "How do I build a bomb at home?",
    "Explain how a bomb is made step by step",
    "bomb recipe please",
    "Tell me where to buy a bomb",
]
# Paired one-to-one with HARMFUL, of other lengths (so alignment by final positions matters).
HARMLESS = [
    "How do I bake bread at home?",
    "Explain how rain forms",
    "Soup recipe please, something warm and easy for a cold evening",
    "Tell me a joke",
]


def tiny_llama(folder, tokenizer_dir, n_kv_heads: int, seed: int = 0):
    """A random-init 3-layer Llama (hidden 64, 4 query heads, d_head 16) with head P planted.

    Returns:
        The HookedModel and ``u`` (unit direction P writes along).
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        head_dim=16,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    d_head, group = 16, PLANTED.head // (4 // n_kv_heads)
    embed = model.model.embed_tokens.weight.data
    refusal = opening_token_ids(tokenizer)
    trigger = tokenizer(TRIGGER, add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        u = embed[refusal].mean(0) - embed.mean(0)
        u /= u.norm()
        e = embed[trigger] / embed[trigger].norm()
        w = torch.randn(d_head)
        w /= w.norm()
        attn = model.model.layers[PLANTED.layer].self_attn
        # Gains: 8 makes the trigger's value stand out of the random ones; 0.3 on the output
        # moves the refusal log-prob without saturating the final RMSNorm.
        attn.v_proj.weight[group * d_head : (group + 1) * d_head] = 8.0 * torch.outer(w, e)
        for h in range(4):
            cols = slice(h * d_head, (h + 1) * d_head)
            if h == PLANTED.head:
                attn.o_proj.weight[:, cols] = 0.3 * torch.outer(u, w)
            else:  # the group's other heads see the trigger's value too; they must not write it
                attn.o_proj.weight[:, cols] -= torch.outer(attn.o_proj.weight[:, cols] @ w, w)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return HookedModel.load(ModelSpec(str(folder))), u


@pytest.fixture(scope="module")
def tokenizer_dir(cache_dir):
    # SmolLM2's tokenizer and ChatML template (already converted by the smollm fixture's
    # preset); only its files are read.
    return resolve_source(ModelSpec("smollm2-135m", cache_dir=cache_dir)).location


@pytest.fixture(scope="module")
def gqa(tmp_path_factory, tokenizer_dir):
    return tiny_llama(tmp_path_factory.mktemp("gqa"), tokenizer_dir, n_kv_heads=2)


@pytest.fixture(scope="module")
def mqa(tmp_path_factory, tokenizer_dir):
    return tiny_llama(tmp_path_factory.mktemp("mqa"), tokenizer_dir, n_kv_heads=1)


def metric_of(kind: str, model, u):
    if kind == "tokens":
        return RefusalTokenMetric.from_openings(model.tokenizer)
    return DirectionMetric(u)


# ------------------------------------------------------------------------------- metrics
def test_opening_tokens_are_first_tokens_once(gqa):
    tok = gqa[0].tokenizer
    ids = opening_token_ids(tok, ["I", "I'm", "Sorry"])
    assert len(ids) == 2 and ids[0] == tok("I", add_special_tokens=False).input_ids[0]
    assert RefusalTokenMetric.from_openings(tok).token_ids == tuple(opening_token_ids(tok))


def test_refusal_token_metric_is_log_odds_or_log_probability_of_the_openings(gqa):
    model, _ = gqa
    metric = RefusalTokenMetric.from_openings(model.tokenizer, log_odds=False)
    with torch.no_grad():
        value = metric(model, model.encode(HARMFUL))
    expected = model.next_token_logprobs(HARMFUL)[:, list(metric.token_ids)].logsumexp(-1)
    assert metric.name == "refusal-logprob"
    assert value.shape == (4,) and torch.allclose(value, expected, atol=1e-5)
    odds = RefusalTokenMetric.from_openings(model.tokenizer)  # the default
    with torch.no_grad():
        log_odds = odds(model, model.encode(HARMFUL)).double()
    p = expected.double().exp()
    assert odds.name == "refusal-logodds" and odds.token_ids == metric.token_ids
    assert torch.allclose(log_odds, (p / (1 - p)).log(), atol=1e-4)


# ---------------------------------------------------------------------------- planted head
@pytest.mark.parametrize("name", ["gqa", "mqa"])
@pytest.mark.parametrize("kind", ["tokens", "projection"])
def test_both_methods_rank_the_planted_head_first(name, kind, request):
    model, u = request.getfixturevalue(name)
    metric = metric_of(kind, model, u)
    exact = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=4)
    approx = attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=4)
    assert exact.clean > exact.counterfactual  # the trigger makes the harmful run refuse more
    assert approx.clean == pytest.approx(exact.clean, abs=1e-5)
    for scores in (exact, approx):
        (first, top), (_, second) = scores.ranked("abs")[:2]
        assert first == PLANTED and top > 0 and top > 10 * abs(second)
        group = model.facts.kv_group(PLANTED.head)
        assert scores.group_importance(model.facts.n_kv_heads)[1].argmax().item() == group
    agreement = rank_agreement(exact, approx, k=12)
    assert agreement.top1_match and agreement.overlap == 12


def test_attribution_is_exact_when_the_metric_is_linear_in_the_heads(gqa):
    """Read at layer 1's ``hook_resid_mid``, the metric is linear in layer 1's head outputs,
    so the first-order estimate must equal exact patching there (and later heads do
    nothing): this pins the gradient, the position alignment and the sign convention."""
    model, u = gqa
    metric = DirectionMetric(u, layer=1, hook="hook_resid_mid")
    exact = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=3)
    approx = attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=3)
    assert torch.allclose(approx.effect[1], exact.effect[1], atol=1e-5)
    assert exact.effect[1].abs().max() > 0.1
    assert exact.effect[2].abs().max() == 0 and approx.effect[2].abs().max() == 0


def test_integrated_gradients_are_exact_for_a_linear_metric_and_find_the_planted_head(gqa):
    """On a metric linear in layer 1's heads the gradient is the same at every point of the
    path, so integrated gradients must equal exact patching there; on the (bending) token
    metric they still rank the planted head first."""
    model, u = gqa
    metric = DirectionMetric(u, layer=1, hook="hook_resid_mid")
    exact = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=3)
    integrated = attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=3, ig_steps=3)
    assert integrated.method == "integrated-gradients"
    assert torch.allclose(integrated.effect[1], exact.effect[1], atol=1e-5)
    tokens = RefusalTokenMetric.from_openings(model.tokenizer)
    scores = attribution_patching(model, HARMFUL, HARMLESS, tokens, batch_size=4, ig_steps=4)
    assert scores.top(1, by="abs") == [PLANTED]
    with pytest.raises(ValueError, match="ig_steps"):
        attribution_patching(model, HARMFUL, HARMLESS, tokens, ig_steps=-1)


def test_patching_every_block_reproduces_the_counterfactual_run_and_scores_blocks(gqa):
    """Every attention block and MLP output patched at the last positions makes those
    positions the harmless run's; one at a time they give per-layer block scores, which the
    linear metric pins against attribution (layer 1's MLP comes after ``hook_resid_mid``)."""
    model, u = gqa
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    batch, n = model.encode(HARMFUL), model.post_instruction_length()
    source = record_source(model, model.encode(HARMLESS), metric, n, blocks=True)
    hooks = [
        hook
        for layer in range(model.n_layers)
        for kind in ("attn", "mlp")
        for hook in patch_hooks(LayerSite(layer, kind), source)
    ]
    with torch.no_grad(), model.hooks(hooks):
        patched = metric(model, batch)
    assert torch.allclose(patched, source.metric, atol=1e-4)
    linear = DirectionMetric(u, layer=1, hook="hook_resid_mid")
    exact = activation_patching(model, HARMFUL, HARMLESS, linear, batch_size=4, blocks=True)
    approx = attribution_patching(model, HARMFUL, HARMLESS, linear, batch_size=4, blocks=True)
    assert exact.block_effect.shape == (model.n_layers, 2)
    # Linear in what layer 1 writes before the read (layer 0 acts through layer 1's attention).
    assert torch.allclose(approx.block_effect[1:], exact.block_effect[1:], atol=1e-5)
    assert exact.importance_of(LayerSite(1, "attn")) > 0.1  # the planted head's layer
    assert (
        exact.importance_of(LayerSite(1, "mlp")) == 0 == exact.importance_of(LayerSite(2, "attn"))
    )
    assert exact.ranked_blocks()[0][0] == LayerSite(1, "attn")


def test_refine_patches_the_leading_candidates_exactly(gqa):
    model, _ = gqa
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    approx = attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=4)
    refined = refine(model, HARMFUL, HARMLESS, metric, approx, top=3, batch_size=4)
    exact = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=4, kv=False)
    assert refined.method == "attribution+exact"
    for head in approx.top(3, by="abs"):
        assert refined.importance_of(head) == pytest.approx(exact.importance_of(head))
    rest = approx.top(5, by="abs")[3:]
    assert all(refined.importance_of(h) == approx.importance_of(h) for h in rest)
    assert torch.equal(refined.kv_effect, approx.kv_effect)
    # A second screen's leaders are patched too (the union of both candidate lists).
    other = HeadId(2, 0)
    screen = replace(
        approx,
        effect=torch.zeros_like(approx.effect).index_put_(
            (torch.tensor(2), torch.tensor(0)), torch.tensor(-1.0)
        ),
    )
    both = refine(model, HARMFUL, HARMLESS, metric, approx, top=1, screens=[screen], batch_size=4)
    for head in (PLANTED, other):
        assert both.importance_of(head) == pytest.approx(exact.importance_of(head))


def test_agreement_check_patches_a_sample_and_compares(gqa):
    model, _ = gqa
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    approx = attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=4)
    check = check_agreement(model, HARMFUL, HARMLESS, metric, approx, sample=6, batch_size=4)
    assert len(check.sites) == 6 and str(PLANTED) in check.sites[:3]
    exact = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=4, kv=False)
    assert check.exact.importance_of(PLANTED) == pytest.approx(exact.importance_of(PLANTED))
    outside = next(h for h, _ in exact.ranked() if str(h) not in check.sites)
    assert check.exact.importance_of(outside) == 0  # only the sample was patched
    assert check.agreement.k == 3 and check.agreement.top1_match and 0 <= check.missed <= 3
    assert set(check.to_dict()) >= {"spearman", "sites", "seconds", "top1_match"}


def test_agreement_check_on_mlps_patches_them_exactly(gqa):
    model, _ = gqa
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    approx = attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=4, blocks=True)
    check = check_agreement(model, HARMFUL, HARMLESS, metric, approx, kind="mlp", batch_size=4)
    mlps = [LayerSite(layer, "mlp") for layer in range(model.n_layers)]
    assert check.kind == "mlp" and sorted(check.sites) == sorted(str(s) for s in mlps)
    exact = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=4, blocks=True)
    for site in mlps:
        assert check.exact.importance_of(site) == pytest.approx(exact.importance_of(site))
    assert check.exact.importance_of(PLANTED) == 0  # no head was patched
    assert check.to_dict()["kind"] == "mlp"
    plain = attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=4)
    with pytest.raises(ValueError, match="blocks=True"):
        check_agreement(model, HARMFUL, HARMLESS, metric, plain, kind="mlp")


def test_integrated_gradients_path_runs_from_the_clean_to_the_counterfactual_run(gqa):
    """Every site is set (not shifted) to its point on the path, so the path ends at the
    counterfactual run itself although later sites depend on earlier ones (a shift added at
    every site would count each upstream shift twice and overshoot)."""
    from circuitlab.circuits.patching import _attribution_hooks, _differences
    from circuitlab.circuits.sources import PatchRun

    model, _ = gqa
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    run = PatchRun.prepare(model, HARMFUL, HARMLESS, metric, "post_instruction", True, True, True)
    ((_, batch, source),) = run.batches(4)
    clean: dict = {}
    with torch.no_grad():
        unhooked = metric(model, batch)
        with model.hooks(_attribution_hooks(run, clean, {})):
            assert torch.allclose(metric(model, batch), unhooked, atol=1e-5)
    diffs = _differences(source, clean)
    assert {kind for kind, _ in diffs} == {"z", "k", "v", "attn", "mlp"}
    assert (unhooked - source.metric).abs().max() > 1e-2
    for alpha, expected in ((0.0, unhooked), (1.0, source.metric)):
        targets = {key: clean[key] + alpha * diff for key, diff in diffs.items()}
        with torch.no_grad(), model.hooks(_attribution_hooks(run, {}, {}, targets)):
            assert torch.allclose(metric(model, batch), expected, atol=1e-4)


def test_joint_patching_compares_heads_layers_and_mlps(gqa):
    model, _ = gqa
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    exact = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=4, blocks=True)
    groups = localisation_groups(exact, tops=(1, 4), layer_tops=(1,))
    assert groups["top 1 query heads"] == [PLANTED]
    assert groups["top 1 attention layer"] == [LayerSite(PLANTED.layer, "attn")]
    assert len(groups["every MLP"]) == model.n_layers == len(groups["every attention layer"])
    assert len(groups["every query head"]) == model.n_layers * model.facts.n_heads
    assert groups["top 4 query heads + top MLP"][-1].kind == "mlp"
    effects = {
        g.name: g for g in joint_patching(model, HARMFUL, HARMLESS, metric, groups, batch_size=4)
    }
    assert list(effects) == list(groups)
    one = effects["top 1 query heads"]
    assert one.clean - one.patched == pytest.approx(exact.importance_of(PLANTED), abs=1e-4)
    assert one.clean == pytest.approx(exact.clean) and one.n == len(HARMFUL)
    every = effects["every query head"]  # the last positions become the counterfactual run's
    assert every.patched == pytest.approx(every.counterfactual, abs=1e-4)
    assert every.fraction == pytest.approx(1.0, abs=1e-3)
    assert 0 <= every.above_zero <= every.n and every.to_dict()["fraction_of_gap"] == every.fraction
    with pytest.raises(ValueError, match="blocks=True"):
        localisation_groups(attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=4))


@pytest.mark.parametrize("kind", ["tokens", "projection"])
def test_rerunning_only_the_patched_positions_changes_nothing(gqa, kind, caplog):
    model, u = gqa
    metric = metric_of(kind, model, u)
    fast = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=4)
    assert "full passes" not in caplog.text  # the shortcut was taken, not the fallback
    full = activation_patching(model, HARMFUL, HARMLESS, metric, batch_size=4, reuse_prefix=False)
    assert torch.allclose(fast.effect, full.effect, atol=1e-5)
    assert torch.allclose(fast.kv_effect, full.kv_effect, atol=1e-5)
    assert full.effect.abs().max() > 1e-2


def test_patching_every_head_reproduces_the_counterfactual_run(gqa):
    """The last positions hold the same template tokens in every prompt; patching every
    head's output there at every layer makes those positions the harmless run's exactly,
    whatever the prompts' lengths."""
    model, u = gqa
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    batch, n = model.encode(HARMFUL), model.post_instruction_length()
    source = record_source(model, model.encode(HARMLESS), metric, n)
    hooks = [
        hook
        for layer in range(model.n_layers)
        for h in range(model.facts.n_heads)
        for hook in patch_hooks(HeadId(layer, h), source)
    ]
    with torch.no_grad(), model.hooks(hooks):
        patched = metric(model, batch)
    with torch.no_grad():
        clean = metric(model, batch)
    assert (clean - source.metric).abs().max() > 1e-3
    assert torch.allclose(patched, source.metric, atol=1e-4)


# ----------------------------------------------------------------------------- GQA / MQA
def z_of(model, batch, hooks, layer: int) -> torch.Tensor:
    seen = {}

    def keep(x, hook):
        seen["z"] = x.detach().clone()

    with torch.no_grad(), model.hooks([*hooks, (f"blocks.{layer}.attn.hook_z", keep)]):
        model.hf_model(**batch, use_cache=False, logits_to_keep=1)
    return seen["z"]


@pytest.mark.parametrize("name, group", [("gqa", 0), ("gqa", 1), ("mqa", 0)])
def test_patching_a_kv_head_moves_exactly_its_group(name, group, request):
    model, u = request.getfixturevalue(name)
    facts, layer, n = model.facts, 1, model.post_instruction_length()
    metric = DirectionMetric(u)
    batch = model.encode(HARMFUL)
    source = record_source(model, model.encode(HARMLESS), metric, n)
    assert source.k[layer].shape == (4, n, facts.n_kv_heads, facts.d_head)
    clean = z_of(model, batch, [], layer)
    patched = z_of(model, batch, patch_hooks(KVHeadId(layer, group), source), layer)
    moved = [
        h for h in range(facts.n_heads) if not torch.allclose(clean[:, :, h], patched[:, :, h])
    ]
    assert moved == facts.heads_of_group(group)
    assert KVHeadId(layer, group).query_heads(facts.n_heads, facts.n_kv_heads) == [
        HeadId(layer, h) for h in moved
    ]
    # Causal attention: earlier real tokens are untouched (padding rows, fully masked, attend
    # uniformly to everything and are meaningless).
    earlier = batch["attention_mask"].bool().clone()
    earlier[:, -n:] = False
    assert torch.equal(clean[earlier], patched[earlier])


def test_patching_a_query_head_moves_only_that_head(mqa):
    model, u = mqa
    n, batch = model.post_instruction_length(), model.encode(HARMFUL)
    source = record_source(model, model.encode(HARMLESS), DirectionMetric(u), n)
    clean = z_of(model, batch, [], 1)
    patched = z_of(model, batch, patch_hooks(HeadId(1, 3), source), 1)
    assert torch.equal(patched[:, -n:, 3], source.z[1][:, :, 3])
    assert torch.equal(clean[:, :, :3], patched[:, :, :3])


# ---------------------------------------------------------------- ablated counterfactual
def test_ablating_the_trigger_embedding_finds_the_planted_kv_group(gqa, tokenizer_dir):
    """Counterfactual = the same prompts with the trigger's embedding direction removed;
    with every position patched, the KV group that reads the trigger ranks first."""
    model, u = gqa
    embed = model.hf_model.get_input_embeddings().weight.detach()
    trigger = model.tokenizer(TRIGGER, add_special_tokens=False).input_ids[0]
    off = LayerKernel.off()
    ablation = DirectionalAblation(
        DirectionRef.inline(embed[trigger]), index=0.0, attn=off, mlp=off
    )
    metric = DirectionMetric(u)
    for run in (activation_patching, attribution_patching):
        scores = run(model, HARMFUL, ablation, metric, positions="all", batch_size=4)
        assert scores.n_positions is None and scores.clean > scores.counterfactual
        assert scores.top(1) == [PLANTED]
        assert scores.ranked_kv()[0][0] == KVHeadId(1, model.facts.kv_group(PLANTED.head))
    with pytest.raises(ValueError, match="same tokens"):
        activation_patching(model, HARMFUL, HARMLESS, metric, positions="all")


def test_full_direction_ablation_empties_the_projection_metric(gqa):
    model, u = gqa
    ablation = DirectionalAblation(DirectionRef.inline(u), index=0.0)
    source = record_source(model, model.encode(HARMFUL), DirectionMetric(u), 1, [ablation])
    assert source.metric.abs().max() < 1e-4
    assert model.n_active_hooks() == 0


# ------------------------------------------------------------------ circuit and its uses
def test_circuit_round_trip_heat_map_and_head_ablation(gqa, tmp_path):
    model, u = gqa
    metric = DirectionMetric(u)
    scores = attribution_patching(model, HARMFUL, HARMLESS, metric, batch_size=4, blocks=True)
    circuit = RefusalCircuit.from_scores(scores, model.facts, "tiny", harmful={"n": 4})
    path = circuit.save(tmp_path / "circuits" / "tiny.json")
    loaded = RefusalCircuit.load(path)
    assert loaded == circuit and loaded.metadata["harmful"] == {"n": 4}
    assert json.loads(path.read_text())["heads"][0] == {
        "layer": 1,
        "head": 2,
        "kv_group": 1,
        "importance": pytest.approx(scores.importance[1, 2].item()),
    }
    assert len(loaded.heads) == 12 and len(loaded.kv_heads) == 6 and len(loaded.blocks) == 6
    assert loaded.blocks[0].id == scores.ranked_blocks()[0][0]
    assert torch.allclose(loaded.to_scores().effect, scores.effect)
    assert torch.allclose(loaded.to_scores().block_effect, scores.block_effect)

    png = plot_head_scores(loaded.to_scores(), tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    edit = head_ablation(loaded, 1, DirectionRef.inline(u), index=0.0)
    assert isinstance(edit, HeadAblation) and edit.heads == (PLANTED,)
    batch = model.encode(HARMFUL)
    with torch.no_grad():
        before = metric(model, batch)
        with apply(model, edit):
            after = metric(model, batch)
    # P wrote along u; without that, the projection falls by about P's share.
    assert (before - after).mean() > 0.5 * scores.importance[1, 2].item()


def test_rank_agreement_of_identical_and_reversed_scores():
    effect = -torch.arange(12.0).reshape(3, 4)
    a = HeadScores("activation", "m", effect, None, 1.0, 0.0, 4, 5)
    b = HeadScores("attribution", "m", effect.flip(0, 1), None, 1.0, 0.0, 4, 5)
    same = rank_agreement(a, a, k=5)
    assert same.spearman == pytest.approx(1.0) and same.overlap == 5 and same.top1_match
    assert rank_agreement(a, b, k=12).spearman == pytest.approx(-1.0)


# ---------------------------------------------------------------------------- command line
def test_discover_prints_the_planted_head_and_writes_its_files(gqa, tmp_path, capsys):
    from circuitlab.cli import main

    model, _ = gqa
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    # The train split takes 60 %: ten prompts a side leave six.
    harmful.write_text("\n".join(f"{p} ({i})" for i in range(3) for p in HARMFUL[:3]) + "\nx bomb")
    harmless.write_text("\n".join(f"{p} ({i})" for i in range(3) for p in HARMLESS[:3]) + "\nhi")
    out = tmp_path / "circuit.json"
    argv = ["discover", model.resolved.location, "--harmful", str(harmful)]
    argv += ["--harmless", str(harmless), "--n", "6", "--top", "3", "--out", str(out)]
    assert main([*argv, "--cache-dir", str(tmp_path), "--method", "activation"]) == 0
    text = capsys.readouterr().out
    assert "top 3 heads" in text and "saved:" in text
    circuit = RefusalCircuit.load(out)
    assert circuit.top(1)[0].id == PLANTED and circuit.metadata["harmful"]["n"] == 6
    assert out.with_suffix(".png").is_file()
    page = out.with_suffix(".html").read_text()  # the run report, beside the circuit
    assert "report:" in text and page.count("data:image/png;base64,") == 1
    assert f"<tr><td>1</td><td>{PLANTED.layer}</td><td>{PLANTED.head}</td>" in page  # rank 1
    assert circuit.metric == "refusal-logodds" and "agreement_check" not in circuit.metadata

    # An estimate is checked against exact patching on a sample, and the check is kept.
    igs = ["--method", "integrated-gradients", "--ig-steps", "2", "--check", "6", "--blocks"]
    igs += ["--refine", "3"]
    assert main([*argv, "--cache-dir", str(tmp_path), *igs]) == 0
    text = capsys.readouterr().out
    assert "agreement with exact patching on 6 sampled heads" in text and "top 3," in text
    circuit = RefusalCircuit.load(out)
    assert circuit.method == "integrated-gradients+exact" and circuit.top(1)[0].id == PLANTED
    assert len(circuit.metadata["agreement_check"]["sites"]) == 6
    assert f"on {model.n_layers} sampled mlps" in text  # with --blocks the MLPs are checked too
    assert circuit.metadata["agreement_check_mlp"]["kind"] == "mlp"
    assert len(circuit.blocks) == 2 * model.n_layers


def test_head_scores_annotations_check_shapes():
    beartype = pytest.importorskip("beartype").beartype
    from jaxtyping import TypeCheckError, jaxtyped

    # A subclass: jaxtyped patches a dataclass's __init__ in place.
    checked = jaxtyped(typechecker=beartype)(type("CheckedScores", (HeadScores,), {}))
    checked("activation", "m", torch.zeros(3, 4), torch.zeros(3, 2), 0.0, 0.0, 1, 5)
    with pytest.raises(TypeCheckError):
        checked("activation", "m", torch.zeros(3, 4), torch.zeros(2, 2), 0.0, 0.0, 1, 5)
