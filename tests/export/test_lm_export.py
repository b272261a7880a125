"""export-lm: folded prefill + decode graphs of tiny SLAB-LMs vs PyTorch, state layout, bad input, CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _lm_helpers import VARIANTS

from slab_edge import cli
from slab_edge.data.text_tokenizer import train_bpe
from slab_edge.errors import InputError
from slab_edge.export.lm import LOGIT_TOLERANCE, export_lm
from slab_edge.models.slab_lm import create_slab_lm, fold_lm
from slab_edge.runtime.generate import open_lm


@pytest.mark.parametrize("attention, norm", VARIANTS)
def test_step_logits_and_64_greedy_tokens_match_pytorch(exports, attention, norm):
    _, report, _ = exports.get(attention, norm)
    assert report.step_max_abs <= LOGIT_TOLERANCE
    assert report.prefill_max_abs <= LOGIT_TOLERANCE
    assert report.greedy_match == (64, 64)
    if norm == "prepbn":
        assert report.fold_max_abs is not None and report.fold_max_abs <= 1e-4
    else:
        assert report.fold_max_abs is None


@pytest.mark.parametrize("attention, norm", VARIANTS)
def test_graphs_carry_the_state_layout_and_no_batchnorm(exports, attention, norm):
    model, _, out = exports.get(attention, norm)
    names = {"sla": ["S", "z", "conv"], "gla": ["S"], "softmax": ["k_cache", "v_cache"]}[attention]
    for file, task in (("prefill.onnx", "lm-prefill"), ("decode.onnx", "lm-decode")):
        proto = onnx.load(str(out / file))
        ops = {n.op_type for n in proto.graph.node}
        assert "BatchNormalization" not in ops and "Loop" not in ops and "Scan" not in ops
        inputs = [i.name for i in proto.graph.input]
        outputs = [o.name for o in proto.graph.output]
        expected = [f"past.{i}.{n}" for i in range(model.config.num_layers) for n in names]
        assert inputs == ["input_ids", *expected]
        assert outputs == ["logits", *(e.replace("past.", "present.") for e in expected)]
        with open_lm(out) as lm:
            meta = lm.prefill_session.metadata if task == "lm-prefill" else lm.decode_session.metadata
        assert meta["task"] == task and meta["tokenizer"] == "byte" and meta["vocab_size"] == 256
        assert meta["folded"] is True
        assert meta["max_prompt_len"] == (None if task == "lm-prefill" else 1)
        assert [e["input"] for e in meta["state_layout"]] == expected


@pytest.mark.parametrize("attention, norm", VARIANTS)
def test_long_prompt_in_one_call_and_prompt_continuation(exports, attention, norm):
    model, _, out = exports.get(attention, norm)
    folded, _ = fold_lm(model)
    prompt = torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(3))  # 5 chunks of 64
    with torch.no_grad():
        ref_logits, _ = folded.prefill(prompt)
    with open_lm(out, threads=1) as lm:
        logits, state = lm.prefill(prompt[0].numpy())
        np.testing.assert_allclose(logits, ref_logits[0, -1].numpy(), atol=LOGIT_TOLERANCE)
        # a prompt continued from a carried state equals the whole prompt at once
        _, first = lm.prefill(prompt[0, :130].numpy())
        continued, _ = lm.prefill(prompt[0, 130:].numpy(), first)
        np.testing.assert_allclose(continued, logits, atol=LOGIT_TOLERANCE)
        size_before = lm.state_bytes(lm.initial_state())
        size_after = lm.state_bytes(state)
    if attention == "softmax":
        assert size_after > size_before  # the KV cache grew with the prompt
    else:
        assert size_after == size_before  # constant-size recurrent state


def test_wrong_state_and_tokenizer_are_refused(exports):
    _, _, out = exports.get("sla", "prepbn")
    with open_lm(out) as lm:
        state = lm.initial_state()
        bad = dict(state, **{"past.0.S": np.zeros((1, 4, 16, 8), np.float32)})
        with pytest.raises(InputError, match=r"past\.0\.S.*shape"):
            lm.prefill([1, 2, 3], bad)
        bad = dict(state, **{"past.1.conv": state["past.1.conv"].astype(np.float16)})
        with pytest.raises(InputError, match=r"past\.1\.conv.*dtype"):
            lm.prefill([1, 2, 3], bad)
    bpe = train_bpe(["def f(x):\n    return x\n" * 20], vocab_size=300)
    with pytest.raises(InputError, match="tokenizer mismatch"):
        open_lm(out, tokenizer=bpe)


def test_export_with_a_missing_tokenizer_writes_nothing(tmp_path):
    model = create_slab_lm("tiny", attention="sla", norm="rmsnorm")
    out = tmp_path / "never"
    with pytest.raises(InputError, match="tokenizer"):
        export_lm(model, out, meta={"tokenizer": "bpe:tokenizer.json"})
    assert not out.exists()


def test_cli_train_export_generate_with_a_bpe_tokenizer(bpe_run, capsys):
    run, log = bpe_run
    assert "16/16 tokens identical" in log
    assert (run / "onnx" / "tokenizer.json").is_file()
    argv = [
        "generate",
        str(run / "onnx"),
        "--prompt",
        "def main():",
        "--max-new-tokens",
        "8",
        "--threads",
        "1",
    ]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("def main():") and "tokens/s" in captured.err
    assert cli.main(["generate", str(run / "onnx"), "--prompt", ""]) == 2
    assert "empty prompt" in capsys.readouterr().err
