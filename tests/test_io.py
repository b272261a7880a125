"""Atomic writes: nothing half-written on failure, usual permissions on success."""

from __future__ import annotations

import os
import stat

import pytest

from slab_edge.errors import SlabEdgeError
from slab_edge.io import atomic_path, atomic_write_json, check_writable_dir


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_written_file_gets_umask_permissions(tmp_path):
    target = atomic_write_json(tmp_path / "a.json", {"x": 1})
    mode = stat.S_IMODE(os.stat(target).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SlabEdgeError, match="not writable"):
        check_writable_dir(blocker / "sub")
