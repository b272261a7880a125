"""Tokenizers for SLAB-LM (torch-free): raw bytes (vocab 256) or a byte-level BPE trained locally.

Both map every token id to the exact bytes it stands for (`token_bytes`), so generation can stream text
through an incremental UTF-8 decoder and bits-per-byte can count the bytes a span of tokens covers.

The tokenizer is named by a *spec* string, the value stored in the ONNX metadata key ``tokenizer``:
``"byte"`` or ``"bpe:<file name beside the model>"`` (a `tokenizers` JSON file).
The BPE path needs the `tokenizers` package (imported lazily); the byte path needs nothing.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from slab_edge.errors import InputError

BYTE_SPEC = "byte"
BPE_PREFIX = "bpe:"
DEFAULT_BPE_FILE = "tokenizer.json"
#: document separator of BPE tokenizers (the byte tokenizer has no room for one: vocab is exactly 256)
EOS_TOKEN = "<|endoftext|>"


def byte_level_alphabet() -> dict[int, str]:
    """byte -> the printable character byte-level BPE uses for it (the GPT-2 convention `tokenizers` follows).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to code points 256, 257, ...
    in byte order, so every byte has a visible, whitespace-free character.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


class ByteTokenizer:
    """One token per byte of UTF-8 text; ids 0..255."""

    kind = "byte"
    vocab_size = 256
    eos_id: int | None = None

    @property
    def spec(self) -> str:
        return BYTE_SPEC

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        return list(data)

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([int(token_id)])

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, folder: str | os.PathLike) -> str:
        """Nothing to write; returns the spec for the metadata."""
        return BYTE_SPEC

    def to_json(self) -> str:
        """This tokenizer as a Hugging Face tokenizer.json: a byte-level BPE of the 256 bytes, no merges.

        Id b is the byte-level character of byte b, so any tool reading the file (onnxruntime-genai,
        transformers) maps text to exactly our ids and ids back to exactly their bytes.
        """
        tokenizers = _import_tokenizers()
        alphabet = byte_level_alphabet()
        tok = tokenizers.Tokenizer(
            tokenizers.models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[])
        )
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        return tok.to_str()


class BPETokenizer:
    """A byte-level BPE tokenizer (`tokenizers` JSON file); ids map back to exact bytes."""

    kind = "bpe"

    def __init__(self, tokenizer, file_name: str = DEFAULT_BPE_FILE) -> None:
        self._tok = tokenizer
        self.file_name = file_name
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self.eos_id = tokenizer.token_to_id(EOS_TOKEN)
        char_to_byte = {c: b for b, c in byte_level_alphabet().items()}
        special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        self._bytes: list[bytes] = [b""] * self.vocab_size
        for token, idx in tokenizer.get_vocab(with_added_tokens=True).items():
            if token in special:
                continue  # separators carry no text
            try:
                self._bytes[idx] = bytes(char_to_byte[c] for c in token)
            except KeyError:
                raise InputError(
                    f"tokenizer {file_name} is not a byte-level BPE (token {token!r} has a character "
                    "outside the byte alphabet)"
                ) from None

    @property
    def spec(self) -> str:
        return BPE_PREFIX + self.file_name

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        tokenizers = _import_tokenizers()
        path = Path(path)
        if not path.is_file():
            raise InputError(f"tokenizer file {path} not found")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises plain Exceptions with its own message
            raise InputError(f"cannot read tokenizer {path}: {err}") from None
        return cls(tok, path.name)

    @classmethod
    def from_json(cls, text: str, file_name: str = DEFAULT_BPE_FILE) -> BPETokenizer:
        """From the JSON text of a tokenizer file (e.g. sent from another process)."""
        tokenizers = _import_tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as err:
            raise InputError(f"cannot read tokenizer {file_name}: {err}") from None
        return cls(tok, file_name)

    def to_json(self) -> str:
        return self._tok.to_str()

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_bytes(self, data: bytes) -> list[int]:
        # BPE works on text: undecodable bytes (a few latin-1 test files) become U+FFFD
        return self.encode(data.decode("utf-8", errors="replace"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[int(token_id)]

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self._bytes[int(i)] for i in ids).decode("utf-8", errors="replace")

    def save(self, folder: str | os.PathLike) -> str:
        """Write `<folder>/<file_name>` atomically; returns the spec for the metadata."""
        from slab_edge.io import atomic_write_text

        atomic_write_text(Path(folder) / self.file_name, self.to_json())
        return self.spec


Tokenizer = ByteTokenizer | BPETokenizer


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, file_name: str = DEFAULT_BPE_FILE
) -> BPETokenizer:
    """Train a byte-level BPE on `texts` (locally, no download). vocab_size counts the 256 bytes + EOS."""
    tokenizers = _import_tokenizers()
    if vocab_size < 258:
        raise InputError(f"BPE vocab size must be at least 258 (256 bytes + EOS + 1 merge), got {vocab_size}")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok, file_name)


def load_tokenizer(spec: str, folder: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer a spec names ("byte" or "bpe:<file>", the file looked up in `folder`)."""
    if spec == BYTE_SPEC:
        return ByteTokenizer()
    if spec.startswith(BPE_PREFIX):
        name = spec[len(BPE_PREFIX) :]
        path = Path(name) if folder is None else Path(folder) / name
        return BPETokenizer.from_file(path)
    raise InputError(f"unknown tokenizer {spec!r} (expected 'byte' or 'bpe:<file>')")


def tokenizer_from_path(path: str | os.PathLike | None) -> Tokenizer:
    """A user's --tokenizer argument: None or 'byte' -> bytes, a .json file -> BPE."""
    if path is None or str(path) == BYTE_SPEC:
        return ByteTokenizer()
    return BPETokenizer.from_file(path)


def check_tokenizer_matches(
    tokenizer: Tokenizer, spec: str | None, vocab_size: int | None, where: str
) -> None:
    """Raise InputError when `tokenizer` is not the one a model was trained/exported with."""
    if spec:
        expected_kind = "byte" if spec == BYTE_SPEC else "bpe" if spec.startswith(BPE_PREFIX) else spec
        if tokenizer.kind != expected_kind:
            raise InputError(
                f"tokenizer mismatch: {where} expects a {spec!r} tokenizer, got a {tokenizer.kind} one"
            )
    if vocab_size is not None and int(vocab_size) != tokenizer.vocab_size:
        raise InputError(
            f"tokenizer mismatch: {where} has vocab size {vocab_size}, "
            f"the tokenizer has {tokenizer.vocab_size}"
        )


class StreamDecoder:
    """Token ids in, text out as soon as it forms whole UTF-8 characters (a character may span tokens)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        for i in ids:
            piece = self.push(i)
            if piece:
                yield piece
        tail = self.flush()
        if tail:
            yield tail


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise InputError(
            "BPE tokenizers need the 'tokenizers' package: pip install 'slab-edge[lm]' (or tokenizers)"
        ) from None
    return tokenizers
