"""Smoke runs of the benchmark scripts (tiny sizes, few iterations): they run end to end and write JSON.

The numbers they produce here mean nothing (tiny sizes); the real runs and results are in bench/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_lm_decode_smoke(tmp_path):
    out = tmp_path / "decode"
    proc = run(
        "lm_decode.py", "--smoke", "--out", str(out), "--attentions", "sla", "softmax", "--threads", "1"
    )
    results = json.loads((out / "results.json").read_text())
    rows = results["decode"]["tiny"]["contexts"]
    assert set(rows) == {"16", "64"}
    sla, softmax = rows["64"]["sla"], rows["64"]["softmax"]
    assert sla["state_bytes"] == rows["16"]["sla"]["state_bytes"]  # constant-size state
    assert softmax["state_bytes"] > rows["16"]["softmax"]["state_bytes"]  # the KV cache grows
    assert sla["ideal_speedup"] > 1.0 and sla["speedup"] > 0 and "fraction_of_ideal" in sla
    assert "ratio" in results["norm"]["tiny"]["sla"]  # folded PRepBN vs RMSNorm
    assert "of the ideal speedup" in proc.stdout


def test_lm_train_gpu_smoke_on_cpu(tmp_path):
    out = tmp_path / "train"
    args = ["--smoke", "--device", "cpu", "--fp32", "--threads", "1", "--out", str(out)]
    run("lm_train_gpu.py", *args, "--attentions", "softmax", "gla", "sla/padded_conv", "--rounds", "2")
    results = json.loads((out / "results.json").read_text())
    rows = [r for r in results["rows"] if "skipped" not in r]
    assert {r["attention"] for r in rows} == {"softmax", "gla", "sla/padded_conv"}
    assert {r["length"] for r in rows} == {64, 128}
    assert all(r["tokens_per_s"] > 0 and len(r["round_median_step_s"]) == 2 for r in rows)
    assert all("speedup_vs_softmax" in r for r in rows if r["attention"] != "softmax")


def test_lm_train_gpu_swaps_sla_pieces_into_their_modules_and_back(monkeypatch):
    """sla/scan_divide+cudnn_conv replaces the functions the fla path looks up (in their own modules, not the
    package's re-exports) for the duration of a step, then restores them; clashing pieces are refused."""
    pytest.importorskip("triton", reason="the Triton division's module imports triton")
    import importlib

    monkeypatch.syspath_prepend(str(BENCH))  # as when run as a script: it imports sla_pieces_gpu by name
    bench = importlib.import_module("lm_train_gpu")
    ops = importlib.import_module("slab_edge.ops.causal_sla")
    kernels = importlib.import_module("slab_edge.ops.causal_sla_triton")
    before = (kernels.divide_by_normalizer_triton, ops.causal_conv1d_fla)
    with bench.sla_variant(bench.sla_pieces("sla/scan_divide+cudnn_conv")):
        inside = (kernels.divide_by_normalizer_triton, ops.causal_conv1d_fla)
    assert [f.__name__ for f in inside] == ["scan_divide_by_normalizer", "cudnn_conv"]
    assert (kernels.divide_by_normalizer_triton, ops.causal_conv1d_fla) == before
    with pytest.raises(ValueError, match="same function"):
        bench.sla_pieces("sla/cudnn_conv+padded_conv")


def test_lm_quality_smoke(tmp_path):
    out = tmp_path / "quality"
    variants = ["gla:prepbn", "sla/LS:rmsnorm"]  # a pure row and a 1:1 sla:softmax hybrid row
    run("lm_quality.py", "--smoke", "--out", str(out), "--variants", *variants, "--threads", "1")
    results = json.loads((out / "results.json").read_text())
    assert [row["variant"] for row in results["rows"]] == variants
    assert results["model_kwargs"]["num_layers"] == 2
    for row, folder in zip(results["rows"], ("gla-prepbn", "sla-LS-rmsnorm")):
        assert row["steps"] >= 1 and 0 < row["val_bpb"] < 16 and (out / folder / "metrics.jsonl").is_file()
    from slab_edge.train.lm import load_lm

    hybrid, meta, _ = load_lm(out / "sla-LS-rmsnorm")
    assert meta["attention_pattern"] == "LS" and hybrid.config.layer_attention() == ("sla", "softmax")


def test_sla_pieces_smoke_on_cpu(tmp_path):
    out = tmp_path / "pieces.json"
    run("sla_pieces_gpu.py", "--smoke", "--device", "cpu", "--out", str(out))
    results = json.loads(out.read_text())
    assert results["backend"] == "chunk" and [r["length"] for r in results["rows"]] == [64, 128]
    pieces = ("numerator", "normalizer", "normalizer_outer", "causal_conv", "layer", "gla_layer")
    assert all(r[p] > 0 for r in results["rows"] for p in pieces)


def test_ort_gpu_pipeline_on_cpu(tmp_path):
    """bench/ort_gpu.py end to end on the CPU provider (the GPU run needs onnxruntime-gpu and a GPU)."""
    out = tmp_path / "ort.json"
    run("ort_gpu.py", "--device", "cpu", "--iters", "1", "--batches", "1", "--out", str(out))
    results = json.loads(out.read_text())
    assert set(results) >= {"fp32", "fp16", "torch_fp32_eager"} and "fp32_no_tf32" not in results
    assert results["fp32"]["bs1"]["max_abs_err"] <= 1e-4 and results["fp32"]["bs1"]["top1_agree"] == 1.0


def test_vision_suite_smoke(tmp_path, ort_ops_library):
    """bench/vision_suite.py --smoke: one-block models at 224/256, export, torch-free timing, plot, JSON; the
    custom-op row (issue 13) at 224 with the built slab library."""
    out = tmp_path / "vision"
    proc = run("vision_suite.py", "--smoke", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    assert (out / "latency_vs_resolution.png").stat().st_size > 0
    assert "SLAB-DeiT-T / DeiT-T latency" in proc.stdout
    assert [r["img_size"] for r in results["resolution"]] == [224, 256]
    row = results["resolution"][0]
    assert row["slab"]["iters"] == row["deit"]["iters"] == 2 and row["latency_ratio_p50"] > 0
    assert 0 < row["flop_ratio"] < 1  # SLA's counted FLOPs below softmax attention's at 224
    assert {"slab", "deit", "gemm_ceiling_gflops"} <= set(results["gflops_bs8_224"])
    (custom,) = results["custom_ops"]["resolution"]
    assert custom["img_size"] == 224 and custom["custom"]["custom_op_library"] == str(ort_ops_library)
    assert custom["standard"]["custom_op_library"] is None and custom["custom_vs_deit_p50"] > 0


def test_lm_decode_torch_smoke_on_cpu(tmp_path):
    out = tmp_path / "decode_torch"
    proc = run("lm_decode_torch.py", "--smoke", "--device", "cpu", "--threads", "1", "--attentions", "sla",
               "--variants", "eager", "static", "graph", "compile", "--budget-minutes", "1e-6",
               "--out", str(out))  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    (row,) = results["rows"]  # the compiled group's row is over the budget before it starts
    assert [(r["group"], r["attention"]) for r in results["skipped_rows"]] == [("compiled", "sla")]
    assert row["group"] == "uncompiled" and set(row["variants"]) == {"eager", "static"}
    assert row["skipped"] == {"graph": "needs CUDA"} and "graph            skipped: needs CUDA" in proc.stdout
    for v in row["variants"].values():
        assert v["rmsnorm_ms"] > 0 and v["prepbn_ms"] > 0 and 0 < v["rmsnorm_ceiling_share"] < 1
    assert row["ceiling_tokens_per_s"]["rmsnorm"] == 4.8e12 / row["weight_bytes"]["rmsnorm"]
    static = row["greedy_vs_eager"]["static"]
    assert all(g["tokens_identical"] and g["logits_rel_err"] <= 1e-5 for g in static.values())
    assert row["fold_ok"] and row["fold_rel_err_cpu_fp32"] <= 1e-5 and "PRepBN/RMSNorm" in proc.stdout


def test_vision_gpu_smoke_on_cpu(tmp_path):
    """bench/vision_gpu.py end to end on the CPU: micro rows, one eager group per family, the table, JSON."""
    out = tmp_path / "vision_gpu"
    proc = run("vision_gpu.py", "--smoke", "--device", "cpu", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    groups = {(r["family"], r["mode"]): r for r in results["groups"]}
    assert set(groups) == {("deit", "eager"), ("swin", "eager")}
    for row in groups.values():
        assert all(row[m]["img_per_s"] > 0 for m in ("slab", "slab_unfused", "timm"))
        assert row["fused_vs_unfused_rel_err"] <= 1e-5  # the fused path (CPU reference op) ran and agrees
        assert row["slab_vs_timm"] > 0 and "goal" not in row  # no goals on smoke sizes
    (micro,) = results["micro"]
    assert {"fused_eager_us", "matmul_eager_us", "sdpa_eager_us"} <= set(micro)
    assert "slab/timm" in proc.stdout and "micro tiny" in proc.stdout


def test_lm_ort_ops_smoke(tmp_path):
    """bench/lm_ort_ops.py --smoke: standard vs --ops ort exports of one model, prefill and decode timed."""
    out = tmp_path / "ort_ops"
    proc = run("lm_ort_ops.py", "--smoke", "--out", str(out), "--attentions", "sla", "--threads", "1")
    results = json.loads((out / "results.json").read_text())
    block = results["models"]["tiny_sla"]
    assert block["graph_ops"] == {"standard": "standard", "ort": "ort"}
    rows = block["contexts"]
    assert set(rows) == {"16", "80"}
    for row in rows.values():
        assert row["logits_max_abs"] <= 1e-3  # the two graphs are one model
        assert row["prefill_ratio"] > 0 and row["decode_ratio"] > 0
        assert row["ort"]["prefill_tokens_per_s"] > 0 and row["standard"]["decode_ms"] > 0
    # constant-size states; packing S [d, d] and z [d] into Sz [d, d + 1] keeps the bytes
    assert rows["16"]["ort"]["state_bytes"] == rows["80"]["ort"]["state_bytes"]
    assert rows["16"]["ort"]["state_bytes"] == rows["16"]["standard"]["state_bytes"]
    assert "ort/std" in proc.stdout
