"""The one decoder: the plain HF view of a bridged model, linear edits as writer-module
hooks on it, and the same greedy tokens and log-probs as the bridge, on tiny models."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from tiny import example_interventions, tiny_model

from circuitlab import decoding, fastpath
from circuitlab.engine import HookedModel
from circuitlab.hooks import apply

PROMPTS = [
    "Write a haiku about rain.",
    "What is the capital of Norway?",
    "Name a colour.",
    "List three fruits that are red.",
]


@pytest.fixture(scope="module", params=["tiny-llama-gqa-4/2", "tiny-gemma3-mqa"])
def tiny(request, tmp_path_factory, cache_dir) -> HookedModel:
    path = tiny_model(request.param, tmp_path_factory.mktemp("tiny"), cache_dir)
    return HookedModel.load(str(path))


@contextmanager
def through_bridge(model: HookedModel):
    """Force the bridge path: any TransformerLens hook does."""
    with model.hooks([("blocks.0.hook_resid_pre", lambda x, hook: None)]):
        assert fastpath.runner(model).net is model.hf_model
        yield


def test_plain_view_shares_the_bridges_weights(tiny):
    view = tiny.plain
    assert view is not None and view.config._attn_implementation == "sdpa"
    assert fastpath.runner(tiny).net is view
    shared = {p.data_ptr() for p in tiny.hf_model.parameters()}
    assert {p.data_ptr() for p in view.parameters()} <= shared
    assert not any(type(m).__name__ == "HookPoint" for m in view.modules())


@pytest.mark.parametrize("kind", ["directional", "head", "addition"])
def test_fast_path_generates_what_the_bridge_generates(tiny, kind):
    """Linear edits on the plain view give the bridge's tokens and log-probs (additions and
    other TL-hooked edits run through the bridge, and say so)."""
    interventions = example_interventions(tiny, kind)
    with apply(tiny, *interventions):
        fast_path = fastpath.runner(tiny).net is tiny.plain
        fast = tiny.generate(PROMPTS, max_new_tokens=8, batch_size=4)
        fast_lp = tiny.next_token_logprobs(PROMPTS)
        with through_bridge(tiny):
            slow = tiny.generate(PROMPTS, max_new_tokens=8, batch_size=4)
            slow_lp = tiny.next_token_logprobs(PROMPTS)
    plain = tiny.next_token_logprobs(PROMPTS)
    assert fast_path == (kind != "addition")
    assert fast == slow
    assert (fast_lp - slow_lp).abs().max() < 1e-4
    assert (fast_lp - plain).abs().max() > 1e-3  # the edit did something
    assert tiny.n_active_hooks() == 0


def test_writer_hooks_flag_non_finite_edits_and_unwind(tiny):
    from circuitlab.hooks import NonFiniteError, writer_hooks
    from circuitlab.plan import plan

    (edit, *_) = plan(tiny, example_interventions(tiny, "directional")[0])
    broken = type(edit)(edit.writer, edit.layer, edit.hook, edit.basis, edit.weights * torch.nan)
    with writer_hooks(tiny, [broken]) as finite:
        assert tiny.n_active_hooks() == 1 and tiny.n_tl_hooks() == 0
        tiny.next_token_logprobs(PROMPTS[:1])
    assert not finite.ok() and tiny.n_active_hooks() == 0
    assert issubclass(NonFiniteError, Exception)


def test_run_until_stops_after_the_last_read(tiny):
    seen: list[str] = []
    reads = [(f"blocks.{i}.hook_resid_pre", lambda x, i=i: seen.append(i)) for i in (1, 0)]
    never = []
    last = tiny.n_layers - 1
    with tiny.hooks([(f"blocks.{last}.hook_resid_post", lambda x, hook: never.append(1))]):
        decoding.run_until(tiny, tiny.encode(PROMPTS[:2]), reads)
    assert sorted(seen) == [0, 1] and never == []


def test_a_long_batch_reports_progress_while_it_decodes(tiny, capsys, monkeypatch):
    """Rows count as they finish and every step ticks, so the plain progress lines of one
    whole-split batch appear during its decoding, each prompt counted once."""
    from circuitlab import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    found = decoding.generate_tokens(
        fastpath.runner(tiny), decoding.token_ids(tiny, PROMPTS), 6, None,
        batch_size=len(PROMPTS), progress=True,
    )  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gen")]
    assert len(found.tokens) == len(PROMPTS) and all(len(t) == 6 for t in found.tokens)
    assert len(lines) >= 6  # one per step, not one per batch
    assert lines[0].startswith(f"generating: 0/{len(PROMPTS)}")
    assert lines[-1].startswith(f"generating: {len(PROMPTS)}/{len(PROMPTS)}")
