"""`slab-edge infer` and slab_edge.runtime.infer: files, folders, globs, batching, bad files, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_helpers import LABELS, classifier_weights, reference_logits, write_image

from slab_edge import cli
from slab_edge.errors import InputError
from slab_edge.runtime import load, transform_for
from slab_edge.runtime.infer import classify, collect_images, softmax, to_probabilities, top_k


def expected_top1(model_path, image_path) -> str:
    with load(model_path) as session:
        batch = transform_for(session)(image_path)[None]
    weight, bias = classifier_weights()
    return LABELS[int(reference_logits(batch, weight, bias).argmax())]


def test_collect_images_files_folders_globs(image_dir, tmp_path):
    sub = image_dir / "sub"
    sub.mkdir()
    write_image(sub / "d.PNG", "RGB")
    (image_dir / "readme.txt").write_text("not an image suffix: ignored in folders")
    found = collect_images([str(image_dir)])
    assert [s.path.name for s in found] == ["a.png", "b.jpg", "broken.jpg", "c.png", "notes.png"]
    assert not any(s.explicit for s in found)
    assert len(collect_images([str(image_dir)], recursive=True)) == 6
    globbed = collect_images([str(image_dir / "**" / "*.png")])
    assert sorted(s.path.name for s in globbed) == ["a.png", "c.png", "notes.png"]
    both = collect_images([str(image_dir / "a.png"), str(image_dir)])
    assert len(both) == 5 and [s.explicit for s in both if s.path.name == "a.png"] == [True]
    with pytest.raises(InputError, match="no such image, folder or glob"):
        collect_images([str(tmp_path / "missing.jpg")])
    with pytest.raises(InputError, match="no files match"):
        collect_images([str(tmp_path / "*.nothing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files in"):
        collect_images([str(tmp_path / "empty")])


def test_probabilities_and_top_k():
    logits = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    probs = to_probabilities(logits)
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    np.testing.assert_allclose(probs, softmax(logits))
    assert to_probabilities(probs) is not None and np.allclose(to_probabilities(probs), probs)
    best = top_k(probs, ["x", "y", "z"], 2)
    assert [[p["label"] for p in row] for row in best] == [["y", "z"], ["z", "x"]]
    assert len(top_k(probs, ["x", "y", "z"], 10)[0]) == 3


def test_classify_skips_bad_folder_files_and_counts_them(tiny_onnx, image_dir):
    skipped = []
    with load(tiny_onnx) as session:
        result = classify(session, collect_images([str(image_dir)]), top=3, batch=2,
                          on_skip=lambda p, r: skipped.append(p.name))  # fmt: skip
    assert [p["path"].split("/")[-1] for p in result.predictions] == ["a.png", "b.jpg", "c.png"]
    assert sorted(skipped) == ["broken.jpg", "notes.png"] and len(result.skipped) == 2
    assert result.batch_seconds and len(result.batch_seconds) == 2  # 3 images in batches of 2
    first = result.predictions[0]["top_k"]
    assert len(first) == 3 and first[0]["score"] >= first[1]["score"] >= first[2]["score"]
    assert first[0]["label"] == expected_top1(tiny_onnx, image_dir / "a.png")
    summary = result.summary()
    assert summary["images"] == 3 and summary["skipped"] == 2 and summary["batches"] == 2
    assert summary["images_per_s"] > 0 and summary["mean_batch_latency_ms"] > 0


def test_batching_does_not_change_results(tiny_onnx, fixed_batch_onnx, image_dir):
    sources = [s for s in collect_images([str(image_dir)]) if s.path.name in ("a.png", "b.jpg", "c.png")]
    with load(tiny_onnx) as session:
        one = classify(session, sources, top=5, batch=1).predictions
        three = classify(session, sources, top=5, batch=3).predictions
    with load(fixed_batch_onnx) as session:
        fixed = classify(session, sources, top=5).predictions
        with pytest.raises(InputError, match="fixed batch size of 1"):
            classify(session, sources, batch=2)
    for a, b, c in zip(one, three, fixed):
        assert (
            [p["label"] for p in a["top_k"]]
            == [p["label"] for p in b["top_k"]]
            == [p["label"] for p in c["top_k"]]
        )
        np.testing.assert_allclose(
            [p["score"] for p in a["top_k"]], [p["score"] for p in b["top_k"]], rtol=1e-5
        )


def test_strict_and_explicit_bad_files_fail(tiny_onnx, image_dir):
    with load(tiny_onnx) as session:
        with pytest.raises(InputError, match="broken.jpg"):
            classify(session, collect_images([str(image_dir)]), strict=True)
        with pytest.raises(InputError, match="notes.png"):
            classify(session, collect_images([str(image_dir / "notes.png")]))
        with pytest.raises(InputError, match="no image could be read"):
            classify(session, collect_images([str(image_dir / "*.jpg"), str(image_dir / "notes.*")])[1:])


def test_cli_text_output(tiny_onnx, image_dir, capsys):
    code = cli.main(["infer", str(tiny_onnx), str(image_dir), "--top-k", "2", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith(str(image_dir / "a.png"))
    assert "3 images, 2 skipped" in lines[-1] and "images/s" in lines[-1]
    assert err.count("warning: skipped") == 2 and "broken.jpg" in err


def test_cli_json_and_output_file(tiny_onnx, image_dir, tmp_path, capsys):
    target = tmp_path / "out" / "result.json"
    code = cli.main(["infer", str(tiny_onnx), str(image_dir / "*.png"), "--json", "--output", str(target),
                     "--batch", "2"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(target.read_text())
    assert report["backend"] == "onnxruntime" and report["model_name"] == "tiny_test_classifier"
    assert [p["path"].split("/")[-1] for p in report["predictions"]] == ["a.png", "c.png"]
    assert report["skipped"][0]["path"].endswith("notes.png")
    assert report["summary"]["batch_size"] == 2 and report["predictions"][0]["top_k"][0]["label"] in LABELS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{model}", "{dir}/broken.jpg"], "broken.jpg: corrupt or truncated image"),
        (["{model}", "{dir}", "--strict"], "broken.jpg"),
        (["{model}", "{dir}/nothing.png"], "no such image"),
        (["{dir}/a.png", "{dir}"], "unknown model file type '.png'"),
        (["{model}", "{dir}", "--top-k", "0"], "argument --top-k: must be a positive integer, got 0"),
        (["{model}", "{dir}", "--provider", "cuda"], "CUDAExecutionProvider is not available"),
    ],
)
def test_cli_errors_are_one_line_and_nonzero(tiny_onnx, image_dir, capsys, argv, message):
    import onnxruntime

    if "--provider" in argv and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA provider present")
    argv = [a.format(model=tiny_onnx, dir=image_dir) for a in argv]
    code = cli.main(["infer", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("slab-edge infer: error:") and message in err[-1]


def test_cli_writes_nothing_on_error(tiny_onnx, image_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "result.json"
    assert cli.main(["infer", str(tiny_onnx), str(image_dir), "--strict", "--output", str(target)]) == 2
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("target", ["model", "image"])
def test_cli_refuses_to_overwrite_an_input_with_its_json(tiny_onnx, image_dir, tmp_path, capsys, target):
    """--output naming the model (or an image) used to replace it with the JSON report."""
    import shutil

    model = shutil.copy(tiny_onnx, tmp_path / "model.onnx")
    image = image_dir / "a.png"
    victim = model if target == "model" else image
    before = victim.read_bytes()
    assert cli.main(["infer", str(model), str(image), "--output", str(victim)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"would overwrite the {target}" in err[0]
    assert victim.read_bytes() == before
