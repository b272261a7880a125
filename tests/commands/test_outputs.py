"""Every command refuses an output that is one of its inputs, a folder where a file goes (or the reverse), or
a path under a file: one line, exit status 2, nothing written (slab_edge.io.check_outputs_distinct and the
argtypes output_file / output_folder validators). The inputs here are stand-in files: every refusal must come
before anything reads them."""

from __future__ import annotations

import pytest

from slab_edge.cli import main


@pytest.fixture()
def files(tmp_path, monkeypatch):
    """Stand-in inputs in an otherwise empty folder (the working directory)."""
    monkeypatch.chdir(tmp_path)
    for name in ("m.onnx", "m2.onnx", "m.engine", "m.engine.json", "a.png", "ck.safetensors", "cfg.yaml",
                 "corpus.txt", "tok.json", "trt.cache"):  # fmt: skip
        (tmp_path / name).write_bytes(b"input " + name.encode())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "final.safetensors").write_bytes(b"weights")
    (tmp_path / "run" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "images").mkdir()
    (tmp_path / "cfg.yaml").write_text("{}\n")
    return tmp_path


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["infer", "m.onnx", "a.png", "--output", "m.onnx"], "the model"),
        (["infer", "m.onnx", "a.png", "--output", "./a.png"], "the image"),
        (["infer", "m.engine", "a.png", "--output", "m.engine.json"], "the engine sidecar"),
        (["bench", "m.onnx", "m2.onnx", "--output", "m2.onnx"], "the model"),
        (["compare", "m.onnx", "m2.onnx", "--output", "m.onnx"], "the model"),
        (
            [
                "compare",
                "m.onnx",
                "--torch",
                "slab_deit_digits",
                "--checkpoint",
                "ck.safetensors",
                "--output",
                "ck.safetensors",
            ],
            "the --checkpoint",
        ),  # fmt: skip
        (["export", "slab_deit_digits", "-c", "m.onnx", "-o", "m.onnx"], "the --checkpoint"),
        (["export-lm", "run", "--save-folded", "run/model.safetensors"], "the run's model file"),
        (["export-lm", "run/model.safetensors", "--save-folded", "run/model.safetensors"], "the model"),
        (["fold", "--checkpoint", "ck.safetensors", "--output", "ck.safetensors"], "the --checkpoint"),
        (["fold", "--checkpoint", "run", "--output", "run/final.safetensors"], "the checkpoint file"),
        (["recalibrate", "--checkpoint", "run", "--output", "run/final.safetensors"], "the checkpoint file"),
        (["build", "m.onnx", "-o", "m.onnx"], "the ONNX input"),
        (["build", "m.onnx", "--timing-cache", "trt.cache", "-o", "trt.cache"], "the --timing-cache"),
        (["train", "--config", "cfg.yaml", "--output", "cfg.yaml"], "the --config"),
        (["train", "--data", "images", "--output", "images"], "the --data"),
        (["train-lm", "--corpus", "corpus.txt", "--output", "corpus.txt"], "the --corpus"),
        (["train-lm", "--tokenizer", "tok.json", "--output", "tok.json"], "the --tokenizer"),
    ],
    ids=lambda x: " ".join(x[:4]) if isinstance(x, list) else None,
)
def test_output_that_is_an_input_is_refused(files, capsys, argv, what):
    before = _snapshot(files)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"slab-edge {argv[0]}: error:"), err
    assert "would overwrite " + what in err, err
    assert _snapshot(files) == before  # nothing written, nothing created


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["infer", "m.onnx", "a.png", "--output", "images"],
            "argument --output: images is a folder, not a file",
        ),
        (["bench", "m.onnx", "--output", "images"], "is a folder, not a file"),
        (["compare", "m.onnx", "m2.onnx", "--output", "images"], "is a folder, not a file"),
        (["export", "slab_deit_digits", "-o", "images"], "argument -o/--output: images is a folder"),
        (["fold", "--checkpoint", "run", "--output", "images"], "is a folder, not a file"),
        (["recalibrate", "--checkpoint", "run", "--output", "images"], "is a folder, not a file"),
        (["build", "m.onnx", "-o", "images"], "is a folder, not a file"),
        (["build", "m.onnx", "--timing-cache", "images"], "argument --timing-cache: images is a folder"),
        (["export-lm", "run", "--save-folded", "images"], "is a folder, not a file"),
        (["export-lm", "run", "-o", "a.png"], "argument -o/--output: a.png is a file, not a folder"),
        (["demo", "--output", "a.png"], "a.png is a file, not a folder"),
        (["build-ops", "ort", "--out", "a.png"], "a.png is a file, not a folder"),
        (["infer", "m.onnx", "a.png", "--output", "a.png/r.json"], "a.png is a file, so a.png/r.json cannot"),
        (["fold", "--checkpoint", "run", "--output", "ck.safetensors/x/d.safetensors"], "is a file, so"),
    ],
    ids=lambda x: " ".join(x[:4]) if isinstance(x, list) else None,
)
def test_output_path_that_cannot_be_written_is_refused(files, capsys, argv, message):
    before = _snapshot(files)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert _snapshot(files) == before


def test_unwritable_output_folder_is_refused(files, capsys, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == "images" else real_access(p, mode))
    assert main(["infer", "m.onnx", "a.png", "--output", "images/r.json"]) == 2
    assert "argument --output: images is not writable" in capsys.readouterr().err
