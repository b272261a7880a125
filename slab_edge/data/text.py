"""Text corpora for SLAB-LM (torch-free): the Python standard library's own sources, or any text file/folder.

The default corpus needs no download: every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``
(site-packages excluded), ordered by relative path so every machine with the same Python builds the same
token stream. The held-out split is by file (a file is in validation when the CRC-32 of its relative path
falls in the lowest `val_fraction` of the range), so no file straddles train and validation and adding a
file never moves another. A single user file is split by position instead (its last `val_fraction`).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slab_edge.data.text_tokenizer import BPETokenizer, Tokenizer
from slab_edge.errors import InputError

STDLIB = "stdlib"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_SNIFF_BYTES = 8192


@dataclass
class TextCorpus:
    """Token streams of the train and validation splits (concatenated documents)."""

    train: np.ndarray  #: [N_train] token ids (int32)
    val: np.ndarray  #: [N_val] token ids (int32)
    source: str  #: "stdlib" or the user's path
    train_files: int
    val_files: int
    total_bytes: int
    fingerprint: str  #: sha256 over (relative path, size) of every file, in order
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "train_tokens": int(self.train.size),
            "val_tokens": int(self.val.size),
            "train_files": self.train_files,
            "val_files": self.val_files,
            "bytes": self.total_bytes,
            "fingerprint": self.fingerprint,
        }


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files() -> tuple[Path, list[Path]]:
    """(root, every *.py file of the standard library, sorted by relative POSIX path)."""
    root = stdlib_root()
    files = [
        f
        for f in root.rglob("*.py")
        if f.is_file() and not _SKIP_DIRS.intersection(f.relative_to(root).parts[:-1])
    ]
    return root, sorted(files, key=lambda f: f.relative_to(root).as_posix())


def text_files_in(path: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(root, text files): a file -> itself; a folder -> every non-hidden text file below it, sorted.

    A file counts as text when its first 8 KiB hold no NUL byte (binaries nearly always do).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"corpus {path} does not exist")
    if path.is_file():
        if not _looks_like_text(path):
            raise InputError(f"corpus file {path} is not text (it contains NUL bytes)")
        return path.parent, [path]
    files = []
    for f in path.rglob("*"):
        rel = f.relative_to(path).parts
        if any(p.startswith(".") for p in rel) or _SKIP_DIRS.intersection(rel[:-1]) or not f.is_file():
            continue
        if _looks_like_text(f):
            files.append(f)
    if not files:
        raise InputError(f"corpus folder {path} has no text files")
    return path, sorted(files, key=lambda f: f.relative_to(path).as_posix())


def is_validation_file(relative_path: str, val_fraction: float) -> bool:
    """Deterministic held-out choice by file: CRC-32 of the relative POSIX path below the fraction."""
    return zlib.crc32(relative_path.encode("utf-8")) < val_fraction * 2**32


def load_corpus(
    tokenizer: Tokenizer,
    source: str | os.PathLike | None = None,
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
) -> TextCorpus:
    """Read, split and tokenize a corpus.

    Args:
        tokenizer: byte or BPE tokenizer (BPE tokenizers put their EOS between documents).
        source: None or "stdlib" for the standard library's sources; else a text file or folder.
        val_fraction: share of files (or, for one file, of bytes) held out for validation.
        max_bytes: read files in order until this many bytes (short runs and tests); None = all.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if source is None or str(source) == STDLIB:
        root, files = stdlib_source_files()
        name = STDLIB
        if not files:
            raise InputError(f"no standard-library sources found under {root}; pass a text file or folder")
    else:
        root, files = text_files_in(source)
        name = str(source)

    docs: list[tuple[str, bytes]] = []
    total = 0
    digest = hashlib.sha256()
    for f in files:
        if max_bytes is not None and total >= max_bytes:
            break
        data = f.read_bytes()
        if max_bytes is not None:
            data = data[: max_bytes - total]
        if not data:
            continue
        rel = f.relative_to(root).as_posix()
        docs.append((rel, data))
        total += len(data)
        digest.update(f"{rel}\0{len(data)}\n".encode())
    if total == 0:
        raise InputError(f"corpus {name} has no text (every file is empty)")

    notes = []
    if len(docs) == 1:
        # one document: hold out its tail, cut on a line break so no line straddles the split
        rel, data = docs[0]
        cut = int(len(data) * (1.0 - val_fraction))
        newline = data.rfind(b"\n", 0, cut)
        cut = newline + 1 if newline > 0 else cut
        train_docs, val_docs = [data[:cut]], [data[cut:]]
        notes.append(f"single file: validation is its last {val_fraction:.0%} (by bytes)")
    else:
        train_docs = [d for rel, d in docs if not is_validation_file(rel, val_fraction)]
        val_docs = [d for rel, d in docs if is_validation_file(rel, val_fraction)]
        if not val_docs:  # tiny folders: hold out the last file rather than nothing
            val_docs, train_docs = train_docs[-1:], train_docs[:-1]
            notes.append("no file fell in the validation fraction: the last file is held out")
        if not train_docs:
            train_docs, val_docs = val_docs[:-1], val_docs[-1:]
    return TextCorpus(
        train=_tokenize(tokenizer, train_docs),
        val=_tokenize(tokenizer, val_docs),
        source=name,
        train_files=len(train_docs) if len(docs) > 1 else 1,
        val_files=len(val_docs) if len(docs) > 1 else 1,
        total_bytes=total,
        fingerprint=digest.hexdigest(),
        notes=notes,
    )


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """[V] how many bytes of text each token id stands for (0 for separators), for bits per byte."""
    return np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)


def bits_per_byte(mean_loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """bpb = loss (nats/token) * tokens / bytes / ln 2."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs a positive byte count")
    return float(mean_loss_nats) * n_tokens / n_bytes / float(np.log(2.0))


def _tokenize(tokenizer: Tokenizer, docs: list[bytes]) -> np.ndarray:
    if isinstance(tokenizer, BPETokenizer):
        ids = tokenizer.encode_batch([d.decode("utf-8", errors="replace") for d in docs])
        eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
        flat = [t for doc in ids for t in (*doc, *eos)]
        return np.asarray(flat, dtype=np.int32)
    if not docs:
        return np.zeros(0, dtype=np.int32)
    return np.frombuffer(b"".join(docs), dtype=np.uint8).astype(np.int32)


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\0" not in f.read(_SNIFF_BYTES)
    except OSError:
        return False
