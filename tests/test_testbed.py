"""The refusal organism's data and training plumbing (fast); the organism itself is slow."""

import dataclasses
import random

import pytest
import torch

from circuitlab.prompts import normalize_prompt
from circuitlab.testbed import (
    WRAPPERS,
    Recipe,
    _bucketed_batches,
    _examples,
    _torch_threads,
    _wrap,
    is_current,
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
