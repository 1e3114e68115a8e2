"""SAEs: SAELens's layout both ways, the TopK trainer, sinks, features and feature edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_model

from circuitlab.engine import HookedModel
from circuitlab.export import ExportError, fold, verify
from circuitlab.export.verify import HELD_OUT_PROMPTS
from circuitlab.hooks import apply
from circuitlab.interventions import FeatureClamp, SubspaceAblation, from_json, to_json
from circuitlab.sae import (
    SAE,
    SAEError,
    TrainConfig,
    feature_ablation,
    feature_auroc,
    feature_clamp,
    load_sae,
    rank_by_attribution,
    rank_by_difference,
    sink_mask,
    train_topk,
)

D_IN, D_SAE = 64, 96


def _random_weights(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / 8,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / 8,
        "b_enc": torch.randn(D_SAE, generator=g) / 4,
        "b_dec": torch.randn(D_IN, generator=g) / 4,
    }
    if arch == "jumprelu":
        weights["threshold"] = torch.rand(D_SAE, generator=g) / 4
    return weights


def _saelens_folder(path: Path, arch: str, weights: dict, hook: str, legacy: bool = False) -> Path:
    """An SAE folder written by hand the way SAELens 6 writes one (``cfg.json`` with
    ``architecture`` and a ``meta`` block), or SAELens 5 (``legacy``: top-level hook_name,
    ReLU named by ``activation_fn_str``) -- built from the format, not from our writer."""
    path.mkdir(parents=True)
    save_file(weights, path / "sae_weights.safetensors")
    if legacy:
        cfg = {"d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "relu", "hook_name": hook,
               "hook_layer": 1, "model_name": "tiny", "apply_b_dec_to_input": True,
               "normalize_activations": "none", "dtype": "float32", "device": "cpu"}  # fmt: skip
    else:
        cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
               "apply_b_dec_to_input": True, "normalize_activations": "none",
               "reshape_activations": "none", "architecture": arch,
               "meta": {"model_name": "tiny", "hook_name": hook, "hook_head_index": None,
                        "prepend_bos": True, "sae_lens_version": "6.54.12"}}  # fmt: skip
        if arch == "topk":
            cfg["k"] = 7
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def _reference_encode(arch: str, w: dict, x: torch.Tensor) -> torch.Tensor:
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        return pre.clamp_min(0)
    if arch == "jumprelu":
        return torch.where(pre > w["threshold"], pre, torch.zeros_like(pre)).clamp_min(0)
    out = torch.zeros_like(pre)
    for row in range(len(pre)):  # the 7 largest, one row at a time
        idx = sorted(range(D_SAE), key=lambda j: -pre[row, j].item())[:7]
        out[row, idx] = pre[row, idx].clamp_min(0)
    return out


# ------------------------------------------------------------------------------- the format
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_layout_and_ours_load_to_the_same_sae(tmp_path, arch):
    weights = _random_weights(arch)
    theirs = load_sae(
        _saelens_folder(tmp_path / "theirs", arch, weights, "blocks.1.hook_resid_pre")
    )
    ours = load_sae(theirs.save(tmp_path / "ours"))
    for sae in (theirs, ours):
        assert sae.architecture == arch and sae.hook_name == "blocks.1.hook_resid_pre"
        assert sae.layer == 1 and sae.model_name == "tiny" and (sae.k == 7) == (arch == "topk")
        for name, tensor in weights.items():
            assert torch.equal(sae.tensors()[name], tensor), name
    assert ours.hash == theirs.hash
    written = json.loads((tmp_path / "ours" / "cfg.json").read_text())
    assert written["architecture"] == arch and written["meta"]["hook_name"] == theirs.hook_name
    assert written["meta"]["sae_lens_version"] == "6.54.12"  # unknown meta is kept
    assert set(load_file(tmp_path / "ours" / "sae_weights.safetensors")) == set(weights)
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(1))
    acts = ours.encode(x)
    assert torch.allclose(acts, _reference_encode(arch, weights, x), atol=1e-6)
    assert torch.allclose(ours.decode(acts), acts @ weights["W_dec"] + weights["b_dec"], atol=1e-6)
    if arch == "topk":
        assert int((acts > 0).sum(-1).max()) <= 7


def test_older_saelens_configs_load(tmp_path):
    weights = _random_weights("standard")
    sae = load_sae(_saelens_folder(tmp_path / "v5", "standard", weights, "blocks.0.hook_resid_post",
                                   legacy=True))  # fmt: skip
    assert sae.architecture == "standard" and sae.hook_name == "blocks.0.hook_resid_post"
    assert torch.equal(sae.W_dec, weights["W_dec"])


def test_bad_folders_and_mismatched_models_fail_clearly(tmp_path, tiny_llama_model):
    with pytest.raises(SAEError, match="no cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(SAEError, match="not a hub id"):
        load_sae(tmp_path / "missing" / "deeper" / "still")
    weights = _random_weights("jumprelu")
    del weights["threshold"]
    with pytest.raises(SAEError, match="threshold"):
        load_sae(_saelens_folder(tmp_path / "j", "jumprelu", weights, "blocks.1.hook_resid_pre"))
    good = SAE("standard", *_random_weights("standard").values(), "blocks.1.hook_resid_pre")
    good.check_model(tiny_llama_model)
    wide = SAE("standard", torch.zeros(32, 8), torch.zeros(8, 32), torch.zeros(8),
               torch.zeros(32), "blocks.1.hook_resid_pre")  # fmt: skip
    with pytest.raises(SAEError, match="d_model is 64"):
        wide.check_model(tiny_llama_model)
    deep = SAE("standard", *_random_weights("standard").values(), "blocks.9.hook_resid_pre")
    with pytest.raises(SAEError, match="does not exist on this model"):
        deep.check_model(tiny_llama_model)


# ------------------------------------------------------------------------------- training
def test_topk_trainer_recovers_a_planted_dictionary():
    g = torch.Generator().manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(48, 32, generator=g), dim=-1)
    codes = torch.zeros(6000, 48)
    for row in range(len(codes)):
        idx = torch.randperm(48, generator=g)[:3]
        codes[row, idx] = 1 + torch.rand(3, generator=g)
    acts = codes @ dictionary * 20 + 5  # an offset and a scale, as residuals have
    config = TrainConfig(expansion=3, k=3, epochs=20, batch_size=256, lr=3e-3)
    result = train_topk(acts, "blocks.0.hook_resid_pre", config)
    sae = result.sae
    assert result.losses[-1] < 0.5 * result.losses[0]
    recon = sae.reconstruct(acts)
    fvu = (recon - acts).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
    assert fvu < 0.15
    cos = torch.nn.functional.normalize(sae.W_dec, dim=-1) @ dictionary.T
    assert (cos.max(0).values > 0.9).float().mean() > 0.7  # most planted atoms found


def test_sinks_are_left_out():
    x = torch.randn(2, 6, 8)
    x[0, 1] *= 1000  # a massive token
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[:, 0] = False  # the first tokens
    kept = sink_mask(x, keep)
    assert not kept[0, 1] and not kept[:, 0].any() and int(kept.sum()) == 9


# --------------------------------------------------------------------------- on a model
@pytest.fixture(scope="module")
def tiny_llama_model(tmp_path_factory, cache_dir) -> HookedModel:
    path = tiny_model("tiny-llama-gqa-4/2", tmp_path_factory.mktemp("sae") / "m", cache_dir)
    return HookedModel.load(str(path))


@pytest.fixture(scope="module")
def tiny_sae(tiny_llama_model) -> SAE:
    return SAE("topk", *_random_weights("standard", seed=3).values(), "blocks.1.hook_resid_pre",
               "tiny", k=8)  # fmt: skip


def test_feature_ablation_folds_exactly(tiny_llama_model, tiny_sae):
    model = tiny_llama_model
    ablation = feature_ablation(tiny_sae, [3, 17, 40])
    assert isinstance(ablation, SubspaceAblation) and ablation.foldable
    folded = fold(model, [ablation]).build()
    parity = verify(model, [ablation], folded, HELD_OUT_PROMPTS[:6])
    assert parity.max_abs_logit_diff < 1e-4 and parity.greedy_agree == 6
    base = model.next_token_logprobs(HELD_OUT_PROMPTS[:2])
    with apply(model, ablation):
        edited = model.next_token_logprobs(HELD_OUT_PROMPTS[:2])
    assert (base - edited).abs().max() > 1e-3  # it does something


def test_feature_clamp_sets_the_latents_and_refuses_export(tiny_llama_model, tmp_path):
    model = tiny_llama_model
    basis = torch.linalg.qr(torch.randn(D_IN, 16, generator=torch.Generator().manual_seed(2)))[0]
    # Orthonormal decoder rows read by their own encoder columns, every latent active: the
    # clamped latents must then read back exactly the clamped value.
    sae = SAE("standard", basis.clone(), basis.T.clone(), torch.full((16,), 50.0),
              torch.zeros(D_IN), "blocks.1.hook_resid_pre")  # fmt: skip
    sae.save(tmp_path / "sae")
    clamp = feature_clamp(sae, tmp_path / "sae", [2, 5], value=3.0)
    assert isinstance(clamp, FeatureClamp) and from_json(to_json(clamp)) == clamp
    seen = {}

    def read(x, hook):
        seen["x"] = x.detach().clone()

    with apply(model, clamp), model.hooks([("blocks.1.hook_resid_pre", read)]):
        model.next_token_logprobs(HELD_OUT_PROMPTS[:2])
    latents = sae.encode(seen["x"])
    mask = torch.ones(latents.shape[:2], dtype=torch.bool)
    kept = sink_mask(seen["x"], mask)
    assert kept.sum() > 10
    assert torch.allclose(latents[kept][:, [2, 5]], torch.tensor(3.0), atol=1e-3)
    with pytest.raises(ExportError, match="Nearest exact alternative: SubspaceAblation"):
        fold(model, [clamp])
    assert clamp.foldable_alternative().directions == clamp.decoder
    (tmp_path / "sae" / "cfg.json").write_text(
        (tmp_path / "sae" / "cfg.json").read_text().replace("hook_resid_pre", "hook_resid_post")
    )
    with pytest.raises(Exception, match="clamp was made with"), apply(model, clamp):
        pass


def test_refusal_rankings_and_auroc(tiny_llama_model, tiny_sae):
    from circuitlab.circuits import RefusalTokenMetric

    harmful = torch.tensor([[1.0, 0.0, 2.0], [1.5, 0.0, 2.0]])
    harmless = torch.tensor([[0.0, 1.0, 2.0], [0.2, 1.0, 2.0]])
    ranking = rank_by_difference(harmful, harmless)
    assert ranking.top(3)[0] == 0 and ranking.top(3)[-1] == 1
    assert feature_auroc(harmful[:, 0], harmless[:, 0]) == 1.0
    assert feature_auroc(harmful[:, 2], harmless[:, 2]) == 0.5
    metric = RefusalTokenMetric.from_openings(tiny_llama_model.tokenizer)
    prompts = list(HELD_OUT_PROMPTS[:3])
    attr = rank_by_attribution(tiny_llama_model, tiny_sae, prompts, metric, batch_size=2)
    assert attr.scores.shape == (D_SAE,) and attr.scores.abs().sum() > 0
    # First order: switching the top latent off moves the metric by about -its score.
    top = attr.top(1)[0]
    clamp_sae = tiny_sae
    base = metric(tiny_llama_model, tiny_llama_model.encode(prompts)).mean()
    n_pos = tiny_llama_model.post_instruction_length()

    def off(x, hook):
        tail = x[:, -n_pos:]
        f = clamp_sae.encode(tail)
        return torch.cat([x[:, :-n_pos], tail - f[..., [top]] @ clamp_sae.W_dec[[top]]], 1)

    with tiny_llama_model.hooks([("blocks.1.hook_resid_pre", off)]):
        after = metric(tiny_llama_model, tiny_llama_model.encode(prompts)).mean()
    change = float(after - base)
    assert change == pytest.approx(-float(attr.scores[top]), rel=0.5, abs=1e-3)


def test_cli_trains_ranks_edits_and_describes(tiny_llama_model, tmp_path, capsys):
    from circuitlab.cli import main
    from circuitlab.interventions import load_intervention

    path = str(tiny_llama_model.resolved.location)
    common = ["--cache-dir", str(tmp_path / "cache"), "--max-new-tokens", "4"]
    folder = tmp_path / "sae"
    train = ["sae", "train", path, "--layer", "1", "--n", "4", "--expansion", "2", "--k", "4",
             "--epochs", "2", "--out", str(folder)]  # fmt: skip
    assert main(train + common) == 0
    assert load_sae(folder).hook_name == "blocks.1.hook_resid_pre"
    assert "fvu" in json.loads((folder / "training.json").read_text())["quality"]
    features = ["sae", "features", path, "--sae", str(folder), "--n", "4", "--top", "3"]
    assert main(features + common) == 0
    found = json.loads((folder / "features.json").read_text())["features"]["rankings"]
    assert len(found["difference"]) == 3 and (folder / "report.html").is_file()
    edit = ["sae", "edit", path, "--sae", str(folder), "--features", "1,2",
            "--out", str(tmp_path / "edit.json")]  # fmt: skip
    assert main(edit + common) == 0
    assert isinstance(load_intervention(tmp_path / "edit.json"), SubspaceAblation)
    assert main(["sae", "info", str(folder)]) == 0
    assert "topk" in capsys.readouterr().out
    assert main(["sae", "features", path]) == 2  # no --sae: one clear line


# ------------------------------------------------------------------------------ the search
def test_sae_method_in_the_search(tiny_llama_model, tiny_sae, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from circuitlab.search import (
        ObjectiveConfig,
        SearchConfig,
        SearchPrompts,
        SearchSpace,
        run_search,
    )
    from circuitlab.search.front import trial_interventions
    from circuitlab.search.space import suggest

    plain = SearchSpace(methods=("diff-means",))
    assert "sae" not in plain.as_dict()  # older studies resume unchanged
    assert "sae_features" not in suggest(optuna.create_study().ask(), plain)
    folder = tiny_sae.save(tmp_path / "sae")
    space = SearchSpace(methods=("sae",), sae=str(folder), sae_max_features=3, calibrate=False)
    assert SearchSpace.from_dict(json.loads(json.dumps(space.as_dict()))) == space
    prompts = SearchPrompts.from_testbed(n_train=6, n_search=3, n_kl=3, n_test=2)
    objective = ObjectiveConfig(max_new_tokens=4, batch_size=8, prune_kl=None, prune_min_drop=None)
    config = SearchConfig(
        2, storage=str(tmp_path / "s.journal"), space=space, objective=objective, profile=None,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    study = run_search(tiny_llama_model, prompts, "sae", config)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        (ablation,) = trial_interventions(trial)
        n = trial.params["sae_features"]
        assert isinstance(ablation, SubspaceAblation) and 1 <= n <= 3
        assert ablation.layer == 0 and ablation.components == tuple(range(n))
        ds = ablation.directions.load()
        assert ds.method == "sae" and ds.metadata["sae"] == tiny_sae.hash and ds.k == 3


def test_organism_experiment_runs_at_tiny_size(tiny_llama_model, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "sae_organism.py"
    spec = importlib.util.spec_from_file_location("sae_organism", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [str(tiny_llama_model.resolved.location), "--small", "--layer", "1", "--top", "1", "2",
            "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    result = module.main(argv)
    written = json.loads(next((tmp_path / "out").glob("experiment-*.json")).read_text())
    assert written["quality"]["fvu"] == pytest.approx(result["quality"]["fvu"])
    assert {r["arm"] for r in written["edits"]} >= {"organism", "diff-means", "sae top-1 ablated"}
    for row in written["edits"]:
        assert 0 <= row["derived"]["refusal_rate"] <= 1 and row["kl_first"] >= 0
    assert written["edits"][0]["kl_first"] == pytest.approx(0, abs=1e-6)
    ranked = written["features"]["rankings"]["difference"]
    assert all(0 <= r["auroc_test"] <= 1 for r in ranked)
    assert next((tmp_path / "out").glob("report-*.html")).stat().st_size > 1000
