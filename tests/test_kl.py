"""KL divergence: a hand computation, zero for the unedited model, positive under an edit."""

from __future__ import annotations

import math

import pytest
import torch
from jaxtyping import TypeCheckError, jaxtyped

from circuitlab.decoding import teacher_forced
from circuitlab.evaluate.kl import KLBaseline, kl_divergence

HARMLESS = [
    "Give me three tips for keeping basil alive.",
    "What is the capital of Norway?",
    "Write a haiku about rain.",
]


def test_kl_matches_a_hand_computation():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    q = torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.2, 0.7]])
    got = kl_divergence(p.log(), q.log())
    # 0.5 ln(0.5/0.25) + 0.25 ln(1) + 0.25 ln(0.25/0.5) = 0.25 ln 2
    assert got[0].item() == pytest.approx(0.25 * math.log(2), abs=1e-7)
    assert got[1].item() == pytest.approx(0.0, abs=1e-7)
    # Asymmetric, as KL is: KL(q‖p) = 0.25 ln 0.5 + 0.5 ln 2 = 0.25 ln 2 here too by symmetry,
    # so check a case where the directions differ.
    a, b = torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl_divergence(a.log(), b.log()).item() == pytest.approx(forward, abs=1e-6)
    assert kl_divergence(b.log(), a.log()).item() != pytest.approx(forward, abs=1e-3)


def test_kl_shapes_are_annotated():
    beartype = pytest.importorskip("beartype").beartype
    checked = jaxtyped(typechecker=beartype)(kl_divergence)
    uniform = torch.zeros(2, 3, 5).log_softmax(-1)
    assert checked(uniform, uniform).shape == (2, 3)
    with pytest.raises(TypeCheckError):
        checked(uniform, torch.zeros(2, 3, 4).log_softmax(-1))


@pytest.fixture(scope="module")
def baseline(smollm):
    return KLBaseline.compute(smollm, HARMLESS, k=3, batch_size=2)


def test_unedited_model_has_zero_kl(smollm, baseline):
    scores = baseline.score(smollm, batch_size=2)
    assert scores.first_token == pytest.approx(0.0, abs=1e-6)
    assert scores.k_token == pytest.approx(0.0, abs=1e-6)
    assert scores.k == 3 and len(scores.per_prompt_k) == len(HARMLESS)


def test_baseline_shapes_and_first_position(smollm, baseline):
    n, vocab = len(HARMLESS), baseline.first.shape[1]
    assert baseline.along.shape == (n, 3, vocab)
    assert baseline.continuation.dtype == torch.long
    # Position 0 of the teacher-forced pass is the first-token distribution.
    assert torch.allclose(baseline.along[:, 0], baseline.first, atol=1e-3)
    # The continuation is the base model's greedy choice at every position.
    assert torch.equal(baseline.along.argmax(-1), baseline.continuation)


def test_an_edit_gives_positive_kl_and_k_token_reads_it(smollm, baseline):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(smollm.facts.d_model, generator=gen) * 2.0

    def push(x, hook):
        return x + noise

    with smollm.hooks([("blocks.10.hook_resid_pre", push)]):
        scores = baseline.score(smollm, batch_size=3)
    assert scores.first_token > 1e-3 and scores.k_token > 1e-3
    assert smollm.n_active_hooks() == 0
    # Hand check of the first position from the raw tensors.
    with smollm.hooks([("blocks.10.hook_resid_pre", push)]):
        edited = teacher_forced(smollm, HARMLESS, baseline.continuation, batch_size=3)
    manual = (baseline.along.exp() * (baseline.along - edited)).sum(-1).mean().item()
    assert scores.k_token == pytest.approx(manual, rel=1e-3)


def test_baseline_round_trips_through_safetensors(baseline, tmp_path):
    path = tmp_path / "base.safetensors"
    baseline.save(path)
    again = KLBaseline.load(path)
    assert again.prompts == baseline.prompts and again.chat == baseline.chat
    assert torch.equal(again.along, baseline.along)
    assert torch.equal(again.continuation, baseline.continuation)
