"""`slab-edge compare` between runtime backends (torch-free part) and slab_edge.runtime.compare maths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_helpers import make_classifier

from slab_edge import cli
from slab_edge.errors import InputError
from slab_edge.runtime.compare import Runner, compare_arrays, compare_runners


def test_compare_arrays_maths():
    ref = np.array([[1.0, -2.0, 0.0], [0.5, 0.1, 0.2]])
    got = ref + np.array([[1e-5, 0, 2e-6], [0, 0.5, 0]])
    stats = compare_arrays(ref, got, atol=1e-4, rtol=0)
    assert stats["max_abs"] == pytest.approx(0.5) and stats["worst_index"] == [1, 1]
    assert stats["max_rel"] == pytest.approx(5.0)  # 0.5 / 0.1
    assert stats["top1_agreement"] == 0.5  # row 2's arg-max moves from index 0 to 1
    assert stats["allclose"] is False
    assert compare_arrays(ref, got, atol=0.55, rtol=0)["allclose"] is True
    # zero reference: relative error uses a floor, not a division by zero
    assert np.isfinite(compare_arrays(ref, got, 1, 1)["max_rel"])
    assert compare_arrays(ref, ref * np.nan, 1, 1)["allclose"] is False
    with pytest.raises(InputError, match="shapes differ"):
        compare_arrays(ref, ref[:1], 1, 1)


def test_compare_runners_pass_fail_and_top1_gate():
    base = np.random.default_rng(0).standard_normal((6, 4))
    runners = [
        Runner("ref", lambda x: base),
        Runner("close", lambda x: base + 1e-6),
        Runner("far", lambda x: base + 1.0),
    ]
    report = compare_runners(runners, np.zeros((6, 1)), atol=1e-4, rtol=0)
    assert report["reference"] == "ref" and [r["passed"] for r in report["results"]] == [True, False]
    assert report["passed"] is False
    # a constant shift keeps every argmax: top-1 agreement 100% even though values fail
    assert report["results"][1]["top1_agreement"] == 1.0
    gated = compare_runners(runners[:2], np.zeros((6, 1)), atol=1e-4, rtol=0, min_top1=1.0)
    assert gated["passed"] is True
    with pytest.raises(InputError, match="at least two"):
        compare_runners(runners[:1], np.zeros((1, 1)))


def test_cli_onnx_vs_onnx_same_model_passes(tiny_onnx, fixed_batch_onnx, image_dir, capsys, tmp_path):
    target = tmp_path / "cmp.json"
    # same weights, one dynamic and one fixed-batch graph: identical maths, must agree tightly
    argv = ["compare", str(tiny_onnx), str(fixed_batch_onnx), "--images", str(image_dir), "--json",
            "--output", str(target), "--threads", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report == json.loads(target.read_text())
    assert report["passed"] and report["inputs"]["shape"] == [3, 3, 32, 32]
    assert report["inputs"]["source"] == "3 images" and captured.err.count("warning: skipped") == 2
    assert report["results"][0]["max_abs"] < 1e-5 and report["results"][0]["top1_agreement"] == 1.0


def test_cli_different_weights_fail_with_exit_1(tiny_onnx, tiny_onnx_b2, capsys):
    argv = ["compare", str(tiny_onnx), str(tiny_onnx_b2), "--random", "4", "--seed", "3"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out.splitlines()[-1] and "max|diff|" in out


def test_cli_loose_tolerance_passes(tmp_path, tiny_onnx, capsys):
    near = make_classifier(tmp_path / "near.onnx", seed=0)  # same weights as tiny_onnx
    assert cli.main(["compare", str(tiny_onnx), str(near), "--atol", "0", "--rtol", "0"]) == 0
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{m}"], "needs two backends"),
        (["{m}", "{m}", "--checkpoint", "x.pt"], "--checkpoint belongs to --torch"),
        (["{m}", "{m}", "--random", "0"], "argument --random: must be a positive integer, got 0"),
        (["{m}", "--torch", "slab_deit_tiny_patch16_224", "--model-kwargs", "[bad"], "not valid JSON"),
    ],
)
def test_cli_errors(tiny_onnx, capsys, argv, message):
    argv = [a.replace("{m}", str(tiny_onnx)) for a in argv]
    assert cli.main(["compare", *argv]) == 2
    assert message in capsys.readouterr().err
