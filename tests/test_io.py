"""Atomic writes: nothing half-written on failure, usual permissions on success."""

from __future__ import annotations

import os
import stat

import pytest

from slab_edge.errors import SlabEdgeError
from slab_edge.io import atomic_path, atomic_write_json, check_writable_dir, staged_folder


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


def test_staged_folder_moves_its_files_in_only_on_success(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "model.onnx").write_text("old")
    (target / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), staged_folder(target) as stage:
        (stage / "model.onnx").write_text("half")
        raise RuntimeError("check failed")
    assert (target / "model.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no stage left behind
    with staged_folder(target) as stage:
        assert stage.parent == tmp_path and not any(stage.iterdir())
        (stage / "model.onnx").write_text("new")
        (stage / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.onnx", "notes.txt"]
    assert (target / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
