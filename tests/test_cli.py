"""The command line as a user meets it: one clear line and a non-zero exit on bad input."""

import subprocess
import sys

import pytest

from circuitlab.cli import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "circuitlab.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "source, message",
    [("/no/such/model", "no such file"), ("no-such-preset", "unknown preset")],
)
def test_info_bad_source_is_one_line(source, message):
    result = run_cli("info", source)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_bad_setting_value_is_one_line():
    result = run_cli("info", "smollm2-135m", "--batch-size", "0")
    assert result.returncode == 2 and "batch_size" in result.stderr


def test_info_smollm_table(capsys):
    assert main(["info", "smollm2-135m"]) == 0
    text = capsys.readouterr().out
    for fact in ("llama", "n_kv_heads", "[0, 0, 0, 1, 1, 1, 2, 2, 2]", "tied_embeddings"):
        assert fact in text


def test_help_comes_from_field_descriptions():
    helptext = build_parser()._subparsers._group_actions[0].choices["info"].format_help()
    assert "Prompts per forward pass or generation batch" in helptext


def test_progress_prints_plain_lines_off_a_terminal(capsys):
    from circuitlab.progress import progress_bar

    with progress_bar(20, "trials", enabled=True) as advance:
        for _ in range(20):
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    # One line per 10 %, not one per step: a log stays readable.
    assert len(lines) == 10
    assert lines[-1].startswith("trials: 20/20,") and "eta 0:00" in lines[-1]
