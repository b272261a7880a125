"""onnxruntime-genai folders on a toy model (onnx.helper, no torch): generation, the folder check, errors."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import pytest
from lm_toy import VOCAB, genai_state_layout, make_toy_genai, reference_logits
from runtime_helpers import run_blocked

from slab_edge import cli
from slab_edge.data.text_tokenizer import ByteTokenizer, train_bpe
from slab_edge.errors import BackendError, InputError
from slab_edge.runtime.genai import (
    BYTE_EOS_ID,
    check_genai_folder,
    check_genai_layout,
    import_genai,
    open_genai,
    tokenizer_digest,
)
from slab_edge.runtime.generate import Sampler, StateSpec
from slab_edge.runtime.metadata import encode_metadata

PROMPT = list(b"hello world!")


@pytest.fixture(scope="module")
def toy_genai(tmp_path_factory):
    return make_toy_genai(tmp_path_factory.mktemp("toy_genai") / "lm")


@pytest.fixture
def needs_genai():
    pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai: pip install 'slab-edge[genai]'")


def reference_greedy(prompt: list[int], n: int, eos: int = BYTE_EOS_ID) -> list[int]:
    """Greedy tokens of the toy's float64 reference, ending after genai's EOS if it comes first."""
    ids, out = list(prompt), []
    for _ in range(n):
        token = int(np.argmax(reference_logits(ids)))
        out.append(token)
        ids.append(token)
        if token == eos:
            break
    return out


def test_genai_greedy_generation_follows_the_reference(toy_genai, needs_genai):
    with open_genai(toy_genai, threads=1) as lm:
        result = lm.generate(PROMPT, 24)
    assert result.tokens == reference_greedy(PROMPT, 24)
    assert result.text == ByteTokenizer().decode(t for t in result.tokens if t != BYTE_EOS_ID)
    assert result.prompt_tokens == len(PROMPT)


def test_genai_sampling_is_reproducible_from_the_seed(toy_genai, needs_genai):
    with open_genai(toy_genai, threads=1) as lm:
        runs = [lm.generate(PROMPT, 12, Sampler(temperature=20.0, seed=s)).tokens for s in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert all(0 <= t < VOCAB for t in runs[0])


def test_cli_generates_from_a_genai_folder(toy_genai, needs_genai, capsys):
    argv = [
        "generate",
        str(toy_genai),
        "--prompt",
        "hello world!",
        "--max-new-tokens",
        "24",
        "--threads",
        "1",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    expected = ByteTokenizer().decode(t for t in reference_greedy(PROMPT, 24) if t != BYTE_EOS_ID)
    assert out.out == "hello world!" + expected + "\n"
    assert "tokens/s" in out.err
    assert cli.main(["generate", str(toy_genai), "--prompt", "x", "--no-stop"]) == 2
    err = capsys.readouterr().err
    assert "always stops at its EOS" in err and err.count("\n") == 1


def _set_metadata(folder, **values) -> None:
    model = onnx.load(str(folder / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(encode_metadata(values))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(folder / "model.onnx"))


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _other_bpe(folder) -> None:
    bpe = train_bpe(["def f(x):\n    return x + 1\n" * 40], vocab_size=300)
    (folder / "tokenizer.json").write_text(bpe.to_json())


def _swapped_ids(folder) -> None:
    def swap(data):
        vocab = data["model"]["vocab"]
        a, b = "a", "b"
        vocab[a], vocab[b] = vocab[b], vocab[a]

    _edit_json(folder / "tokenizer.json", swap)


def _wrong_state_shape(folder) -> None:
    layout = genai_state_layout()
    layout[0]["shape"] = ["batch", 1, 2]
    _set_metadata(folder, state_layout=layout)


BAD_FOLDERS = {
    "tokenizer-size": (_other_bpe, r"tokenizer mismatch: .*json has 2[6-9]\d token ids .* 0\.\.255"),
    "tokenizer-ids": (_swapped_ids, "tokenizer mismatch: .*other token ids"),
    "state-shape": (
        _wrong_state_shape,
        r"state past_key_values\.0\.conv_state has shape \[\?, 1, 1\] in the graph, its state_layout says "
        r"\[\?, 1, 2\]",
    ),
    "share-buffer": (
        lambda f: _edit_json(
            f / "genai_config.json", lambda d: d["search"].update(past_present_share_buffer=True)
        ),
        "past_present_share_buffer must be false",
    ),
    "state-names": (
        lambda f: _edit_json(
            f / "genai_config.json",
            lambda d: d["model"]["decoder"]["inputs"].update(past_conv_names="past.%d.conv"),
        ),
        r"layer 0's conv_state is past_key_values\.0\.conv_state .* genai feed past\.0\.conv",
    ),
    "vocab-size": (
        lambda f: _edit_json(f / "genai_config.json", lambda d: d["model"].update(vocab_size=300)),
        "says vocab_size 300, the graph was exported with 256",
    ),
    "eos": (
        lambda f: _edit_json(f / "genai_config.json", lambda d: d["model"].update(eos_token_id=5)),
        "eos_token_id is 5, the tokenizer's EOS is 0",
    ),
    "tokenizer-config": (lambda f: (f / "tokenizer_config.json").unlink(), "tokenizer_config.json not found"),
    "not-genai": (lambda f: (f / "genai_config.json").unlink(), "no genai_config.json"),
    "task": (lambda f: _set_metadata(f, task="lm-decode"), "not a slab-edge genai graph"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_folder_check_names_what_does_not_fit(toy_genai, tmp_path, case):
    mutate, message = BAD_FOLDERS[case]
    folder = shutil.copytree(toy_genai, tmp_path / case)
    mutate(folder)
    with pytest.raises(InputError, match=message):
        check_genai_folder(folder)


def test_cli_refuses_a_folder_with_a_mismatched_tokenizer_in_one_line(toy_genai, tmp_path, capsys):
    folder = shutil.copytree(toy_genai, tmp_path / "mismatch")
    _other_bpe(folder)
    assert cli.main(["generate", str(folder), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer mismatch" in err and err.count("\n") == 1


def test_linear_layers_of_different_state_shapes_are_refused():
    def spec(layer, name, shape):
        return StateSpec.from_json(
            {"layer": layer, "name": name, "input": f"in.{layer}", "output": f"out.{layer}",
             "shape": ["batch", *shape], "dtype": "float32"}
        )  # fmt: skip

    layout = [spec(0, "conv_state", [64, 3]), spec(1, "conv_state", [1, 1])]
    with pytest.raises(InputError, match=r"one conv_state shape for every linear layer.*layer 0.*layer 1"):
        check_genai_layout(layout, "test")
    with pytest.raises(InputError, match="kind 'S'"):
        check_genai_layout([spec(0, "S", [4, 16, 16])], "test")


def test_tokenizer_digest_ignores_formatting_but_not_ids():
    text = ByteTokenizer().to_json()
    data = json.loads(text)
    assert tokenizer_digest(json.dumps(data, indent=4, sort_keys=True)) == tokenizer_digest(text)
    data["model"]["merges"] = [["a", "b"]]
    with_pair = tokenizer_digest(data)
    data["model"]["merges"] = ["a b"]
    assert tokenizer_digest(data) == with_pair  # both spellings `tokenizers` writes
    data["model"]["vocab"]["a"] += 1
    assert tokenizer_digest(data) != with_pair


def test_missing_onnxruntime_genai_says_how_to_install(toy_genai, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # makes the import fail
    with pytest.raises(BackendError, match=r"pip install 'slab-edge\[genai\]'"):
        import_genai()
    with pytest.raises(BackendError, match="onnxruntime-genai is not installed"):
        open_genai(toy_genai)


def test_genai_folder_generates_without_torch(toy_genai, needs_genai):
    proc = run_blocked(
        f"""
        from slab_edge import cli
        sys.exit(cli.main(["generate", {str(toy_genai)!r}, "--prompt", "ab", "--max-new-tokens", "3"]))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "torch" not in proc.stderr
