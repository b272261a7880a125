"""Checkpoints: exact round trips, verification of every file, crash safety, model identity."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from slab_edge.errors import CheckpointError
from slab_edge.train import checkpoint as ck


def _trained_pair(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
    return model, opt


def _save(folder, model, opt, step, tag="last", **kw):
    return ck.save_checkpoint(
        folder,
        tag,
        step=step,
        model_state=model.state_dict(),
        meta={"model": "m", "model_kwargs": {}},
        state={"position": {"step": step}},
        optimizer=opt,
        rng_states=[ck.capture_rng_state()],
        **kw,
    )


def test_round_trip_is_bitwise(tmp_path):
    model, opt = _trained_pair()
    _save(tmp_path, model, opt, 3, ema_state={k: v * 2 for k, v in model.state_dict().items()})
    loaded = ck.load_checkpoint(ck.resolve_checkpoint(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model_state[k], v)
        assert torch.equal(loaded.ema_state[k], v * 2)
    model2, opt2 = _trained_pair(seed=1)
    model2.load_state_dict(loaded.model_state)
    opt2.load_state_dict(loaded.optimizer_state)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95)
    # one more identical step from both: the restored optimizer must behave bitwise the same
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_rng_states_round_trip():
    json_part, tensors = ck.capture_rng_state()
    json_part = json.loads(json.dumps(json_part))  # must survive JSON
    expected = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    random.random(), np.random.rand(), torch.rand(5)  # noqa: NPY002  (move every stream on)
    ck.restore_rng_state(json_part, tensors)
    got = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_best_shares_files_and_garbage_is_collected(tmp_path):
    model, opt = _trained_pair()
    _save(tmp_path, model, opt, 1)
    ck.link_checkpoint(tmp_path, "last", "best")
    _save(tmp_path, model, opt, 2)
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert any(n.startswith("step00000001") for n in names)  # kept: best.json names them
    assert any(n.startswith("step00000002") for n in names)
    ck.link_checkpoint(tmp_path, "last", "best")
    assert not any(p.name.startswith("step00000001") for p in tmp_path.glob("*"))


def test_truncated_or_edited_files_are_refused(tmp_path):
    model, opt = _trained_pair()
    manifest = _save(tmp_path, model, opt, 1)
    entry = json.loads(manifest.read_text())["files"]["model"]
    weights = tmp_path / entry["file"]
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt.*bytes"):
        ck.load_checkpoint(manifest)
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="sha256"):
        ck.load_checkpoint(manifest)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        ck.load_checkpoint(manifest)
    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.load_checkpoint(manifest)
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not a slab-edge training checkpoint"):
        ck.load_checkpoint(tmp_path / "other.json")
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.resolve_checkpoint(tmp_path / "nowhere")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ck.read_safetensors(tmp_path / "junk.safetensors")


def test_crash_before_the_manifest_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained_pair()
    _save(tmp_path, model, opt, 1)
    before = (tmp_path / "last.json").read_text()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for SIGKILL after the tensor files were written

    monkeypatch.setattr(ck, "atomic_write_json", crash)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, model, opt, 2)
    monkeypatch.undo()
    assert (tmp_path / "last.json").read_text() == before
    loaded = ck.load_checkpoint(tmp_path / "last.json")  # still complete and verified
    assert loaded.manifest["step"] == 1
    assert not torch.equal(loaded.model_state["0.weight"], model.state_dict()["0.weight"])
    _save(tmp_path, model, opt, 3)  # the next save collects the orphans of the crashed one
    assert not any(p.name.startswith("step00000002") for p in tmp_path.glob("*"))


def test_model_identity():
    ck.check_model_identity({"model": "a", "model_kwargs": {"x": 1}}, "a", {"x": 1}, "ckpt")
    with pytest.raises(CheckpointError, match="trained for model 'a', not 'b'"):
        ck.check_model_identity({"model": "a"}, "b", {}, "ckpt")
    with pytest.raises(CheckpointError, match="kwargs"):
        ck.check_model_identity({"model": "a", "model_kwargs": {"x": 1}}, "a", {"x": 2}, "ckpt")
