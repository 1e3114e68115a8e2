"""Bad input, tried as a new user would: every case is one clear line, a non-zero exit, and
nothing written or deleted outside where it is expected.

Each case runs the real command line in-process (``cli.main``) against a tiny random model
saved to a folder, with its own cache folder. Before and after, every file under the test's
folders is listed with its size and modification time: a case passes only if the listing
is unchanged (crash logs under the cache excepted, where a case expects one). Cases that
need a signal run in a subprocess.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_llama

from circuitlab import cli
from circuitlab.directions import DirectionSet
from circuitlab.interventions import (
    ActivationAddition,
    ConeRouting,
    DirectionalAblation,
    DirectionRef,
    save_intervention,
)

REPO = Path(__file__).resolve().parents[1]
D_MODEL, LAYERS = 32, 2


def _unit(d: int = D_MODEL, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(d, generator=torch.Generator().manual_seed(seed)), dim=0
    )


def _edit(path: Path, **changes) -> Path:
    """A copy of the good ablation file with some fields of the intervention changed."""
    data = json.loads(Path(path.parent / "good.json").read_text())
    data["intervention"].update(changes)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """The files the cases refer to (read-only for every case)."""
    root = tmp_path_factory.mktemp("inputs")
    f: dict[str, Path] = {"root": root}
    f["model"] = tiny_llama(
        root / "model", cache_dir=cache_dir, n_layers=LAYERS, hidden_size=D_MODEL,
        n_heads=2, n_kv_heads=1,
    )  # fmt: skip
    truncated = root / "truncated"
    truncated.mkdir()
    for item in f["model"].iterdir():
        (truncated / item.name).write_bytes(item.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    f["truncated"] = truncated
    notemplate = root / "notemplate"
    notemplate.mkdir()
    for item in f["model"].iterdir():
        if item.name != "chat_template.jinja":
            (notemplate / item.name).write_bytes(item.read_bytes())
    f["notemplate"] = notemplate

    ref = DirectionRef.inline(_unit())
    f["good"] = save_intervention(DirectionalAblation(ref, index=0.0), root / "good.json")
    f["nan"] = _edit(root / "nan.json", calibration=math.nan)
    f["inf"] = _edit(root / "inf.json", embed=math.inf)
    f["twenty"] = _edit(root / "twenty.json", index="twenty")
    f["bool"] = _edit(root / "bool.json", component=True)
    f["kernel"] = _edit(root / "kernel.json", attn={"type": "LayerKernel", "max_weight": "x"})
    f["field"] = _edit(root / "field.json", strength=2.0)
    f["index"] = _edit(root / "index.json", index=5.0)
    missing = DirectionRef(folder=str(root / "no-such-directions"), hash="0" * 16)
    f["missing"] = save_intervention(DirectionalAblation(missing, index=0.0), root / "m.json")
    f["layers"] = save_intervention(
        ActivationAddition(ref, strength=1.0, layers=(7,), index=0.0), root / "layers.json"
    )
    f["width"] = save_intervention(
        DirectionalAblation(DirectionRef.inline(_unit(16)), index=0.0), root / "width.json"
    )
    f["perlayer"] = save_intervention(DirectionalAblation(ref), root / "perlayer.json")
    # Finite in float64, infinite once it reaches the float32 residual stream.
    f["huge"] = save_intervention(
        ActivationAddition(ref, strength=1e40, layers=(1,), index=0.0), root / "huge.json"
    )
    f["cones"] = save_intervention(ConeRouting(ref), root / "cones.json")
    (root / "notjson.json").write_text("{not json")
    f["notjson"] = root / "notjson.json"
    (root / "latin1.json").write_bytes(b'{"format": 1, "caf\xe9": 1}')
    f["latin1"] = root / "latin1.json"
    (root / "nolist.json").write_text(json.dumps({"format": 1, "interventions": {"a": 1}}))
    f["nolist"] = root / "nolist.json"
    (root / "unknown.json").write_text(
        json.dumps({"format": 1, "intervention": {"type": "Lobotomy", "strength": 1}})
    )
    f["unknown"] = root / "unknown.json"
    (root / "bare.json").write_text(
        json.dumps({"format": 1, "intervention": {"type": "LayerKernel"}})
    )
    f["bare"] = root / "bare.json"
    (root / "nodirs.json").write_text(
        json.dumps({"format": 1, "intervention": {"type": "DirectionalAblation", "index": 0.0}})
    )
    f["nodirs"] = root / "nodirs.json"
    (root / "oldformat.json").write_text(json.dumps({"format": 99, "intervention": {}}))
    f["oldformat"] = root / "oldformat.json"

    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait\nwrite a poem\n")
    f["latin1_prompts"] = root / "latin1.txt"
    (root / "blank.txt").write_text("\n  \n")
    f["blank_prompts"] = root / "blank.txt"
    (root / "scorecard.json").write_text("{oops")
    f["bad_scorecard"] = root / "scorecard.json"
    (root / "a-file").write_text("not a folder\n")
    f["file"] = root / "a-file"
    (root / "bad.toml").write_text("device = [unclosed\n")
    f["bad_toml"] = root / "bad.toml"
    (root / "profile.json").write_text("[1, 2")
    f["bad_profile"] = root / "profile.json"
    user = root / "user-folder"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work\n")
    f["user"] = user
    export = root / "old-export"
    export.mkdir()
    (export / "circuitlab_manifest.json").write_text(json.dumps({"format": 1}))
    f["export"] = export
    fake = root / "fake-export"
    fake.mkdir()
    (fake / "circuitlab_manifest.json").write_text("not json, not ours")
    (fake / "notes.txt").write_text("mine\n")
    f["fake_export"] = fake
    (root / "unknown.toml").write_text("colour = 1\n")
    f["unknown_toml"] = root / "unknown.toml"
    narrow = DirectionSet(
        "diff-means", _unit(16)[None, None].expand(LAYERS, 1, 16), torch.ones(LAYERS, 1)
    )
    f["narrow"] = narrow.save(root / "narrow-directions")
    return f


def _listing(*roots: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                # Folders by name only: probing whether a folder is writable (making and
                # removing an empty folder in it) touches its time, and leaves nothing.
                stat = path.lstat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else (-1, 0)
    return found


# (id, argv with {placeholders}, exit code, words the one line must hold)
CASES = [
    # ---- study names are names
    ("study-dotdot", "search {model} --study ../../x", 2, "study name"),
    ("study-absolute", "search {model} --study /tmp/x", 2, "study name"),
    ("study-empty", "search {model} --study ''", 2, "study name"),
    ("study-hidden", "search {model} --study .journal", 2, "study name"),
    ("study-slash", "search {model} --study a/b", 2, "study name"),
    ("abliterate-study", "abliterate {model} --study ../x --no-export", 2, "study name"),
    ("demo-study", "demo --study ../x", 2, "study name"),
    ("profiles-study", "profiles learn ../x", 2, "study name"),
    ("profiles-missing", "profiles learn nosuch", 2, "no study named"),
    # ---- sizes
    ("trials-0", "search {model} --study s --trials 0", 2, "--trials"),
    ("trials-negative", "search {model} --study s --trials -1", 2, "--trials"),
    ("n-search-0", "search {model} --study s --n-search 0", 2, "--n-search"),
    ("n-train-0", "search {model} --study s --n-train 0", 2, "--n-train"),
    ("n-kl-0", "search {model} --study s --n-kl 0", 2, "--n-kl"),
    ("heartbeat-0", "search {model} --study s --heartbeat 0", 2, "--heartbeat"),
    ("kl-target-nan", "search {model} --study s --kl-target nan", 2, "--kl-target"),
    ("margin-negative", "search {model} --study s --margin -0.1", 2, "--margin"),
    ("target-above-1", "abliterate {model} --refusal-target 1.5 --no-export", 2, "between 0"),
    ("target-negative", "search {model} --study s --refusal-target -0.1", 2, "between 0"),
    ("target-nan", "search {model} --study s --refusal-target nan", 2, "--refusal-target"),
    ("demo-margin", "demo --margin -1", 2, "--margin"),
    ("addition-negative", "search {model} --study s --addition-max -1", 2, "--addition-max"),
    ("batch-size-0", "search {model} --study s --batch-size 0", 2, "batch_size"),
    ("max-new-tokens-0", "generate {model} hi --max-new-tokens 0", 2, "max_new_tokens"),
    ("threads-negative", "generate {model} hi --threads -1", 2, "threads"),
    ("n-test-0", "abliterate {model} --n-test 0 --no-export", 2, "--n-test"),
    ("capability-negative", "abliterate {model} --capability-n -1 --no-export", 2, "capability"),
    ("demo-trials-0", "demo --trials 0", 2, "--trials"),
    ("demo-jbb", "demo --n-jbb 500", 2, "--n-jbb"),
    ("profiles-top-0", "profiles learn s --top 0", 2, "--top"),
    ("discover-top-negative", "discover {model} --top -5", 2, "--top"),
    ("discover-n-0", "discover {model} --n 0", 2, "--n"),
    ("extract-n-0", "extract {model} --n 0", 2, "--n"),
    ("extract-k-0", "extract {model} --method pca --k 0", 2, "--k"),
    ("evaluate-n-0", "evaluate {model} --n-harmful 0", 2, "--n-harmful"),
    ("evaluate-kl-k-0", "evaluate {model} --kl-k 0", 2, "--kl-k"),
    ("evaluate-capability", "evaluate {model} --capability-n -2", 2, "--capability-n"),
    ("testbed-tokens-0", "testbed check --max-tokens 0", 2, "--max-tokens"),
    ("testbed-organism", "testbed check --organism gemma3-270m", 2, "unknown organism"),
    (
        "tolerance-negative",
        "export {model} --intervention {good} --out {work}/o --tolerance -1",
        2,
        "--tolerance",
    ),
    (
        "shard-lots",
        "export {model} --intervention {good} --out {work}/o --max-shard-size lots",
        2,
        "--max-shard-size",
    ),
    (
        "shard-0",
        "export {model} --intervention {good} --out {work}/o --max-shard-size 0GB",
        2,
        "--max-shard-size",
    ),
    # ---- choices, devices, dtypes, settings
    ("methods-unknown", "search {model} --study s --methods banana", 2, "--methods"),
    ("methods-empty", "search {model} --study s --methods ,", 2, "--methods"),
    ("family-unknown", "search {model} --study s --family banana", 2, "--family"),
    ("profile-missing", "search {model} --study s --profile nosuch.json", 2, "profile"),
    ("profile-broken", "search {model} --study s --profile {bad_profile}", 2, "profile"),
    ("device-banana", "generate {model} hi --device banana", 2, "not a device"),
    ("device-cuda-index", "generate {model} hi --device cpu:3", 2, "takes no index"),
    ("neural-device", "generate {model} hi --neural-device gpu", 2, "neural_device"),
    ("dtype", "generate {model} hi --dtype float8", 2, "--dtype"),
    ("judge", "search {model} --study s --judge vibes", 2, "--judge"),
    ("config-missing", "generate {model} hi --config {work}/nope.toml", 2, "config file not found"),
    ("config-broken", "generate {model} hi --config {bad_toml}", 2, "not valid TOML"),
    ("positions", "discover {model} --positions banana", 2, "--positions"),
    ("positions-all", "discover {model} --positions all", 2, "ablated"),
    ("unknown-flag", "search {model} --study s --trails 3", 2, "--trails"),
    # ---- storages
    ("storage-scheme", "search {model} --study s --storage nonsense://x", 2, "database URL"),
    (
        "storage-refused",
        "search {model} --study s --storage postgresql+psycopg://u@localhost:1/x",
        2,
        "cannot open",
    ),
    (
        "storage-sqlite-parent-file",
        "search {model} --study s --storage sqlite:///{file}/s.db",
        2,
        "not a folder",
    ),
    (
        "storage-journal-parent-file",
        "search {model} --study s --storage {file}/s.journal",
        2,
        "not a folder",
    ),
    ("storage-journal-folder", "search {model} --study s --storage {root}", 2, "is a folder"),
    # ---- models
    ("model-missing", "generate {work}/no-model hi", 2, "no such file"),
    ("model-truncated", "generate {truncated} hi", 2, "truncated"),
    ("info-truncated", "info {truncated}", 2, "truncated"),
    ("model-not-hf", "generate {user} hi", 2, "config.json"),
    (
        "search-no-template",
        "search {notemplate} --study s --methods diff-means --n-train 2 --n-search 1 --n-kl 1 "
        "--profile none",
        2,
        "chat template",
    ),
    # ---- export destinations: never delete what circuitlab did not write
    (
        "force-user-folder",
        "export {model} --intervention {good} --out {user} --force",
        2,
        "did not write",
    ),
    ("no-force-export", "export {model} --intervention {good} --out {export}", 2, "--force"),
    (
        "out-proc",
        "export {model} --intervention {good} --out /proc/circuitlab-x",
        2,
        "cannot write",
    ),
    ("out-parent-file", "export {model} --intervention {good} --out {file}/sub", 2, "not a folder"),
    ("out-is-file", "export {model} --intervention {good} --out {file} --force", 2, "not a folder"),
    (
        "out-inside-source",
        "export {model} --intervention {good} --out {model}/edited",
        2,
        "source model",
    ),
    (
        "out-is-source",
        "export {model} --intervention {good} --out {model} --force",
        2,
        "source model",
    ),
    (
        "out-holds-source",
        "export {model} --intervention {good} --out {root} --force",
        2,
        "source model",
    ),
    ("abliterate-force-user", "abliterate {model} --out {user} --force", 2, "did not write"),
    ("abliterate-out-exists", "abliterate {model} --out {export}", 2, "--force"),
    ("demo-force-user", "demo --out {user} --force", 2, "did not write"),
    ("extract-out-user", "extract {model} --out {user}", 2, "not a saved direction set"),
    ("extract-out-file", "extract {model} --out {file}", 2, "not a folder"),
    ("discover-out-parent", "discover {model} --out {file}/c.json", 2, "not a folder"),
    ("evaluate-json-folder", "evaluate {model} --json {root}", 2, "is a folder"),
    ("evaluate-json-parent", "evaluate {model} --json {file}/s.json", 2, "not a folder"),
    ("testbed-json-parent", "testbed check --json {file}/x.json", 2, "not a folder"),
    ("profiles-out-folder", "profiles learn s --out {root}", 2, "is a folder"),
    # ---- intervention files
    ("iv-nan", "steer {model} --intervention {nan} hi", 2, "finite"),
    ("iv-inf", "export {model} --intervention {inf} --out {work}/o", 2, "finite"),
    ("iv-type-string", "steer {model} --intervention {twenty} hi", 2, "index must be"),
    ("iv-type-bool", "steer {model} --intervention {bool} hi", 2, "component must be"),
    ("iv-nested-type", "steer {model} --intervention {kernel} hi", 2, "max_weight must be"),
    ("iv-unknown-field", "steer {model} --intervention {field} hi", 2, "no field"),
    (
        "iv-unknown-type",
        "steer {model} --intervention {unknown} hi",
        2,
        "unknown intervention type",
    ),
    ("iv-bare-kernel", "steer {model} --intervention {bare} hi", 2, "not an intervention"),
    ("iv-missing-field", "steer {model} --intervention {nodirs} hi", 2, "directions"),
    ("iv-not-json", "steer {model} --intervention {notjson} hi", 2, "not a valid intervention"),
    ("iv-not-utf8", "steer {model} --intervention {latin1} hi", 2, "UTF-8"),
    ("iv-not-list", "export {model} --intervention {nolist} --out {work}/o", 2, "must be a list"),
    ("iv-format", "steer {model} --intervention {oldformat} hi", 2, "format"),
    ("iv-file-missing", "steer {model} --intervention {work}/nope.json hi", 2, "not found"),
    ("iv-directions-missing", "steer {model} --intervention {missing} hi", 2, "not found"),
    (
        "iv-directions-missing-export",
        "export {model} --intervention {missing} --out {work}/o",
        2,
        "not found",
    ),
    ("iv-layer-range", "steer {model} --intervention {layers} hi", 2, "out of range"),
    ("iv-width", "export {model} --intervention {width} --out {work}/o", 2, "d_model"),
    ("iv-index-range", "evaluate {model} --intervention {index}", 2, "index"),
    ("iv-per-layer", "steer {model} --intervention {perlayer} hi", 2, "per-layer"),
    (
        "iv-not-foldable",
        "export {model} --intervention {cones} --out {work}/o",
        2,
        "SubspaceAblation",
    ),
    (
        "hook-non-finite",
        "steer {model} --intervention {huge} hi --max-new-tokens 2",
        2,
        "non-finite",
    ),
    # ---- prompts and other files
    ("prompt-empty", "steer {model} --intervention {good} ''", 2, "empty prompt"),
    ("generate-empty", "generate {model} '  '", 2, "empty prompt"),
    (
        "prompts-not-utf8",
        "export {model} --intervention {good} --out {work}/o --prompts {latin1_prompts}",
        2,
        "UTF-8",
    ),
    (
        "prompts-blank",
        "export {model} --intervention {good} --out {work}/o --prompts {blank_prompts}",
        2,
        "no prompts",
    ),
    (
        "prompts-missing",
        "export {model} --intervention {good} --out {work}/o --prompts {work}/p.txt",
        2,
        "no such file",
    ),
    (
        "scorecard-broken",
        "export {model} --intervention {good} --out {work}/o --scorecard {bad_scorecard}",
        2,
        "scorecard",
    ),
    ("extract-source-not-utf8", "extract {model} --harmful {latin1_prompts}", 2, "UTF-8"),
    (
        "evaluate-source-not-utf8",
        "evaluate {model} --harmful {latin1_prompts} --split all",
        2,
        "UTF-8",
    ),
    ("extract-source-missing", "extract {model} --harmful nosuch-set", 2, "no prompt file"),
    ("evaluate-compare-missing", "evaluate {model} --compare {work}/nothing", 2, "no such file"),
    ("discover-directions-missing", "discover {model} --directions {work}/none", 2, "not found"),
    ("discover-directions-width", "discover {model} --directions {narrow}", 2, "d_model"),
    ("discover-layer-range", "discover {model} --direction-layer 9", 2, "out of range"),
    # ---- more of the same kinds
    ("info-missing", "info {work}/none", 2, "no such file"),
    ("search-cuda", "search {model} --study s --device cuda", 2, "CUDA"),
    ("device-cuda-7", "generate {model} hi --device cuda:7", 2, "cuda:7"),
    ("device-mps", "generate {model} hi --device mps", 2, "mps"),
    (
        "force-fake-manifest",
        "export {model} --intervention {good} --out {fake_export} --force",
        2,
        "did not write",
    ),
    ("lm-eval-limit-0", "evaluate {model} --lm-eval mmlu --lm-eval-limit 0", 2, "--lm-eval-limit"),
    ("n-cones-0", "extract {model} --method cones --n-cones 0", 2, "--n-cones"),
    ("openings-empty", "discover {model} --openings ''", 2, "--openings"),
    ("chat-layer-range", "chat {model} --intervention {layers}", 2, "out of range"),
    ("abliterate-methods", "abliterate {model} --methods x --no-export", 2, "--methods"),
    (
        "abliterate-storage",
        "abliterate {model} --storage nonsense://x --no-export",
        2,
        "database URL",
    ),
    ("profiles-storage", "profiles learn s --storage nonsense://y", 2, "database URL"),
    ("demo-out-proc", "demo --out /proc/circuitlab-x", 2, "cannot write"),
    (
        "export-truncated-source",
        "export {truncated} --intervention {good} --out {work}/o",
        2,
        "truncated",
    ),
    ("testbed-n-negative", "testbed check --n -1", 2, "--n"),
    ("config-unknown-key", "generate {model} hi --config {unknown_toml}", 2, "unknown keys"),
    ("steer-no-intervention-file", "steer {model} --intervention {root} hi", 2, "not found"),
    ("export-no-out", "export {model} --intervention {good}", 2, "--out"),
    # a storage that passed its checks is not created when a later check fails
    (
        "sqlite-not-created",
        "search {truncated} --study s --storage sqlite:///{work}/s.db",
        2,
        "truncated",
    ),
    (
        "journal-not-created",
        "search {truncated} --study s --storage {work}/s.journal",
        2,
        "truncated",
    ),
]


def _argv(template: str, files: dict[str, Path], work: Path) -> list[str]:
    import shlex

    values = {k: str(v) for k, v in files.items()} | {"work": str(work)}
    return shlex.split(template.format(**values)) + ["--cache-dir", str(work / "cache")]


@pytest.mark.parametrize(
    ("argv", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_and_writes_nothing(
    argv, code, words, inputs, tmp_path, capsys, monkeypatch
):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(tmp_path)  # a relative path written by mistake would show up here
    work = tmp_path / "work"
    work.mkdir()
    args = _argv(argv, inputs, work)
    before = _listing(inputs["root"], tmp_path)
    try:
        code_seen = cli.main(args)
    except SystemExit as exc:  # argparse
        code_seen = exc.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code_seen == code, captured.err
    assert len(lines) == 1, captured.err
    assert words in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert _listing(inputs["root"], tmp_path) == before
    assert (inputs["user"] / "thesis.tex").read_text() == "years of work\n"


def test_the_matrix_is_large():
    """The issue listed 25 bad answers; the matrix holds every one and more."""
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)


# --------------------------------------------------------------- the last-resort handler
def test_unexpected_errors_are_one_line_and_a_log(monkeypatch, tmp_path, capsys, inputs):
    def broken(args, settings):
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(cli, "cmd_presets", broken)
    args = ["presets", "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert "RuntimeError: something nobody foresaw" in line and "--log-level DEBUG" in line
    (log,) = (tmp_path / "cache" / "logs").iterdir()
    assert str(log) in line and "Traceback" in log.read_text()
    assert cli.main([*args, "--log-level", "DEBUG"]) == 1
    assert "Traceback" in capsys.readouterr().err
    logging.getLogger().setLevel(logging.WARNING)  # main configured the root logger


# ------------------------------------------------------------------- needs a signal
def _wait_for(predicate, proc, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def test_a_killed_export_leaves_nothing_after_the_next_one(inputs, tmp_path, cache_dir):
    """kill -9 while the weights are written leaves a ``.out.partial-*`` folder; the next
    export to the same place removes it (and only what matches circuitlab's pattern)."""
    model = tiny_llama(tmp_path / "wide", cache_dir=cache_dir, n_layers=2, hidden_size=256)
    ref = DirectionRef.inline(_unit(256))
    iv = save_intervention(DirectionalAblation(ref, index=0.0), tmp_path / "iv.json")
    out = tmp_path / "exports" / "edited"
    out.parent.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a colour.\nCount to three.\n")  # a quick parity check
    (out.parent / ".edited.partial-notours").mkdir()  # not circuitlab's pattern: kept
    argv = [sys.executable, "-m", "circuitlab.cli", "export", str(model), "--intervention",
            str(iv), "--out", str(out), "--threads", "1", "--prompts", str(prompts),
            "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def partial() -> list[Path]:
        return sorted(out.parent.glob(".edited.partial-[0-9]*"))

    for _ in range(3):  # the window is short on a tiny model: try again if it was missed
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = _wait_for(lambda: any((p / "model.safetensors").exists() for p in partial()), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if seen and partial() and not out.exists():
            break
        for leftover in [out, *partial()]:
            subprocess.run(["rm", "-rf", str(leftover)], check=True)
    else:
        pytest.fail("never caught the export mid-write")
    assert partial()  # the kill left one behind
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "circuitlab_manifest.json").is_file()
    assert not partial() and not list(out.parent.glob(".edited.replaced-*"))
    assert (out.parent / ".edited.partial-notours").is_dir()


def test_ctrl_c_in_a_trial_is_retried_on_resume(inputs, tmp_path, monkeypatch):
    """A trial interrupted by Ctrl-C is failed and its point re-enqueued, like one whose
    worker was killed; the resumed run evaluates it."""
    from optuna.trial import TrialState

    from circuitlab.engine import HookedModel
    from circuitlab.search import ObjectiveConfig, SearchConfig, SearchPrompts, SearchSpace
    from circuitlab.search import study as study_module
    from circuitlab.search.study import run_search

    model = HookedModel.load(str(inputs["model"]))
    prompts = SearchPrompts.from_testbed(n_train=4, n_search=2, n_kl=2, n_test=0)
    options = {
        "storage": str(tmp_path / "s.journal"),
        "space": SearchSpace(methods=("diff-means",), calibrate=False),
        "objective": ObjectiveConfig(
            max_new_tokens=4, batch_size=4, prune_kl=None, prune_min_drop=None
        ),
        "profile": None,
        "cache_dir": tmp_path / "cache",
    }
    real = study_module.score_trial

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "score_trial", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(model, prompts, "ctrl-c", SearchConfig(2, **options))
    monkeypatch.setattr(study_module, "score_trial", real)
    study = run_search(model, prompts, "ctrl-c", SearchConfig(2, **options))
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == trials[0].params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_a_failed_set_up_leaves_no_journal(inputs, tmp_path):
    """Set-up fails after the model loaded (no chat template): no study, no journal file."""
    from circuitlab.engine import HookedModel
    from circuitlab.errors import CircuitlabError
    from circuitlab.search import SearchConfig, SearchPrompts, SearchSpace, run_search

    model = HookedModel.load(str(inputs["notemplate"]))
    prompts = SearchPrompts.from_testbed(n_train=2, n_search=1, n_kl=1, n_test=0)
    with pytest.raises(CircuitlabError):
        run_search(
            model, prompts, "stub", SearchConfig(2, space=SearchSpace(methods=("diff-means",)),
            profile=None, cache_dir=tmp_path / "cache"),
        )  # fmt: skip
    assert not (tmp_path / "cache" / "studies" / "stub.journal").exists()
    assert not list((tmp_path / "cache" / "studies").glob("stub*"))


def test_non_finite_edits_fail_loudly_and_leave_no_hooks(inputs):
    """An edit whose activations overflow raises at the end of its block (no empty answers
    pass for results), a sane one does not, and no hook is left behind either way."""
    from circuitlab.engine import HookedModel
    from circuitlab.hooks import NonFiniteError, apply
    from circuitlab.interventions import load_interventions

    model = HookedModel.load(str(inputs["model"]))
    with (
        pytest.raises(NonFiniteError, match="non-finite"),
        apply(model, *load_interventions(inputs["huge"])),
    ):
        model.generate(["Name a colour."], max_new_tokens=2)
    assert model.n_active_hooks() == 0
    with apply(model, *load_interventions(inputs["good"])):
        (text,) = model.generate(["Name a colour."], max_new_tokens=2)
    assert model.n_active_hooks() == 0 and isinstance(text, str)


def test_a_failed_resume_leaves_the_study_untouched(inputs, tmp_path):
    """Resuming with other prompts or another judge is refused, and the journal stays byte
    for byte what it was (no appended lines, no stale-trial bookkeeping)."""
    from circuitlab.engine import HookedModel
    from circuitlab.evaluate.judges import CombinedJudge, MarkerJudge
    from circuitlab.search import (
        ObjectiveConfig,
        SearchConfig,
        SearchError,
        SearchPrompts,
        SearchSpace,
        run_search,
    )

    model = HookedModel.load(str(inputs["model"]))
    journal = tmp_path / "r.journal"
    options = {
        "storage": str(journal),
        "space": SearchSpace(methods=("diff-means",), calibrate=False),
        "objective": ObjectiveConfig(max_new_tokens=2, batch_size=4, prune_kl=None),
        "profile": None,
        "cache_dir": tmp_path / "cache",
    }
    prompts = SearchPrompts.from_testbed(n_train=4, n_search=2, n_kl=2, n_test=0)
    run_search(model, prompts, "r", SearchConfig(1, **options))
    before = journal.read_bytes()
    other = SearchPrompts.from_testbed(n_train=4, n_search=3, n_kl=2, n_test=0)
    with pytest.raises(SearchError, match="other prompts"):
        run_search(model, other, "r", SearchConfig(2, **options))
    with pytest.raises(SearchError, match="judged by"):
        judge = CombinedJudge(MarkerJudge(), MarkerJudge(), "and")
        run_search(model, prompts, "r", SearchConfig(2, **options), judge=judge)
    assert journal.read_bytes() == before
