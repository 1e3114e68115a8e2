"""Interventions as data: JSON round trips, references by hash, kernels, foldability."""

import json

import pytest
import torch

from circuitlab.directions import DirectionSet
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
    from_json,
    load_intervention,
    save_intervention,
    to_json,
    with_strength,
)
from circuitlab.models import HeadId


def direction_set(seed: int = 0, layers: int = 4, k: int = 2, d: int = 8) -> DirectionSet:
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(layers, k, d, generator=g)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    tensors = {"cone_centroids": torch.randn(k, d, generator=g), "cone_centre": torch.zeros(d)}
    return DirectionSet("cones", directions, torch.rand(layers, k, generator=g), {}, tensors)


@pytest.fixture
def saved_ref(tmp_path) -> DirectionRef:
    direction_set().save(tmp_path / "cones")
    return DirectionRef.from_folder(tmp_path / "cones")


def every_intervention(ref: DirectionRef) -> list:
    inline = DirectionRef.inline(direction_set(1))
    tent = LayerKernel(0.9, 2.5, 0.1, 1.5)
    ablation = DirectionalAblation(ref, index=1.7, component=1, attn=tent, embed=0.0)
    return [
        ablation,
        DirectionalAblation(inline, mlp=LayerKernel.only(2), calibration=1.25),
        SubspaceAblation(ref, layer=2, components=[0, 1], weighting="eigenvalue"),
        ActivationAddition(inline, strength=-4.0, layers=[1, 3], index=0.5, positions="generated"),
        ConeRouting(ref, layer=2, direction_layer=1, attn=LayerKernel.off()),
        DynamicStrength(ablation, layer=2, zero_at=-0.5, one_at=3.25, max_strength=1.5),
        HeadAblation([HeadId(3, 1), HeadId(0, 2)], directions=inline, index=2.0, weight=0.5),
        HeadAblation([HeadId(1, 0)], mode="zero"),
    ]


def test_json_round_trip_is_identity_for_every_type(saved_ref, tmp_path):
    interventions = every_intervention(saved_ref)
    assert {type(iv).__name__ for iv in interventions} == {
        "DirectionalAblation",
        "SubspaceAblation",
        "ActivationAddition",
        "ConeRouting",
        "DynamicStrength",
        "HeadAblation",
    }
    for i, iv in enumerate(interventions):
        text = to_json(iv)
        json.loads(text, parse_constant=pytest.fail)  # strict JSON: no NaN or Infinity
        assert from_json(text) == iv
        assert to_json(from_json(text)) == text
        path = save_intervention(iv, tmp_path / f"iv{i}.json")
        assert load_intervention(path) == iv


def test_inline_directions_are_exact():
    ds = direction_set(2)
    loaded = DirectionRef.inline(ds).load()
    assert torch.equal(loaded.directions, ds.directions) and torch.equal(loaded.scores, ds.scores)
    assert torch.equal(loaded.tensors["cone_centroids"], ds.tensors["cone_centroids"])
    vector = DirectionRef.inline(ds.directions[0, 0]).load()
    assert vector.directions.shape == (1, 1, 8)
    with pytest.raises(InterventionError, match=r"\[layer, k, d\]"):
        DirectionRef.inline(ds.directions[0])  # [k, d] or [layer, d]? say which


def test_folder_reference_pins_the_hash(saved_ref, tmp_path):
    assert saved_ref.load().hash == saved_ref.hash == direction_set().hash
    direction_set(seed=5).save(tmp_path / "cones")  # same folder, other content
    with pytest.raises(InterventionError, match="made with"):
        saved_ref.load()


def test_tent_kernel_follows_heretic():
    tent = LayerKernel(
        max_weight=1.0, max_weight_position=10.0, min_weight=0.4, min_weight_distance=3
    )
    expected = [0.0, 0.4, 0.6, 0.8, 1.0, 0.8, 0.6, 0.4, 0.0]  # layers 6..14
    assert [round(tent.weight(layer), 6) for layer in range(6, 15)] == expected
    assert LayerKernel().weight(29) == 1.0 and LayerKernel.off().weight(0) == 0.0
    assert [LayerKernel.only(3).weight(x) for x in (2, 3, 4)] == [0.0, 1.0, 0.0]
    with pytest.raises(InterventionError, match="min_weight_distance"):
        LayerKernel(min_weight_distance=0)


def test_foldability_and_nearest_exact_alternatives(saved_ref):
    ablation, *_ = every_intervention(saved_ref)
    routing = ConeRouting(saved_ref, layer=2, embed=0.5)
    dynamic = DynamicStrength(ablation, 1, 0.0, 1.0)
    addition = ActivationAddition(saved_ref, 1.0, (1,))
    last = ActivationAddition(saved_ref, 1.0, (1,), positions="last")
    assert ablation.foldable and not routing.foldable and not dynamic.foldable
    # At every position an addition is a bias; at some positions no weight can do it.
    assert addition.foldable and addition.foldable_alternative() is addition
    assert not last.foldable and last.foldable_alternative() is None
    assert routing.foldable_alternative() == SubspaceAblation(saved_ref, embed=0.5)
    assert dynamic.foldable_alternative() is ablation
    assert "per prompt" in routing.fold_note and "bias" in addition.fold_note
    # What lm-eval's single pass cannot serve: edits that depend on where a prompt ends.
    assert routing.per_prompt and dynamic.per_prompt and last.per_prompt
    assert not addition.per_prompt and not ablation.per_prompt


def test_loaded_directions_are_cached_until_the_folder_changes(saved_ref, tmp_path, monkeypatch):
    reads = []
    real = DirectionSet.load
    monkeypatch.setattr(DirectionSet, "load", lambda folder: reads.append(folder) or real(folder))
    first = saved_ref.load()
    assert saved_ref.load() is first and len(reads) == 1  # no second read or re-hash
    direction_set(seed=5).save(tmp_path / "cones")
    with pytest.raises(InterventionError, match="made with"):
        saved_ref.load()
    assert len(reads) == 2


def test_with_strength_sets_the_knob_of_each_type(saved_ref):
    ablation, _, subspace, addition, routing, dynamic, heads, _ = every_intervention(saved_ref)
    assert with_strength(ablation, 0.5).calibration == 0.5
    assert with_strength(subspace, 0.5).calibration == with_strength(routing, 0.5).calibration
    assert with_strength(addition, 7.0).strength == 7.0
    assert with_strength(dynamic, 0.5).ablation.calibration == 0.5
    assert with_strength(heads, 0.0).weight == 0.0


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format": 1, "intervention": {"type": "Nope"}}', "unknown intervention type"),
        (
            '{"format": 1, "intervention": {"type": "LayerKernel", "bogus": 1}}',
            "no field",
        ),
        ('{"intervention": {}}', "not a circuitlab intervention"),
    ],
)
def test_bad_json_is_explicit(text, message):
    with pytest.raises(InterventionError, match=message):
        from_json(text)


def test_invalid_values_are_refused(saved_ref, tmp_path):
    with pytest.raises(InterventionError, match="exactly one"):
        DirectionRef()
    with pytest.raises(InterventionError, match="needs directions"):
        HeadAblation((HeadId(0, 0),))
    with pytest.raises(InterventionError, match="weighting"):
        SubspaceAblation(saved_ref, weighting="loud")
    with pytest.raises(InterventionError, match="positions"):
        ActivationAddition(saved_ref, 1.0, (0,), positions="middle")
    with pytest.raises(InterventionError, match="not found"):
        load_intervention(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InterventionError, match="not a valid intervention"):
        load_intervention(tmp_path / "broken.json")


def test_interventions_file_holds_several_in_order(saved_ref, tmp_path):
    from circuitlab.interventions import load_interventions, save_interventions

    first, second = every_intervention(saved_ref)[:2]
    path = save_interventions([first, second], tmp_path / "chosen.json")
    assert load_interventions(path) == (first, second)
    # A single-intervention file reads as a 1-tuple; a multi file refuses the single reader.
    assert load_interventions(save_intervention(first, tmp_path / "one.json")) == (first,)
    with pytest.raises(InterventionError, match="holds 2"):
        load_intervention(path)
