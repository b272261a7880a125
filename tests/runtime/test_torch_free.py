"""The on-device runtime works where torch cannot be imported (a meta-path blocker makes the import fail)."""

from __future__ import annotations

import json

from runtime_helpers import run_blocked, write_image


def test_load_preprocess_run_without_torch(tiny_onnx, tmp_path):
    image = write_image(tmp_path / "photo.png", "RGBA", size=(50, 40))
    proc = run_blocked(
        f"""
        import json, sys
        import slab_edge.runtime as rt
        from slab_edge.runtime import benchmark, compare, infer, cuda_memory, tensorrt_session  # importable
        from slab_edge.runtime import genai, sidecar, tensorrt_plugins  # importable
        with rt.load({str(tiny_onnx)!r}, threads=1) as session:
            batch = rt.transform_for(session)({str(image)!r})[None]
            logits = session.run(batch)["logits"]
        try:
            import torch
        except ImportError:
            blocked = True
        print(json.dumps({{"shape": list(logits.shape), "blocked": blocked,
                          "torch_loaded": any(m == "torch" or m.startswith("torch.") for m in sys.modules)}}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"shape": [1, 5], "blocked": True, "torch_loaded": False}


def test_infer_bench_compare_commands_without_torch(tiny_onnx, tiny_onnx_b2, tmp_path):
    image = write_image(tmp_path / "photo.jpg", "L")
    proc = run_blocked(
        f"""
        import sys
        from slab_edge.cli import main
        codes = [
            main(["infer", {str(tiny_onnx)!r}, {str(image)!r}, "--top-k", "2"]),
            main(["bench", {str(tiny_onnx)!r}, {str(tiny_onnx_b2)!r}, "--iters", "2", "--warmup", "0"]),
            main(["compare", {str(tiny_onnx)!r}, {str(tiny_onnx)!r}, "--random", "2"]),
        ]
        print("codes", codes)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "codes [0, 0, 0]" in proc.stdout
    assert "photo.jpg:" in proc.stdout and "latency ratio A/B" in proc.stdout


def test_torch_backend_of_compare_says_it_needs_torch(tiny_onnx):
    proc = run_blocked(
        f"""
        from slab_edge.cli import main
        raise SystemExit(main(["compare", {str(tiny_onnx)!r}, "--torch", "slab_deit_tiny_patch16_224"]))
        """
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("slab-edge compare: error: the torch backend of compare needs PyTorch"), last
