"""The torch-free generation loop on a toy export-lm folder: state handling, sampling, errors, the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from lm_toy import VOCAB, make_toy_lm, reference_logits

from slab_edge import cli
from slab_edge.data.text_tokenizer import BPETokenizer, ByteTokenizer, train_bpe
from slab_edge.errors import InputError
from slab_edge.runtime.generate import Sampler, filtered_probs, lm_files, open_lm

PROMPT = [104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33]  # "hello world!": 12 tokens


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return make_toy_lm(tmp_path_factory.mktemp("toy") / "lm", max_prompt_len=5)


@pytest.fixture()
def lm(toy_dir):
    with open_lm(toy_dir, threads=1) as model:
        yield model


def test_prefill_in_pieces_equals_reference_and_token_by_token(lm):
    logits, state = lm.prefill(PROMPT)  # 12 tokens through a graph that takes 5 per call
    np.testing.assert_allclose(logits, reference_logits(PROMPT), atol=1e-4)
    assert state["past.0.kv"].shape == (1, 2, len(PROMPT), 3)  # the KV cache grew by every token
    step_state = lm.initial_state()
    for token in PROMPT:
        step_logits, step_state = lm.step(token, step_state)
    np.testing.assert_allclose(step_logits, logits, atol=1e-4)
    np.testing.assert_allclose(step_state["past.0.S"], state["past.0.S"], atol=1e-5)


def test_greedy_generation_follows_the_argmax_of_the_reference(lm):
    result = lm.generate(PROMPT, max_new_tokens=6)
    ids = list(PROMPT)
    for token in result.tokens:
        assert token == int(np.argmax(reference_logits(ids)))
        ids.append(token)
    assert len(result.tokens) == 6
    assert result.text == ByteTokenizer().decode(result.tokens)


def test_sampling_is_reproducible_from_the_seed_and_differs_across_seeds(lm):
    runs = [lm.generate(PROMPT, 16, Sampler(temperature=1.0, top_k=40, seed=s)).tokens for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_filtered_probs_top_k_and_top_p():
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.0625, 0.0625]))
    np.testing.assert_allclose(filtered_probs(logits), [0.5, 0.25, 0.125, 0.0625, 0.0625])
    np.testing.assert_allclose(filtered_probs(logits, top_k=2), [2 / 3, 1 / 3, 0, 0, 0])
    # nucleus 0.7: 0.5 is not enough, 0.5 + 0.25 is -> two tokens kept
    np.testing.assert_allclose(filtered_probs(logits, top_p=0.7), [2 / 3, 1 / 3, 0, 0, 0])
    np.testing.assert_allclose(filtered_probs(logits, top_p=0.01), [1, 0, 0, 0, 0])


def test_sampler_respects_top_k_over_many_draws():
    logits = np.arange(10, dtype=np.float32)
    sampler = Sampler(temperature=5.0, top_k=3, seed=0)
    draws = {sampler(logits) for _ in range(300)}
    assert draws == {7, 8, 9}


def test_sampler_rejects_bad_settings():
    for kwargs in ({"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(InputError):
            Sampler(**kwargs)


def test_empty_prompt_is_an_input_error(lm):
    with pytest.raises(InputError, match="empty prompt"):
        lm.generate([], 4)


def test_one_prefill_call_longer_than_the_graph_maximum_is_refused(lm):
    with pytest.raises(InputError, match="longer than the prefill graph's maximum of 5"):
        lm.prefill_call(np.array(PROMPT), lm.initial_state())


def test_state_of_wrong_shape_or_dtype_is_refused_by_name(lm):
    state = lm.initial_state()
    bad_shape = dict(state, **{"past.0.S": np.zeros((1, 3), np.float32)})
    with pytest.raises(InputError, match=r"past\.0\.S.*shape"):
        lm.prefill(PROMPT, bad_shape)
    bad_dtype = dict(state, **{"past.0.S": np.zeros((1, 8), np.float64)})
    with pytest.raises(InputError, match=r"past\.0\.S.*dtype"):
        lm.prefill(PROMPT, bad_dtype)
    with pytest.raises(InputError, match="missing"):
        lm.prefill(PROMPT, {"past.0.S": state["past.0.S"]})
    # the session itself refuses a bad state on a single step too (same message style)
    with pytest.raises(InputError, match=r"past\.0\.S"):
        lm.step(1, bad_dtype)


def test_token_ids_outside_the_vocabulary_are_refused(lm):
    with pytest.raises(InputError, match="token ids"):
        lm.prefill([1, VOCAB])


def test_tokenizer_that_does_not_match_the_model_is_refused(toy_dir, tmp_path):
    bpe = train_bpe(["def f(x):\n    return x\n" * 20], vocab_size=300)
    with pytest.raises(InputError, match="tokenizer mismatch"):
        open_lm(toy_dir, tokenizer=bpe)
    # metadata names a BPE file whose vocab size differs from the model's
    folder = make_toy_lm(tmp_path / "bpe_lm", tokenizer="bpe:tokenizer.json")
    bpe.save(folder)
    with pytest.raises(InputError, match="vocab size 256"):
        open_lm(folder)
    assert isinstance(BPETokenizer.from_file(folder / "tokenizer.json"), BPETokenizer)


def test_graphs_of_the_wrong_task_or_missing_files_are_refused(tmp_path):
    folder = make_toy_lm(tmp_path / "swapped", overrides={"lm-decode": {"task": "lm-prefill"}})
    with pytest.raises(InputError, match="expected a lm-decode graph"):
        open_lm(folder)
    (tmp_path / "half").mkdir()
    with pytest.raises(InputError, match="decode.onnx"):
        lm_files(tmp_path / "half")


def test_open_lm_accepts_either_file(toy_dir):
    assert lm_files(toy_dir / "decode.onnx") == lm_files(toy_dir)
    assert lm_files(toy_dir / "prefill.onnx") == lm_files(toy_dir)


def test_cli_streams_text_and_reports_tokens_per_second(toy_dir, capsys):
    code = cli.main(
        ["generate", str(toy_dir), "--prompt", "hello world!", "--max-new-tokens", "8", "--no-echo"]
    )
    captured = capsys.readouterr()
    assert code == 0
    with open_lm(toy_dir) as model:
        assert captured.out == model.generate(PROMPT, 8).text + "\n"
    assert "tokens/s" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "x", "--top-p", "2"], "argument --top-p: must be a number in (0, 1], got 2"),
        (["--prompt", "x", "--tokenizer", "missing.json"], "not found"),
    ],
)
def test_cli_bad_input_exits_non_zero_with_one_line(toy_dir, capsys, argv, message):
    assert cli.main(["generate", str(toy_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_generate_command_runs_without_torch(toy_dir):
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
        sys.meta_path.insert(0, Block())
        from slab_edge import cli
        sys.exit(cli.main(["generate", {str(toy_dir)!r}, "--prompt", "ab", "--max-new-tokens", "3"]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch" not in proc.stderr
