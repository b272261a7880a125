"""Text generation from an exported SLAB-LM (torch-free): prefill + decode-step graphs on any session backend.

An export (`slab-edge export-lm`) is a folder with two graphs that share one state layout:

    prefill.onnx  input_ids [B, T] (T <= metadata max_prompt_len, or any T when null) + past.*  ->
                  logits [B, vocab] (last position) + present.*
    decode.onnx   input_ids [B, 1] + past.*  ->  logits [B, vocab] + present.*

past.{layer}.{name} / present.{layer}.{name} are the per-layer state tensors listed in the metadata key
``state_layout`` ({layer, name, input, output, shape, dtype}; symbolic dims "batch" and "past_len").
Linear attention carries a constant-size state (SLA: S, z, conv; GLA: S); the softmax baseline carries
its KV cache, whose "past_len" grows by one per token; a hybrid carries both, layer by layer, its KV caches
sharing one past_len. A prompt longer than the prefill graph's per-call
maximum is fed in pieces of that length, each carrying the state of the one before (the chunkwise form
computes exactly this), so the prompt length is bounded only by memory.

    lm = open_lm("exported/", threads=2)
    result = lm.generate(lm.tokenizer.encode("def main("), max_new_tokens=64,
                         sampler=Sampler(temperature=0.8, top_p=0.95, seed=0), on_text=print)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slab_edge.data.text_tokenizer import StreamDecoder, Tokenizer, check_tokenizer_matches, load_tokenizer
from slab_edge.errors import InputError
from slab_edge.runtime.loader import load
from slab_edge.runtime.session import Session

PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
INPUT_IDS = "input_ids"
LOGITS = "logits"
#: symbolic dims of state_layout shapes
BATCH_DIM = "batch"
PAST_DIM = "past_len"

State = dict[str, np.ndarray]  # {past.* input name: array}


# ---------------------------------------------------------------------------------------------------------
# Sampling (numpy, seeded)


@dataclass
class Sampler:
    """Next-token choice from logits: greedy, or temperature with optional top-k and top-p (nucleus).

    temperature <= 0 means greedy (argmax). top_k = 0 and top_p = 1.0 disable those filters.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        self.rng = np.random.default_rng(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def __call__(self, logits: np.ndarray) -> int:
        """logits [V] -> token id."""
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.greedy:
            return int(np.argmax(logits))
        probs = filtered_probs(logits / self.temperature, self.top_k, self.top_p)
        # inverse-CDF draw: one uniform number per token, reproducible from the seed
        cdf = np.cumsum(probs)
        return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), probs.size - 1))


def filtered_probs(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Softmax of logits [V] after keeping the top_k largest and the smallest nucleus of mass >= top_p.

    Removed tokens get probability 0; the most likely token always survives.
    """
    logits = np.asarray(logits, dtype=np.float64)
    keep = np.ones(logits.size, dtype=bool)
    if 0 < top_k < logits.size:
        kth = np.partition(logits, -top_k)[-top_k]
        keep &= logits >= kth
    masked = np.where(keep, logits, -np.inf)
    probs = np.exp(masked - masked.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        mass_before = np.cumsum(probs[order]) - probs[order]
        drop = order[mass_before >= top_p]  # tokens only needed after the nucleus is already full
        probs[drop] = 0.0
        probs /= probs.sum()
    return probs


# ---------------------------------------------------------------------------------------------------------
# State layout


@dataclass(frozen=True)
class StateSpec:
    """One per-layer state tensor: graph input `input` (past.*) and output `output` (present.*)."""

    layer: int
    name: str
    input: str
    output: str
    shape: tuple[int | str, ...]
    dtype: np.dtype

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> StateSpec:
        try:
            return cls(
                layer=int(entry["layer"]),
                name=str(entry["name"]),
                input=str(entry["input"]),
                output=str(entry["output"]),
                shape=tuple(entry["shape"]),
                dtype=np.dtype(entry["dtype"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"bad state_layout entry {dict(entry)!r} in the model metadata ({err})"
            ) from None

    @property
    def grows(self) -> bool:
        return PAST_DIM in self.shape

    def zeros(self, batch: int = 1) -> np.ndarray:
        dims = {BATCH_DIM: batch, PAST_DIM: 0}
        return np.zeros([dims[d] if isinstance(d, str) else d for d in self.shape], dtype=self.dtype)

    def describe(self) -> str:
        return f"{self.input}[{', '.join(str(d) for d in self.shape)}] {self.dtype.name}"

    def check(self, array: Any, batch: int | None = None) -> None:
        """Raise InputError unless `array` fits this entry (dtype, rank, fixed dims, batch)."""
        if not isinstance(array, np.ndarray):
            raise InputError(f"state {self.input!r}: expected a numpy array, got {type(array).__name__}")
        if array.dtype != self.dtype:
            raise InputError(
                f"state {self.input!r}: expected dtype {self.dtype.name}, got {array.dtype.name}"
            )
        ok = array.ndim == len(self.shape) and all(
            isinstance(want, str) or want == got for want, got in zip(self.shape, array.shape)
        )
        if ok and batch is not None and BATCH_DIM in self.shape:
            ok = array.shape[self.shape.index(BATCH_DIM)] == batch
        if not ok:
            raise InputError(
                f"state {self.input!r}: expected shape {self.describe()}, got {list(array.shape)}"
            )


def parse_state_layout(metadata: Mapping[str, Any], where: str) -> list[StateSpec]:
    layout = metadata.get("state_layout")
    if not isinstance(layout, list) or not layout:
        raise InputError(f"{where} has no state_layout metadata: not a SLAB-LM export (slab-edge export-lm)")
    return [StateSpec.from_json(e) for e in layout]


# ---------------------------------------------------------------------------------------------------------
# The model: two sessions + tokenizer


@dataclass
class GenerationResult:
    prompt_tokens: int
    tokens: list[int]  #: generated ids (the prompt excluded)
    text: str
    prefill_seconds: float
    decode_seconds: float  #: time of the decode steps (first token's sampling after prefill included)
    stopped_at_eos: bool = False

    @property
    def tokens_per_second(self) -> float:
        """Decode throughput: tokens after the first over the decode steps' time."""
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 and steps else float("nan")

    def summary(self) -> str:
        return (
            f"{len(self.tokens)} tokens; prompt {self.prompt_tokens} tokens prefilled in "
            f"{self.prefill_seconds * 1e3:.1f} ms; decode {self.tokens_per_second:.1f} tokens/s"
        )


class LanguageModel:
    """An exported SLAB-LM: prefill and decode sessions with one state layout, plus its tokenizer.

    Args:
        prefill: session of the lm-prefill graph.
        decode: session of the lm-decode graph.
        tokenizer: the model's tokenizer (None: the one its metadata names, looked up beside the files).
    """

    def __init__(self, prefill: Session, decode: Session, tokenizer: Tokenizer | None = None) -> None:
        self.prefill_session, self.decode_session = prefill, decode
        pm, dm = prefill.metadata, decode.metadata
        for session, task in ((prefill, "lm-prefill"), (decode, "lm-decode")):
            got = session.metadata.get("task")
            if got != task:
                raise InputError(f"{session.path.name}: expected a {task} graph, metadata task is {got!r}")
        self.layout = parse_state_layout(dm, decode.path.name)
        if parse_state_layout(pm, prefill.path.name) != self.layout:
            raise InputError(f"{prefill.path.name} and {decode.path.name} have different state layouts")
        for key in ("vocab_size", "tokenizer", "model"):
            if pm.get(key) != dm.get(key):
                raise InputError(
                    f"{prefill.path.name} and {decode.path.name} disagree on {key}: "
                    f"{pm.get(key)!r} vs {dm.get(key)!r}"
                )
        self.vocab_size = int(dm["vocab_size"])
        self.max_prompt_len = pm.get("max_prompt_len")
        self.metadata = dict(dm)
        for session in (prefill, decode):
            self._check_graph(session)
        if tokenizer is None:
            tokenizer = load_tokenizer(str(dm.get("tokenizer", "byte")), decode.path.parent)
        check_tokenizer_matches(
            tokenizer, dm.get("tokenizer"), self.vocab_size, f"model {decode.path.parent}"
        )
        self.tokenizer = tokenizer

    def _check_graph(self, session: Session) -> None:
        inputs = {s.name for s in session.inputs}
        outputs = {s.name for s in session.outputs}
        want_in = {INPUT_IDS, *(s.input for s in self.layout)}
        want_out = {LOGITS, *(s.output for s in self.layout)}
        if inputs != want_in or outputs != want_out:
            raise InputError(
                f"{session.path.name}: graph inputs/outputs do not match its state_layout "
                f"(inputs {sorted(inputs ^ want_in)} / outputs {sorted(outputs ^ want_out)} differ)"
            )

    # -- state ----------------------------------------------------------------------------------------
    def initial_state(self, batch: int = 1) -> State:
        """Zero state before the first token (an empty KV cache for the softmax baseline)."""
        return {s.input: s.zeros(batch) for s in self.layout}

    def check_state(self, state: Mapping[str, np.ndarray], batch: int | None = None) -> None:
        """Raise InputError for a missing, extra, mis-shaped or mis-typed state tensor."""
        names = {s.input for s in self.layout}
        if set(state) != names:
            missing, extra = sorted(names - set(state)), sorted(set(state) - names)
            raise InputError(
                f"state does not match the model's layout: missing {missing}, unexpected {extra}"
            )
        past = {state[s.input].shape[s.shape.index(PAST_DIM)] for s in self.layout if s.grows}
        for s in self.layout:
            s.check(state[s.input], batch)
        if len(past) > 1:
            raise InputError(f"KV-cache state tensors disagree on the past length: {sorted(past)}")

    def state_bytes(self, state: Mapping[str, np.ndarray]) -> int:
        return int(sum(a.nbytes for a in state.values()))

    # -- graph calls -------------------------------------------------------------------------------------
    def _call(self, session: Session, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        feeds = {INPUT_IDS: ids, **state}
        out = session.run(feeds)
        return out[LOGITS], {s.input: out[s.output] for s in self.layout}

    def prefill(self, ids: list[int] | np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]:
        """Consume a prompt; returns (logits [V] after its last token, state).

        The prompt goes through the prefill graph in pieces of at most `max_prompt_len` tokens.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InputError(
                "empty prompt: give at least one token (generation needs a last token to continue)"
            )
        self._check_ids(ids)
        state = self.initial_state() if state is None else state
        self.check_state(state, batch=1)
        piece = int(self.max_prompt_len) if self.max_prompt_len else ids.size
        logits = None
        for start in range(0, ids.size, piece):
            logits, state = self.prefill_call(ids[start : start + piece], state)
        return logits, state

    def prefill_call(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One prefill-graph call: ids [T], 1 <= T <= max_prompt_len. Returns (logits [V], state)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] == 0:
            raise InputError("empty prompt: give at least one token")
        if self.max_prompt_len and ids.shape[1] > int(self.max_prompt_len):
            raise InputError(
                f"prompt of {ids.shape[1]} tokens is longer than the prefill graph's maximum of "
                f"{self.max_prompt_len} (LanguageModel.prefill feeds longer prompts in pieces)"
            )
        logits, state = self._call(self.prefill_session, ids, state)
        return logits[0], state

    def step(self, token: int, state: State) -> tuple[np.ndarray, State]:
        """One decode step: (logits [V] after `token`, new state)."""
        self._check_ids(np.asarray([token]))
        logits, state = self._call(self.decode_session, np.array([[token]], dtype=np.int64), state)
        return logits[0], state

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise InputError(
                f"token ids must be in [0, {self.vocab_size}), got {int(ids.min())}..{int(ids.max())}"
            )

    # -- the loop --------------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: list[int] | np.ndarray,
        max_new_tokens: int,
        sampler: Sampler | None = None,
        stop_at_eos: bool = True,
        state: State | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Prefill the prompt, then sample `max_new_tokens` tokens one decode step each.

        Args:
            prompt_ids: the prompt's token ids (at least one).
            max_new_tokens: how many tokens to generate.
            sampler: next-token rule (default greedy).
            stop_at_eos: stop after the tokenizer's EOS token (BPE tokenizers have one).
            state: state to continue from (default: empty).
            on_text: called with each piece of decoded text as soon as it forms whole characters.
        """
        if max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        sampler = sampler or Sampler()
        stream = StreamDecoder(self.tokenizer)
        t0 = time.perf_counter()
        logits, state = self.prefill(prompt_ids, state)
        t1 = time.perf_counter()
        tokens: list[int] = []
        pieces: list[str] = []
        eos = self.tokenizer.eos_id if stop_at_eos else None
        stopped = False
        for i in range(max_new_tokens):
            token = sampler(logits)
            tokens.append(token)
            if token == eos:
                stopped = True
                break
            piece = stream.push(token)
            if piece:
                pieces.append(piece)
                if on_text:
                    on_text(piece)
            if i + 1 < max_new_tokens:  # the last token needs no state update
                logits, state = self.step(token, state)
        tail = stream.flush()
        if tail:
            pieces.append(tail)
            if on_text:
                on_text(tail)
        t2 = time.perf_counter()
        return GenerationResult(
            prompt_tokens=int(np.asarray(prompt_ids).size),
            tokens=tokens,
            text="".join(pieces),
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
            stopped_at_eos=stopped,
        )

    def close(self) -> None:
        self.prefill_session.close()
        self.decode_session.close()

    def __enter__(self) -> LanguageModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lm_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(prefill, decode) files of an export: a folder, or either file (its sibling found by name)."""
    path = Path(path)
    if path.is_dir():
        prefill, decode = path / PREFILL_FILE, path / DECODE_FILE
    elif path.suffix.lower() == ".onnx" and "prefill" in path.name:
        prefill, decode = path, path.with_name(_swap_last(path.name, "prefill", "decode"))
    elif path.suffix.lower() == ".onnx" and "decode" in path.name:
        prefill, decode = path.with_name(_swap_last(path.name, "decode", "prefill")), path
    elif not path.exists():
        raise InputError(f"model {path} not found (expected an export-lm folder or its prefill/decode .onnx)")
    else:
        raise InputError(f"{path}: expected an export-lm folder or its prefill.onnx / decode.onnx")
    for f in (prefill, decode):
        if not f.is_file():
            raise InputError(f"{f} not found: an export-lm folder holds {PREFILL_FILE} and {DECODE_FILE}")
    return prefill, decode


def open_lm(
    path: str | os.PathLike, tokenizer: Tokenizer | None = None, **session_options: Any
) -> LanguageModel:
    """Load an export-lm folder (or one of its .onnx files) on the runtime's session backend.

    Args:
        path: folder from `slab-edge export-lm`, or its prefill/decode .onnx file.
        tokenizer: override the tokenizer the metadata names (checked against the model).
        **session_options: passed to `slab_edge.runtime.load` (threads=, provider=, ...).
    """
    prefill_path, decode_path = lm_files(path)
    prefill = load(prefill_path, **session_options)
    try:
        decode = load(decode_path, **session_options)
    except Exception:
        prefill.close()
        raise
    try:
        return LanguageModel(prefill, decode, tokenizer)
    except Exception:
        prefill.close()
        decode.close()
        raise


def _swap_last(name: str, old: str, new: str) -> str:
    head, _, tail = name.rpartition(old)
    return head + new + tail
