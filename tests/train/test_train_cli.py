"""Commands end to end on the tiny model: train -> evaluate / fold / recalibrate; bad input -> one line."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import TINY

from slab_edge.cli import main as cli_main
from slab_edge.train.model_files import load_model


def _argv(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            out += [flag, json.dumps(value) if isinstance(value, (list, dict)) else str(value)]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    values = {**TINY, "max_steps": 12, "output": str(out), "plot": True}
    assert cli_main(["train", *_argv(values), "--set", "log_every=2"]) == 0
    return out


def test_train_writes_the_run_folder(trained):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "metrics.png",
        "summary.json",
        "final.safetensors",
        "deploy.safetensors",
        "checkpoints/last.json",
        "checkpoints/best.json",
    ):
        assert (trained / name).is_file(), name
    assert (trained / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["parity"]["acc_diff_points"] <= 0.1
    kinds = {json.loads(x)["kind"] for x in (trained / "metrics.jsonl").read_text().splitlines()}
    assert {"train", "eval", "final"} <= kinds
    assert "log_every: 2" in (trained / "config.yaml").read_text()


def test_deploy_file_rebuilds_folded_and_matches(trained):
    folded, meta = load_model(trained / "deploy.safetensors")
    unfolded, _ = load_model(trained / "final.safetensors")
    assert (
        meta["deploy"] and meta["labels"] == [str(i) for i in range(10)] and meta["input_size"] == [3, 16, 16]
    )
    assert not any("norm" in type(m).__name__.lower() for m in folded.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), unfolded(x), rtol=1e-4, atol=1e-4)


def test_evaluate_matches_the_summary(trained, capsys):
    assert cli_main(["evaluate", "--checkpoint", str(trained / "deploy.safetensors"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((trained / "summary.json").read_text())
    assert res["folded"] and res["n"] == 359
    assert res["acc"] == pytest.approx(summary["deploy_eval"]["acc"], abs=1e-9)


def test_recalibrate_then_fold_commands(trained, tmp_path, capsys):
    recal = tmp_path / "recal.safetensors"
    assert (
        cli_main(
            [
                "recalibrate",
                "--checkpoint",
                str(trained),  # a run folder: its unfolded final weights, not deploy.safetensors
                "--steps",
                "3",
                "--epochs",
                "0",
                "--output",
                str(recal),
            ]
        )
        == 0
    )
    assert "over 3 batches" in capsys.readouterr().out
    deploy = tmp_path / "deploy.safetensors"
    assert cli_main(["fold", "--checkpoint", str(recal), "--output", str(deploy), "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "max |logit diff|" in out and "top-1" in out
    _, meta = load_model(deploy)
    assert meta["deploy"] and abs(meta["metrics"]["acc"] - meta["metrics"]["acc_unfolded"]) <= 0.1
    assert (
        cli_main(["fold", "--checkpoint", str(deploy), "--output", str(tmp_path / "again.safetensors")]) == 2
    )
    assert "already folded" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "/nonexistent/imagenet"], "dataset folder /nonexistent/imagenet does not exist"),
        (["train", "--model", "slab_deit_tinny_patch16_224"], "unknown model 'slab_deit_tinny_patch16_224'"),
        (["train", "--epochs", "many"], "argument --epochs: expects int, got 'many'"),
        (["evaluate", "--checkpoint", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv + (["--no-progress"] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not list(tmp_path.iterdir())  # nothing written (no run folder for a typo)


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv = ["train", *_argv({**TINY, "output": str(blocker / "run")})]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a_file is a file, so" in err and "cannot be created" in err


def test_image_folder_with_an_empty_class(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "d" / split / "cat").mkdir(parents=True)
        (tmp_path / "d" / split / "dog").mkdir(parents=True)
    assert (
        cli_main(["train", "--data", str(tmp_path / "d"), "--output", str(tmp_path / "o"), "--no-progress"])
        == 2
    )
    assert "has no images" in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_imagenet_style_recipe_on_an_image_folder(tmp_path, capsys):
    """RandAugment, mixup/cutmix (soft targets), random erasing, EMA and gradient accumulation on a folder
    with one corrupt image (skipped and counted)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c, base in (("cat", 60), ("dog", 190)):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "d" / split / c / f"{i}.png")
    (tmp_path / "d" / "train" / "dog" / "7.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "run"
    argv = ["train", "--model", "tiny_slab_test", "--data", str(tmp_path / "d"), "--input-size", "16",
            "--batch-size", "4", "--grad-accum", "2", "--epochs", "2", "--warmup-epochs", "0", "--ema",
            "--ema-decay", "0.9", "--num-workers", "0", "--output", str(out), "--no-progress", "--no-plot",
            "--recal-steps", "2"]  # fmt: skip
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    cfg = (out / "config.yaml").read_text()
    assert "aa: rand-m9-mstd0.5-inc1" in cfg and "mixup: 0.8" in cfg and "reprob: 0.25" in cfg
    assert summary["steps"] == 4 and summary["global_batch"] == 8  # 16 images / (4 x 2) per epoch
    assert summary["skipped_images"] >= 1 and "unreadable image" in captured.err
    assert summary["last_eval"]["n"] == 6 and "ema_acc" in summary["last_eval"]
    manifest = json.loads((out / "checkpoints" / "last.json").read_text())
    assert "ema" in manifest["files"]
    _, meta = load_model(out / "deploy.safetensors")
    assert meta["labels"] == ["cat", "dog"]


def test_ema_needs_a_training_checkpoint(trained, capsys):
    assert cli_main(["evaluate", "--checkpoint", str(trained / "final.safetensors"), "--ema"]) == 2
    assert "EMA weights live in training checkpoints" in capsys.readouterr().err


def _layernorm_model_file(path):
    """A deit_digits (LayerNorm baseline, nothing foldable) model file as `slab-edge train` writes it."""
    from slab_edge.models import create_model
    from slab_edge.train.model_files import model_meta, save_model_file

    kwargs = {"embed_dim": 24, "depth": 1}
    data = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}
    model = create_model("deit_digits", **kwargs)
    return save_model_file(
        path, model, model_meta("deit_digits", kwargs, 10, data, [str(i) for i in range(10)])
    )


def test_fold_of_a_layernorm_model_says_nothing_folded(tmp_path, capsys):
    from slab_edge.train.checkpoint import read_safetensors

    source = _layernorm_model_file(tmp_path / "ln.safetensors")
    out = tmp_path / "deploy.safetensors"
    assert cli_main(["fold", "--checkpoint", str(source), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "folded 0 norms; left unfolded: 3 LayerNorm" in captured.out
    assert "warning: deit_digits keeps norms that cannot fold (3 LayerNorm)" in captured.err
    _, meta = read_safetensors(out)
    assert meta["deploy"] is True and meta["folded"] is False
    assert meta["folded_norms"] == 0 and meta["unfolded_norms"] == {"LayerNorm": 3}
    assert cli_main(["evaluate", "--checkpoint", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["deploy"] is True and res["folded"] is False and res["unfolded_norms"] == {"LayerNorm": 3}


def test_fold_of_a_prepbn_model_counts_its_folded_norms(trained, tmp_path, capsys):
    from slab_edge.train.checkpoint import read_safetensors

    out = tmp_path / "deploy.safetensors"
    assert cli_main(["fold", "--checkpoint", str(trained), "--output", str(out)]) == 0
    assert "folded 3 norms ->" in capsys.readouterr().out  # norm1, norm2 and the final norm
    _, meta = read_safetensors(out)
    assert meta["folded"] is True and meta["folded_norms"] == 3 and meta["unfolded_norms"] == {}
    _, deploy_meta = read_safetensors(trained / "deploy.safetensors")  # what train itself wrote
    assert deploy_meta["folded"] is True and deploy_meta["folded_norms"] == 3


@pytest.mark.parametrize("option", [["--opt", "nonsense"], ["--sched", "nonsense"]])
def test_failed_start_leaves_no_run_folder(tmp_path, capsys, option):
    """These fail once the model is built (after the run folder was once created): nothing is left."""
    out = tmp_path / "runs" / "x"
    assert cli_main(["train", *_argv({**TINY, "output": str(out)}), *option]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
