import json
from pathlib import Path

import pytest
import torch

from circuitlab.errors import (
    HubUnreachableError,
    IntegrityError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from circuitlab.models import ModelSpec, load_hf
from circuitlab.models.loading import convert_gguf, resolve_source
from circuitlab.models.presets import PRESETS, get_preset


def test_smollm_facts(smollm):
    f = smollm.facts
    assert (f.model_type, f.n_layers, f.n_heads, f.n_kv_heads, f.d_head) == ("llama", 30, 9, 3, 64)
    assert f.tied_embeddings and f.has_chat_template and f.norm_placement == "pre"
    assert [f.kv_group(h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert f.heads_of_group(1) == [3, 4, 5]


def test_gemma_facts(gemma):
    f = gemma.facts
    assert (f.n_layers, f.n_heads, f.n_kv_heads, f.d_head) == (18, 4, 1, 256)
    assert f.norm_placement == "sandwich" and not f.has_chat_template
    assert f.heads_of_group(0) == [0, 1, 2, 3]


def test_unknown_preset_lists_known(tmp_path):
    with pytest.raises(ModelNotFoundError, match="known presets: .*smollm2-135m"):
        resolve_source(ModelSpec("no-such-preset", cache_dir=tmp_path))


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_source(ModelSpec(str(tmp_path / "nope"), cache_dir=tmp_path))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_source(ModelSpec(str(tmp_path), cache_dir=tmp_path))


def test_hub_unreachable_suggests_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="use a preset"):
        load_hf(ModelSpec("circuitlab-test/does-not-exist", cache_dir=tmp_path))


def test_unsupported_architecture_names_supported(tmp_path):
    config = {"architectures": ["BioGptForCausalLM"], "model_type": "biogpt", "vocab_size": 10}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM"):
        load_hf(ModelSpec(str(tmp_path), cache_dir=tmp_path))


def test_gguf_hash_mismatch(tmp_path):
    gguf = get_preset("smollm2-135m").locate(tmp_path)
    with pytest.raises(IntegrityError, match="expected 000000000000"):
        convert_gguf(gguf, tmp_path, expected_sha256="0" * 64)


def test_gguf_conversion_round_trip_is_exact(smollm, smollm_hf, cache_dir):
    """Logits of the GGUF read directly equal those of the cached safetensors folder."""
    from transformers import AutoModelForCausalLM

    gguf = PRESETS["smollm2-135m"].locate(cache_dir)
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = smollm.encode(["Name a large river in Africa."])["input_ids"]
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, smollm_hf(ids).logits)


def test_conversion_is_cached_and_reused(smollm, cache_dir):
    gguf = PRESETS["smollm2-135m"].locate(cache_dir)
    stamp = (Path(smollm.resolved.location) / "model.safetensors").stat().st_mtime_ns
    folder, sha = convert_gguf(gguf, cache_dir)
    assert str(folder) == smollm.resolved.location
    assert sha == PRESETS["smollm2-135m"].sha256
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not rewritten


def test_cache_dir_may_be_a_string(tmp_path):
    spec = ModelSpec("smollm2-135m", cache_dir=str(tmp_path))
    assert spec.cache_dir == tmp_path
