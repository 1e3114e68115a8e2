"""Checks of user input that run before anything slow: names, paths, sizes, devices, storages.

Every check raises :class:`circuitlab.errors.ConfigError` (one line, exit 2 in the CLI) and
writes nothing. Commands call them before a model loads, so a typo costs a second, not the
minutes of loading, extracting or folding that would come first otherwise. This module sits
at the bottom of the package: it imports nothing of circuitlab's but the errors.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from circuitlab.errors import ConfigError

__all__ = [
    "DEVICE_PATTERN",
    "EXPORT_MANIFEST",
    "NAME_PATTERN",
    "at_least",
    "choices",
    "device",
    "export_destination",
    "finite",
    "is_circuitlab_export",
    "model_config",
    "new_file",
    "new_folder",
    "readable_file",
    "safetensors_complete",
    "shard_size",
    "storage",
    "study_name",
    "text_file",
    "within",
]

# The file every circuitlab export carries; its presence is what allows --force to replace.
EXPORT_MANIFEST = "circuitlab_manifest.json"
# Names become file names (journals, asset folders): no separators, no leading dot or dash.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def study_name(name: str) -> str:
    """``name`` if it is safe as a file name, else ConfigError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"study name {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def within(path: str | Path, root: str | Path, what: str = "path") -> Path:
    """``path`` resolved, if it lies inside ``root`` (resolved), else ConfigError."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise ConfigError(f"{what} {resolved} would lie outside {base}")
    return resolved


def at_least(flag: str, value: float | int | None, low: float | int = 1) -> None:
    """``value >= low`` (and finite), else ConfigError naming the flag."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")
    if value < low:
        raise ConfigError(f"{flag} must be at least {low}, got {value}")


def finite(flag: str, value: float | None) -> None:
    """A finite number (or None), else ConfigError."""
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")


def choices(flag: str, values: Iterable[str], known: Iterable[str]) -> tuple[str, ...]:
    """Comma-separated names, each one of ``known``; at least one."""
    values, known = tuple(values), tuple(known)
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        got = ", ".join(unknown) if unknown else "nothing"
        raise ConfigError(f"{flag}: unknown {got}; choose from {', '.join(known)}")
    return values


# ----------------------------------------------------------------------------- devices
DEVICE_PATTERN = re.compile(r"(cpu|cuda|mps|auto)(:(\d+))?")


def device(spec: str, flag: str = "--device") -> str:
    """A torch device string that exists on this machine, else ConfigError."""
    match = DEVICE_PATTERN.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(f"{flag} {spec!r} is not a device: use cpu, cuda, cuda:N, mps or auto")
    kind, index = match.group(1), match.group(3)
    if kind in ("cpu", "auto"):
        if index is not None:
            raise ConfigError(f"{flag} {spec!r}: {kind} takes no index")
        return spec
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {spec}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise ConfigError(f"{flag} {spec}: this machine has {count} CUDA device(s)")
    elif not torch.backends.mps.is_available():
        raise ConfigError(f"{flag} {spec}: MPS is not available on this machine")
    return spec


# ------------------------------------------------------------------------------- paths
def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _creatable(path: Path, what: str) -> None:
    """Every missing parent of ``path`` can be made: the nearest existing one is a
    writable folder."""
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder")
    # Permission bits do not tell (root passes them; /proc and read-only mounts refuse
    # anyway): make and remove an empty folder.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".circuitlab-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot write in {existing} ({exc.strerror})") from None


def new_file(path: str | Path, flag: str) -> Path:
    """A file that will be written: its folder can be created and it is not a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path} is not writable")
    _creatable(path, flag)
    return path


def new_folder(path: str | Path, flag: str) -> Path:
    """A folder that will be written into: a folder (or nothing yet), creatable."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a folder")
    _creatable(path / "x" if path.is_dir() else path, flag)
    return path


def readable_file(path: str | Path, flag: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{flag}: no such file: {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag}: {path} is not readable")
    return path


def text_file(path: str | Path, flag: str) -> str:
    """The UTF-8 text of a file, or ConfigError (missing, unreadable, not UTF-8)."""
    path = readable_file(path, flag)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{flag}: {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def is_circuitlab_export(folder: Path) -> bool:
    """Whether ``folder`` carries circuitlab's export manifest (a JSON object with a format)."""
    manifest = folder / EXPORT_MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "format" in data


def export_destination(
    out: str | Path, source: str | Path | None = None, force: bool = False, flag: str = "--out"
) -> Path:
    """The resolved export folder, or ConfigError if writing there is not allowed.

    Refused always: the source model's folder, a folder inside it or one that contains it;
    a path that is a file; a parent that is a file or not writable. An existing folder is
    replaced only with ``force`` and only when it is empty or carries circuitlab's export
    manifest: circuitlab never deletes what it did not write.
    """
    out = Path(out).expanduser().resolve()
    if source is not None and Path(source).expanduser().exists():
        src = Path(source).expanduser().resolve()
        if out == src or src in out.parents or out in src.parents:
            raise ConfigError(f"{flag} {out} would overwrite the source model {src}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} exists and is not a folder")
    if out.is_dir():
        empty = not any(out.iterdir())
        if not force and not empty:
            raise ConfigError(f"{flag} {out} already exists; pass --force to replace it")
        if not empty and not is_circuitlab_export(out):
            raise ConfigError(
                f"{flag} {out} holds files circuitlab did not write (no valid {EXPORT_MANIFEST}); "
                "refusing to replace it, even with --force"
            )
    _creatable(out, flag)
    return out


# ------------------------------------------------------------------------------- sizes
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(KB|MB|GB|TB)?\s*", re.IGNORECASE)
_UNITS = {None: 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def shard_size(text: str | int, flag: str = "--max-shard-size") -> int:
    """Bytes of a ``save_pretrained`` shard bound (``4GB``, ``500MB``, ``1.5GB`` or plain
    bytes; decimal units, as Hugging Face counts them), else ConfigError."""
    match = _SIZE.fullmatch(str(text))
    size = 0
    if match is not None:
        unit = match.group(2).upper() if match.group(2) else None
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"{flag} {text!r} is not a size (e.g. 4GB, 500MB, or bytes)")
    return size


# ----------------------------------------------------------------------------- storage
def storage(url: str | None, flag: str = "--storage") -> None:
    """A study storage that can be used: a journal file whose folder exists or can be made,
    or a database URL that parses and opens (nothing is created in it)."""
    if url is None:
        return
    if "://" not in url:
        new_file(url, flag)
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                new_file(database, flag)
                if not Path(database).exists():
                    return  # opening it would create it; its folder was checked
        engine = create_engine(parsed)
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as exc:
        raise ConfigError(f"{flag} {url!r} is not a usable database URL: {exc}") from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"{flag}: cannot open {parsed.render_as_string()}: {reason}") from None
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ models
def safetensors_complete(path: Path) -> None:
    """A safetensors file whose header parses and whose data is all there (a download or
    copy cut short fails here, in a line, instead of deep inside the loader)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(length))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (struct.error, ValueError, KeyError, TypeError, IndexError):
        raise ConfigError(f"{path} is not a valid safetensors file (truncated?)") from None
    if 8 + length + end > size:
        raise ConfigError(f"{path} is truncated: {size} bytes, {8 + length + end} expected")


def model_config(folder: str | Path) -> dict[str, Any] | None:
    """An HF folder's ``config.json`` (text config for multimodal ones), with its weight
    files checked for truncation; None when ``folder`` is not a local folder."""
    folder = Path(folder).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{config} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config} is not a JSON object")
    for weights in sorted(folder.glob("*.safetensors")):
        safetensors_complete(weights)
    return data.get("text_config") or data
