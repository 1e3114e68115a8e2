"""The LoRA adapter export: written for peft, loaded by peft, equal to the hooks and the fold.

Every check loads the adapter the way a user would: plain transformers and peft in a
subprocess that never imports circuitlab, on the base model's own folder.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors import safe_open
from tiny import example_interventions, tiny_model

from circuitlab.engine import HookedModel
from circuitlab.export import HELD_OUT_PROMPTS, ExportError, ExportOptions, fold, run_plain
from circuitlab.export.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_adapter, lora_factors
from circuitlab.export.fold import plan_fold

pytest.importorskip("peft")

PROMPTS = HELD_OUT_PROMPTS[:6]


@pytest.fixture(scope="module")
def gqa(tmp_path_factory, cache_dir) -> HookedModel:
    path = tiny_model("tiny-llama-gqa-4/2", tmp_path_factory.mktemp("gqa") / "m", cache_dir)
    return HookedModel.load(str(path))


def _check(model, interventions, out):
    """Export (the exporter runs the peft client), then hold the client's outputs against
    the hooks and against the merged weights on the same batches."""
    result = export_adapter(
        model, interventions, out, ExportOptions(prompts=PROMPTS, max_new_tokens=8)
    )
    client = result.client
    assert client is not None and client.passed, client.summary()
    assert client.max_abs_logit_diff < 1e-3 and client.greedy_agree == len(PROMPTS)
    assert not result.manifest["client_parity"]["circuitlab_imported"]
    ref, (adapted, tokens) = result.reference, result.client_outputs
    merged, merged_tokens = run_plain(fold(model, interventions).build(), ref)
    worst = max((a - b).abs().max().item() for a, b in zip(merged, adapted, strict=True))
    assert worst < 1e-3  # adapter = merged export = hooks, within the float32 bar
    assert all(torch.equal(a, b) for a, b in zip(merged_tokens, tokens, strict=True))
    clean, _ = run_plain(model.hf_model, ref)  # the edits did something
    assert max((c - a).abs().max().item() for c, a in zip(clean, adapted, strict=True)) > 1e-2
    return result


def test_adapter_reproduces_ablations_embedding_and_gqa_heads(gqa, tmp_path):
    interventions = [
        *example_interventions(gqa, "directional"),  # embedding too: the tied lm_head stays
        *example_interventions(gqa, "head"),  # a projected pair of one KV group, a zeroed head
    ]
    out = tmp_path / "adapter"
    result = _check(gqa, interventions, out)
    assert {p.name for p in out.iterdir()} >= {ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md"}
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in out.iterdir())
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"]
    modules = result.manifest["adapter"]["modules"]
    assert modules["model.embed_tokens"]["kind"] == "embedding"
    # Ranks are what the edits need: one direction per writer, d_head per zeroed head.
    n = gqa.n_layers
    zeroed = f"model.layers.{n - 1}.self_attn.o_proj"
    assert modules["model.layers.1.mlp.down_proj"]["rank"] == 1
    assert modules[zeroed]["rank"] == 1 + gqa.facts.d_head
    with safe_open(out / ADAPTER_WEIGHTS, framework="pt") as handle:
        keys = set(handle.keys())
    assert "base_model.model.model.embed_tokens.lora_embedding_A" in keys
    card = (out / "README.md").read_text()
    assert "base_model_relation: adapter" not in card or "base_model:" in card
    assert "PeftModel.from_pretrained" in card and "loaded by peft" in card


def test_adapter_carries_additions_as_lora_bias(gqa, tmp_path):
    (addition,) = example_interventions(gqa, "addition")
    later = dataclasses.replace(addition, layers=tuple(x for x in addition.layers if x > 0))
    result = _check(gqa, [later], tmp_path / "addition")
    config = json.loads((tmp_path / "addition" / ADAPTER_CONFIG).read_text())
    assert config["lora_bias"] is True
    (module,) = result.manifest["adapter"]["modules"]  # down_proj of the layer before
    assert module == f"model.layers.{later.layers[0] - 1}.mlp.down_proj"


def test_factors_are_exact_and_refuse_what_peft_cannot_hold(gqa):
    interventions = example_interventions(gqa, "subspace")
    factors = lora_factors(gqa, interventions, plan_fold(gqa, interventions))
    assert factors and max(f.error for f in factors.values()) < 1e-12
    assert {f.rank for f in factors.values()} == {3}  # three directions at every writer
    mixed = example_interventions(gqa, "addition")  # layer 0 (embedding) and a bias
    with pytest.raises(ExportError, match="lora_bias beside an Embedding"):
        lora_factors(gqa, mixed, plan_fold(gqa, mixed))


def test_cli_writes_an_adapter_with_a_card(gqa, tmp_path, capsys):
    from circuitlab.cli import main
    from circuitlab.interventions import save_intervention

    path = gqa.resolved.location
    ablation = save_intervention(example_interventions(gqa, "subspace")[0], tmp_path / "s.json")
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:3]))
    out = tmp_path / "a"
    argv = ["export", path, "--intervention", str(ablation), "--out", str(out)]
    argv += ["--format", "adapter", "--no-client-check", "--prompts", str(prompts)]
    assert main(argv) == 0
    assert "exported to" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and "lora" in front["tags"]
    assert "SubspaceAblation(" in card and "--format adapter" in card
    assert "weight per layer" in card and "| 1 | 1.000 | 1.000 |" in card
    assert "huggingface-cli upload" in card and "convert_lora_to_gguf.py" in card
    manifest = json.loads((out / "circuitlab_manifest.json").read_text())
    assert set(manifest["adapter"]["modules"]) and manifest["command"].startswith("circuitlab ")


@pytest.mark.slow
def test_adapter_on_the_organism_matches_hooks_and_merged(cache_dir, tmp_path):
    from circuitlab.models import ModelSpec
    from circuitlab.testbed import NAME

    organism = HookedModel.load(ModelSpec(NAME, cache_dir=cache_dir))
    interventions = [
        *example_interventions(organism, "directional"),  # every writer and the embedding
        *example_interventions(organism, "head"),  # GQA 3:1 heads, one zeroed
    ]
    result = _check(organism, interventions, tmp_path / "organism")
    assert result.manifest["adapter"]["modules"]["model.embed_tokens"]["kind"] == "embedding"
    size = (tmp_path / "organism" / ADAPTER_WEIGHTS).stat().st_size
    assert size < 0.2 * organism.facts.n_params * 4  # low rank: a fraction of the model
