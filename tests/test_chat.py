"""``circuitlab chat`` driven through stdin on a tiny model: turns, /reset, sampling, exports."""

from __future__ import annotations

import io
import re

import pytest
from tiny import example_interventions, tiny_model

from circuitlab.engine import HookedModel
from circuitlab.export import HELD_OUT_PROMPTS, ExportOptions, export
from circuitlab.interventions import save_intervention

TOKENS = ["--max-new-tokens", "6"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cache_dir):
    path = tiny_model("tiny-llama-gqa-4/2", tmp_path_factory.mktemp("chat") / "m", cache_dir)
    return path, HookedModel.load(str(path))


def _chat(argv, lines, capsys, monkeypatch) -> list[str]:
    """Run ``circuitlab chat`` on ``lines``; the printed lines."""
    from circuitlab.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    assert main(["chat", *argv, *TOKENS]) == 0, capsys.readouterr().err
    return capsys.readouterr().out.splitlines()


def _answers(printed: list[str]) -> list[str]:
    return [re.sub(r"^model( \((on|off)\))?> ?", "", x) for x in printed if x.startswith("model")]


def test_turns_keep_the_history_until_reset(tiny, capsys, monkeypatch):
    import circuitlab.commands.chat as chat

    path, model = tiny
    monkeypatch.setattr("circuitlab.commands._common.load_model", lambda source, settings: model)
    seen, real = [], chat.render
    monkeypatch.setattr(chat, "render", lambda m, h, *a: seen.append(list(h)) or real(m, h, *a))
    lines = ["Hello there.", "And again?", "/reset", "And again?", "/on", "/quit", "ignored"]
    printed = _chat([str(path)], lines, capsys, monkeypatch)
    answers = _answers(printed)
    assert len(answers) == 3 and "conversation reset" in printed
    assert any("no interventions were given" in x for x in printed)
    assert [len(h) for h in seen] == [1, 3, 1]  # the second turn saw the first exchange
    assert seen[1][1] == {"role": "assistant", "content": answers[0]}
    assert "ignored" not in "\n".join(printed) and model.n_active_hooks() == 0


def test_sampling_replays_with_its_seed(tiny, capsys, monkeypatch):
    path, model = tiny
    monkeypatch.setattr("circuitlab.commands._common.load_model", lambda source, settings: model)
    lines = ["Tell me a story.", "Go on."]
    sampled = ["--temperature", "1.5", "--top-p", "0.95"]
    first = _answers(_chat([str(path), *sampled, "--seed", "3"], lines, capsys, monkeypatch))
    again = _answers(_chat([str(path), *sampled, "--seed", "3"], lines, capsys, monkeypatch))
    other = _answers(_chat([str(path), *sampled, "--seed", "4"], lines, capsys, monkeypatch))
    greedy = _answers(_chat([str(path)], lines, capsys, monkeypatch))
    assert first == again and first != other and greedy != first


def test_an_exported_folder_answers_as_the_hooked_model(tiny, tmp_path, capsys, monkeypatch):
    path, model = tiny
    interventions = example_interventions(model, "directional")
    file = save_intervention(interventions[0], tmp_path / "ablation.json")
    options = ExportOptions(prompts=HELD_OUT_PROMPTS[:2])
    out = export(model, interventions, tmp_path / "edited", options).path
    lines = ["What is the capital of Norway?", "Why?", "/off", "Why?"]
    hooked = _answers(_chat([str(path), "--intervention", str(file)], lines, capsys, monkeypatch))
    edited = _answers(_chat([str(out)], lines[:2], capsys, monkeypatch))
    plain = _answers(_chat([str(path)], lines[:2], capsys, monkeypatch))
    assert hooked[:2] == edited and edited != plain
    assert hooked[2] != hooked[1]  # switched off mid-conversation: the base model answers


def test_bad_sampling_options_fail_in_one_line(tiny, capsys):
    from circuitlab.cli import main

    path, _ = tiny
    assert main(["chat", str(path), "--top-p", "0"]) == 2
    assert "--top-p" in capsys.readouterr().err
    assert main(["chat", str(path), "--temperature", "-1"]) == 2
    assert "--temperature" in capsys.readouterr().err
