"""Non-finite guard: bad updates are skipped (no step, no schedule advance) and logged; K in a row stop."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import tiny_config

from slab_edge.cli import main as cli_main
from slab_edge.layers.norms import progressive_norms
from slab_edge.train import vision
from slab_edge.train.guard import NonFiniteError, NonFiniteGuard


def test_guard_unit():
    guard = NonFiniteGuard(patience=3)
    assert not guard.check(1.0, 2.0, step=0).skip
    assert guard.check(float("nan"), 1.0, step=1).skip
    assert guard.check(1.0, float("inf"), step=1).skip
    assert not guard.check(1.0, 1.0, step=1).skip  # a good update resets the count
    assert guard.consecutive == 0 and guard.total_skipped == 2
    guard.check(float("nan"), None, step=2)
    guard.check(float("nan"), None, step=2)
    with pytest.raises(NonFiniteError, match=r"step 2: 3 consecutive.*mix weight 0\.2500, lr 0\.001"):
        guard.check(float("nan"), None, step=2, mix_weight=0.25, lr=1e-3)


def _poison(monkeypatch, bad_calls):
    """Make the training loss NaN on the given (0-based) criterion calls."""
    real = vision._criterion

    def fake(cfg, num_classes, batch_size):
        mixup, loss_fn = real(cfg, num_classes, batch_size)
        calls = {"n": 0}

        def poisoned(output, target):
            loss = loss_fn(output, target)
            i = calls["n"]
            calls["n"] += 1
            return loss * float("nan") if bad_calls(i) else loss

        return mixup, poisoned

    monkeypatch.setattr(vision, "_criterion", fake)


def test_skipped_updates_take_no_step(tmp_path, monkeypatch):
    _poison(monkeypatch, lambda i: i in (3, 4))
    cfg = tiny_config(tmp_path, max_steps=10, recal_steps=0, deploy=False, eval_every=0, log_every=1)
    result = vision.train_vision(cfg)
    assert result.skipped_updates == 2
    assert result.steps == 8  # 10 updates attempted, 2 skipped
    assert all(int(n.step) == 8 for n in progressive_norms(result.model))  # schedule advanced only on steps
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    skips = [r for r in records if r["kind"] == "event" and r["event"] == "skipped_update"]
    assert [r["step"] for r in skips] == [3, 3] and all("loss=nan" in r["reason"] for r in skips)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_k_bad_updates_stop_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, lambda i: i >= 5)
    out = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "tiny_slab_test",
        "--input-size",
        "16",
        "--batch-size",
        "32",
        "--max-steps",
        "20",
        "--nonfinite-patience",
        "3",
        "--output",
        str(out),
        "--no-progress",
        "--recal-steps",
        "0",
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.startswith("warning: skipped update at step 5") for line in err] == [True, True, False]
    assert err[-1].startswith("slab-edge train: error: stopped at optimizer step 5: 3 consecutive non-finite")
    assert "mix weight" in err[-1] and "lr " in err[-1]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "stopped"
