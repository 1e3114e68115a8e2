"""The family matrix: every architecture family the pipeline supports, end to end on a tiny
random model (bridge vs HF, export parity and reload, head-level folds), and the README
table rendered from the same results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from families import FAMILIES, TOLERANCE, check_family, passes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, cache_dir) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("families")
    return {family: check_family(family, work, cache_dir) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_hooks_fold_and_export(matrix, family):
    result = matrix[family]
    assert "error" not in result, result["error"]
    assert passes(result) == {"hooks": True, "circuits": True, "export": True}, result
    # The edit must be visible, or parity would prove nothing.
    assert result["ablation_effect"] > 100 * TOLERANCE, result


def test_moe_families_are_folded_through_their_experts(matrix):
    moe = {family for family, result in matrix.items() if result.get("moe")}
    assert moe == {"qwen3_moe", "mixtral", "qwen2_moe", "olmoe", "gpt_oss"}


def test_multimodal_wrapper_reloads_as_itself_with_the_vision_tower_untouched(matrix):
    result = matrix["gemma3"]
    assert result["reload_class"] == "Gemma3ForConditionalGeneration"
    assert result["vision_identical"] is True


def test_layout_finds_the_language_model_inside_a_wrapper(tmp_path):
    from families import build_family

    from circuitlab.engine import HookedModel
    from circuitlab.export.fold import layout

    model = HookedModel.load(str(build_family("gemma3", tmp_path / "g3")))
    found = layout(model)
    assert found.attn[1] == "model.language_model.layers.1.self_attn.o_proj"
    assert found.down_proj(0) == "model.language_model.layers.0.mlp.down_proj"
    assert found.embed == "model.language_model.embed_tokens.weight"
    assert model.facts.n_layers == 2 and model.facts.model_type == "gemma3_text"


def test_the_family_table_is_rendered_from_the_matrix(matrix):
    spec = importlib.util.spec_from_file_location(
        "family_table", REPO / "experiments" / "family_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    broken = {"family": "broken", "architecture": "X", "bridge_vs_hf": 0.0, "error": "export: x"}
    table = module.render([*matrix.values(), broken])
    for family in FAMILIES:
        row = next(line for line in table.splitlines() if f"`{family}`" in line)
        assert row.count("✓") == 3, row
    row = next(line for line in table.splitlines() if "`broken`" in line)
    assert row.count("✓") == 1 and row.count("✗") == 2 and "export: x" in row
