"""slab_edge.runtime.custom_ops: ONNX Runtime sessions pick up the slab custom-op library for models with
fused SLA nodes (read from the file's header, torch- and onnx-free), and say in one line when they cannot."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from test_torch_free import BLOCK_TORCH

import slab_edge.runtime.custom_ops as custom_ops
from slab_edge import cli
from slab_edge.errors import BackendError, InputError
from slab_edge.export.custom_ops import node_model
from slab_edge.runtime import load
from slab_edge.runtime.metadata import encode_metadata


def save(model, path, custom: str | None = None):
    if custom is not None:
        for key, value in encode_metadata({"custom_ops": custom}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_onnx):
    folder = tmp_path_factory.mktemp("custom")
    return {
        "ort": save(node_model(function_body=True), folder / "ort.onnx", "ort"),
        "trt": save(node_model(function_body=False), folder / "trt.onnx", "trt"),
        "undeclared": save(node_model(function_body=False), folder / "undeclared.onnx"),  # no metadata
        "standard": tiny_onnx,
    }


def feeds(b=2, n=9, h=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k = (np.maximum(rng.standard_normal((b, n, h, d)), 0).astype(np.float32) for _ in range(2))
    return {"q": q, "k": k, "v": rng.standard_normal((b, n, h, d)).astype(np.float32)}


def test_what_the_header_says_about_the_op(files, tmp_path):
    for name, path in files.items():
        use = custom_ops.read_custom_op_use(path)
        assert use.uses_op == (name != "standard"), name
        assert use.function_body == (name == "ort"), name
    assert custom_ops.read_custom_op_use(files["ort"]).declared == "ort"
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfe not a protobuf")
    for junk in ("junk.onnx", "missing.onnx"):  # left to ONNX Runtime to report
        assert not custom_ops.read_custom_op_use(tmp_path / junk).uses_op


def test_sessions_register_the_built_library_when_the_model_needs_it(files, ort_ops_library, monkeypatch):
    monkeypatch.delenv("SLAB_EDGE_OPS_DIR", raising=False)
    results = {}
    for name in ("ort", "trt", "undeclared"):
        with load(files[name], threads=1) as session:
            assert session.custom_op_library == ort_ops_library, name
            results[name] = session.run(feeds())["out"]
    assert np.array_equal(results["ort"], results["trt"]) and np.array_equal(
        results["ort"], results["undeclared"]
    )
    with load(files["standard"], threads=1) as session:
        assert session.custom_op_library is None


def test_without_a_library_the_function_body_runs_and_a_trt_file_is_refused(
    files, ort_ops_library, monkeypatch
):
    with load(files["ort"], threads=1) as session:
        kernel = session.run(feeds())["out"]
    monkeypatch.setattr(custom_ops, "find_library", lambda target: None)
    with load(files["ort"], threads=1) as session:
        assert session.custom_op_library is None
        assert np.abs(session.run(feeds())["out"] - kernel).max() <= 1e-6 * np.abs(kernel).max()
    for name in ("trt", "undeclared"):
        with pytest.raises(
            BackendError, match=f"{name}.onnx holds SlabLinearAttention nodes without a function"
        ):
            load(files[name], threads=1)


def test_an_explicit_library_is_used_whatever_the_model(files, ort_ops_library, tmp_path):
    with load(files["standard"], threads=1, custom_op_library=ort_ops_library) as session:
        assert session.custom_op_library == ort_ops_library
    with pytest.raises(InputError, match="custom-op library not found"):
        load(files["trt"], custom_op_library=tmp_path / "nope.so")


def test_a_foreign_or_broken_library_is_one_line(files, plugin_libraries):
    """A shared library without RegisterCustomOps, and a file that is no shared library at all."""
    cases = [
        (plugin_libraries.no_entry_points, "is not an ONNX Runtime custom-op library"),
        (plugin_libraries.not_a_library, "ONNX Runtime cannot load the custom-op library"),
    ]
    for library, message in cases:
        with pytest.raises(BackendError, match=message) as info:
            load(files["trt"], custom_op_library=library)
        assert "\n" not in str(info.value)


class RecordingOptions:
    """Stands in for onnxruntime.SessionOptions: records the libraries registered."""

    def __init__(self):
        self.registered = []

    def register_custom_ops_library(self, path):
        self.registered.append(path)


def test_the_cuda_provider_takes_the_cuda_build_when_there_is_one(files, tmp_path, monkeypatch):
    built = {"ort": tmp_path / "libslab_ort_ops.so", "ort-cuda": tmp_path / "libslab_ort_ops_cuda.so"}
    for path in built.values():
        path.write_bytes(b"")
    monkeypatch.setattr(custom_ops, "find_library", lambda target: built.get(target))
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    for providers, expected in ((cuda, "ort-cuda"), (["CPUExecutionProvider"], "ort")):
        options = RecordingOptions()
        assert custom_ops.prepare_session_options(options, files["trt"], providers) == built[expected]
        assert options.registered == [str(built[expected])]
    del built["ort-cuda"]  # not built: the CPU kernels serve the CUDA EP too (ORT copies the tensors)
    options = RecordingOptions()
    assert custom_ops.prepare_session_options(options, files["trt"], cuda) == built["ort"]


def test_the_cli_option_reaches_the_session(files, ort_ops_library, capsys, tmp_path):
    argv = ["bench", str(files["standard"]), "--iters", "1", "--warmup", "0", "--json"]
    assert cli.main([*argv, "--custom-op-library", str(ort_ops_library)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["models"][0]["custom_op_library"] == str(ort_ops_library)
    assert cli.main([*argv, "--custom-op-library", str(tmp_path / "missing.so")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"slab-edge bench: error: custom-op library not found: {tmp_path / 'missing.so'}"


def test_the_runtime_loads_custom_op_models_without_torch(files, ort_ops_library):
    code = f"""
        import json, sys
        import numpy as np
        from slab_edge.runtime import load
        rng = np.random.default_rng(0)
        x = {{n: rng.random((1, 5, 2, 8)).astype(np.float32) for n in "qkv"}}
        with load({str(files["trt"])!r}, threads=1, custom_op_library={str(ort_ops_library)!r}) as session:
            out = session.run(x)["out"]
        torch = any(m.split(".")[0] == "torch" for m in sys.modules)
        print(json.dumps({{"shape": list(out.shape), "torch": torch, "onnx": "onnx" in sys.modules}}))
        """
    import textwrap

    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "shape": [1, 5, 2, 8],
        "torch": False,
        "onnx": False,
    }
