"""Write a verified folded model: safetensors, config, tokenizer, manifest and model card.

Everything goes into a hidden temporary folder beside the destination, is read back and
compared tensor by tensor with what was verified, and only then renamed into place: an
interrupted export (exception, Ctrl-C) leaves no folder under the destination's name, and a
killed one leaves at most a ``.NAME.partial-*`` folder. The source model is never a
destination; an existing folder is replaced only with ``force=True``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from circuitlab import checks
from circuitlab._resources import file_sha256, json_hash
from circuitlab.errors import ConfigError
from circuitlab.export.card import render_card
from circuitlab.export.fold import ExportError, FoldedWeights, FoldPlan
from circuitlab.export.stream import write_streamed
from circuitlab.export.verify import Parity
from circuitlab.interventions import Intervention, to_dict
from circuitlab.plan import Edit, edits_bytes

__all__ = [
    "MANIFEST",
    "check_destination",
    "describe",
    "manifest",
    "remove_leftovers",
    "save",
    "save_streamed",
]

log = logging.getLogger(__name__)

MANIFEST = checks.EXPORT_MANIFEST
MANIFEST_FORMAT = 2
# The planned edits (float64) beside the manifest: reproducible without the direction files.
# In a subfolder: loaders that take every top-level *.safetensors of a folder without an
# index (vLLM does) would otherwise read the edits as weights.
EDITS = "circuitlab/edits.safetensors"
DEFAULT_SHARD = "4GB"


def check_destination(out: str | Path, model, force: bool = False) -> Path:
    """The resolved destination, or :class:`ExportError` if writing there is not allowed.

    Refused even with ``force``: the source model's folder, a folder inside it and a folder
    that contains it (replacing it would delete the source), and an existing folder that is
    neither empty nor a circuitlab export (circuitlab never deletes what it did not write).
    Refused without ``force``: any existing, non-empty folder.
    """
    try:
        return checks.export_destination(out, model.resolved.location, force, flag="export to")
    except ConfigError as exc:
        raise ExportError(str(exc)) from None


# Temporary names of an export in progress and of a replaced one: ``.NAME.partial-<pid>-<hex>``
# (older versions: ``.NAME.partial-<hex>``) and ``.NAME.replaced-<hex>``.
_LEFTOVER = r"\.{name}\.(partial-(?:(?P<pid>\d+)-)?[0-9a-f]{{8}}|replaced-[0-9a-f]{{8}})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(out: Path) -> list[Path]:
    """Remove what killed exports to ``out`` left beside it: ``.NAME.partial-*`` folders
    (unless their exporting process still runs) and ``.NAME.replaced-*`` folders. Only
    folders named by circuitlab's own pattern are touched."""
    pattern = re.compile(_LEFTOVER.format(name=re.escape(out.name)))
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in sorted(out.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        pid = match.group("pid")
        if pid is not None and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # another export to the same place is running
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.warning("removed %d leftover folder(s) of interrupted exports: %s", len(removed),
                    ", ".join(p.name for p in removed))  # fmt: skip
    return removed


# ------------------------------------------------------------------------------ manifest
def describe(intervention: Intervention) -> str:
    """One line for logs and the model card: type and the fields that are not directions."""
    fields = []
    for f in dataclasses.fields(intervention):
        value = getattr(intervention, f.name)
        if f.name in ("directions", "ablation"):
            continue
        fields.append(f"{f.name}={value!r}")
    return f"{type(intervention).__name__}({', '.join(fields)})"


def _versions() -> dict[str, str | None]:
    found = {}
    for name in ("circuitlab", "torch", "transformers", "transformer-lens", "safetensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _direction_hash(iv: Intervention) -> str | None:
    ref = getattr(iv, "directions", None)
    if ref is None:
        return None
    return ref.hash or ref.load().hash


def _jsonable(value: Any) -> Any:
    """Scorecards come as dicts, dataclasses or objects with ``as_dict``/``to_dict``."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    for method in ("as_dict", "to_dict"):
        if callable(getattr(value, method, None)):
            return _jsonable(getattr(value, method)())
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def manifest(
    model,
    interventions: Sequence[Intervention],
    folded: FoldedWeights | FoldPlan,
    parity: Parity,
    scorecard: Any = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """What was done, to what, checked how: the content of ``circuitlab_manifest.json``."""
    hashes = [_direction_hash(iv) for iv in interventions]
    combined = json_hash(hashes)
    plan = folded if isinstance(folded, FoldPlan) else folded.plan
    edits = plan.planned if plan is not None else ()
    resolved = model.resolved
    return {
        "format": MANIFEST_FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "source": {"location": resolved.location, "kind": resolved.kind, "sha256": resolved.sha256},
        "model": model.facts.as_dict(),
        "interventions": [to_dict(iv) for iv in interventions],
        "summary": [describe(iv) for iv in interventions],
        "directions": {"hash": combined, "per_intervention": hashes},
        "edits": {
            "file": EDITS,
            "sha256": hashlib.sha256(edits_bytes(edits)).hexdigest(),
            "read_with": "circuitlab.plan.load_edits; fold with circuitlab.export.plan_fold_edits",
            "summary": [_edit_line(edit) for edit in edits],
        },
        "fold": {"edited_tensors": folded.edited, "notes": folded.notes},
        "parity": parity.as_dict(),
        "scorecard": _jsonable(scorecard),
        "versions": _versions(),
        "seed": seed,
    }


def _manifest_text(data: dict[str, Any]) -> str:
    """Indented JSON, except the interventions: inline directions are thousands of floats,
    one per line when indented, so they stay on one line each."""
    placeholder = "\u2063interventions\u2063"
    text = json.dumps({**data, "interventions": placeholder}, indent=1)
    compact = "[\n" + ",\n".join(json.dumps(iv) for iv in data["interventions"]) + "\n ]"
    return text.replace(json.dumps(placeholder), compact, 1) + "\n"


def _edit_line(edit: Edit) -> str:
    """One line per planned edit: its type and the fields that are not tensors."""
    values = {f.name: getattr(edit, f.name) for f in dataclasses.fields(edit)}
    shown = [f"{k}={v!r}" for k, v in values.items() if not isinstance(v, torch.Tensor)]
    return f"{type(edit).__name__}({', '.join(shown)})"


def _write_edits(folder: Path, edits: Sequence[Edit], data: dict[str, Any]) -> None:
    """Write the edits file the manifest names, checking it is the one it hashed."""
    payload = edits_bytes(edits)
    if hashlib.sha256(payload).hexdigest() != data["edits"]["sha256"]:
        raise ExportError("the edits to write are not the ones the manifest describes")
    (folder / EDITS).parent.mkdir(exist_ok=True)
    (folder / EDITS).write_bytes(payload)


def _file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of an export folder, by its path inside the folder."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------- files
def _check_saved(folder: Path, hf_model) -> list[str]:
    """Read the written shards back: every tensor equals what was verified."""
    expected = hf_model.state_dict()
    if not _keys_as_loaded(folder, expected):
        return _check_reloaded(folder, hf_model)
    saved: set[str] = set()
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                if key not in expected or not torch.equal(
                    handle.get_tensor(key), expected[key].detach().cpu()
                ):
                    raise ExportError(f"{shard.name}: {key} differs from the verified weights")
                saved.add(key)
    # save_pretrained writes a tied pair once; every other key must be on disk.
    written = {expected[k].data_ptr() for k in saved}
    absent = [k for k in expected if k not in saved and expected[k].data_ptr() not in written]
    if absent:
        raise ExportError(f"tensors missing from the export: {absent[:5]}")
    return sorted(p.name for p in folder.glob("*.safetensors"))


def _keys_as_loaded(folder: Path, expected: dict[str, Any]) -> bool:
    """The files name tensors as the loaded modules do (no checkpoint conversion)."""
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as handle:
            if any(key not in expected for key in handle.keys()):  # noqa: SIM118
                return False
    return True


def _check_reloaded(folder: Path, hf_model) -> list[str]:
    """Files written under checkpoint names (transformers renames fused MoE experts and
    multimodal wrappers' keys when saving): reload them as the source's class, which
    converts them back, and compare every tensor with what was verified."""
    reloaded = type(hf_model).from_pretrained(folder, dtype=hf_model.dtype)
    got, want = reloaded.state_dict(), hf_model.state_dict()
    if set(got) != set(want):
        raise ExportError(
            f"the export reloads with other tensors: {sorted(set(got) ^ set(want))[:5]}"
        )
    for key, value in want.items():
        if not torch.equal(got[key], value.detach().cpu()):
            raise ExportError(f"{key} reloads different from the verified weights")
    return sorted(p.name for p in folder.glob("*.safetensors"))


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an existing one (force) is swapped out.

    Checked again here, just before anything is removed: the folder may have changed during
    the minutes of folding and verifying."""
    if out.exists():
        checks.export_destination(out, None, force=True)
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.replaced-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _partial(out: Path) -> Path:
    """A fresh temporary folder name beside ``out``, after removing killed exports' ones."""
    remove_leftovers(out)
    return out.with_name(f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def save(
    hf_model,
    model,
    out: str | Path,
    data: dict[str, Any],
    *,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_SHARD,
    edits: Sequence[Edit] = (),
) -> Path:
    """Write a verified folded model and its manifest, atomically.

    Args:
        hf_model: the folded plain HF model (as verified).
        model: the hooked source model (tokenizer, generation config, source location).
        out: destination folder.
        data: the manifest (from :func:`manifest`); file hashes are added to it.
        force: replace an existing destination folder.
        max_shard_size: ``save_pretrained``'s shard bound (large models get several files).
        edits: the planned edits the manifest names (``FoldPlan.planned``), written beside it.

    Returns:
        The destination folder.
    """
    out = check_destination(out, model, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(out)
    try:
        hf_model.generation_config = copy.deepcopy(model.hf_model.generation_config)
        hf_model.save_pretrained(tmp, max_shard_size=max_shard_size)
        model.tokenizer.save_pretrained(tmp)
        shards = _check_saved(tmp, hf_model)
        _write_edits(tmp, edits, data)
        data["files"] = _file_hashes(tmp)
        (tmp / MANIFEST).write_text(_manifest_text(data))
        (tmp / "README.md").write_text(render_card(data, out.name, model=model))
        _install(tmp, out)
        log.info("exported to %s (%d safetensors file(s))", out, len(shards))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_streamed(
    plan: FoldPlan,
    model,
    files: Sequence[Path],
    out: str | Path,
    data: dict[str, Any],
    *,
    force: bool = False,
    digests: dict[str, str] | None = None,
) -> Path:
    """Write the export by folding the source files shard by shard (see
    :mod:`circuitlab.export.stream`), atomically, as :func:`save` does.

    Args:
        plan: the verified fold.
        model: the hooked source model (tokenizer, generation config, source location).
        files: the source safetensors.
        out, data, force: as for :func:`save`.
        digests: the parity check's tensors (``circuitlab.export.inplace.folded_in_place``);
            a written tensor of the same dtype must equal its digest.

    Returns:
        The destination folder.
    """
    out = check_destination(out, model, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(out)
    try:
        tmp.mkdir()
        streamed = write_streamed(plan, files, tmp, digests)
        config = copy.deepcopy(plan.config)
        if streamed.dtype is not None:
            config.dtype = streamed.dtype  # the source's dtype, whatever the load's was
        config.save_pretrained(tmp)
        copy.deepcopy(model.hf_model.generation_config).save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        data["fold"]["written_from"] = "source safetensors, shard by shard"
        data["fold"]["stored_dtype"] = str(streamed.dtype).removeprefix("torch.")
        data["fold"]["identical_to_verified"] = len(streamed.identical)
        data["fold"]["not_compared"] = streamed.unchecked
        _write_edits(tmp, plan.planned, data)
        data["files"] = _file_hashes(tmp)
        (tmp / MANIFEST).write_text(_manifest_text(data))
        (tmp / "README.md").write_text(render_card(data, out.name, model=model))
        _install(tmp, out)
        log.info("exported to %s (%d safetensors file(s))", out, len(streamed.shards))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
