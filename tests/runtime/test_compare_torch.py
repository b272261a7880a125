"""`slab-edge compare --torch`: the PyTorch reference against ONNX Runtime (imports torch: allowed here)."""

from __future__ import annotations

import json
import warnings

import pytest

torch = pytest.importorskip("torch", reason="the torch backend of compare needs the [train] extra")
timm = pytest.importorskip("timm", reason="the torch backend of compare needs the [train] extra")

from slab_edge import cli  # noqa: E402
from slab_edge.runtime.metadata import encode_metadata  # noqa: E402


def export(model, path, size: int, name: str) -> None:
    """Plain torch.onnx.export + slab_edge metadata (the export package has its own tests)."""
    import onnx

    example = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}}, opset_version=18,
                          dynamo=False)  # fmt: skip
    proto = onnx.load(str(path))
    meta = {"model": name, "input_size": [3, size, size], "labels": [f"c{i}" for i in range(5)]}
    for key, value in encode_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=5, img_size=32)
    checkpoint = folder / "vit.pth"
    torch.save(
        {"state_dict": model.state_dict(), "model_kwargs": {"num_classes": 5, "img_size": 32}}, checkpoint
    )
    export(model, folder / "vit.onnx", 32, "test_vit")
    other = timm.create_model("test_vit", num_classes=5, img_size=32)  # different random weights
    export(other, folder / "other.onnx", 32, "test_vit")
    return folder


def test_torch_vs_onnx_runtime_passes(vit_files, capsys):
    argv = ["compare", str(vit_files / "vit.onnx"), "--torch", "test_vit", "--checkpoint",
            str(vit_files / "vit.pth"), "--random", "3", "--json", "--threads", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"].startswith("torch:test_vit") and report["passed"]
    result = report["results"][0]
    assert result["max_abs"] < 1e-4 and result["top1_agreement"] == 1.0
    assert report["inputs"]["shape"] == [3, 3, 32, 32]


def test_torch_vs_other_weights_fails(vit_files, capsys):
    argv = ["compare", str(vit_files / "other.onnx"), "--torch", "test_vit", "--checkpoint",
            str(vit_files / "vit.pth"), "--random", "3", "--threads", "1"]  # fmt: skip
    assert cli.main(argv) == 1
    assert capsys.readouterr().out.strip().endswith("FAIL")


def test_bad_checkpoint_is_a_clear_error(vit_files, tmp_path, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    argv = ["compare", str(vit_files / "vit.onnx"), "--torch", "test_vit", "--checkpoint", str(broken)]
    assert cli.main(argv) == 2
    assert "broken.pth" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """The files the README's fp16 compare line reads, at test cost: an untrained slab_deit_digits
    checkpoint exported to fp32 + fp16 by `slab-edge export`, and an fp16 export of other weights."""
    from slab_edge.models import create_model
    from slab_edge.train.model_files import model_meta, save_model_file

    folder = tmp_path_factory.mktemp("digits")
    data = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
            "crop_pct": 1.0}  # fmt: skip
    for seed, name in ((0, "deploy"), (1, "other")):
        torch.manual_seed(seed)
        model = create_model("slab_deit_digits").eval()
        meta = model_meta("slab_deit_digits", {}, 10, data, [str(i) for i in range(10)])
        save_model_file(folder / f"{name}.safetensors", model, meta)
    for name, out, precisions in (("deploy", "digits", ["fp32", "fp16"]), ("other", "other.fp16", ["fp16"])):
        argv = ["export", "-c", str(folder / f"{name}.safetensors"), "-o", str(folder / f"{out}.onnx"),
                "--precision", *precisions]  # fmt: skip
        assert cli.main(argv) == 0
    return folder


def test_readme_fp16_compare_passes_with_default_tolerances(digits_files, capsys, monkeypatch):
    monkeypatch.chdir(digits_files)
    capsys.readouterr()
    # README.md, "## Commands": the line as written, with the defaults picked from the precisions
    argv = ["compare", "digits.onnx", "digits.fp16.onnx", "--torch", "slab_deit_digits",
            "--checkpoint", "deploy.safetensors", "--random", "8"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "onnxruntime:digits.onnx (fp32)" in out and "onnxruntime:digits.fp16.onnx (fp16)" in out
    assert "(default for fp32 vs fp32: 0.0001 x max|ref|" in out
    assert "(default for fp32 vs fp16: 0.01 x max|ref|" in out
    assert out.strip().endswith("PASS")


def test_fp16_defaults_still_fail_other_weights(digits_files, capsys, monkeypatch):
    monkeypatch.chdir(digits_files)
    capsys.readouterr()
    argv = ["compare", "other.fp16.onnx", "--torch", "slab_deit_digits", "--checkpoint",
            "deploy.safetensors", "--random", "8", "--json"]  # fmt: skip
    assert cli.main(argv) == 1
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["precision"] == "fp16" and not result["passed"]
    assert result["max_abs"] > result["tolerance"]["atol"] > 0
