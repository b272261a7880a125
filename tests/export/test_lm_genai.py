"""export-lm --format genai: tiny SLAB-LMs on onnxruntime-genai vs slab-edge generate and PyTorch."""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _export_helpers import LMExports
from test_lm_export import cli_train_tiny, tiny_lm

import slab_edge
from slab_edge import cli
from slab_edge.data.text_tokenizer import BPETokenizer, ByteTokenizer, train_bpe
from slab_edge.errors import InputError
from slab_edge.export.lm import LOGIT_TOLERANCE, export_lm
from slab_edge.models.slab_lm import fold_lm
from slab_edge.runtime.genai import BYTE_EOS_ID, check_genai_folder
from slab_edge.runtime.generate import open_lm
from slab_edge.runtime.onnxruntime_session import OnnxRuntimeSession

og = pytest.importorskip(
    "onnxruntime_genai", reason="needs onnxruntime-genai: pip install 'slab-edge[genai]'"
)

#: every mixer with both norms, and the 3:1 sla:softmax hybrid (attention_pattern LLLS over 4 layers)
GENAI_VARIANTS = [(a, n) for a in ("sla", "gla", "softmax") for n in ("prepbn", "rmsnorm")]
GENAI_VARIANTS.append(("sla-LLLS", "prepbn"))
#: variants also exported in slab-edge's own format to compare generation with
SLAB_VARIANTS = [("sla", "prepbn"), ("sla-LLLS", "prepbn")]
PROMPT = "class A:"  # 64 greedy tokens without byte 0 (genai's EOS) for every variant
TOKENS = 64
META = {"tokenizer": "byte", "size": "tiny"}


@pytest.fixture(scope="module")
def genai_exports(tmp_path_factory):
    return LMExports(tmp_path_factory.mktemp("lm_genai"), tiny_lm, format="genai")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return LMExports(tmp_path_factory.mktemp("lm_slab"), tiny_lm)


def genai_greedy(folder, prompt_ids: list[int], n: int) -> list[int]:
    """onnxruntime-genai's own greedy search, as a user runs it."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt_ids], dtype=np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def torch_greedy(model, prompt_ids: list[int], n: int, eos: int | None) -> list[int]:
    folded, _ = fold_lm(model)
    with torch.no_grad():
        out = folded.generate(torch.tensor([prompt_ids]), max_new_tokens=n, eos_token_id=eos)
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("attention, norm", GENAI_VARIANTS)
def test_genai_greedy_tokens_equal_pytorch_generate(genai_exports, attention, norm):
    model, report, folder = genai_exports.get(attention, norm)
    # the export's own checks: ORT and genai's loop vs PyTorch, 64 greedy tokens through genai
    assert max(report.prefill_max_abs, report.step_max_abs, report.genai_max_abs) <= LOGIT_TOLERANCE
    assert report.state_max_abs <= 1e-3  # states are sums over 100 tokens
    assert report.greedy_match == (TOKENS, TOKENS)
    assert report.fold_max_abs is None if norm == "rmsnorm" else report.fold_max_abs <= 1e-4
    # and a text prompt through genai's search, as a user runs it
    prompt = ByteTokenizer().encode(PROMPT)
    tokens = genai_greedy(folder, prompt, TOKENS)
    assert len(tokens) == TOKENS and BYTE_EOS_ID not in tokens  # no early stop: all 64 tokens compared
    assert tokens == torch_greedy(model, prompt, TOKENS, eos=BYTE_EOS_ID)


@pytest.mark.parametrize("attention, norm", SLAB_VARIANTS)
def test_genai_generation_equals_slab_edge_generate(genai_exports, exports, attention, norm, capsys):
    _, _, genai_folder = genai_exports.get(attention, norm)
    _, _, slab_folder = exports.get(attention, norm)
    prompt = ByteTokenizer().encode(PROMPT)
    with open_lm(slab_folder, threads=1) as lm:
        slab_tokens = lm.generate(prompt, TOKENS, stop_at_eos=False).tokens
    assert genai_greedy(genai_folder, prompt, TOKENS) == slab_tokens
    outputs = []
    for folder in (slab_folder, genai_folder):
        argv = [
            "generate",
            str(folder),
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            str(TOKENS),
            "--threads",
            "1",
        ]
        assert cli.main(argv) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith(PROMPT)


#: per attention: the genai state of layer 0 (the tiny config: C 64, 4 heads of 16, GLA d_k 32 / d_v 64)
STATE_SHAPES = {
    "sla": {"conv_state": ["batch", 64, 3], "recurrent_state": ["batch", 4, 16, 17]},
    "gla": {"conv_state": ["batch", 1, 1], "recurrent_state": ["batch", 4, 8, 16]},
    "softmax": {"key": ["batch", 4, "past_len", 16], "value": ["batch", 4, "past_len", 16]},
}


@pytest.mark.parametrize("attention", sorted(STATE_SHAPES))
def test_folder_holds_one_folded_graph_in_genai_names(genai_exports, attention):
    model, report, folder = genai_exports.get(attention, "prepbn")
    assert sorted(p.name for p in folder.iterdir()) == sorted(report.files)
    assert sorted(report.files) == [
        "genai_config.json",
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    info = check_genai_folder(folder)
    kinds = STATE_SHAPES[attention]
    assert [(s.layer, s.name) for s in info.layout] == [(i, k) for i in range(2) for k in kinds]
    for spec in info.layout:
        assert list(spec.shape) == kinds[spec.name]
        assert spec.input == f"past_key_values.{spec.layer}.{spec.name}"
        assert spec.output == f"present.{spec.layer}.{spec.name}"
    decoder = info.config["model"]["decoder"]
    assert info.config["model"]["type"] == "llama" and decoder["num_hidden_layers"] == 2
    assert info.config["search"]["past_present_share_buffer"] is False
    proto = onnx.load(str(folder / "model.onnx"))
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    assert [i.name for i in proto.graph.input][0] == "input_ids"  # no attention_mask / position_ids
    assert info.metadata["task"] == "lm-genai"
    left = Counter(type(model.get_submodule(n)).__name__ for n in model.unfoldable_norms)  # GLA's g_norm
    assert info.metadata["unfolded_norms"] == dict(left) and info.metadata["folded"] is (not left)


def test_sla_recurrent_state_is_s_with_z_as_its_last_column(genai_exports):
    model, _, folder = genai_exports.get("sla", "prepbn")
    folded, _ = fold_lm(model)
    prompt = torch.randint(0, 256, (1, 90), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, (s0, z0, conv0, *_) = folded.prefill(prompt)  # layer 0: S [1, 4, 16, 16], z [1, 4, 16], conv
    with OnnxRuntimeSession(folder / "model.onnx", threads=1) as session:
        feeds = {
            s.name: np.zeros([1 if d is None else d for d in s.shape], np.float32) for s in session.inputs
        }
        feeds["input_ids"] = prompt.numpy()
        out = session.run(feeds)
    recurrent = out["present.0.recurrent_state"]
    np.testing.assert_allclose(recurrent[..., :16], s0.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(recurrent[..., 16], z0.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["present.0.conv_state"], conv0.numpy(), atol=1e-5)
    assert out["logits"].shape == (1, 1, 256)


def test_hybrid_maps_layer_by_layer_also_on_onnx_runtime_contrib_ops(genai_exports, tmp_path):
    model, _, folder = genai_exports.get("sla-LLLS", "prepbn")
    linear = [(i, k) for i in range(3) for k in ("conv_state", "recurrent_state")]
    assert [(s.layer, s.name) for s in check_genai_folder(folder).layout] == [
        *linear,
        (3, "key"),
        (3, "value"),
    ]
    # --ops ort: SLA on com.microsoft.LinearAttention / CausalConvWithState, the same genai state
    report = export_lm(model, tmp_path / "ort", meta=META, threads=1, format="genai", ops="ort")
    assert report.greedy_match == (TOKENS, TOKENS) and report.genai_max_abs <= LOGIT_TOLERANCE
    ops = {n.op_type for n in onnx.load(str(tmp_path / "ort" / "model.onnx")).graph.node}
    assert {"LinearAttention", "CausalConvWithState"} <= ops
    assert check_genai_folder(tmp_path / "ort").layout == check_genai_folder(folder).layout
    prompt = ByteTokenizer().encode(PROMPT)
    assert genai_greedy(tmp_path / "ort", prompt, TOKENS) == genai_greedy(folder, prompt, TOKENS)


def test_linear_layers_with_different_states_are_refused_before_anything_is_written(tmp_path):
    model = tiny_lm("sla", "prepbn")
    model.layers[1] = tiny_lm("gla", "prepbn").layers[1]  # SLA beside GLA: two conv_state shapes
    with pytest.raises(InputError, match="one conv_state shape for every linear layer"):
        export_lm(model, tmp_path / "never", meta=META, format="genai")
    assert not (tmp_path / "never").exists()


def test_without_onnxruntime_genai_the_export_says_what_it_did_not_compare(tmp_path, monkeypatch):
    model = tiny_lm("softmax", "rmsnorm")
    del model.layers[1:]  # one layer: a fast export
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)
    report = export_lm(model, tmp_path / "out", meta=META, threads=1, format="genai")
    assert report.genai_max_abs is None and report.step_max_abs <= LOGIT_TOLERANCE
    assert any(
        "greedy generation: not compared: onnxruntime-genai is not installed" in ln for ln in report.lines()
    )
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_genai_reads_our_byte_tokenizer_exactly(genai_exports):
    _, _, folder = genai_exports.get("sla", "prepbn")
    tokenizer = og.Tokenizer(og.Model(str(folder)))
    # genai's text API passes C strings, so NUL (genai's EOS for byte models) cannot go in
    text = "".join(map(chr, [*range(1, 0x800), *range(0xE000, 0x10000, 97), *range(0x10000, 0x110000, 4099)]))
    assert list(map(int, tokenizer.encode(text))) == list(text.encode("utf-8"))
    assert tokenizer.decode(np.array(list(text.encode("utf-8")), dtype=np.int32)) == text
    assert list(tokenizer.eos_token_ids) == [BYTE_EOS_ID]


def test_cli_exports_a_bpe_model_for_genai_and_refuses_a_mismatched_tokenizer(tmp_path, capsys):
    run = tmp_path / "run"
    cli_train_tiny(run, "--tokenizer bpe --bpe-vocab 300 --attention sla --norm prepbn")
    assert cli.main(["export-lm", str(run), "--threads", "1", "--parity-tokens", "16"]) == 0
    assert (
        cli.main(["export-lm", str(run), "--format", "genai", "--threads", "1", "--parity-tokens", "16"]) == 0
    )
    log = capsys.readouterr().out
    assert "onnxruntime-genai greedy loop vs PyTorch" in log and "(onnxruntime-genai)" in log
    assert f"to {run / 'genai'}" in log
    ours = BPETokenizer.from_file(run / "onnx" / "tokenizer.json")
    theirs = og.Tokenizer(og.Model(str(run / "genai")))
    for text in ("def main():\n    return  1\n", "x = 'é😀' <|endoftext|> y", "\t\tclass A(B):"):
        assert list(map(int, theirs.encode(text))) == ours.encode(text)
        assert theirs.decode(np.array(ours.encode(text), dtype=np.int32)) == ours.decode(ours.encode(text))
    outputs = []
    for folder in ("onnx", "genai"):
        argv = ["generate", str(run / folder), "--prompt", "def main():", "--max-new-tokens", "24"]
        assert cli.main([*argv, "--threads", "1"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    # same size, other merges: only the digest recorded at export tells them apart
    other = shutil.copytree(run / "genai", tmp_path / "other")
    texts = [f.read_text(encoding="utf-8") for f in sorted(Path(slab_edge.__file__).parent.glob("*/*.py"))]
    bpe = train_bpe(texts, vocab_size=300)  # slab-edge's own sources: other merges than the stdlib's
    assert bpe.vocab_size == 300
    (other / "tokenizer.json").write_text(bpe.to_json())
    assert cli.main(["generate", str(other), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer mismatch" in err and "other token ids" in err and err.count("\n") == 1
