"""slab_edge.runtime.onnx_header: an ONNX file's opset imports, functions and metadata without onnx."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import onnx
import pytest

from slab_edge.export.custom_ops import node_model
from slab_edge.runtime.metadata import encode_metadata
from slab_edge.runtime.onnx_header import read_onnx_header


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_onnx, bare_onnx):
    folder = tmp_path_factory.mktemp("headers")
    fused = node_model(function_body=True)
    for key, value in encode_metadata({"custom_ops": "ort", "labels": ["a", "b"]}).items():
        entry = fused.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(fused, str(folder / "fused.onnx"))
    onnx.save(node_model(function_body=False), str(folder / "plain.onnx"))
    return [tiny_onnx, bare_onnx, folder / "fused.onnx", folder / "plain.onnx"]


def test_the_header_agrees_with_onnx(models):
    for path in models:
        model = onnx.load(str(path))
        header = read_onnx_header(path)
        assert header.domains == {o.domain for o in model.opset_import}, path
        assert header.functions == {(f.domain, f.name) for f in model.functions}, path
        assert header.metadata == {p.key: p.value for p in model.metadata_props}, path


def test_what_is_not_a_model_is_a_value_error(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfe not a protobuf")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("junk.onnx", "empty.onnx"):
        with pytest.raises(ValueError):
            read_onnx_header(tmp_path / name)
    with pytest.raises(OSError):
        read_onnx_header(tmp_path / "missing.onnx")


def test_metadata_without_the_onnx_package(models):
    """read_metadata_props falls back to the header where onnx is not installed, also for a file ONNX
    Runtime cannot open without a custom-op library (no function body)."""
    code = textwrap.dedent(
        f"""
        import importlib.abc, json, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "onnx" or name.startswith("onnx."):
                    raise ImportError("onnx is blocked in this test")
        sys.meta_path.insert(0, Block())
        from slab_edge.runtime.metadata import read_metadata_props
        print(json.dumps([read_metadata_props(p) for p in {[str(p) for p in models]!r}]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    expected = [{p.key: p.value for p in onnx.load(str(path)).metadata_props} for path in models]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected
