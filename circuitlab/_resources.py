"""Files and hashes: the lowest layer every other module may use (standard library only).

- :func:`file_sha256`: a file's SHA-256, read in blocks (large weight files too);
- :func:`json_hash`: a short content key of JSON-able data (cache keys, set hashes);
- :func:`atomic_write` / :func:`atomic_folder`: write a file (a folder) through a temporary
  sibling and a rename, so readers never see half of it and a killed process leaves the
  old one in place;
- :func:`wheel_file`: a data file shipped inside an installed wheel, found without
  importing the package (importing would pull its heavy dependencies).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from circuitlab.errors import ModelNotFoundError
from circuitlab.wheels import install_hint

__all__ = ["atomic_folder", "atomic_write", "file_sha256", "json_hash", "text_hash", "wheel_file"]

BLOCK = 1 << 22


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def text_hash(text: str, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def json_hash(value: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``json.dumps(value, sort_keys=True)``
    (a content key that does not depend on the order a dict was built in)."""
    return text_hash(json.dumps(value, sort_keys=True), length)


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], Any]) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace``; the parent
    folder is created.

    Args:
        data: bytes, text (UTF-8), or a writer called with the temporary path (for
            libraries that write files themselves, such as ``safetensors.save_file``).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode() if isinstance(data, str) else bytes(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def atomic_folder(folder: str | Path, *, create: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``folder``; on success it replaces ``folder``
    (an existing one is removed first), on an exception it is removed.

    Args:
        create: make the temporary folder (False for writers that create it themselves,
            such as ``save_pretrained``).
    """
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if create:
        tmp.mkdir(parents=True)
    else:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wheel_file(package: str, relative: str, pip_name: str) -> Path:
    """A file inside an installed package, found without importing it.

    Raises:
        ModelNotFoundError: the package (or the file in it) is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"package {package!r} is not installed; install it with: {install_hint(pip_name)}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelNotFoundError(f"{pip_name} is installed but has no file {relative}")
    return path
