"""Text corpora and tokenizers (torch-free): the stdlib default, user folders, splits, BPE, bits per byte."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slab_edge.data.text import (
    bits_per_byte,
    is_validation_file,
    load_corpus,
    stdlib_source_files,
    text_files_in,
    token_byte_lengths,
)
from slab_edge.data.text_tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    StreamDecoder,
    byte_level_alphabet,
    check_tokenizer_matches,
    load_tokenizer,
    train_bpe,
)
from slab_edge.errors import InputError

SMALL = 300_000  # bytes of the stdlib corpus the tests read


def test_stdlib_files_are_sorted_python_sources_without_site_packages():
    root, files = stdlib_source_files()
    assert len(files) > 100, "the standard library should have hundreds of modules"
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel)
    assert all(r.endswith(".py") and "site-packages" not in r for r in rel)


def test_stdlib_corpus_is_deterministic_and_split_by_file():
    a = load_corpus(ByteTokenizer(), max_bytes=SMALL)
    b = load_corpus(ByteTokenizer(), max_bytes=SMALL)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    assert a.train.size + a.val.size == a.total_bytes == SMALL  # bytes are tokens
    assert a.val_files >= 1 and a.train_files > a.val_files
    assert a.train.dtype == np.int32 and a.train.max() < 256


def test_validation_choice_depends_only_on_the_relative_path():
    names = [f"pkg/mod_{i}.py" for i in range(2000)]
    chosen = [n for n in names if is_validation_file(n, 0.05)]
    assert 50 < len(chosen) < 150  # about 5 %
    assert chosen == [n for n in names if is_validation_file(n, 0.05)]


def test_user_folder_skips_binaries_and_hidden_files(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n" * 50)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second document\n" * 50)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    root, files = text_files_in(tmp_path)
    assert [f.relative_to(root).as_posix() for f in files] == ["a.txt", "sub/b.md"]
    corpus = load_corpus(ByteTokenizer(), tmp_path, val_fraction=0.05)
    assert corpus.train.size > 0 and corpus.val.size > 0  # two files: one is held out whatever the hash


def test_single_file_is_split_by_its_tail_on_a_line_break(tmp_path):
    text = "".join(f"line {i}\n" for i in range(1000))
    path = tmp_path / "one.txt"
    path.write_text(text)
    corpus = load_corpus(ByteTokenizer(), path, val_fraction=0.1)
    train = bytes(corpus.train.astype(np.uint8)).decode()
    val = bytes(corpus.val.astype(np.uint8)).decode()
    assert train + val == text
    assert train.endswith("\n") and 0.05 < len(val) / len(text) < 0.15


@pytest.mark.parametrize("kind", ["empty", "binary", "empty-files", "missing"])
def test_corpus_without_text_is_a_clear_error(tmp_path, kind):
    folder = tmp_path / "corpus"
    if kind != "missing":
        folder.mkdir()
    if kind == "binary":
        (folder / "x.bin").write_bytes(b"\x00" * 64)
    if kind == "empty-files":
        (folder / "a.txt").write_text("")
        (folder / "b.txt").write_text("")
    with pytest.raises(InputError, match="corpus"):
        load_corpus(ByteTokenizer(), folder)


def test_bad_val_fraction_is_refused():
    with pytest.raises(InputError, match="val_fraction"):
        load_corpus(ByteTokenizer(), val_fraction=0.0)


def test_byte_level_alphabet_is_a_bijection_onto_printable_characters():
    table = byte_level_alphabet()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A"


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    corpus = load_corpus(ByteTokenizer(), max_bytes=SMALL)
    text = bytes(corpus.train.astype(np.uint8)).decode("utf-8", errors="replace")
    return train_bpe([text[i : i + 4000] for i in range(0, len(text), 4000)], vocab_size=400)


def test_bpe_round_trips_bytes_exactly_and_saves_beside_the_model(bpe, tmp_path):
    text = "def naïve(x):\n    return x + '€😀'  # ünïcode\n"
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode())  # merges learned something
    assert bpe.decode(ids) == text
    assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode()
    spec = bpe.save(tmp_path)
    assert spec == "bpe:tokenizer.json"
    again = load_tokenizer(spec, tmp_path)
    assert again.encode(text) == ids and again.vocab_size == bpe.vocab_size == 400
    assert again.eos_id is not None and bpe.token_bytes(again.eos_id) == b""


def test_bpe_corpus_puts_eos_between_documents(bpe, tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    corpus = load_corpus(bpe, tmp_path)
    stream = np.concatenate([corpus.train, corpus.val])
    assert int((stream == bpe.eos_id).sum()) == 2


def test_byte_tokenizer_as_hf_json_maps_every_byte_to_its_own_id():
    tokenizers = pytest.importorskip("tokenizers", reason="needs tokenizers: pip install 'slab-edge[lm]'")
    text_json = ByteTokenizer().to_json()
    hf = tokenizers.Tokenizer.from_str(text_json)
    assert hf.get_vocab_size(with_added_tokens=True) == 256
    # all 256 ids, as our BPE reader sees the file: exact single bytes, including the non-UTF-8 ones
    as_bpe = BPETokenizer.from_json(text_json)
    assert [as_bpe.token_bytes(b) for b in range(256)] == [bytes([b]) for b in range(256)]
    # text -> ids: every code point class, NUL and controls included, is its UTF-8 bytes
    text = "".join(map(chr, [*range(0, 0x800), *range(0xE000, 0x10000, 97), *range(0x10000, 0x110000, 4099)]))
    assert hf.encode(text).ids == ByteTokenizer().encode(text) == list(text.encode("utf-8"))
    assert hf.decode(list(text.encode("utf-8"))) == text
    # ids -> text for byte sequences that are not UTF-8: the same replacement as Python's (and ours)
    rng = np.random.default_rng(0)
    for seq in [[0xFF], [0x61, 0xC3, 0x62], [0xE2, 0x82], [0x80, 0x80, 0x41], *rng.integers(0, 256, (50, 9))]:
        ids = [int(b) for b in seq]
        assert hf.decode(ids) == ByteTokenizer().decode(ids) == bytes(ids).decode("utf-8", errors="replace")


def test_stream_decoder_waits_for_whole_characters():
    tok = ByteTokenizer()
    ids = tok.encode("a€b")  # € is three bytes
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    assert pieces == ["a", "", "", "€", "b"]
    assert "".join(StreamDecoder(tok).stream(ids)) == "a€b"


def test_tokenizer_mismatch_is_detected(bpe):
    check_tokenizer_matches(ByteTokenizer(), "byte", 256, "m")
    with pytest.raises(InputError, match="expects a 'byte'"):
        check_tokenizer_matches(bpe, "byte", 256, "m")
    with pytest.raises(InputError, match="vocab size 512"):
        check_tokenizer_matches(bpe, "bpe:tokenizer.json", 512, "m")
    with pytest.raises(InputError, match="unknown tokenizer"):
        load_tokenizer("sentencepiece")


def test_bits_per_byte_formula_and_token_byte_lengths(bpe):
    assert bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)
    assert bits_per_byte(math.log(256), 10, 40) == pytest.approx(2.0)  # 8 bits per token, 4 bytes per token
    lengths = token_byte_lengths(bpe)
    ids = bpe.encode("import os\n")
    assert int(lengths[ids].sum()) == len(b"import os\n")
    np.testing.assert_array_equal(token_byte_lengths(ByteTokenizer()), np.ones(256))
