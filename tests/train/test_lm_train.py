"""train-lm: tiny steps on a slice of the stdlib corpus; files, metrics, exact resume, BPE, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from slab_edge import cli
from slab_edge.data.text_tokenizer import ByteTokenizer
from slab_edge.errors import CheckpointError, InputError
from slab_edge.train.checkpoint import write_safetensors
from slab_edge.train.lm import (
    LMTrainConfig,
    build_lm,
    eval_windows,
    lm_meta,
    load_lm,
    sample_batch,
    train_lm,
)

#: a tiny and fast run: ~60 kB of stdlib source, windows of 32 bytes, 2 windows per step
FAST = dict(
    max_corpus_bytes=60_000,
    val_fraction=0.2,
    seq_len=32,
    batch_size=2,
    eval_every=3,
    eval_tokens=512,
    final_eval_tokens=1024,
    checkpoint_every=2,
    log_every=1,
    progress=False,
    threads=1,
    model_kwargs={"dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64},
)


def config(tmp_path, name="run", **overrides) -> LMTrainConfig:
    values = {**FAST, "output": str(tmp_path / name), **overrides}
    return LMTrainConfig(**values)


def test_tiny_run_writes_model_metrics_plot_and_summary(tmp_path):
    summary = train_lm(config(tmp_path, steps=4))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "metrics.png", "model.safetensors", "summary.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.json").is_file()
    assert summary["steps"] == 4 and summary["tokens_seen"] == 4 * 2 * 32
    # byte tokens: bits per byte is the loss in bits
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / math.log(2))
    assert summary["val_tokens"] == 1024 - 1024 % 32
    kinds = [json.loads(line)["kind"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("train") == 4 and kinds.count("eval") == 2  # at step 3 and the final one
    model, meta, _ = load_lm(run)
    assert meta["attention"] == "sla" and meta["norm"] == "prepbn" and meta["tokenizer"] == "byte"
    assert not model.training


#: a 1:1 gla:softmax hybrid of FAST's widths over 2 layers
HYBRID = dict(attention="gla", attention_pattern="LS", model_kwargs={**FAST["model_kwargs"], "num_layers": 2})


@pytest.mark.parametrize("model", [dict(attention="gla"), HYBRID], ids=["gla", "gla+softmax"])
def test_resume_continues_exactly(tmp_path, model):
    straight = train_lm(config(tmp_path, "a", steps=5, **model))
    train_lm(config(tmp_path, "b", steps=5, stop_at_step=2, **model))
    resumed = train_lm(config(tmp_path, "b", steps=5, resume=True, **model))
    assert resumed["steps"] == 5
    a, _, _ = load_lm(tmp_path / "a")
    b, _, _ = load_lm(tmp_path / "b")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert resumed["val_loss"] == straight["val_loss"]


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    train_lm(config(tmp_path, steps=1))
    with pytest.raises(InputError, match="already holds a run"):
        train_lm(config(tmp_path, steps=1))
    train_lm(config(tmp_path, steps=1, overwrite=True))
    with pytest.raises(InputError, match="no checkpoint"):
        train_lm(config(tmp_path, "never", steps=1, resume=True))


def test_resume_refuses_another_model(tmp_path):
    train_lm(config(tmp_path, steps=1, stop_at_step=1))
    with pytest.raises(CheckpointError, match="attention"):
        train_lm(config(tmp_path, steps=2, attention="softmax", resume=True))
    with pytest.raises(CheckpointError, match="attention_pattern: None -> 'S'"):
        train_lm(config(tmp_path, steps=2, attention_pattern="S", resume=True))


def test_hybrid_run_records_its_pattern_and_reloads_it(tmp_path):
    summary = train_lm(config(tmp_path, steps=1, **HYBRID))
    assert summary["model"]["attention_pattern"] == "LS"
    model, meta, _ = load_lm(tmp_path / "run")
    assert meta["attention_pattern"] == "LS"
    assert model.config.layer_attention() == ("gla", "softmax")
    assert model.state_names() == ["layers.0.S", "layers.1.k_cache", "layers.1.v_cache"]


def test_model_files_without_a_pattern_load_as_before(tmp_path):
    """Metadata written before hybrids existed has no attention_pattern key: every layer is `attention`."""
    cfg = config(tmp_path, attention="sla")
    meta = lm_meta(cfg, ByteTokenizer())
    del meta["attention_pattern"]
    model = build_lm("tiny", "sla", "prepbn", 256, **cfg.model_kwargs)
    write_safetensors(tmp_path / "old.safetensors", model.state_dict(), meta)
    loaded, _, _ = load_lm(tmp_path / "old.safetensors")
    assert loaded.config.layer_attention() == ("sla",) and loaded.config.attention_pattern is None
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_bpe_tokenizer_is_trained_locally_and_saved_beside_the_model(tmp_path):
    summary = train_lm(config(tmp_path, steps=1, tokenizer="bpe", bpe_vocab=300, norm="rmsnorm"))
    run = tmp_path / "run"
    assert (run / "tokenizer.json").is_file()
    assert summary["model"]["tokenizer"] == "bpe:tokenizer.json" and summary["model"]["vocab_size"] == 300
    # several bytes per token: bits per byte is below the loss in bits per token
    assert summary["val_bpb"] < summary["val_loss"] / math.log(2)


@pytest.mark.parametrize("kind", ["empty-folder", "binary-only"])
def test_corpus_without_text_fails_before_writing_anything(tmp_path, kind):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if kind == "binary-only":
        (corpus / "blob.bin").write_bytes(b"\x00\xff" * 100)
    out = tmp_path / "out"
    argv = ["train-lm", "--corpus", str(corpus), "--output", str(out), "--steps", "1", "--no-progress"]
    assert cli.main(argv) == 2
    assert not out.exists()


def test_corpus_smaller_than_one_window_is_a_clear_error(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("print('hi')\n" * 3)
    with pytest.raises(InputError, match="fewer than one window"):
        train_lm(config(tmp_path, corpus=str(text), steps=1, max_corpus_bytes=None))
    assert not (tmp_path / "run").exists()


def test_bad_choices_are_refused(tmp_path):
    for key, value in (("attention", "mamba"), ("norm", "layernorm"), ("model", "7b"), ("amp", "fp8")):
        with pytest.raises(InputError, match=key if key != "model" else "--model"):
            train_lm(config(tmp_path, **{key: value}))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_pattern="LLS"), "does not divide num_layers 1"),
        (dict(attention_pattern="LX"), "got 'X'"),
        (dict(attention="softmax", attention_pattern="S"), "needs attention sla or gla"),
        (dict(attention_pattern="L", model_kwargs={"attention_pattern": "S"}), "model_kwargs must not set"),
    ],
)
def test_bad_attention_pattern_fails_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        train_lm(config(tmp_path, tokenizer="bpe", bpe_vocab=300, **overrides))
    assert not (tmp_path / "run").exists()


def test_batches_are_a_pure_function_of_the_step():
    tokens = torch.arange(1000, dtype=torch.int32)
    a = sample_batch(tokens, 4, 16, seed=0, step=7)
    b = sample_batch(tokens, 4, 16, seed=0, step=7)
    c = sample_batch(tokens, 4, 16, seed=0, step=8)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    inputs, targets = a
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one
    assert eval_windows(100, 32, None) == [0, 32, 64] and eval_windows(100, 32, 70) == [0, 32]


def test_cli_print_config_resolves_size_defaults(capsys):
    assert cli.main(["train-lm", "--model", "125M", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"] == "125m" and cfg["lr"] == 3e-4 and cfg["weight_decay"] == 0.01


def test_failure_after_the_data_checks_leaves_no_run_folder(tmp_path, monkeypatch):
    """The run folder (and a BPE tokenizer in it) appears only once the model and optimizer are built."""
    from slab_edge.train import lm

    def broken_optimizer(model, cfg):
        raise InputError("optimizer refused")

    monkeypatch.setattr(lm, "_optimizer", broken_optimizer)
    with pytest.raises(InputError, match="optimizer refused"):
        train_lm(config(tmp_path, "runs/x", steps=1, tokenizer="bpe", bpe_vocab=300))
    assert list(tmp_path.iterdir()) == []


def test_out_of_range_keys_fail_before_anything_is_written(tmp_path, capsys):
    argv = ["train-lm", "--output", str(tmp_path / "run"), "--steps", "1", "--no-progress"]
    for bad in (["--lr", "-1"], ["--opt-betas", "2,3"], ["--threads", "0"], ["--set", "clip_grad=-1"]):
        assert cli.main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "must be" in err, err
    with pytest.raises(InputError, match="'weight_decay' must be a number >= 0, got -1"):
        train_lm(config(tmp_path, weight_decay=-1.0))
    assert list(tmp_path.iterdir()) == []
