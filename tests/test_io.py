"""Atomic writes: nothing half-written on failure, usual permissions on success; output paths checked first
(folders, paths under files, unwritable parents, outputs that are inputs) with one clear error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from slab_edge.errors import InputError, SlabEdgeError
from slab_edge.io import (
    atomic_path,
    atomic_write_json,
    check_outputs_distinct,
    check_writable_dir,
    output_problem,
    same_path,
    staged_folder,
)


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


def test_output_problem_names_folders_files_and_unwritable_parents(tmp_path, monkeypatch):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    assert output_problem(tmp_path / "new" / "deeper" / "a.json") is None  # parents may be missing
    assert output_problem(tmp_path / "dir") == f"{tmp_path / 'dir'} is a folder, not a file"
    assert output_problem(tmp_path / "dir", folder=True) is None
    assert output_problem(tmp_path / "file", folder=True) == f"{tmp_path / 'file'} is a file, not a folder"
    assert "is a file, so" in output_problem(tmp_path / "file" / "x" / "a.json")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path / "dir" and real_access(p, mode))
    assert output_problem(tmp_path / "dir" / "sub" / "a.json") == f"{tmp_path / 'dir'} is not writable"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("bad", ["folder", "under_a_file"])
def test_atomic_write_to_an_unwritable_path_is_one_clear_error(tmp_path, bad):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep")
    target = tmp_path / "folder" if bad == "folder" else tmp_path / "file" / "a.json"
    with pytest.raises(InputError, match="is a folder, not a file" if bad == "folder" else "is a file, so"):
        atomic_write_json(target, {"x": 1})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "folder"]  # no temp file, no folder
    assert (tmp_path / "file").read_text() == "keep"


def test_outputs_distinct_compares_files_not_spellings(tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    model.write_text("model")
    (tmp_path / "link.onnx").symlink_to(model)
    monkeypatch.chdir(tmp_path)
    for alias in ("m.onnx", "./m.onnx", str(model), "link.onnx", f"../{tmp_path.name}/m.onnx"):
        with pytest.raises(InputError, match=f"--output {alias} would overwrite the model"):
            check_outputs_distinct({"--output": alias}, [("image", "a.png"), ("model", model)])
    check_outputs_distinct({"--output": "out.json", "--other": None}, {"model": model, "--plugin": None})
    with pytest.raises(InputError, match="would overwrite the --config"):  # not written yet: same path
        check_outputs_distinct({"--output": "new/cfg.yaml"}, {"--config": tmp_path / "new" / "cfg.yaml"})
    assert same_path("m.onnx", model) and not same_path("m.onnx", "other.onnx")
