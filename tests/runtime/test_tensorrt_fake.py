"""TensorRT session against fake `tensorrt` / `tensorrt_rtx` / `cuda` / `pycuda` modules (no TensorRT here).

The fakes (fake_trt.py) follow the documented TensorRT 10 API, log every call and really move bytes, so
these tests check the call order, that every IO tensor gets an address, the numbers that come back,
buffer reuse and release, and the sidecar checks. `test_fake_matches_real_api` checks that every name
the session touched on the fakes exists in the real tensorrt_rtx and cuda-python modules when installed.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from fake_trt import CallLog, batch_of, make_cudart, write_engine
from runtime_helpers import LABELS, classifier_weights, reference_logits

from slab_edge.errors import BackendError, InputError
from slab_edge.runtime import load
from slab_edge.runtime.metadata import EngineSidecar, sidecar_path
from slab_edge.runtime.tensorrt_session import TensorRTSession, check_builder


def test_runs_the_documented_api_in_order_with_correct_numbers(fakes, tmp_path):
    engine = write_engine(tmp_path)
    weight, bias = classifier_weights()
    with load(engine) as session:
        assert isinstance(session, TensorRTSession) and session.backend == "tensorrt"
        assert [(s.name, s.shape, s.dtype) for s in session.inputs] == [
            ("image", (None, 3, 8, 8), np.dtype(np.float32))
        ]
        assert [(s.name, s.shape, s.dtype.name) for s in session.outputs] == [
            ("logits", (None, 5), "float32"),
            ("pooled", (None, 3), "float16"),
        ]
        assert session.metadata["labels"] == LABELS and session.metadata["input_size"] == [3, 8, 8]
        assert session.gpu == {"name": "Orin", "compute_capability": "8.7"}
        fakes.log.clear()
        batch = batch_of(2)
        out = session.run(batch)
    np.testing.assert_allclose(out["logits"], reference_logits(batch, weight, bias), atol=1e-5)
    np.testing.assert_allclose(out["pooled"], batch.mean(axis=(2, 3)), atol=2e-3)
    assert out["logits"].shape == (2, 5) and out["pooled"].dtype == np.float16

    log = fakes.log
    addressed = [entry[1] for entry in log if entry[0] == "set_tensor_address"]
    assert sorted(addressed) == ["image", "logits", "pooled"]
    h2d = [i for i, e in enumerate(log) if e[:2] == ("cudaMemcpyAsync", "cudaMemcpyHostToDevice")]
    d2h = [i for i, e in enumerate(log) if e[:2] == ("cudaMemcpyAsync", "cudaMemcpyDeviceToHost")]
    execute = log.first("execute_async_v3")
    assert log.first("set_input_shape") < log.first("set_tensor_address")
    assert max(h2d) < execute and log.last("set_tensor_address") < execute
    assert execute < min(d2h) and len(d2h) == 2
    assert log.last("cudaMemcpyAsync") < log.first("cudaStreamSynchronize")
    assert log[execute][1] == 0xBEEF  # the session's stream, as an int


def test_load_order_deserialize_then_context(fakes, tmp_path):
    with load(write_engine(tmp_path)):
        names = fakes.log.names()
    assert names.index("cudaSetDevice") < names.index("Runtime")
    assert (
        names.index("Runtime")
        < names.index("deserialize_cuda_engine")
        < names.index("create_execution_context")
    )


def test_dynamic_batch_reuses_and_grows_buffers(fakes, tmp_path):
    weight, bias = classifier_weights()
    with load(write_engine(tmp_path)) as session:
        for n in (1, 4, 2, 3):
            before = fakes.log.names().count("cudaMalloc")
            batch = batch_of(n, seed=n)
            out = session.run({"image": batch})
            np.testing.assert_allclose(out["logits"], reference_logits(batch, weight, bias), atol=1e-5)
            grew = fakes.log.names().count("cudaMalloc") - before
            assert grew == (3 if n in (1, 4) else 0), n  # batch 4 grows every tensor; 2 and 3 fit in it
            shapes = [e[2] for e in fakes.log if e[0] == "set_input_shape"]
            assert shapes[-1] == (n, 3, 8, 8)


def test_outputs_are_copies_not_views_of_pinned_memory(fakes, tmp_path):
    with load(write_engine(tmp_path)) as session:
        first = session.run(batch_of(1, seed=1))["logits"]
        kept = first.copy()
        session.run(batch_of(1, seed=2))
    np.testing.assert_array_equal(first, kept)


def test_close_frees_every_buffer_and_the_stream(fakes, tmp_path):
    session = load(write_engine(tmp_path))
    session.run(batch_of(2))
    assert fakes.cudart.live  # device + pinned buffers are held between runs
    session.close()
    assert fakes.cudart.live == {}
    assert "cudaStreamDestroy" in fakes.log.names()
    with pytest.raises(BackendError, match="closed"):
        session.run(batch_of(1))


def test_shape_outside_profile_and_wrong_dtype(fakes, tmp_path):
    with load(write_engine(tmp_path)) as session:
        with pytest.raises(
            InputError, match=r"outside the engine's optimization profile \[1, 3, 8, 8\] \.\. \[4, 3"
        ):
            session.run(batch_of(5))
        with pytest.raises(InputError, match="expected dtype float32, got float16"):
            session.run(batch_of(1).astype(np.float16))
        with pytest.raises(
            InputError, match=r"expected shape image\[\?, 3, 8, 8\] float32, got \[1, 3, 9, 8\]"
        ):
            session.run(np.zeros((1, 3, 9, 8), np.float32))


def test_version_mismatch_fails_before_touching_the_gpu(fakes, tmp_path):
    engine = write_engine(tmp_path, version="10.7.0.23")
    with pytest.raises(
        BackendError, match=r"built with tensorrt 10\.7\.0\.23 but the running tensorrt is 10\.3\.0\.30"
    ):
        load(engine)
    assert "deserialize_cuda_engine" not in fakes.log.names() and "cudaSetDevice" not in fakes.log.names()


def test_gpu_mismatch_names_both_gpus(fakes, tmp_path):
    engine = write_engine(tmp_path, cc="8.6", gpu="NVIDIA GeForce RTX 3090")
    with pytest.raises(
        BackendError, match=r"RTX 3090 \(compute capability 8\.6\) but this GPU is Orin \(compute capa"
    ):
        load(engine)
    assert "deserialize_cuda_engine" not in fakes.log.names()
    assert fakes.cudart.live == {}


def test_same_capability_other_gpu_name_only_warns(fakes, tmp_path):
    with (
        pytest.warns(UserWarning, match="built on Jetson AGX Orin, running on Orin"),
        load(write_engine(tmp_path, gpu="Jetson AGX Orin")) as session,
    ):
        session.run(batch_of(1))


def test_flavour_mismatch_names_both(fakes, tmp_path):
    engine = write_engine(tmp_path, flavour="tensorrt_rtx", version="1.7.1.116")
    with pytest.raises(
        BackendError, match=r"built by tensorrt_rtx 1\.7\.1\.116 but this runtime uses tensorrt 10\.3"
    ):
        load(engine, module="tensorrt")


def test_tensorrt_rtx_engine_uses_tensorrt_rtx(fakes, tmp_path):
    engine = write_engine(tmp_path, flavour="tensorrt_rtx", version="1.7.1.116", cc="none", gpu="none")
    with load(engine) as session:
        assert session.flavour == "tensorrt_rtx" and session.trt is fakes.rtx
        assert session.run(batch_of(1))["logits"].shape == (1, 5)
    assert ("module", "Runtime") in fakes.rtx.used and ("module", "Runtime") not in fakes.trt.used


def test_version_compatible_engines(fakes, tmp_path):
    side = EngineSidecar({"flavour": "tensorrt", "version": "10.3.0"}, {}, "fp16", [], options={})
    with pytest.raises(BackendError, match="only on the TensorRT version that built them"):
        check_builder(side, "tensorrt", "10.8.0.1")
    side.options["version_compatible"] = True
    check_builder(side, "tensorrt", "10.8.0.1")
    check_builder(side, "tensorrt", "10.3.0.30")
    with pytest.raises(BackendError, match="same major version"):
        check_builder(side, "tensorrt", "11.0.0.1")
    with pytest.raises(BackendError, match="same major version"):
        check_builder(side, "tensorrt", "10.2.9")
    engine = write_engine(tmp_path, version="10.0.1", options={"version_compatible": True})
    with load(engine) as session:
        session.run(batch_of(1))
    names = fakes.log.names()
    assert ("engine_host_code_allowed", True) in fakes.log
    assert names.index("engine_host_code_allowed") < names.index("deserialize_cuda_engine")


def test_version_compatible_without_lean_runtime(fakes, tmp_path):
    options = {"version_compatible": True, "exclude_lean_runtime": True}
    engine = write_engine(tmp_path, version="10.0.1", options=options)
    with pytest.raises(BackendError, match="lean_runtime="):
        load(engine)
    with load(engine, lean_runtime="/opt/trt/libnvinfer_lean.so.10") as session:
        assert session.run(batch_of(1))["logits"].shape == (1, 5)
    names = fakes.log.names()
    assert ("load_runtime", "/opt/trt/libnvinfer_lean.so.10") in fakes.log
    assert names.index("load_runtime") < names.index("deserialize_cuda_engine")


def test_missing_sidecar(fakes, tmp_path):
    engine = write_engine(tmp_path, sidecar=False)
    with pytest.raises(BackendError, match=r"no sidecar model\.engine\.json beside the engine"):
        load(engine)
    with load(engine, check_sidecar=False) as session:  # explicit opt-out: runs, no metadata
        assert session.metadata == {}
        assert session.run(batch_of(1))["logits"].shape == (1, 5)


def test_corrupt_sidecar_and_corrupt_engine(fakes, tmp_path):
    engine = write_engine(tmp_path, data=b"garbage")
    with pytest.raises(BackendError, match="could not deserialize"):
        load(engine)
    assert fakes.cudart.live == {}
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(BackendError, match="sidecar is not valid JSON"):
        load(engine)


def test_plan_suffix_and_dla_core_set_before_deserializing(fakes, tmp_path):
    engine = write_engine(tmp_path, name="model.plan", options={"dla_core": 1})
    with load(engine):
        names = fakes.log.names()
    assert ("DLA_core", 1) in fakes.log
    assert names.index("DLA_core") < names.index("deserialize_cuda_engine")
    fakes.log.clear()
    with load(engine, dla_core=0):  # the same DLA engine on the other core
        assert ("DLA_core", 0) in fakes.log


def test_execute_failure_and_cuda_errors_raise(fakes, tmp_path):
    with load(write_engine(tmp_path)) as session:
        fakes.trt.execute_result = False
        with pytest.raises(BackendError, match="execute_async_v3 failed"):
            session.run(batch_of(1))
    failing = make_cudart(CallLog(), fail_malloc=True)
    fakes.monkeypatch.setattr(sys.modules["cuda.bindings"], "runtime", failing)
    fakes.trt.execute_result = True
    with (
        load(write_engine(tmp_path)) as session,
        pytest.raises(BackendError, match="cudaErrorMemoryAllocation"),
    ):
        session.run(batch_of(1))


def test_tensor_type_numpy_cannot_hold(fakes, tmp_path):
    mode, _, shape = fakes.trt.tensors["pooled"]
    fakes.trt.tensors["pooled"] = (mode, fakes.trt.DataType.BF16, shape)
    with pytest.raises(BackendError, match="'pooled' has type .*BF16.* numpy cannot hold"):
        load(write_engine(tmp_path))


def test_pycuda_memory(fakes, tmp_path):
    weight, bias = classifier_weights()
    with load(write_engine(tmp_path), memory="pycuda") as session:
        batch = batch_of(3)
        out = session.run(batch)
        np.testing.assert_allclose(out["logits"], reference_logits(batch, weight, bias), atol=1e-5)
    names = fakes.log.names()
    assert "cudaSetDevice" not in names and "make_context" in names
    assert (
        names.index("memcpy_htod_async") < names.index("execute_async_v3") < names.index("memcpy_dtoh_async")
    )
    assert names[-1] == "context.pop" and fakes.driver.live == {}


def test_unknown_options_and_memory_backend(fakes, tmp_path):
    engine = write_engine(tmp_path)
    with pytest.raises(InputError, match="unknown TensorRT session option"):
        load(engine, threads=2)
    with pytest.raises(BackendError, match="unknown memory back end"):
        load(engine, memory="cupy")


def test_tensorrt_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(BackendError, match="python3-libnvinfer"):
        load(write_engine(tmp_path))


def test_real_cuda_python_without_gpu_is_a_clear_error():
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    err, count = cudart.cudaGetDeviceCount()
    if err == cudart.cudaError_t.cudaSuccess and count > 0:
        pytest.skip("a GPU is present; this checks the no-GPU error path")
    from slab_edge.runtime.cuda_memory import CudaMemory

    with pytest.raises(BackendError, match=r"CUDA error cudaError\w+ \(\d+\)"):
        CudaMemory(0)


def test_fake_matches_real_api(fakes, tmp_path, plugin_libraries):
    """Every TensorRT / cuda-python name the session used on the fakes exists in the real modules."""
    options = {"dla_core": 0, "version_compatible": True, "exclude_lean_runtime": True}
    plugin = {
        "library": "libplugin.so",
        "plugins": [{"name": "SlabLinearAttention", "version": "1", "namespace": "slab"}],
    }
    engine = write_engine(tmp_path, version="10.0", options=options, plugins=[plugin])
    with load(engine, lean_runtime="lean.so", plugin=plugin_libraries.plugin) as session:
        session.run(batch_of(2))
    used_trt, used_cuda = set(fakes.trt.used), set(fakes.cudart.used)
    assert {("IPluginRegistry", "load_library"), ("IPluginRegistry", "get_creator")} <= used_trt
    assert ("IExecutionContext", "execute_async_v3") in used_trt and (
        "module",
        "cudaMemcpyAsync",
    ) in used_cuda
    fakes.monkeypatch.undo()  # the real modules from here on
    checked = 0
    try:
        import tensorrt_rtx as real_trt
    except Exception:
        real_trt = None
    if real_trt is not None:
        for kind, name in sorted(used_trt):
            owner = real_trt if kind == "module" else getattr(real_trt, kind)
            assert hasattr(owner, name), f"tensorrt_rtx.{kind}.{name} does not exist"
        checked += 1
    try:
        from cuda.bindings import runtime as real_cudart
    except Exception:
        real_cudart = None
    if real_cudart is not None:
        for _, name in sorted(used_cuda):
            assert hasattr(real_cudart, name), f"cuda.bindings.runtime.{name} does not exist"
        checked += 1
    if not checked:
        pytest.skip("neither tensorrt_rtx nor cuda-python is installed to check the fakes against")


def test_sidecar_for_a_trtexec_engine(fakes, tmp_path, tiny_onnx, capsys):
    from slab_edge.runtime import read_model_metadata
    from slab_edge.runtime.sidecar import main as sidecar_main

    engine = write_engine(tmp_path, sidecar=False)
    assert (
        sidecar_main([str(engine), "--onnx", str(tiny_onnx), "--precision", "fp16", "--dla-core", "1"]) == 0
    )
    assert "model.engine.json" in capsys.readouterr().out
    side = json.loads(sidecar_path(engine).read_text())
    assert side["builder"] == {"flavour": "tensorrt", "version": "10.3.0.30"}
    assert side["gpu"] == {"name": "Orin", "compute_capability": "8.7"}
    assert side["profiles"] == [{"image": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [4, 3, 8, 8]}}]
    assert side["options"]["dla_core"] == 1 and side["precision"] == "fp16" and len(side["onnx_sha256"]) == 64
    with load(engine) as session:  # the checks pass and the ONNX metadata comes along
        assert session.metadata == read_model_metadata(tiny_onnx)
    assert sidecar_main([str(tmp_path / "none.engine"), "--onnx", str(tiny_onnx), "--precision", "fp16"]) == 2
    assert "file not found" in capsys.readouterr().err
