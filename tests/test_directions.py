"""Extractors recover directions planted in synthetic data; every extractor runs on SmolLM2."""

from __future__ import annotations

import logging

import pytest
import torch

from circuitlab.activations import collect_activations, select_position
from circuitlab.directions import (
    DirectionSet,
    assign_cones,
    calibrate_weight,
    combine_directions,
    eigenvalue_weights,
    extract_compliance,
    extract_cones,
    extract_diff_means,
    extract_ensemble,
    extract_pca,
    extract_probe,
    projection_stats,
    without_massive,
)
from circuitlab.directions.diff_means import unit, winsorize
from circuitlab.prompts import load_prompts

L, D = 3, 64


def gaussian(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, L, D, generator=gen, dtype=torch.float64)


@pytest.fixture(scope="module")
def planted():
    """Harmful = harmless + 8 r (strength jittered); a shared offset stands for the mean."""
    gen = torch.Generator().manual_seed(0)
    r = unit(torch.randn(L, D, generator=gen, dtype=torch.float64))
    offset = 3 * torch.randn(L, D, generator=gen, dtype=torch.float64)
    strength = 8 * (1 + 0.25 * torch.randn(400, 1, 1, generator=gen, dtype=torch.float64))
    harmful = gaussian(400, gen) + offset + strength * r
    harmless = gaussian(400, gen) + offset
    return harmful.float(), harmless.float(), r


def cosines(ds: DirectionSet, r: torch.Tensor, component: int = 0) -> torch.Tensor:
    return (ds.directions[:, component].double() * r).sum(-1)


def assert_unit_set(ds: DirectionSet, k: int = 1) -> None:
    assert ds.directions.shape == (L, k, D) and ds.scores.shape == (L, k)
    assert ds.directions.dtype == torch.float32
    torch.testing.assert_close(ds.directions.norm(dim=-1), torch.ones(L, k))


# ------------------------------------------------------------------------ diff of means
def test_diff_means_recovers_planted(planted):
    harmful, harmless, r = planted
    ds = extract_diff_means(harmful, harmless)
    assert_unit_set(ds)
    assert cosines(ds, r).min() > 0.99
    assert ds.metadata["score_kind"] == "mean_diff_norm"
    assert ds.scores.min() > 7  # the planted strength, about 8
    assert set(ds.tensors) == {"harmful_mean", "harmless_mean"}


def test_diff_means_orthogonal_to_harmless_mean(planted):
    harmful, harmless, r = planted
    ds = extract_diff_means(harmful, harmless, orthogonalize_harmless=True)
    harmless_mean = unit(harmless.double().mean(0))
    assert (ds.directions[:, 0].double() * harmless_mean).sum(-1).abs().max() < 1e-6
    # What is left of r after removing the harmless-mean axis is still found.
    expected = unit(r - (r * harmless_mean).sum(-1, keepdim=True) * harmless_mean)
    assert cosines(ds, expected).min() > 0.99


def test_winsorize_clamps_each_vector():
    x = torch.tensor([[[1.0, -2.0, 3.0, -100.0]]])
    torch.testing.assert_close(winsorize(x, 0.75), torch.tensor([[[1.0, -2.0, 3.0, -3.0]]]))
    assert winsorize(x, 1.0) is x
    with pytest.raises(ValueError, match="quantile"):
        winsorize(x, 0.0)


def test_winsorize_tames_a_massive_noisy_dimension():
    gen = torch.Generator().manual_seed(1)
    r = torch.sign(torch.randn(L, D, generator=gen, dtype=torch.float64))
    r[:, 0] = 0  # the planted direction lives off the massive coordinate
    r = unit(r)
    harmful, harmless = gaussian(400, gen) + 8 * r, gaussian(400, gen)
    for acts in (harmful, harmless):
        acts[..., 0] += 100 + 40 * torch.randn(400, L, generator=gen, dtype=torch.float64)
    raw = cosines(extract_diff_means(harmful.float(), harmless.float()), r)
    clamped = cosines(
        extract_diff_means(harmful.float(), harmless.float(), winsorize_quantile=0.98), r
    )
    assert clamped.min() > 0.99 and raw.min() < clamped.min()


def test_shape_errors_are_clear(planted):
    harmful, harmless, _ = planted
    with pytest.raises(ValueError, match="layers or d_model"):
        extract_diff_means(harmful, harmless[..., :32])
    with pytest.raises(ValueError, match="select a position"):
        extract_pca(harmful[:, :, None], harmless[:, :, None])


def test_annotations_check_shapes(planted):
    """The jaxtyping annotations are right: a runtime checker accepts good and rejects bad."""
    beartype = pytest.importorskip("beartype").beartype
    from jaxtyping import TypeCheckError, jaxtyped

    harmful, harmless = planted[0][:60], planted[1][:60]
    labels = torch.arange(60) % 2 == 0
    calls = {
        extract_diff_means: (),
        extract_pca: (),
        extract_cones: (),
        extract_probe: (labels,),
        extract_compliance: (labels,),
    }
    for extractor, extra in calls.items():
        checked = jaxtyped(typechecker=beartype)(extractor)
        assert isinstance(checked(harmful, harmless, *extra), DirectionSet)
        with pytest.raises(TypeCheckError):
            checked(harmful, harmless[..., :32], *extra)
    checked_stats = jaxtyped(typechecker=beartype)(projection_stats)
    checked_stats(harmful, planted[2].float(), 1)
    with pytest.raises(TypeCheckError):
        checked_stats(harmful, planted[2][:, :32].float(), 1)


# -------------------------------------------------------------------------------- PCA
def test_pca_recovers_two_planted_components():
    """Mean shift along r1 (E[a^2] = 26) and zero-mean spread along r2 (E[b^2] = 9)."""
    gen = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(L, D, 2, generator=gen, dtype=torch.float64))
    r1, r2 = q[..., 0], q[..., 1]
    a = 5 + torch.randn(800, 1, 1, generator=gen, dtype=torch.float64)
    b = 3 * torch.randn(800, 1, 1, generator=gen, dtype=torch.float64)
    harmful = gaussian(800, gen) + a * r1 + b * r2
    ds = extract_pca(harmful.float(), gaussian(800, gen).float(), k=2)
    assert_unit_set(ds, k=2)
    assert cosines(ds, r1, 0).min() > 0.99  # sign-aligned with the mean difference
    assert cosines(ds, r2, 1).abs().min() > 0.99
    torch.testing.assert_close(ds.scores[:, 0], torch.full((L,), 26.0), atol=2.5, rtol=0)
    torch.testing.assert_close(ds.scores[:, 1], torch.full((L,), 9.0), atol=1.5, rtol=0)
    torch.testing.assert_close(ds.tensors["weights"], eigenvalue_weights(ds.scores))
    assert (ds.tensors["weights"][:, 0] == 1).all()
    assert 0.25 < ds.tensors["weights"][:, 1].min() < ds.tensors["weights"][:, 1].max() < 0.45


def test_pca_recovers_planted_direction(planted):
    harmful, harmless, r = planted
    ds = extract_pca(harmful, harmless, k=3)
    assert cosines(ds, r).min() > 0.99
    explained = torch.tensor(ds.metadata["explained_variance"])
    assert (explained[:, 0] > 0.8).all() and (explained.sum(1) <= 1 + 1e-6).all()


def test_pca_uses_the_sample_span_when_d_model_is_large():
    """Fewer prompts than d_model: the span trick must equal the full eigendecomposition."""
    gen = torch.Generator().manual_seed(3)
    harmful = torch.randn(10, 1, 300, generator=gen, dtype=torch.float64)
    harmless = torch.randn(12, 1, 300, generator=gen, dtype=torch.float64)
    ds = extract_pca(harmful, harmless, k=2)
    centre = harmless[:, 0].mean(0)
    a, b = harmful[:, 0] - centre, harmless[:, 0] - centre
    m = a.T @ a / 10 - b.T @ b / 12
    values, vectors = torch.linalg.eigh(m)
    torch.testing.assert_close(ds.scores[0].double(), values.flip(0)[:2], rtol=1e-5, atol=1e-6)
    for i in range(2):
        assert abs(float(ds.directions[0, i].double() @ vectors[:, -1 - i])) > 0.9999
    with pytest.raises(ValueError, match="k must be"):
        extract_pca(harmful, harmless, k=23)


# ------------------------------------------------------------------------------ probe
def labelled(seed: int = 4, p_refuse: float = 0.5):
    """Refused prompts carry 8 r; complied harmful prompts and harmless ones do not."""
    gen = torch.Generator().manual_seed(seed)
    r = unit(torch.randn(L, D, generator=gen, dtype=torch.float64))
    refused = torch.rand(400, generator=gen) < p_refuse
    harmful = gaussian(400, gen) + 8 * refused[:, None, None] * r
    return harmful.float(), gaussian(400, gen).float(), refused, r


def test_probe_recovers_planted_direction():
    harmful, harmless, refused, r = labelled()
    ds = extract_probe(harmful, harmless, refused, seed=0)
    assert ds.method == "probe" and "fallback" not in ds.metadata
    assert_unit_set(ds)
    assert cosines(ds, r).min() > 0.99
    assert ds.scores.min() > 0.95  # cross-validated balanced accuracy
    assert ds.metadata["direction_source"] == ["probe"] * L
    assert ds.metadata["class_counts"]["refused"] == int(refused.sum())


def test_probe_is_deterministic():
    harmful, harmless, refused, _ = labelled()
    a = extract_probe(harmful, harmless, refused, seed=7)
    b = extract_probe(harmful, harmless, refused, seed=7)
    assert a.hash == b.hash


def test_probe_falls_back_to_pca_on_imbalanced_labels(caplog):
    harmful, harmless, refused, r = labelled(p_refuse=0.01)
    refused = torch.zeros_like(refused)
    refused[:3] = True
    with caplog.at_level(logging.WARNING):
        ds = extract_probe(harmful, harmless, refused, min_class_size=8)
    assert ds.method == "pca"
    assert ds.metadata["fallback"]["from"] == "probe"
    assert "min_class_size" in ds.metadata["fallback"]["reason"]
    assert any("falls back to contrastive PCA" in rec.message for rec in caplog.records)


def test_probe_falls_back_per_layer_when_accuracy_is_low(caplog):
    """Labels unrelated to the activations: chance accuracy, PCA directions, a warning."""
    harmful, harmless, _, _ = labelled()
    noise_labels = torch.arange(400) % 2 == 0
    with caplog.at_level(logging.WARNING):
        ds = extract_probe(
            harmful, harmless, noise_labels, harmless_refused=torch.arange(400) % 2 == 0
        )
    assert ds.metadata["direction_source"] == ["pca"] * L
    pca = extract_pca(harmful, harmless, k=1)
    torch.testing.assert_close(ds.directions, pca.directions)
    assert any("below 0.65" in rec.message for rec in caplog.records)


def test_ensemble_mixes_and_renormalises():
    harmful, harmless, refused, r = labelled()
    ds = extract_ensemble(harmful, harmless, refused, w_probe=0.7, w_pca=0.3)
    assert ds.method == "ensemble" and ds.metadata["weights"] == [0.7, 0.3]
    assert_unit_set(ds)
    assert cosines(ds, r).min() > 0.99
    flipped = DirectionSet("pca", -extract_pca(harmful, harmless, k=1).directions, ds.scores)
    probe = extract_probe(harmful, harmless, refused)
    mixed = combine_directions(probe, flipped, 0.5, 0.5, "ensemble")
    assert cosines(mixed, r).min() > 0.99  # the flipped component was sign-aligned first


# ------------------------------------------------------------------------------ cones
def planted_cones(seed: int = 5, sizes=(120, 90, 60)):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(L, D, len(sizes), generator=gen, dtype=torch.float64))
    truth = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    harmful = gaussian(len(truth), gen) + 12 * q[..., truth].permute(2, 0, 1)
    return harmful.float(), gaussian(300, gen).float(), truth, q


def test_cones_recover_planted_clusters():
    from sklearn.metrics import adjusted_rand_score

    harmful, harmless, truth, q = planted_cones()
    ds = extract_cones(harmful, harmless, seed=0)
    assert ds.method == "cones" and ds.k == 3 and "fallback" not in ds.metadata
    assignments = ds.metadata["assignments"]
    assert adjusted_rand_score(truth.numpy(), assignments) == 1.0
    assert ds.metadata["cone_sizes"] == [120, 90, 60]  # largest cone first
    for cone in range(3):
        assert (ds.directions[:, cone].double() * q[..., cone]).sum(-1).min() > 0.99
    assert ds.tensors["cone_centroids"].shape == (3, D)
    assert ds.metadata["silhouette"] > 0.3
    assert len(ds.metadata["per_layer"]["silhouette"]) == L
    assert assign_cones(harmful, ds).tolist() == assignments


def test_cones_at_one_layer_and_merge_small_clusters():
    harmful, harmless, truth, q = planted_cones(sizes=(120, 90, 4))
    ds = extract_cones(harmful, harmless, n_cones=3, layer=1, min_cone_size=10)
    assert ds.k == 2 and ds.metadata["cone_layer"] == 1
    assert ds.metadata["cone_sizes"] in ([120, 94], [124, 90])  # the 4 joined a neighbour
    big = truth < 2
    assigned = torch.tensor(ds.metadata["assignments"])
    assert torch.equal(assigned[big], truth[big])  # the two real cones stay whole
    # Routing by nearest centroid agrees wherever a prompt really belongs to a cone.
    assert torch.equal(assign_cones(harmful, ds)[big], truth[big])


def test_cones_fall_back_to_global_direction_without_structure(caplog, planted):
    harmful, harmless, r = planted
    with caplog.at_level(logging.WARNING):
        ds = extract_cones(harmful, harmless, n_cones=2, min_silhouette_score=0.5)
    assert ds.k == 1 and ds.metadata["fallback"]["to"] == "global"
    assert "silhouette" in ds.metadata["fallback"]["reason"]
    assert cosines(ds, r).min() > 0.99
    assert any("not trusted" in rec.message for rec in caplog.records)


# ------------------------------------------------------------------------- compliance
def test_compliance_recovers_planted_direction():
    """All harmful prompts carry 8 r; refused ones also 6 s: complied - refused = -6 s."""
    gen = torch.Generator().manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(L, D, 2, generator=gen, dtype=torch.float64))
    r, s = q[..., 0], q[..., 1]
    refused = torch.arange(400) % 2 == 0
    harmful = gaussian(400, gen) + 8 * r + 6 * refused[:, None, None] * s
    ds = extract_compliance(harmful.float(), gaussian(400, gen).float(), refused)
    assert_unit_set(ds)
    assert cosines(ds, -s).min() > 0.99
    assert ds.metadata["harmless_included"] is False
    assert ds.metadata["overlap_layers"] == []
    assert len(ds.metadata["per_layer"]["refusal_cosine"]) == L


def test_compliance_warns_when_it_is_the_refusal_direction_negated(caplog, planted):
    harmful, harmless, r = planted
    refused = torch.ones(len(harmful), dtype=torch.bool)
    with caplog.at_level(logging.WARNING):
        ds = extract_compliance(harmful, harmless, refused, caa_max_overlap=0.5)
    assert ds.metadata["harmless_included"] is True  # no complied harmful prompt to contrast
    assert ds.metadata["overlap_layers"] == list(range(L))
    assert max(ds.metadata["per_layer"]["refusal_cosine"]) < -0.99
    assert any("overlaps the refusal direction" in rec.message for rec in caplog.records)


# ------------------------------------------------------------------------ calibration
def test_projection_stats_match_numpy(planted):
    import numpy as np

    harmful, _, r = planted
    stats = projection_stats(harmful, r.float(), layer=1)
    proj = (harmful[:, 1].double() @ r[1]).numpy()
    assert stats.n == 400 and stats.layer == 1
    assert stats.mean == pytest.approx(proj.mean()) and stats.std == pytest.approx(proj.std(ddof=1))
    assert stats.p25 == pytest.approx(np.percentile(proj, 25))
    assert stats.p95 == pytest.approx(np.percentile(proj, 95))


def test_calibration_ratio_and_clamps():
    acts = torch.zeros(100, 1, 2)
    acts[:, 0, 0] = torch.linspace(1, 3, 100)  # p95 / mean = 2.9 / 2 = 1.45
    calib = calibrate_weight(acts, torch.tensor([1.0, 0.0]), 0)
    assert (
        calib.multiplier == pytest.approx(calib.stats.p95 / calib.stats.mean) and not calib.clamped
    )
    acts[:90, 0, 0] = 0.01  # a heavy tail: p95 / mean far above 2
    assert calibrate_weight(acts, torch.tensor([1.0, 0.0]), 0).multiplier == 2.0
    acts[:, 0, 0] = torch.linspace(0, 1, 100) ** 8  # p25 / mean far below 0.5
    low = calibrate_weight(acts, torch.tensor([1.0, 0.0]), 0, target_percentile=25)
    assert low.multiplier == 0.5 and low.clamped and low.ratio < 0.5
    acts[:, 0, 0] = -1.0
    bad = calibrate_weight(acts, torch.tensor([1.0, 0.0]), 0)
    assert bad.multiplier == 1.0 and "<= 0" in bad.note and bad.as_dict()["ratio"] is None


# ------------------------------------------------------------------------- round trip
def test_direction_sets_round_trip_through_safetensors(tmp_path):
    harmful, harmless, truth, _ = planted_cones()
    for ds in (extract_cones(harmful, harmless), extract_pca(harmful, harmless, k=2)):
        loaded = DirectionSet.load(ds.save(tmp_path / "directions" / ds.method))
        assert loaded.hash == ds.hash and loaded.metadata == ds.metadata
        assert loaded.tensors.keys() == ds.tensors.keys()


# ------------------------------------------------------------------ real model, end to end
N_PROMPTS = 12


@pytest.fixture(scope="module")
def smollm_acts(smollm, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    harmful = load_prompts("advbench").take(N_PROMPTS)
    harmless = load_prompts("harmless").take(N_PROMPTS)
    return [
        select_position(collect_activations(smollm, s.prompts, cache_dir=cache, batch_size=12))
        for s in (harmful, harmless)
    ]


def test_every_extractor_runs_on_smollm(smollm_acts, tmp_path):
    harmful, harmless = smollm_acts
    n_layers, d = smollm_acts[0].shape[1:]
    # A rule, not a judge: the first two thirds of the harmful prompts count as refused.
    refused = [i < 2 * N_PROMPTS // 3 for i in range(N_PROMPTS)]
    sets = {
        "diff-means": extract_diff_means(harmful, harmless, orthogonalize_harmless=True),
        "pca": extract_pca(harmful, harmless, k=2),
        "probe": extract_probe(harmful, harmless, refused, min_class_size=4, n_folds=3),
        "ensemble": extract_ensemble(harmful, harmless, refused, min_class_size=4, n_folds=3),
        "cones": extract_cones(harmful, harmless, n_cones=2, min_cone_size=2),
        "compliance": extract_compliance(harmful, harmless, refused),
    }
    for name, ds in sets.items():
        assert ds.method == name
        assert ds.directions.shape[0] == n_layers and ds.directions.shape[2] == d
        assert torch.isfinite(ds.directions).all() and torch.isfinite(ds.scores).all()
        # Layer 0's last-token residual is the same template-token embedding for every
        # prompt: no difference there, so a zero direction; every other layer has a unit one.
        norms = ds.directions.norm(dim=-1)
        assert (norms[0] == 0).all() or (norms[0] - 1).abs().max() < 1e-5
        torch.testing.assert_close(norms[1:], torch.ones_like(norms[1:]))
        assert DirectionSet.load(ds.save(tmp_path / name)).hash == ds.hash
    # Harmful and harmless prompts separate clearly in late layers: the estimates agree.
    late = n_layers * 2 // 3
    dm, pca = sets["diff-means"], extract_pca(harmful, harmless, k=1)
    raw = extract_diff_means(harmful, harmless)
    assert float(raw.direction(late) @ pca.direction(late)) > 0.8
    assert dm.scores[late, 0] > 0 and raw.metadata["degenerate_layers"] == [0]
    calib = calibrate_weight(harmful, raw, late)
    assert 0.5 <= calib.multiplier <= 2.0 and calib.stats.mean > 0


def test_massive_direction_is_the_sink_coordinate_and_costs_kl(smollm, smollm_acts):
    """SmolLM2's attention sinks carry one massive coordinate; a difference of means picks up
    a share of it, and projecting that out of every position costs far more KL than the same
    direction without it."""
    from circuitlab.activations import massive_directions
    from circuitlab.evaluate.kl import kl_divergence
    from circuitlab.evaluate.layers import layer_ablation
    from circuitlab.hooks import apply

    harmless = load_prompts("harmless").prompts
    found = massive_directions(smollm, harmless)
    assert found.shape == (1, smollm.facts.d_model)
    assert float(found[0].abs().max()) > 0.95  # essentially one coordinate
    raw = extract_diff_means(*smollm_acts)
    clean = without_massive(raw, found)
    assert float((clean.directions.double() @ found[0].double()).abs().max()) < 1e-6
    norms = clean.directions.norm(dim=-1)
    assert norms[0].max() == 0 and torch.allclose(norms[1:], torch.ones_like(norms[1:]))
    layer = 15
    assert abs(float(raw.direction(layer) @ found[0])) > 0.1
    held_out = list(harmless[20:28])
    base = smollm.next_token_logprobs(held_out)
    kl = {}
    for name, ds in (("raw", raw), ("clean", clean)):
        with apply(smollm, layer_ablation(ds, layer)):
            kl[name] = kl_divergence(base, smollm.next_token_logprobs(held_out)).mean().item()
    assert kl["clean"] < kl["raw"] / 3, kl


def test_without_massive_checks_shapes_and_removes_the_axis(planted):
    raw = extract_diff_means(*planted[:2])
    with pytest.raises(ValueError, match="massive directions must be"):
        without_massive(raw, torch.zeros(1, D + 1))
    assert torch.equal(without_massive(raw, torch.zeros(0, D)).directions, raw.directions)
    axis = torch.zeros(1, D)
    axis[0, 3] = 1
    clean = without_massive(raw, axis)
    assert clean.directions[..., 3].abs().max() < 1e-6
    assert clean.tensors["massive_directions"].shape == (1, D)


def test_probe_on_smollm_falls_back_when_it_never_refuses(smollm_acts, caplog):
    """SmolLM2 complies with almost everything: no refused class, so PCA, and it says so."""
    harmful, harmless = smollm_acts
    with caplog.at_level(logging.WARNING):
        ds = extract_probe(harmful, harmless, [False] * N_PROMPTS)
    assert ds.method == "pca" and "fallback" in ds.metadata


# ----------------------------------------------------------------------------------- CLI
@pytest.fixture
def extract_cli(smollm, monkeypatch):
    """``circuitlab extract`` in-process, on the session's SmolLM2 (no second load)."""
    from circuitlab import cli

    module = "circuitlab.commands.extract"
    if module not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, module))
    monkeypatch.setattr("circuitlab.commands._common.load_model", lambda source, settings: smollm)
    return cli.main


def test_cli_extract_probe_labels_by_generation(extract_cli, tmp_path, capsys):
    out = tmp_path / "probe"
    args = ["extract", "smollm2-135m", "--method", "probe", "--n", "8", "--out", str(out)]
    args += ["--cache-dir", str(tmp_path), "--max-new-tokens", "8", "--batch-size", "8"]
    assert extract_cli(args) == 0
    captured = capsys.readouterr()
    assert "refused:" in captured.out and "saved:" in captured.out
    assert "fallback:" in captured.err
    ds = DirectionSet.load(out)
    assert ds.metadata["harmful"]["n"] == 8 and ds.metadata["model"] == "smollm2-135m"
    # SmolLM2 hardly refuses: too small a refused class, so the probe says it used PCA.
    assert ds.method == "pca" and ds.metadata["fallback"]["from"] == "probe"
    assert list((tmp_path / "activations").rglob("*.completions.json"))


def test_cli_extract_cones_writes_table_and_plot(extract_cli, tmp_path, capsys):
    args = ["extract", "smollm2-135m", "--method", "cones", "--n", "8", "--n-cones", "2"]
    assert extract_cli([*args, "--cache-dir", str(tmp_path), "--plot", "--remove-massive"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "removed 1 massive-activation direction(s)" in captured.err
    assert "silhouette" in text and "cone(s)" in text
    (folder,) = (tmp_path / "directions").iterdir()
    assert folder.name.startswith("smollm2-135m-cones-")
    assert (folder / "curves.png").stat().st_size > 1000
    saved = DirectionSet.load(folder)
    assert saved.method == "cones" and saved.metadata["without_massive"]["n_directions"] == 1
    page = (folder / "report.html").read_text()
    assert "report:" in text
    assert "silhouette" in page and "circuitlab extract smollm2-135m --method cones" in page


def test_one_dispatch_serves_the_cli_and_the_search():
    """The CLI lists exactly the extractor's methods (kept as a literal so --help stays
    light), and an unknown or unlabelled method is a clear error."""
    from circuitlab.commands.extract import METHODS as CLI_METHODS
    from circuitlab.directions.extract import METHODS, extract

    assert CLI_METHODS == METHODS
    acts = torch.randn(6, 2, 8)
    assert extract("diff-means", acts, -acts).directions.shape[-1] == 8
    with pytest.raises(ValueError, match="unknown direction method"):
        extract("magic", acts, -acts)
    with pytest.raises(ValueError, match="labels"):
        extract("probe", acts, -acts)
