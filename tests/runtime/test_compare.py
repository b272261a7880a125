"""`slab-edge compare` between runtime backends (torch-free part) and slab_edge.runtime.compare maths."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from runtime_helpers import make_classifier

from slab_edge import cli
from slab_edge.errors import InputError
from slab_edge.runtime.compare import (
    Runner,
    compare_arrays,
    compare_runners,
    default_tolerance,
    model_precision,
    resolve_tolerance,
)
from slab_edge.runtime.metadata import EngineSidecar
from slab_edge.runtime.session import TensorSpec


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


@pytest.mark.parametrize(
    ("pair", "scale", "min_top1"),
    [
        (("fp32", "fp32"), 1e-4, None),
        (("fp32", "fp16"), 1e-2, None),
        (("fp16", "fp32"), 1e-2, None),  # the coarser side sets it, whichever is the reference
        (("fp32", "tf32"), 1e-2, None),
        (("fp16", "int8"), 0.5, 0.8),
        (("fp32", "strongly-typed"), 1e-4, None),  # unknown names count as fp32
    ],
)
def test_default_tolerance_by_precision_pair(pair, scale, min_top1):
    tol = default_tolerance(*pair, max_abs_reference=4.0)
    assert tol.atol == pytest.approx(scale * 4.0) and tol.rtol == 0.0 and tol.min_top1 == min_top1
    assert tol.reason.startswith(f"default for {pair[0]} vs {pair[1]}: {scale:g} x max|ref| (4)")


def test_explicit_tolerances_win():
    given = resolve_tolerance(1e-3, None, None, "fp32", "int8", 4.0)
    assert (given.atol, given.rtol, given.min_top1) == (1e-3, 0.0, None)
    assert given.reason == "given: atol 0.001, rtol 0"
    assert resolve_tolerance(None, 1e-2, 0.99, "fp32", "fp32", 4.0).to_json() == {
        "atol": 0.0, "rtol": 1e-2, "min_top1": 0.99, "reason": "given: atol 0, rtol 0.01, top-1 >= 0.99"
    }  # fmt: skip
    # --min-top1 alone: the default value bound stays, the given top-1 floor replaces the default one
    gated = resolve_tolerance(None, None, 0.95, "fp32", "int8", 4.0)
    assert (gated.atol, gated.min_top1) == (2.0, 0.95) and gated.reason.endswith("top-1 >= 0.95 given")


def _session(metadata=None, dtype=np.float32, sidecar=None, providers=None, provider_options=None):
    spec = TensorSpec("image", (None, 3, 32, 32), np.dtype(dtype))
    return SimpleNamespace(metadata=metadata or {}, inputs=[spec], input=spec, sidecar=sidecar,
                           providers=providers, provider_options=provider_options)  # fmt: skip


def _cuda_session(use_tf32: str):
    options = {"CUDAExecutionProvider": {"use_tf32": use_tf32}}
    return _session({"precision": "fp32"}, providers=["CUDAExecutionProvider"], provider_options=options)


def _sidecar(precision):
    return EngineSidecar({"flavour": "tensorrt", "version": "10.3.0"}, {}, precision, [])


@pytest.mark.parametrize(
    ("session", "precision", "source"),
    [
        (_session({"precision": "fp16"}), "fp16", "metadata"),
        (_session({"precision": "int8"}), "int8", "metadata"),
        (_session({"precision": "bf17"}), "fp32", "metadata precision 'bf17' not known: taken for fp32"),
        (_session({}, dtype=np.float16), "fp16", "no precision metadata; fp16 input"),
        (_session({}), "fp32", "no precision metadata: taken for fp32"),
        # engines: the sidecar's precision wins (a TensorRT 10 fp16 build of an fp32 ONNX)
        (_session({"precision": "fp32"}, sidecar=_sidecar("fp16")), "fp16", "engine sidecar"),
        (_session({"precision": "int8"}, sidecar=_sidecar("strongly-typed")), "int8", "metadata"),
        (_session({"precision": "fp32"}, sidecar=_sidecar("fp32")), "tf32", "engine sidecar: fp32, and"),
        # ONNX Runtime CUDA: TF32 unless use_tf32=0
        (_cuda_session("1"), "tf32", "metadata: fp32, and"),
        (_cuda_session("0"), "fp32", "metadata"),
        (_session({"precision": "fp32"}, providers=["CPUExecutionProvider"]), "fp32", "metadata"),
    ],
)  # fmt: skip
def test_model_precision_from_metadata_with_fallbacks(session, precision, source):
    got, where = model_precision(session)
    assert got == precision and where.startswith(source)


def test_defaults_follow_the_precisions_of_each_pair():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((16, 10)) * 3  # max|ref| about 8
    noise = rng.standard_normal(base.shape)
    runners = [
        Runner("fp32", lambda x: base),
        Runner("fp32 reorder", lambda x: base + 1e-6 * noise),
        Runner("fp16", lambda x: base + 2e-3 * noise, precision="fp16"),  # within 1e-2 x max|ref|
        Runner("fp32 as fp16", lambda x: base + 2e-3 * noise),  # the same error, but claims fp32
        Runner("int8", lambda x: base + 0.2 * noise, precision="int8"),
    ]
    report = compare_runners(runners, np.zeros((16, 1)))
    assert [r["passed"] for r in report["results"]] == [True, True, False, True]
    assert [r["precision"] for r in report["results"]] == ["fp32", "fp16", "fp32", "int8"]
    assert report["tolerances"] == {"atol": None, "rtol": None, "min_top1": None}
    reasons = [r["tolerance"]["reason"] for r in report["results"]]
    assert reasons[1].startswith("default for fp32 vs fp16: 0.01 x max|ref|")
    assert reasons[3].startswith("default for fp32 vs int8: 0.5 x max|ref|") and "top-1 >= 0.8" in reasons[3]
    # explicit tolerances win over the precision defaults
    tight = compare_runners(runners[:3], np.zeros((16, 1)), atol=1e-4, rtol=0)
    assert [r["passed"] for r in tight["results"]] == [True, False]


def test_int8_default_still_fails_a_real_mismatch():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((32, 10))
    other = rng.standard_normal((32, 10))  # other weights: errors about max|ref|, chance-level top-1
    small = base + 0.05 * rng.standard_normal(base.shape)
    shuffled = base[:, ::-1].copy()  # same values, other classes: the bound may pass, the top-1 floor not
    runners = [Runner("ref", lambda x: base)] + [
        Runner(name, lambda x, out=out: out, precision="int8")
        for name, out in (("close", small), ("other", other), ("shuffled", shuffled))
    ]
    results = compare_runners(runners, np.zeros((32, 1)))["results"]
    assert [r["passed"] for r in results] == [True, False, False]
    assert results[2]["top1_agreement"] < 0.8


def test_cli_prints_the_tolerance_and_why(tiny_onnx, capsys):
    same = make_classifier(tiny_onnx.with_name("same_weights.onnx"), seed=0)
    assert cli.main(["compare", str(tiny_onnx), str(same), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "tolerance atol" in out and "(default for fp32 vs fp32: 0.0001 x max|ref|" in out
    assert cli.main(["compare", str(tiny_onnx), str(same), "--atol", "1e-3", "--threads", "1"]) == 0
    assert "(given: atol 0.001, rtol 0)" in capsys.readouterr().out
