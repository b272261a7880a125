"""ONNX Runtime session: the session contract, metadata, options, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import LABELS, classifier_weights, reference_logits

from slab_edge.errors import BackendError, InputError
from slab_edge.runtime import load, read_model_metadata
from slab_edge.runtime.onnxruntime_session import resolve_providers


def test_run_matches_numpy_reference(tiny_onnx):
    batch = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    weight, bias = classifier_weights()
    with load(tiny_onnx, threads=1) as session:
        out = session.run({"image": batch})
        out_array = session.run(batch)  # a bare array is accepted for single-input models
    assert list(out) == ["logits"]
    np.testing.assert_allclose(out["logits"], reference_logits(batch, weight, bias), atol=1e-5)
    np.testing.assert_array_equal(out["logits"], out_array["logits"])


def test_specs_and_metadata(tiny_onnx):
    with load(tiny_onnx) as session:
        assert session.backend == "onnxruntime"
        assert [(s.name, s.shape, s.dtype) for s in session.inputs] == [
            ("image", (None, 3, 32, 32), np.dtype(np.float32))
        ]
        assert [(s.name, s.shape) for s in session.outputs] == [("logits", (None, len(LABELS)))]
        assert session.metadata["labels"] == LABELS
        assert session.metadata["input_size"] == [3, 32, 32]
        assert session.metadata["folded"] is True
        assert session.metadata["interpolation"] == "bilinear"
        assert "onnxruntime" in repr(session)
    assert read_model_metadata(tiny_onnx) == session.metadata


def test_context_manager_closes(tiny_onnx):
    with load(tiny_onnx) as session:
        pass
    with pytest.raises(BackendError, match="closed"):
        session.run(np.zeros((1, 3, 32, 32), np.float32))
    session.close()  # idempotent


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((1, 3, 32, 32), np.float64), r"expected dtype float32, got float64"),
        (
            np.zeros((1, 3, 31, 32), np.float32),
            r"expected shape image\[\?, 3, 32, 32\] float32, got \[1, 3, 31, 32\]",
        ),
        (np.zeros((3, 32, 32), np.float32), r"got \[3, 32, 32\]"),
    ],
)
def test_wrong_input_names_expected_and_got(tiny_onnx, array, match):
    with load(tiny_onnx) as session, pytest.raises(InputError, match=match):
        session.run(array)


def test_wrong_input_names(tiny_onnx):
    with load(tiny_onnx) as session:
        with pytest.raises(InputError, match=r"missing \['image'\].*unknown \['pixels'\]"):
            session.run({"pixels": np.zeros((1, 3, 32, 32), np.float32)})
        with pytest.raises(InputError, match="numpy array"):
            session.run({"image": [[0.0]]})


def test_fixed_batch_model_rejects_other_batches(fixed_batch_onnx):
    with load(fixed_batch_onnx) as session:
        assert session.input.shape == (1, 3, 32, 32)
        session.run(np.zeros((1, 3, 32, 32), np.float32))
        with pytest.raises(InputError, match=r"got \[2, 3, 32, 32\]"):
            session.run(np.zeros((2, 3, 32, 32), np.float32))


def test_foreign_onnx_without_metadata_loads(bare_onnx):
    with load(bare_onnx) as session:
        assert session.metadata == {}
        assert session.run(np.zeros((2, 3, 24, 24), np.float32))["logits"].shape == (2, len(LABELS))


def test_options_threads_and_optimization_level(tiny_onnx):
    with load(tiny_onnx, threads=2, inter_op_threads=1, graph_optimization="disable") as session:
        assert session.providers == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="graph_optimization"):
        load(tiny_onnx, graph_optimization="max")
    with pytest.raises(InputError, match="threads"):
        load(tiny_onnx, threads=0)
    with pytest.raises(InputError, match="unknown ONNX Runtime session option"):
        load(tiny_onnx, thread=2)


def test_missing_provider_is_a_clear_error(tiny_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the missing-provider path cannot be shown here")
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not available.*available: .*CPU"):
        load(tiny_onnx, provider="cuda")


def test_resolve_providers_keeps_fallbacks_that_exist():
    available = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("tensorrt", available) == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, available) == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"], available) == ["CPUExecutionProvider"]


def test_unknown_file_type_missing_file_and_folder(tmp_path):
    weird = tmp_path / "model.pt"
    weird.write_bytes(b"x")
    with pytest.raises(InputError, match=r"unknown model file type '\.pt'.*\.engine.*\.onnx"):
        load(weird)
    with pytest.raises(InputError, match="not found"):
        load(tmp_path / "nope.onnx")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(InputError, match="not a file"):
        load(tmp_path / "dir.onnx")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_onnx_is_a_clear_error(tiny_onnx, tmp_path, keep):
    data = tiny_onnx.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BackendError, match=r"cut\.onnx: ONNX Runtime cannot load this model"):
        load(cut)


def test_garbage_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x00\x01not a protobuf at all" * 10)
    with pytest.raises(BackendError, match="cannot load"):
        load(bad)
