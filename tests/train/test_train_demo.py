"""`slab-edge demo` on a tiny model: train -> recalibrate -> fold -> save -> export -> build -> infer."""

from __future__ import annotations

import json

from slab_edge.cli import main as cli_main
from slab_edge.export.demo import DEPLOY_STEPS
from slab_edge.train.demo import DEMO_STEPS, run_demo
from slab_edge.train.model_files import load_model


def test_demo_command_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--output", str(out), "--no-progress", "--threads", "1"]
    for kv in ("model=slab_deit_digits", "batch_size=32", "max_steps=8", "plot=false"):
        argv += ["--set", kv]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    for name, _ in DEMO_STEPS + DEPLOY_STEPS:
        assert f"[demo] {name} ..." in text
    assert "parity: max |logit diff|" in text and "[demo]   time:" in text
    report = json.loads((out / "demo.json").read_text())
    facts = report["facts"]
    assert facts["fold_acc_diff"] <= 0.1 and facts["fold_logit_diff"] < 1e-3
    # the torch-free ONNX Runtime path classifies the held-out PNGs like the folded PyTorch model does
    assert abs(facts["acc_onnx_fp32"] - facts["acc_folded"]) <= 0.3
    assert {"onnx_fp32", "onnx_fp16", "onnx_int8"} <= set(report["paths"])
    assert "ONNX Runtime fp32 latency" in text
    _, meta = load_model(out / "deploy.safetensors")
    assert meta["deploy"] and meta["model"] == "slab_deit_digits"


def test_demo_steps_can_be_extended(tmp_path):
    seen = {}

    def extra(state):
        seen["deploy"] = state.paths["deploy"]
        return {"extra fact": 1}

    lines = []
    state = run_demo(
        tmp_path / "d",
        steps=[*DEMO_STEPS, ("export", extra)],
        say=lines.append,
        model="tiny_slab_test",
        input_size=16,
        batch_size=32,
        max_steps=4,
        progress=False,
        plot=False,
    )
    assert seen["deploy"].is_file() and "export" in state.timings
    assert "[demo]   extra fact: 1" in lines


def test_bad_training_key_leaves_no_demo_folder(tmp_path, capsys):
    assert cli_main(["demo", "--output", str(tmp_path / "demo"), "--set", "epochz=1"]) == 2
    assert "unknown config key 'epochz'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
