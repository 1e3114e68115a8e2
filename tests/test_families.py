"""The family matrix: every architecture family the pipeline supports, end to end on a tiny
random model (bridge vs HF, export parity and reload, head-level folds), the README table
rendered from the same results, and every architecture TransformerLens bridges classified
(the rest are swept by ``experiments/family_table.py --sweep``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from families import FAMILIES, TOLERANCE, architectures, check_family, passes

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
    assert moe == {"qwen3_moe", "mixtral", "qwen2_moe", "olmoe", "gpt_oss", "llama4"}


@pytest.mark.parametrize(
    "family, architecture",
    [
        ("gemma3", "Gemma3ForConditionalGeneration"),
        ("mistral3", "Mistral3ForConditionalGeneration"),
        ("llama4", "Llama4ForConditionalGeneration"),
    ],
)
def test_multimodal_wrapper_reloads_as_itself_with_the_vision_tower_untouched(
    matrix, family, architecture
):
    result = matrix[family]
    assert result["reload_class"] == architecture
    assert result["vision_identical"] is True


def test_every_bridged_architecture_is_classified():
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    registry = architectures()
    assert {row["architecture"] for row in registry} == set(SUPPORTED_ARCHITECTURES)
    kinds = {row["architecture"]: row["kind"] for row in registry}
    assert {kinds[a] for a in ("GPT2LMHeadModel", "Llama4ForConditionalGeneration")} == {"matrix"}
    assert kinds["T5ForConditionalGeneration"] == "not a text generator"
    assert kinds["BertForMaskedLM"] == "not a text generator"
    assert kinds["QwenForCausalLM"] == "remote code"  # Qwen 1 ships its own modelling code
    assert kinds["OPTForCausalLM"] == "sweep"


@pytest.mark.parametrize(
    "config_name, architecture, reason",
    [
        ("T5Config", "T5ForConditionalGeneration", "not a decoder-only language model"),
        ("MambaConfig", "MambaForCausalLM", "no attention layers"),
    ],
)
def test_a_model_circuitlab_cannot_edit_is_refused_before_loading(
    tmp_path, config_name, architecture, reason
):
    import transformers

    from circuitlab.errors import UnsupportedArchitectureError
    from circuitlab.models import ModelSpec, load_hf

    config = getattr(transformers, config_name)(vocab_size=64)
    config.architectures = [architecture]
    config.save_pretrained(tmp_path)  # a config and no weights: nothing may try to load them
    with pytest.raises(UnsupportedArchitectureError) as err:
        load_hf(ModelSpec(str(tmp_path)))
    message = str(err.value)
    assert "\n" not in message and f"{architecture} ({config.model_type})" in message
    assert reason in message


def test_gpt2_conv1d_writers_are_transposed_and_a_refused_family_says_so(tmp_path, monkeypatch):
    from families import build_family

    from circuitlab.engine import HookedModel
    from circuitlab.errors import UnsupportedArchitectureError
    from circuitlab.export.fold import check_exportable, layout
    from circuitlab.models import support

    model = HookedModel.load(str(build_family("gpt2", tmp_path / "gpt2")))
    found = layout(model)
    assert found.transposed and found.attn[1] == "transformer.h.1.attn.c_proj"
    assert found.down_proj(0) == "transformer.h.0.mlp.c_proj"
    check_exportable(model)
    monkeypatch.setitem(support.EXPORT_REFUSED, "gpt2", "a reason found by the sweep")
    with pytest.raises(UnsupportedArchitectureError, match="cannot export gpt2 models: a reason"):
        check_exportable(model)


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
