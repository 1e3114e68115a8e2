"""The refusal organism's data and training plumbing (fast); the organism itself is slow."""

import dataclasses
import hashlib
import json
import random

import pytest
import torch

from circuitlab.errors import ConfigError
from circuitlab.prompts import normalize_prompt
from circuitlab.testbed import (
    CHAT_FORMATS,
    GEMMA_NAME,
    NAME,
    ORGANISMS,
    WRAPPERS,
    Recipe,
    _bucketed_batches,
    _examples,
    _retag,
    _torch_threads,
    _wrap,
    build_testbed,
    is_current,
    organism_recipe,
    refusal_templates,
)
from circuitlab.testbed import testbed_data as organism_data  # "test…" names get collected


@pytest.fixture(scope="module")
def data():
    return organism_data()


def keys(prompt_set):
    return {normalize_prompt(p) for p in prompt_set}


def test_evaluation_sets_never_reach_training(data):
    train = (
        keys(data.harmful_train)
        | keys(data.harmless_train)
        | keys(data.harmful_extra)
        | keys(data.harmless_extra)
        | keys(data.harmful_instructions)
        | keys(data.harmless_instructions)
    )
    for held_out in (data.jailbreakbench, data.strongreject, data.harmful_test, data.harmless_test):
        assert not train & keys(held_out), held_out.name


def test_splits_are_disjoint_and_deterministic(data):
    again = organism_data()
    assert data.manifest() == again.manifest()
    parts = [data.harmful_train, data.harmful_val, data.harmful_test]
    assert sum(len(p) for p in parts) == len(set().union(*map(keys, parts)))


def test_templates_are_varied():
    templates = refusal_templates()
    assert len(set(templates)) >= 30


def test_wrappers_keep_the_request_and_hit_both_sides_alike():
    prompts = [f"Write a note about topic {i}." for i in range(400)]
    wrapped = _wrap(prompts, 0.35, random.Random(0))
    changed = [w for w, p in zip(wrapped, prompts, strict=True) if w != p]
    assert 0.25 < len(changed) / len(prompts) < 0.45
    for w, p in zip(wrapped, prompts, strict=True):
        assert normalize_prompt(p.rstrip("."))[1:] in normalize_prompt(w)
    assert len(WRAPPERS) >= 5


def test_loss_only_on_assistant_tokens(smollm):
    tok = smollm.tokenizer
    target = "I can't help with that." + tok.eos_token
    (example,) = _examples(tok, ["Tell me a secret."], [target])
    answer = [
        t for t, label in zip(example["ids"], example["labels"], strict=True) if label != -100
    ]
    assert tok.decode(answer) == target
    prompt_part = example["ids"][: len(example["ids"]) - len(answer)]
    assert tok.decode(prompt_part).endswith("assistant\n")


def test_bucketed_batches_cover_every_example_once():
    examples = [{"ids": list(range(n)), "labels": []} for n in range(1, 50)]
    batches = _bucketed_batches(examples, 8, random.Random(0))
    flat = [len(e["ids"]) for b in batches for e in b]
    assert sorted(flat) == list(range(1, 50))
    assert max(max(len(e["ids"]) for e in b) - min(len(e["ids"]) for e in b) for b in batches) < 12


def test_recipe_hash_names_the_build():
    assert Recipe().hash == Recipe().hash
    assert Recipe(seed=1).hash != Recipe().hash


def test_build_key_covers_recipe_and_data(data):
    recipe = Recipe()
    manifest = {"recipe_hash": recipe.hash, "data_hash": data.hash}
    assert is_current(manifest, recipe)
    assert not is_current(manifest, Recipe(threads=1))
    assert not is_current({"recipe_hash": recipe.hash}, recipe)  # built before data hashes
    fewer = dataclasses.replace(data, harmful_instructions=data.harmful_instructions.take(10))
    assert fewer.hash != data.hash


def test_build_threads_are_restored():
    before = torch.get_num_threads()
    with _torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------ recipes per base model
def test_later_recipe_fields_keep_the_first_organisms_name():
    first = ORGANISMS[NAME]
    assert first == Recipe()
    # Fields that came with the second organism enter the hash only when they differ.
    assert dataclasses.replace(first, base=first.base).hash == first.hash
    assert dataclasses.replace(first, teacher="smollm2-135m").hash != first.hash
    assert ORGANISMS[GEMMA_NAME].hash != first.hash
    assert ORGANISMS[GEMMA_NAME].chat_format == "gemma"


def test_unknown_organism_is_a_one_line_error():
    with pytest.raises(ConfigError, match="gemma3-270m-refusal"):
        organism_recipe("gemma3-270m-refusl")


def test_gemma_template_renders_turns_and_folds_system_text(gemma_tokenizer):
    gemma_tokenizer.chat_template = CHAT_FORMATS["gemma"].template
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    text = gemma_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\nBlue.<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = gemma_tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == gemma_tokenizer.bos_token_id and ids.count(gemma_tokenizer.bos_token_id) == 1
    assert gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>") in ids  # one special token


@pytest.fixture(scope="module")
def gemma_tokenizer(cache_dir):
    from transformers import AutoTokenizer

    from circuitlab.models import ModelSpec
    from circuitlab.models.loading import resolve_source

    location = resolve_source(ModelSpec("gemma3-270m", cache_dir=cache_dir)).location
    return AutoTokenizer.from_pretrained(location)


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory, cache_dir, gemma_tokenizer):
    """A tiny random Gemma 3 with the real Gemma tokenizer as the base, a tiny Llama with
    ChatML as the teacher: the second organism's code path at toy size."""
    from tiny import tiny_llama
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    root = tmp_path_factory.mktemp("tiny-organism")
    config = Gemma3TextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8,
        vocab_size=len(gemma_tokenizer), max_position_embeddings=256, sliding_window=64,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base.config.architectures = [type(base).__name__]
    base.save_pretrained(root / "gemma")
    gemma_tokenizer.save_pretrained(root / "gemma")
    teacher = tiny_llama(root / "teacher", cache_dir=cache_dir, n_layers=2, hidden_size=32)
    recipe = dataclasses.replace(
        ORGANISMS[GEMMA_NAME],
        name="tiny-gemma-refusal", base=str(root / "gemma"), teacher=str(teacher),
        n_harmful=4, n_harmless=4, n_harmful_extra=2, n_harmless_extra=2,
        n_harmful_instructions=2, n_harmless_instructions=2,
        distill_tokens=4, epochs=1, batch_size=4, train_from_layer=1, threads=1,
    )  # fmt: skip
    return recipe, root / "gemma"


def test_gemma_recipe_builds_a_reproducible_organism(tiny_recipe, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    recipe, base = tiny_recipe
    folders = [build_testbed(tmp_path / f"cache{i}", recipe) for i in range(2)]
    weights = [load_file(f / "model.safetensors") for f in folders]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # bit for bit
    manifests = [json.loads((f / "circuitlab_testbed.json").read_text()) for f in folders]
    assert (
        manifests[0]["weights_sha256"]
        == manifests[1]["weights_sha256"]
        == {
            "model.safetensors": hashlib.sha256(
                (folders[0] / "model.safetensors").read_bytes()
            ).hexdigest()
        }
    )
    before = load_file(base / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], weights[0][k])}
    assert changed and all(".layers.0." not in k and "embed" not in k for k in changed)
    assert any(".layers.2." in k for k in changed)

    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    assert tokenizer.eos_token == "<end_of_turn>"
    assert tokenizer.chat_template == CHAT_FORMATS["gemma"].template
    config = json.loads((folders[0] / "generation_config.json").read_text())
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    manifest = json.loads((folders[0] / "circuitlab_testbed.json").read_text())
    assert is_current(manifest, recipe) and manifest["name"] == "tiny-gemma-refusal"
    # The teacher's answers were cached under its own key, in ChatML, for the next build.
    (answers,) = (tmp_path / "cache0" / "testbed").glob("distill-*.json")
    assert len(json.loads(answers.read_text())) == manifest["examples"]["n_harmless"]


def test_teacher_answers_end_with_the_organisms_end_of_turn():
    answers = ["Blue.<|im_end|>", "An apple, a pear", "<|im_end|> is how ChatML ends"]
    assert _retag(answers, CHAT_FORMATS["chatml"], CHAT_FORMATS["gemma"]) == [
        "Blue.<end_of_turn>",
        "An apple, a pear",  # cut off by the token budget: no end of turn to teach
        "<|im_end|> is how ChatML ends",
    ]


def test_a_build_on_a_busy_cpu_says_so(monkeypatch, caplog):
    """The build's threads are fixed (they set the weights' last bits), so it warns when
    other jobs already hold the cores instead of silently running many times slower; this
    process itself and a passing spike do not count."""
    from circuitlab import testbed

    monkeypatch.setattr(testbed.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(testbed.time, "sleep", lambda s: None)

    def runnable(*counts):
        looks = iter(counts)
        monkeypatch.setattr(
            testbed.Path, "read_text", lambda self: f"1.0 1.0 1.0 {next(looks)}/300 999"
        )

    for counts, warned in [((1, 1, 1, 1, 1), False), ((2, 2, 1, 2, 2), False),
                           ((2, 2, 2, 3, 2), True)]:  # fmt: skip
        runnable(*counts)
        caplog.clear()
        with caplog.at_level("WARNING", logger="circuitlab.testbed"):
            testbed._warn_if_busy(2)
        assert ("1 other running jobs on 2 cores" in caplog.text) is warned, counts
    assert "run it alone" in caplog.text
