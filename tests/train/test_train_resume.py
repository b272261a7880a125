"""Exact resume: a run SIGKILLed mid-training (inside a checkpoint write) and resumed ends bitwise-identical
to an uninterrupted run; bad --resume targets fail with one line and leave the checkpoint untouched."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import TINY, run_python, tiny_config, train_script

from slab_edge.cli import main as cli_main
from slab_edge.train.vision import train_vision

RUN = dict(TINY, epochs=2, batch_size=64, max_steps=30, checkpoint_every=5, threads=1)  # 22 steps/epoch


def _weights(run_dir, name):
    manifest = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    files = {
        "last": run_dir / "checkpoints" / manifest["files"]["model"]["file"],
        "final": run_dir / "final.safetensors",
        "deploy": run_dir / "deploy.safetensors",
    }
    return load_file(files[name])


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    train_vision(tiny_config(tmp_path, **{**RUN, "output": str(full_dir)}))  # uninterrupted, in this process

    cut = {**RUN, "output": str(cut_dir)}
    # SIGKILL inside the 3rd write of last.json: step-15 tensor files written, manifest not replaced
    killed = run_python(train_script(cut, kill_at_manifest=3), timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    manifest = json.loads((cut_dir / "checkpoints" / "last.json").read_text())
    assert manifest["step"] == 10 and manifest["state"]["position"] == {
        "epoch": 0,
        "batch_in_epoch": 10,
        "update": 10,
        "step": 10,
    }
    assert list((cut_dir / "checkpoints").glob("step00000015-*"))  # orphans of the interrupted write

    resumed = run_python(train_script(cut, resume=str(cut_dir)), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "at step 10" in resumed.stdout  # and crosses an epoch

    for name in ("last", "final", "deploy"):
        a, b = _weights(full_dir, name), _weights(cut_dir, name)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {different[:5]}"
    assert not list((cut_dir / "checkpoints").glob("step00000015-*"))  # garbage-collected
    steps = [
        json.loads(x)["step"]
        for x in (cut_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert steps == sorted(set(steps))  # the records of the lost steps were dropped, none duplicated
    full_steps = [
        json.loads(x)["step"]
        for x in (full_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert steps == full_steps


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume_bad")
    cfg = tiny_config(tmp, max_steps=6, recal_steps=0, eval_every=0, deploy=False)
    train_vision(cfg)
    return tmp / "run"


def test_resume_from_another_models_checkpoint(finished_run, capsys):
    before = _digest(finished_run / "checkpoints")
    rc = cli_main(["train", "--resume", str(finished_run), "--model", "slab_deit_digits", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained for model 'tiny_slab_test', not 'slab_deit_digits'" in err
    assert _digest(finished_run / "checkpoints") == before


def test_resume_from_a_corrupt_checkpoint(finished_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(finished_run, broken)
    manifest = json.loads((broken / "checkpoints" / "last.json").read_text())
    weights = broken / "checkpoints" / manifest["files"]["model"]["file"]
    weights.write_bytes(weights.read_bytes()[:100])
    before = _digest(broken / "checkpoints")
    assert cli_main(["train", "--resume", str(broken), "--no-progress", "--output", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is corrupt" in err
    assert _digest(broken / "checkpoints") == before  # nothing rewritten, nothing deleted
    (broken / "checkpoints" / "last.json").write_text("{")
    assert cli_main(["train", "--resume", str(broken), "--no-progress"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_fresh_run_refuses_to_overwrite(finished_run, capsys):
    argv = ["train", "--model", "tiny_slab_test", "--output", str(finished_run), "--no-progress"]
    assert cli_main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_cli_resume_extends_a_finished_run(finished_run, tmp_path, capsys, monkeypatch):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    monkeypatch.chdir(tmp_path)
    # bare --resume uses --output's run; the saved config comes back, --max-steps overrides it
    assert cli_main(["train", "--resume", "--output", str(run), "--max-steps", "9", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 6" in out and "tiny_slab_test" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 9
    assert "max_steps: 9" in (run / "config.yaml").read_text()
