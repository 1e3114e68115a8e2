"""Prompt sources and the one split policy (circuitlab.prompt_data)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest

from circuitlab import prompt_data
from circuitlab.errors import PromptError
from circuitlab.prompt_data import SealedPrompts, side_prompts
from circuitlab.prompts import PromptSource, load_prompts

DATA = Path(__file__).parent / "data"
FRENCH_HARMFUL = DATA / "french_harmful.txt"
FRENCH_HARMLESS = f"{DATA / 'french_harmless.csv'}:demande"


# ----------------------------------------------------------------------------- sources
def test_every_source_kind_reads_the_same_prompts(tmp_path):
    lines = ["Write a haiku about tea.", "Name three rivers.", "Sort these numbers: 3 1 2."]
    (tmp_path / "p.txt").write_text("\n".join([lines[0], "", lines[1], lines[0], lines[2]]))
    (tmp_path / "p.csv").write_text(
        "id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(lines))
    )
    (tmp_path / "p.json").write_text(json.dumps([{"text": t} for t in lines]))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in lines))
    for spec in ("p.txt", "p.csv:text", "p.json:text", "p.jsonl"):
        assert load_prompts(str(tmp_path / spec)).prompts == tuple(lines), spec


def test_hub_specs_parse_without_loading():
    source = PromptSource.parse("hf:org/set:fr@validation:instruction")
    assert (source.location, source.config, source.split, source.column) == (
        "org/set", "fr", "validation", "instruction",
    )  # fmt: skip
    assert PromptSource.parse("hf:org/set").split == "train"
    with pytest.raises(PromptError, match="hf:DATASET"):
        PromptSource.parse("hf:")


@pytest.mark.parametrize(
    "name, content, spec, message",
    [
        (
            "bad.jsonl",
            '{"prompt": "a"}\n{"prompt": "b"}\n{oops\n',
            "bad.jsonl",
            "bad.jsonl:3: not valid JSON",
        ),
        ("latin.txt", b"ok line\nsecond\ncaf\xe9\n", "latin.txt", "latin.txt:3: not UTF-8"),
        ("cols.csv", "id,text\n1,hello\n", "cols.csv", "cols.csv:1: no column 'prompt'"),
        ("cols.csv", "id,text\n1,hello\n", "cols.csv:nope", "no column 'nope'"),
        (
            "rows.jsonl",
            '{"prompt": "a"}\n{"other": 1}\n',
            "rows.jsonl",
            "rows.jsonl:2: no text field",
        ),
        ("empty.txt", "\n  \n", "empty.txt", "no prompts found"),
        ("x.txt", "a\n", "x.txt:col", "only applies to .csv"),
        (None, "", "no-such-set", "no prompt file 'no-such-set'"),
    ],
)
def test_bad_sources_name_the_file_and_line(tmp_path, name, content, spec, message):
    if name:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        spec = str(tmp_path / spec)
    with pytest.raises(PromptError, match=message.replace(".", r"\.")):
        side_prompts(spec, harmful=True)


# ------------------------------------------------------------------------------ policy
def test_packaged_defaults_are_the_organisms_splits():
    """The policy on advbench / harmless gives exactly the refusal organism's splits."""
    from circuitlab.testbed import Recipe, testbed_data

    data = testbed_data(Recipe().split_seed)
    harmful, harmless = side_prompts(None, True), side_prompts(None, False)
    assert harmful.train == data.harmful_train and harmful.search == data.harmful_val
    assert tuple(harmful.test()) == data.harmful_test.prompts
    assert harmless.train == data.harmless_train and harmless.search == data.harmless_val
    assert tuple(harmless.test()) == data.harmless_test.prompts


def test_extract_reads_only_the_train_split_whatever_the_seed():
    from circuitlab.commands.extract import prompt_sets
    from circuitlab.config import Settings

    train = side_prompts(None, True).train.prompts
    other = {*side_prompts(None, True).search, *side_prompts(None, True).test()}
    args = argparse.Namespace(harmful="advbench", harmless="harmless", n=10_000)
    for seed in (0, 1, 7):
        harmful, harmless = prompt_sets(args, Settings(seed=seed))
        assert set(harmful) <= set(train) and not set(harmful) & other
        assert harmless.prompts == side_prompts(None, False).train.prompts


def test_user_files_split_deterministically_and_disjointly():
    first, again = side_prompts(str(FRENCH_HARMFUL), True), side_prompts(str(FRENCH_HARMFUL), True)
    assert first == again
    parts = [set(first.train), set(first.search), set(first.test())]
    assert sum(map(len, parts)) == len(load_prompts(str(FRENCH_HARMFUL)))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_sealed_test_split_reports_every_opening(monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr(prompt_data, "TEST_READS", [opened.append])
    separate = tmp_path / "held.txt"
    separate.write_text("one\ntwo\nthree\n")
    side = side_prompts(str(FRENCH_HARMFUL), True, test_source=str(separate))
    sealed = side.test(2)
    assert isinstance(sealed, SealedPrompts) and bool(sealed) and opened == []
    assert list(sealed) == ["one", "two"] and opened == [str(separate)]
    assert not side.test(0)


# ------------------------------------------------------------------------- end to end
def test_bad_prompt_file_fails_before_the_model_loads(cache_dir, tmp_path, monkeypatch, capsys):
    from circuitlab import cli

    def no_load(*_):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "load_model", no_load)
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"prompt": "fine"}\n[1, 2\n')
    for command in ("abliterate", "search", "extract", "evaluate", "discover", "demo"):
        argv = [command] if command == "demo" else [command, "smollm2-135m"]
        argv += ["--harmful", str(bad), "--cache-dir", str(cache_dir)]  # nothing is written
        if command == "search":
            argv += ["--study", "s"]
        assert cli.main(argv) == 2, command
        assert f"{bad}:2: not valid JSON" in capsys.readouterr().err, command


@pytest.mark.slow
def test_abliterate_with_user_prompt_files_never_reads_their_test_split_early(
    cache_dir, tmp_path, monkeypatch, capsys
):
    """The organism abliterated on our own French prompts (harmful: a text file; harmless:
    a CSV column): it runs end to end, and the test split is opened only after the search."""
    from circuitlab import cli

    abliterate_module = importlib.import_module("circuitlab.search.abliterate")

    events = []
    monkeypatch.setattr(prompt_data, "TEST_READS", [lambda name: events.append(("test", name))])
    search = abliterate_module.run_search

    def recorded(*args, **kwargs):
        events.append(("search starts", None))
        study = search(*args, **kwargs)
        events.append(("search ends", None))
        return study

    monkeypatch.setattr(abliterate_module, "run_search", recorded)
    argv = [
        "abliterate",
        "smollm2-135m-refusal",
        "--harmful",
        str(FRENCH_HARMFUL),
        "--no-preflight",
    ]
    argv += ["--harmless", FRENCH_HARMLESS, "--storage", str(tmp_path / "fr.journal")]
    argv += ["--trials", "2", "--methods", "diff-means", "--no-prune", "--no-export"]
    argv += ["--n-train", "8", "--n-search", "4", "--n-kl", "4", "--n-test", "4"]
    argv += ["--capability-n", "0", "--max-new-tokens", "8", "--batch-size", "8"]
    assert cli.main([*argv, "--threads", "1", "--cache-dir", str(cache_dir)]) == 0
    assert "test split (never searched)" in capsys.readouterr().out
    names = [name for kind, name in events if kind == "test"]
    assert events[:2] == [("search starts", None), ("search ends", None)]
    assert sorted(names) == [f"{FRENCH_HARMFUL}/test", f"{DATA / 'french_harmless.csv'}/test"]
