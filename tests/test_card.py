"""The model card inherits what the source declares and says what a hub user looks for."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from circuitlab.export.card import render_card, source_info
from circuitlab.models.loading import ResolvedSource


def _model(kind: str, location: Path | str):
    return SimpleNamespace(resolved=ResolvedSource(kind, str(location)))


def _front(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def _manifest(notes=(), adapter=None, scorecard=None) -> dict:
    parity = {
        "max_abs_logit_diff": 1e-5, "mean_kl": 0.0, "max_kl": 0.0, "greedy_agree": 4,
        "near_ties": 0, "n_prompts": 4, "n_positions": 40, "tolerance": 1e-3,
    }  # fmt: skip
    data = {
        "source": {"location": "/models/x", "kind": "dir"},
        "model": {"architecture": "LlamaForCausalLM"},
        "summary": ["DirectionalAblation(index=0.0)"],
        "interventions": [{"type": "DirectionalAblation"}],
        "directions": {"hash": "abc", "per_intervention": ["0123456789abcdef0123"]},
        "fold": {"edited_tensors": ["model.embed_tokens.weight"], "notes": list(notes)},
        "parity": parity,
        "versions": {"circuitlab": "0.1.0"},
        "scorecard": scorecard,
    }
    if adapter:
        data["adapter"] = adapter
        data["client_parity"] = parity
    return data


def test_a_local_folder_passes_on_its_licence_tags_and_base(tmp_path):
    (tmp_path / "README.md").write_text(
        "---\nlicense: llama3.1\nbase_model: meta-llama/Llama-3.1-8B\ntags: [chat]\n"
        "language: [en, de]\n---\n# my fine-tune\n"
    )
    info = source_info(_model("dir", tmp_path))
    assert info.base_model == "meta-llama/Llama-3.1-8B"
    card = render_card(_manifest(["lm_head untied (tie_word_embeddings=False)"]), "x",
                       _model("dir", tmp_path))  # fmt: skip
    front = _front(card)
    assert front["license"] == "llama3.1" and front["language"] == ["en", "de"]
    assert front["base_model"] == "meta-llama/Llama-3.1-8B"
    assert "chat" in front["tags"] and "circuitlab" in front["tags"]
    assert "**untied**" in card and "convert_hf_to_gguf.py" in card


def test_hub_snapshots_and_the_organism_name_their_hub_ancestor(tmp_path):
    snapshot = tmp_path / "models--some-org--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert source_info(_model("dir", snapshot)).base_model == "some-org/some-model"
    organism = tmp_path / "organism"
    organism.mkdir()
    (organism / "circuitlab_testbed.json").write_text(
        json.dumps({"base": {"preset": "smollm2-135m"}})
    )
    info = source_info(_model("preset", organism))
    assert info.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and not info.exact
    merged = _front(render_card(_manifest(), "x", _model("preset", organism)))
    assert merged["base_model_relation"] == "finetune" and merged["license"] == "apache-2.0"
    modules = {"m": {"rank": 1, "bias": False}}
    adapter = {"base_model_name_or_path": str(organism), "modules": modules,
               "max_relative_reconstruction_error": 0.0, "note": None}  # fmt: skip
    card = render_card(_manifest(adapter=adapter), "x", _model("preset", organism))
    assert "base_model" not in _front(card)  # the adapter fits the local organism only
    assert str(organism) in card and "loaded by peft" in card


def test_scorecards_become_a_table_with_intervals():
    card = {
        "model": "edited", "judge": "markers", "split": "test", "refusals": 2, "n_harmful": 64,
        "over_refusals": 0, "n_harmless": 64, "kl_first": 0.3, "kl_k": 0.2, "kl_k_tokens": 4,
        "capability_correct": 15, "capability_n": 50, "capability_delta": 0.04,
        "prompts_hash": "h",
    }  # fmt: skip
    text = render_card(_manifest(scorecard={"rule": "fewest refusals", "test": {"edited": card}}),
                       "x")  # fmt: skip
    assert "held-out split: test" in text and "3.1% [0.9, 10.7] of 64" in text
    assert "judged by markers" in text and "Chosen by: fewest refusals" in text
