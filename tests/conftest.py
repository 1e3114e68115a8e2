"""Session-scoped real models. No module-level loads; fixtures are read-only by convention."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from circuitlab.engine import HookedModel
from circuitlab.models import ModelSpec

# One thread: on these shared 2-core machines it was measured faster than two under load.
torch.set_num_threads(int(os.environ.get("CIRCUITLAB_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
# Converted models are cached under the repo's cache/ so one run (and the next) reuses them.
CACHE = Path(os.environ.get("CIRCUITLAB_CACHE_DIR", REPO / "cache"))


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config.addinivalue_line("markers", "model: loads a real (non-tiny) model; `make check` skips")


# Fixtures (and parametrized fixture names, for tests that call getfixturevalue) that load a
# real model: the tests that use them are marked `model`, so `make check` can leave them out.
REAL_MODELS = {"smollm", "gemma", "smollm_hf", "gemma_hf", "organism", "organism_hf"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = set(item.fixturenames) | {v for v in params.values() if isinstance(v, str)}
        if names & REAL_MODELS or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return CACHE


@pytest.fixture(scope="session")
def smollm(cache_dir) -> HookedModel:
    return HookedModel.load(ModelSpec("smollm2-135m", cache_dir=cache_dir))


@pytest.fixture(scope="session")
def gemma(cache_dir) -> HookedModel:
    return HookedModel.load(ModelSpec("gemma3-270m", cache_dir=cache_dir))


def fresh_hf(model: HookedModel):
    """An independent, un-bridged HF copy of a loaded model (the plain-transformers reference)."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model.resolved.location, dtype=torch.float32)
    return ref.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def smollm_hf(smollm):
    return fresh_hf(smollm)


@pytest.fixture(scope="session")
def gemma_hf(gemma):
    return fresh_hf(gemma)
