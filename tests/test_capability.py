"""Capability check: a deterministic MMLU subset, letter scoring, accuracy with an interval."""

from __future__ import annotations

import pytest

from circuitlab.errors import PromptError
from circuitlab.evaluate.capability import (
    LETTERS,
    CapabilityResult,
    _letter_ids,
    capability,
    load_mmlu,
    subset_hash,
)


def test_subset_is_deterministic_and_seeded():
    a, b = load_mmlu(20, seed=0), load_mmlu(20, seed=0)
    assert a == b and subset_hash(a) == subset_hash(b)
    assert subset_hash(load_mmlu(20, seed=1)) != subset_hash(a)
    assert all(q.answer in range(4) and len(q.choices) == 4 for q in a)
    # Drawn without replacement.
    assert len({q.question for q in a}) == 20
    with pytest.raises(PromptError):
        load_mmlu(0)


def test_prompt_lists_the_options_and_ends_at_the_answer():
    q = load_mmlu(1, seed=3)[0]
    text = q.prompt()
    assert text.rstrip().endswith("Answer:")
    for letter, choice in zip(LETTERS, q.choices, strict=True):
        assert f"\n{letter}. {choice}" in text


def test_result_interval():
    r = CapabilityResult(correct=5, n=10, subset_hash="x", chosen=(0,) * 10)
    assert r.accuracy == 0.5
    low, high = r.ci
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)


def test_capability_runs_on_smollm(smollm):
    questions = load_mmlu(20, seed=0)
    result = capability(smollm, questions, batch_size=4)
    assert result.n == 20 and 0 <= result.correct <= 20
    assert 0.0 <= result.accuracy <= 1.0
    assert len(result.chosen) == 20 and set(result.chosen) <= set(range(4))
    assert result.subset_hash == subset_hash(questions)
    # Each letter has at least one single-token spelling in the vocabulary.
    assert all(ids for ids in _letter_ids(smollm.tokenizer))
    # Same model, same questions: same answers (scoring is deterministic).
    assert capability(smollm, questions[:2], batch_size=2).chosen == result.chosen[:2]
