"""Atomic file writing (torch-free): write to a temporary file beside the target, fsync, then rename.

A crash or Ctrl-C mid-write leaves the previous file intact and no half-written file behind. The checks
commands run before any work, creating nothing: `output_problem` / `check_output` (can this path be
written?) and `check_outputs_distinct` (no output is one of the inputs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: {label: path} or (label, path) pairs; None paths are skipped
PathsByLabel = dict[str, Any] | Iterable[tuple[str, Any]]


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def output_problem(path: str | os.PathLike, folder: bool = False) -> str | None:
    """Why `path` cannot be written as an output file (folder=True: an output folder), or None.

    Creates nothing: the first ancestor that exists must be a folder this process may write in.
    """
    path = Path(path)
    if not str(path) or (not folder and path.name in ("", ".", "..")):
        return f"{str(path)!r} is not a file name"
    if path.is_dir() and not folder:
        return f"{path} is a folder, not a file"
    if path.exists() and not path.is_dir() and folder:
        return f"{path} is a file, not a folder"
    ancestor = _nearest_existing(path if folder else path.parent)
    if not ancestor.is_dir():
        return f"{ancestor} is a file, so {path} cannot be created"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable"
    return None


def check_output(path: str | os.PathLike, folder: bool = False, label: str = "output") -> Path:
    """`path` if it can be written (see `output_problem`); raise InputError naming it otherwise."""
    from slab_edge.errors import InputError

    problem = output_problem(path, folder)
    if problem:
        raise InputError(f"{label}: {problem}")
    return Path(path)


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if a and b are one file or folder: os.path.samefile when both exist, else equal resolved paths."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs_distinct(outputs: PathsByLabel, inputs: PathsByLabel) -> None:
    """Raise InputError if an output path names one of the inputs (see `same_path`)."""
    from slab_edge.errors import InputError

    def pairs(paths: PathsByLabel):
        return [(k, v) for k, v in (paths.items() if isinstance(paths, dict) else paths) if v is not None]

    for out_label, out in pairs(outputs):
        for in_label, path in pairs(inputs):
            if same_path(out, path):
                raise InputError(
                    f"{out_label} {out} would overwrite the {in_label} ({path}); choose another path"
                )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `path`.

    Use for writers that need a file name (torch.onnx.export, safetensors.save_file, engine builders).

    Raises:
        InputError: `path` is a folder, or its folder cannot be created or written (nothing is written).
    """
    target = Path(path)
    check_output(target)
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
    check_output(target, folder=True)
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
