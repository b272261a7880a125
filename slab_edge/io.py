"""Atomic file writing (torch-free): write to a temporary file beside the target, fsync, then rename.

A crash or Ctrl-C mid-write leaves the previous file intact and no half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `path`.

    Use for writers that need a file name (torch.onnx.export, safetensors.save_file, engine builders).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success its files are renamed into `path`.

    For outputs that must be checked together under their final names (a tool that loads a whole folder)
    before any of them replaces what `path` holds. Files of `path` not in the stage are left alone.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield stage
        target.mkdir(exist_ok=True)
        for file in sorted(stage.iterdir()):
            if not file.is_file():
                raise IsADirectoryError(f"staged_folder holds files only, got {file.name}/")
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(file, target / file.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove it is writable; raise SlabEdgeError naming it otherwise."""
    from slab_edge.errors import SlabEdgeError

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise SlabEdgeError(f"output folder {folder} is not writable ({err.strerror or err})") from None
    return folder
