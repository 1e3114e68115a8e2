"""Interventions applied live on the real presets: geometry, exactness, routing, hygiene."""

import dataclasses
from contextlib import ExitStack

import pytest
import torch

from circuitlab.directions import DirectionSet
from circuitlab.hooks import apply
from circuitlab.interventions import (
    ActivationAddition,
    ConeRouting,
    DirectionalAblation,
    DirectionRef,
    DynamicStrength,
    HeadAblation,
    InterventionError,
    LayerKernel,
    SubspaceAblation,
)
from circuitlab.models import HeadId
from circuitlab.plan import HeadProjection, HeadZero, ResidualAddition, WriterProjection, plan

PROMPTS = [
    "Write a short poem about the sea.",
    "What is the capital of Norway?",
    "List three uses for baking soda around the house, briefly.",
]
COOKING = [
    "How long should I boil an egg for a runny yolk?",
    "Give me a simple recipe for tomato soup.",
    "What spices go well with roasted carrots?",
    "How do I keep pasta from sticking together?",
    "What is the best way to caramelise onions?",
]
MATHS = [
    "What is the derivative of x squared?",
    "Solve for x: 3x + 5 = 20.",
    "Is 91 a prime number?",
    "What is the integral of sin(x)?",
    "Compute 17 times 23.",
]


def chat(model) -> bool:
    return model.facts.has_chat_template  # Gemma 270m is a base model: raw text


def unit_vectors(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """k random orthonormal vectors [k, d] (random directions are far from orthogonal to the
    residual, ~1/sqrt(d) relative, so an ablation that fails shows)."""
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.hf_model(**batch, use_cache=False).logits


def decoder_only(model, batch) -> None:
    """A forward pass without the unembedding (Gemma's 262k-vocabulary logits are slow)."""
    with torch.no_grad():
        model.hf_model.model(**batch, use_cache=False)


def max_diff(a, b, batch) -> float:
    """Largest difference over real tokens (left-padding positions are meaningless)."""
    return (a - b).abs()[batch["attention_mask"].bool()].max().item()


def capture(names, store):
    """Hooks that append a copy of what they see to ``store[name]``."""

    def make(name):
        def keep(x, hook):
            store.setdefault(name, []).append(x.detach().clone())

        return name, keep

    return [make(n) for n in names]


def residual_names(model) -> list[str]:
    kinds = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
    return [f"blocks.{layer}.{kind}" for layer in range(model.n_layers) for kind in kinds]


def worst_relative_projection(store, r, mask) -> float:
    worst = 0.0
    for (x,) in store.values():
        x = x[mask.bool()]
        worst = max(worst, ((x @ r).abs() / x.norm(dim=-1)).max().item())
    return worst


# --------------------------------------------------------------------- directional ablation
@pytest.mark.parametrize("name", ["smollm", "gemma"])
def test_full_ablation_leaves_every_residual_orthogonal(name, request):
    model = request.getfixturevalue(name)
    r = unit_vectors(model.facts.d_model, 1)[0]
    ablation = DirectionalAblation(DirectionRef.inline(r), index=0.0)
    batch = model.encode(PROMPTS, chat=chat(model))
    clean, edited = {}, {}
    with model.hooks(capture(residual_names(model), clean)):
        decoder_only(model, batch)
    with apply(model, ablation), model.hooks(capture(residual_names(model), edited)):
        decoder_only(model, batch)
    assert worst_relative_projection(clean, r, batch["attention_mask"]) > 1e-2
    assert worst_relative_projection(edited, r, batch["attention_mask"]) < 1e-4
    assert model.n_active_hooks() == 0


def test_sandwich_plan_uses_the_post_norm_gain(gemma):
    r = unit_vectors(gemma.facts.d_model, 1)[0]
    edits = plan(gemma, DirectionalAblation(DirectionRef.inline(r), index=0.0))
    assert len(edits) == 1 + 2 * gemma.n_layers
    attn = next(e for e in edits if e.writer == "attn" and e.layer == 3)
    assert attn.hook == "blocks.3.ln1_post.hook_in"
    gain = 1 + gemma.hf_model.model.layers[3].post_attention_layernorm.weight.double()
    expected = gain * r.double() / (gain * r.double()).norm()  # Gemma3RMSNorm: (1 + w)
    assert torch.allclose(attn.basis[0], expected, atol=1e-6)
    assert edits[0].hook == "hook_embed" and torch.allclose(edits[0].basis[0], r.double())


def test_kernel_weights_reach_the_plan(smollm):
    r = DirectionRef.inline(unit_vectors(576, 1)[0])
    tent = LayerKernel(
        max_weight=0.8, max_weight_position=10.0, min_weight=0.2, min_weight_distance=4
    )
    edits = plan(
        smollm, DirectionalAblation(r, index=0.0, attn=tent, mlp=LayerKernel.off(), embed=0)
    )
    weights = {e.layer: e.weights.item() for e in edits}
    assert {e.writer for e in edits} == {"attn"} and sorted(weights) == list(range(6, 15))
    assert weights[10] == pytest.approx(0.8) and weights[14] == pytest.approx(0.2)


def test_eigenvalue_weights_follow_the_layers_top_eigenvalue(smollm):
    vectors = unit_vectors(576, 3, seed=9).expand(smollm.n_layers, -1, -1).clone()
    scores = torch.tensor([4.0, 2.0, -1.0]).expand(smollm.n_layers, -1).clone()
    ref = DirectionRef.inline(DirectionSet("pca", vectors, scores))
    edits = plan(smollm, SubspaceAblation(ref, components=(1, 2), weighting="eigenvalue"))
    assert all(e.basis.shape == (2, 576) for e in edits)
    assert edits[5].weights.tolist() == [0.5, 0.0]  # 2/4, and no excess variance: 0


def test_one_plan_gives_typed_edits_for_every_foldable_type(smollm):
    r = unit_vectors(576, 1, seed=3)[0]
    ref = DirectionRef.inline(r)
    ablation = plan(smollm, DirectionalAblation(ref, index=0.0))
    assert {type(e) for e in ablation} == {WriterProjection}
    addition = plan(smollm, ActivationAddition(ref, strength=2.0, layers=(3, 7), index=0.0))
    assert [(type(e), e.layer, e.hook, e.foldable) for e in addition] == [
        (ResidualAddition, 3, "blocks.3.hook_resid_pre", True),
        (ResidualAddition, 7, "blocks.7.hook_resid_pre", True),
    ]
    assert torch.allclose(addition[0].vector, 2.0 * r.double(), atol=1e-6)
    assert addition[0].vector.dtype == torch.float64
    (last,) = plan(smollm, ActivationAddition(ref, 1.0, (3,), index=0.0, positions="last"))
    assert not last.foldable
    heads = (HeadId(2, 1), HeadId(5, 0))
    zero = plan(smollm, HeadAblation(heads, mode="zero"))
    assert [(type(e), e.layer, e.head) for e in zero] == [(HeadZero, 2, 1), (HeadZero, 5, 0)]
    (project,) = plan(smollm, HeadAblation(heads[:1], directions=ref, index=0.0, weight=0.5))
    assert isinstance(project, HeadProjection) and project.weights.tolist() == [0.5]
    with pytest.raises(InterventionError, match="ConeRouting cannot be folded"):
        plan(smollm, ConeRouting(ref))


# --------------------------------------------------------------------- activation addition
def exact(delta, expected, x) -> bool:
    """Equal up to float32 rounding of the residual the vector was added to (|x| reaches ~1e3)."""
    tol = 4 * torch.finfo(torch.float32).eps * x.abs().max().item()
    return (delta - expected).abs().max().item() <= tol


def test_addition_changes_each_hooked_residual_by_exactly_strength_r(smollm):
    r = unit_vectors(576, 1, seed=1)[0]
    addition = ActivationAddition(DirectionRef.inline(r), strength=3.5, layers=(4, 9), index=0.0)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in (4, 9)]
    before, after = {}, {}
    batch = smollm.encode(PROMPTS)
    with ExitStack() as stack:
        # Registration order is firing order: read, add, read again, at the same hook.
        stack.enter_context(smollm.hooks(capture(names, before)))
        stack.enter_context(apply(smollm, addition))
        stack.enter_context(smollm.hooks(capture(names, after)))
        logits(smollm, batch)
    for name in names:
        delta = after[name][0] - before[name][0]
        assert exact(delta, 3.5 * r, before[name][0])


@pytest.mark.parametrize("positions", ["last", "generated"])
def test_addition_positions_during_cached_generation(smollm, positions):
    r = unit_vectors(576, 1, seed=2)[0]
    addition = ActivationAddition(
        DirectionRef.inline(r), strength=2.0, layers=(6,), index=0.0, positions=positions
    )
    name, before, after = "blocks.6.hook_resid_pre", {}, {}
    with ExitStack() as stack:
        stack.enter_context(smollm.hooks(capture([name], before)))
        stack.enter_context(apply(smollm, addition))
        stack.enter_context(smollm.hooks(capture([name], after)))
        smollm.generate(PROMPTS[:2], max_new_tokens=3)
    deltas = [a - b for a, b in zip(after[name], before[name], strict=True)]
    prefill, decode = deltas[0], deltas[1:]
    assert prefill[:, :-1].abs().max() == 0
    assert exact(prefill[:, -1], 2.0 * r, before[name][0])
    assert len(decode) == 2 and all(d.shape[1] == 1 for d in decode)
    expected = 2.0 * r if positions == "generated" else torch.zeros_like(r)
    assert all(exact(d, expected, x) for d, x in zip(decode, before[name][1:], strict=True))


# --------------------------------------------------------------------------- head ablation
LAYER, HEAD = 5, 4


def edit_o_proj_columns(hf, layer, head, d_head, fn):
    """Apply ``fn`` to one head's o_proj columns of the reference model; returns an undo."""
    weight = hf.model.layers[layer].self_attn.o_proj.weight
    cols = slice(head * d_head, (head + 1) * d_head)
    saved = weight[:, cols].clone()
    with torch.no_grad():
        weight[:, cols] = fn(weight[:, cols])
    return lambda: weight[:, cols].copy_(saved)


@pytest.mark.parametrize("mode", ["project", "zero"])
def test_head_ablation_equals_editing_its_o_proj_columns(smollm, smollm_hf, mode):
    r = unit_vectors(576, 1, seed=3)[0]
    iv = HeadAblation(
        (HeadId(LAYER, HEAD),), mode=mode, directions=DirectionRef.inline(r), index=0.0
    )
    assert iv.o_proj_columns(smollm.facts)[HeadId(LAYER, HEAD)] == slice(256, 320)
    batch = smollm.encode(PROMPTS)
    with apply(smollm, iv):
        hooked = logits(smollm, batch)
    projector = torch.eye(576) - torch.outer(r, r)
    edit = (lambda w: projector @ w) if mode == "project" else torch.zeros_like
    undo = edit_o_proj_columns(smollm_hf, LAYER, HEAD, smollm.facts.d_head, edit)
    try:
        reference = logits_hf(smollm_hf, batch)
    finally:
        with torch.no_grad():
            undo()
    assert max_diff(hooked, reference, batch) < 1e-4
    assert max_diff(hooked, logits(smollm, batch), batch) > 1e-3  # it did something


def logits_hf(hf, batch):
    with torch.no_grad():
        return hf(**batch).logits


def test_head_ablation_changes_only_that_heads_contribution(smollm):
    r = unit_vectors(576, 1, seed=4)[0]
    iv = HeadAblation((HeadId(LAYER, HEAD),), directions=DirectionRef.inline(r), index=0.0)
    names = [f"blocks.{LAYER}.attn.hook_result", f"blocks.{LAYER}.hook_attn_out"]
    clean, edited = {}, {}
    batch = smollm.encode(PROMPTS[:2])
    was = smollm.bridge.cfg.use_attn_result
    smollm.bridge.set_use_attn_result(True)
    try:
        with smollm.hooks(capture(names, clean)):
            logits(smollm, batch)
        with apply(smollm, iv), smollm.hooks(capture(names, edited)):
            logits(smollm, batch)
    finally:
        smollm.bridge.set_use_attn_result(was)
    result = clean[names[0]][0]  # [batch, pos, head, d_model]
    assert torch.equal(result, edited[names[0]][0])  # every head's own result is untouched
    head = result[:, :, HEAD]
    expected = result.sum(2) - torch.outer(head.reshape(-1, 576) @ r, r).reshape(head.shape)
    assert torch.allclose(edited[names[1]][0], expected, atol=1e-4)
    assert not torch.allclose(clean[names[1]][0], expected, atol=1e-3)


def test_heads_of_one_kv_group_are_bookkept(smollm):
    iv = HeadAblation((HeadId(2, 4), HeadId(2, 3), HeadId(7, 8)), mode="zero")
    assert iv.kv_groups(smollm.facts) == {HeadId(2, 3): 1, HeadId(2, 4): 1, HeadId(7, 8): 2}
    with pytest.raises(InterventionError, match="out of range"):
        plan(smollm, HeadAblation((HeadId(2, 9),), mode="zero"))


def test_sandwich_head_projection_folds_into_o_proj(gemma, gemma_hf):
    r = unit_vectors(640, 1, seed=5)[0]
    iv = HeadAblation((HeadId(3, 1),), directions=DirectionRef.inline(r), index=0.0)
    (edit,) = plan(gemma, iv)
    u = edit.basis[0].float()
    batch = gemma.encode(PROMPTS, chat=False)
    with apply(gemma, iv):
        hooked = logits(gemma, batch)
    projector = torch.eye(640) - torch.outer(u, u)
    undo = edit_o_proj_columns(gemma_hf, 3, 1, gemma.facts.d_head, lambda w: projector @ w)
    try:
        reference = logits_hf(gemma_hf, batch)
    finally:
        with torch.no_grad():
            undo()
    assert max_diff(hooked, reference, batch) < 1e-3  # Gemma's logits reach ~1e2
    assert max_diff(hooked, logits(gemma, batch), batch) > 1e-2


# ---------------------------------------------------------------------------- composition
def test_two_orthogonal_ablations_compose_into_one_subspace_ablation(smollm):
    r = unit_vectors(576, 2, seed=6)
    one, two = (DirectionalAblation(DirectionRef.inline(v), index=0.0) for v in r)
    both = SubspaceAblation(DirectionRef.inline(r[None]), layer=0)
    batch = smollm.encode(PROMPTS)
    with apply(smollm, one, two):
        together = logits(smollm, batch)
    with apply(smollm, one), apply(smollm, two):
        nested = logits(smollm, batch)
    with apply(smollm, both):
        subspace = logits(smollm, batch)
    assert max_diff(together, nested, batch) < 1e-5
    # Two rank-1 projections vs one rank-2 projection: same maths, other float32 rounding
    # (~2e-4 on logits of ~20 after 61 edited writers).
    assert max_diff(together, subspace, batch) < 1e-3
    assert max_diff(together, logits(smollm, batch), batch) > 1e-2


def test_failed_build_registers_nothing(smollm):
    good = DirectionalAblation(DirectionRef.inline(unit_vectors(576, 1)[0]), index=0.0)
    bad = DirectionalAblation(DirectionRef.inline(torch.ones(3, 1, 576)))  # 3 layers, not 30
    with (
        pytest.raises(InterventionError, match="per-layer directions need 30"),
        apply(smollm, good, bad),
    ):
        pass
    with pytest.raises(RuntimeError, match="boom"), apply(smollm, good):
        raise RuntimeError("boom")
    assert smollm.n_active_hooks() == 0
    assert not smollm.hf_model.model._forward_pre_hooks


# ------------------------------------------------------------------ per-prompt decisions
ROUTE_LAYER = 20  # where the held-out prompts separate clearly (from layer ~16 on)


@pytest.fixture(scope="module")
def planted(smollm):
    """Cones planted on two real prompt clusters: centroids are the groups' residual means
    (centred on the overall mean, as circuitlab.directions.extract_cones stores them); each
    cone gets its own random direction. The last prompt of each group is held out."""
    acts = smollm.collect(COOKING[:-1] + MATHS[:-1], layers=[ROUTE_LAYER])[:, 0, 0]
    centre = acts.mean(0)
    centroids = torch.stack([acts[:4].mean(0), acts[4:].mean(0)]) - centre
    cones = unit_vectors(576, 2, seed=7)
    ds = DirectionSet(
        "cones",
        cones.expand(smollm.n_layers, -1, -1).clone(),
        torch.ones(smollm.n_layers, 2),
        {"cone_layer": ROUTE_LAYER},
        {"cone_centroids": centroids, "cone_centre": centre},
    )
    return ds, acts


def test_cone_routing_picks_each_prompts_cluster_and_ablates_its_cone(smollm, planted):
    ds, _ = planted
    routing = ConeRouting(DirectionRef.inline(ds))
    prompts = [COOKING[-1], MATHS[-1], COOKING[0], MATHS[0]]  # held out first
    batch = smollm.encode(prompts)
    seen = {}
    with (
        apply(smollm, routing) as applied,
        smollm.hooks(capture(["blocks.26.hook_resid_post"], seen)),
    ):
        with torch.no_grad():
            smollm.hf_model.generate(**batch, max_new_tokens=3, do_sample=False)
        (cones,) = applied.decisions()
    assert cones.tolist() == [0, 1, 0, 1]
    directions = ds.directions[0]
    for x in seen["blocks.26.hook_resid_post"]:  # prefill, then each decode step
        last = x[:, -1]
        own = (last * directions[cones]).sum(-1) / last.norm(dim=-1)
        other = (last * directions[1 - cones]).sum(-1) / last.norm(dim=-1)
        assert own.abs().max() < 1e-4 and other.abs().min() > 1e-3


def test_cone_routing_generates_as_each_cone_ablated_alone(smollm, planted):
    ds, _ = planted
    prompts = [COOKING[-1], MATHS[-1]]
    with apply(smollm, ConeRouting(DirectionRef.inline(ds))):
        routed = smollm.generate(prompts, max_new_tokens=10)
    alone = []
    for prompt, cone in zip(prompts, (0, 1), strict=True):
        single = SubspaceAblation(DirectionRef.inline(ds), components=(cone,))
        with apply(smollm, single):
            alone += smollm.generate([prompt], max_new_tokens=10)
    assert routed == alone
    assert ConeRouting(DirectionRef.inline(ds)).foldable_alternative().components is None


def test_dynamic_strength_follows_each_prompts_projection(smollm, planted):
    _, acts = planted
    r = acts[4:].mean(0) - acts[:4].mean(0)
    r = r / r.norm()
    ablation = DirectionalAblation(DirectionRef.inline(r), index=0.0)
    proj = acts @ r
    dynamic = DynamicStrength(ablation, ROUTE_LAYER, proj[:4].mean().item(), proj[4:].mean().item())
    prompts = [COOKING[-1], MATHS[-1]]
    with apply(smollm, dynamic) as applied:
        smollm.next_token_logprobs(prompts)
        (strengths,) = applied.decisions()
    assert strengths[0] < 0.3 and strengths[1] > 0.7
    # One prompt alone: exactly the static ablation at the strength it was given.
    batch = smollm.encode([MATHS[-1]])
    with apply(smollm, dynamic) as applied:
        dynamic_logits = logits(smollm, batch)
        (strength,) = applied.decisions()[0].tolist()
    with apply(smollm, dataclasses.replace(ablation, calibration=strength)):
        static_logits = logits(smollm, batch)
    assert max_diff(dynamic_logits, static_logits, batch) < 1e-5


# ------------------------------------------------------------------------- command line
@pytest.fixture
def cli_on_smollm(smollm, monkeypatch, tmp_path):
    """The CLI with the session model (no second load) and an ablation file."""
    from circuitlab.interventions import save_intervention

    monkeypatch.setattr("circuitlab.commands._common.load_model", lambda source, settings: smollm)
    r = unit_vectors(576, 1, seed=8)[0]
    ablation = DirectionalAblation(DirectionRef.inline(r), index=0.0, calibration=3.0)
    return save_intervention(ablation, tmp_path / "ablation.json")


def test_steer_prints_both_columns(cli_on_smollm, capsys):
    from circuitlab.cli import main

    argv = ["steer", "smollm2-135m", "--intervention", str(cli_on_smollm), PROMPTS[1]]
    assert main([*argv, "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out
    assert "without" in text and "with: DirectionalAblation" in text and "Norway" in text


def test_chat_reads_commands_from_stdin(cli_on_smollm, smollm, capsys, monkeypatch):
    import io

    from circuitlab.cli import main

    lines = "/off\nWhat is the capital of Norway?\n/on\n/strength 0.5\n/bogus\n/quit\nignored\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    argv = ["chat", "smollm2-135m", "--intervention", str(cli_on_smollm)]
    assert main([*argv, "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out
    assert "interventions off" in text and "model (off)>" in text
    assert "strength 0.5" in text and "unknown command /bogus" in text
    assert "ignored" not in text and smollm.n_active_hooks() == 0
