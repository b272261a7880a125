"""torchrun: a 2-process gloo run on CPU follows the 1-process run with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

from train_fixtures import TINY, subprocess_env, tiny_config

from slab_edge.train.vision import train_vision

WORKER = """
import json, sys, torch
torch.set_num_threads(1)
import train_fixtures  # registers tiny_slab_test
from slab_edge.train.distributed import cleanup_distributed
from slab_edge.train.recipes import resolve_train_config
from slab_edge.train.vision import train_vision

for values in json.loads(sys.argv[1]):  # several runs share one process group (as --ablation does)
    train_vision(resolve_train_config(cli_values=values))
cleanup_distributed()
"""

# No random augmentation (full-image crops), so both runs see identical pixels in identical order.
BASE = dict(
    TINY,
    max_steps=12,
    log_every=1,
    scale=[1.0, 1.0],
    ratio=[1.0, 1.0],
    recal_steps=0,
    eval_every=0,
    deploy=False,
    threads=1,
    batch_size=32,
)


def _train_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if json.loads(x)["kind"] == "train"]


def test_two_gloo_processes_match_one_process(tmp_path):
    variants = {"layernorm": 1e-4, "prepbn": 0.1}
    two = [
        dict(BASE, model_kwargs={"norm_type": n}, batch_size=16, output=str(tmp_path / f"two_{n}"))
        for n in variants
    ]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        json.dumps(two),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and "global batch 32" in proc.stdout
    for name, tol in variants.items():
        one = tiny_config(
            tmp_path, **dict(BASE, model_kwargs={"norm_type": name}, output=str(tmp_path / f"one_{name}"))
        )
        train_vision(one)
        a, b = _train_losses(tmp_path / f"one_{name}"), _train_losses(tmp_path / f"two_{name}")
        assert len(a) == len(b) == 12  # rank 0 alone wrote the metrics
        gap = max(abs(x - y) for x, y in zip(a, b))
        # LayerNorm: identical maths up to float summation order. Progressive norm: each rank's BatchNorm
        # normalizes with its own half-batch statistics (no SyncBN, as in the official recipe).
        assert gap < tol, (name, gap, a, b)
        assert a[-1] < a[0] + 0.5
