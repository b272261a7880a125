"""`slab-edge export` end to end on checkpoints as `slab-edge train` / `slab-edge fold` write them, and the
bad-input paths: one-line errors, exit 2, nothing (not even a temp file) left behind."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from _export_helpers import randomize

from slab_edge.cli import main
from slab_edge.export.checkpoint import state_dict_sha256
from slab_edge.export.onnx_export import ort_session, parity_inputs, torch_logits
from slab_edge.runtime.metadata import decode_metadata

NAME = "slab_deit_digits"
KWARGS = {"embed_dim": 24, "depth": 1}
LABELS = [f"digit-{i}" for i in range(10)]


def _model(deploy: bool = False, seed: int = 0):
    from slab_edge.models import create_model

    torch.manual_seed(seed)
    return randomize(create_model(NAME, **KWARGS), seed).eval()


def _save(path, model, deploy: bool):
    from slab_edge.train.model_files import model_meta, save_model_file

    data = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
            "crop_pct": 1.0}  # fmt: skip
    save_model_file(path, model, model_meta(NAME, KWARGS, 10, data, LABELS, deploy=deploy))
    return path


def _meta(path):
    return decode_metadata({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def _run_ort(path, x):
    session = ort_session(path)
    return session.run(None, {"input": x})[0]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model = _model()
    return _save(folder / "model.safetensors", model, deploy=False), model


def test_export_training_checkpoint_all_precisions(training_checkpoint, tmp_path, capsys):
    ckpt, trained = training_checkpoint
    out = tmp_path / "digits.onnx"
    code = main(["export", "-c", str(ckpt), "-o", str(out), "--precision", "fp32", "fp16", "int8",
                 "--calib-data", "digits", "--calib-count", "8", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "training checkpoint, folded" in captured.out
    assert captured.out.count("parity ORT vs PyTorch") == 6  # 3 files x (random, digits)
    summary = json.loads(captured.out[captured.out.index("[\n") :])
    assert [s["precision"] for s in summary] == ["fp32", "fp16", "int8"]
    assert {p.name for p in tmp_path.iterdir()} == {"digits.onnx", "digits.fp16.onnx", "digits.int8.onnx"}

    meta = _meta(out)
    assert meta["model"] == NAME and meta["labels"] == LABELS and meta["input_size"] == [3, 32, 32]
    assert meta["mean"] == [0.5] * 3 and meta["crop_pct"] == 1.0 and meta["folded"] is True
    assert meta["folded_norms"] == 3 and meta["unfolded_norms"] == {}  # norm1, norm2, the final norm
    assert meta["weights"] == "checkpoint" and meta["weights_sha256"] == state_dict_sha256(
        trained.state_dict()
    )
    assert "random" not in captured.err
    assert _meta(tmp_path / "digits.int8.onnx")["precision"] == "int8"
    # the folded export computes what the *unfolded* trained model computes
    x = parity_inputs(meta, batch=2)["digits"]
    assert abs(_run_ort(out, x) - torch_logits(trained, x)).max() <= 1e-4


def test_export_deploy_and_plain_state_dict(training_checkpoint, tmp_path, capsys):
    from slab_edge.layers.reparam import reparameterize_model

    _, trained = training_checkpoint
    deploy_path = _save(tmp_path / "deploy.safetensors", reparameterize_model(trained), deploy=True)
    pt_path = tmp_path / "plain.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, pt_path)
    x = parity_inputs({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}, batch=2)["random"]
    reference = torch_logits(trained, x)

    assert main(["export", "-c", str(deploy_path), "-o", str(tmp_path / "d.onnx")]) == 0
    assert "deploy checkpoint" in capsys.readouterr().out
    assert abs(_run_ort(tmp_path / "d.onnx", x) - reference).max() <= 1e-4

    # a bare .pt state dict names no model: give it, and the kwargs; labels default to 0..9
    code = main(["export", NAME, "-c", str(pt_path), "--model-kwargs", json.dumps(KWARGS), "-o",
                 str(tmp_path / "p.onnx")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert abs(_run_ort(tmp_path / "p.onnx", x) - reference).max() <= 1e-4
    assert _meta(tmp_path / "p.onnx")["labels"] == [str(i) for i in range(10)]


def _one_line_error(capsys, *args) -> str:
    code = main(["export", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_are_one_line_errors(training_checkpoint, tmp_path, capsys):
    ckpt, trained = training_checkpoint
    out = tmp_path / "out" / "m.onnx"
    kw = ["--model-kwargs", json.dumps(KWARGS)]

    assert "unknown model 'slab_deit_tinny'" in _one_line_error(capsys, "slab_deit_tinny", "-o", str(out))
    assert "not found" in _one_line_error(
        capsys, NAME, "-c", str(tmp_path / "nope.safetensors"), "-o", str(out)
    )

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    assert "not a readable safetensors file" in _one_line_error(
        capsys, NAME, "-c", str(truncated), "-o", str(out)
    )

    # the checkpoint says it is another model
    err = _one_line_error(capsys, "slab_deit_tiny_patch16_224", "-c", str(ckpt), "-o", str(out))
    assert "is for model 'slab_deit_digits'" in err
    # a bare state dict of another width
    other = tmp_path / "other.pt"
    torch.save(trained.state_dict(), other)
    err = _one_line_error(capsys, NAME, "-c", str(other), "--model-kwargs", '{"embed_dim": 48, "depth": 1}',
                          "-o", str(out))  # fmt: skip
    assert "does not fit slab_deit_digits" in err and "size mismatch" in err

    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    err = _one_line_error(capsys, NAME, *kw, "--labels", str(labels), "-o", str(out))
    assert "3 class labels given but slab_deit_digits has 10 classes" in err
    assert "int8 export needs calibration images" in _one_line_error(capsys, NAME, *kw, "--precision", "int8",
                                                                      "-o", str(out))  # fmt: skip
    assert not out.exists() and _leftovers(tmp_path) == []


def test_parity_failure_writes_nothing(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    err = _one_line_error(
        capsys, NAME, "--model-kwargs", json.dumps(KWARGS), "-o", str(out), "--tolerance", "1e-30"
    )
    assert "does not match PyTorch, not written" in err
    assert list(tmp_path.iterdir()) == []


def test_heldout_accuracy_table(training_checkpoint, tmp_path):
    """The accuracy table puts PyTorch and ONNX Runtime on the same held-out tensors."""
    from slab_edge.export.accuracy import evaluate_variants, format_table
    from slab_edge.export.checkpoint import prepare_model
    from slab_edge.export.onnx_export import export_model

    ckpt, _ = training_checkpoint
    prepared = prepare_model(checkpoint=ckpt)
    reports = export_model(prepared, tmp_path / "m.onnx", ["fp32", "fp16"], parity=False)
    rows = evaluate_variants(prepared.model, {r.precision: r.path for r in reports}, limit=48)
    assert [r.backend for r in rows] == ["torch", "fp32", "fp16"] and rows[0].images == 48
    assert rows[1].agree_with_torch == 100.0 and rows[1].max_abs_vs_torch <= 1e-4
    assert rows[1].accuracy == rows[0].accuracy
    assert "held-out digits" in format_table(rows)


def test_random_layernorm_export_says_random_and_unfolded(tmp_path, capsys):
    """No checkpoint: the metadata says weights: random (and a warning says so); a LayerNorm model exports
    with folded: false and its LayerNorms counted, not as 'folded'."""
    out = tmp_path / "ln.onnx"
    code = main(["export", "deit_digits", "--model-kwargs", json.dumps(KWARGS), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "random init, folded 0 norms; left unfolded: 3 LayerNorm" in captured.out
    assert "warning: no --checkpoint: the export holds randomly initialised weights" in captured.err
    meta = _meta(out)
    assert meta["weights"] == "random" and "weights_sha256" not in meta
    assert (
        meta["folded"] is False and meta["unfolded_norms"] == {"LayerNorm": 3} and meta["folded_norms"] == 0
    )
    layer_norms = [n for n in onnx.load(str(out)).graph.node if n.op_type == "LayerNormalization"]
    assert len(layer_norms) == 3  # the graph holds what the metadata says


def test_state_dict_digest_follows_the_weights_not_the_file():
    a = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    b = {"b": torch.zeros(3), "w": torch.ones(2, 3).clone()}
    assert state_dict_sha256(a) == state_dict_sha256(b)
    assert state_dict_sha256(a) != state_dict_sha256({**a, "w": torch.ones(3, 2)})  # shape counts
    assert state_dict_sha256(a) != state_dict_sha256({**a, "b": torch.zeros(3, dtype=torch.float16)})
