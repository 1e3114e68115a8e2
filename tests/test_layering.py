"""The package's shape: imports point down, package imports stay light, lazy names resolve."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from circuitlab.models.presets import PRESETS, LazyBuilder

PACKAGES = [
    "circuitlab",
    "circuitlab.circuits",
    "circuitlab.directions",
    "circuitlab.evaluate",
    "circuitlab.models",
    "circuitlab.report",
    "circuitlab.sae",
    "circuitlab.search",
    "circuitlab.validation",
]


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}; import sys; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_plain_data_modules_do_not_load_transformers():
    """Interventions are plain data: reading or writing one must not start the model stack."""
    for statement in ("import circuitlab.interventions", "import circuitlab"):
        loaded = _modules_after(statement)
        assert "transformers" not in loaded, statement
        assert "circuitlab.engine" not in loaded, statement


@pytest.mark.parametrize("package", PACKAGES)
def test_every_lazy_name_of_a_package_resolves(package):
    """A package's public names load on first use; a stale entry would only fail then."""
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}: {missing}"


def test_lazy_preset_builders_name_a_callable():
    """Presets built by higher layers name their builder by string: the name must resolve."""
    lazy = [p for p in PRESETS.values() if isinstance(p.locate, LazyBuilder)]
    assert lazy, "the organism preset should name its builder lazily"
    for preset in lazy:
        module, _, function = preset.locate.target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), preset.name


def test_lazy_builder_imports_on_call_and_passes_its_arguments(tmp_path):
    build = LazyBuilder("os.path:join", ("organism",))
    assert build(tmp_path) == str(tmp_path / "organism")
