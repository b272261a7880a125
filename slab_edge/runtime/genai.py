"""SLAB-LM on onnxruntime-genai (torch-free): check a genai folder against its model, generate with it.

`slab-edge export-lm --format genai` writes a folder that onnxruntime-genai (verified: 0.18.0 on ONNX
Runtime 1.32) loads with `onnxruntime_genai.Model(folder)`:

    genai_config.json      model type "llama" (genai's generic decoder-only pipeline: nothing LLaMA-specific
                           is assumed, the graph takes neither attention_mask nor position_ids), I/O names,
                           search defaults with past_present_share_buffer false (see below)
    model.onnx             ONE graph for the prompt and every decode step:
                           input_ids [B, T] int64 + past state -> logits [B, 1, V] (last position) + present
    tokenizer.json         Hugging Face format: our byte-level BPE as trained, or for byte models 256
    tokenizer_config.json  single-byte tokens (id = byte value, no merges)

The state, per layer i, in genai's names, chosen by the layer's mixer (a hybrid model mixes both kinds):

    linear layers   past_key_values.{i}.conv_state       -> present.{i}.conv_state
                    past_key_values.{i}.recurrent_state  -> present.{i}.recurrent_state
        SLA  conv_state = conv [B, C, W-1]; recurrent_state = [S | z] [B, H, d, d + 1]: the normalizer z as
             S's last column, i.e. the state of linear attention over v with a ones column appended
        GLA  recurrent_state = S [B, H, d_k, d_v]; conv_state is a [B, 1, 1] placeholder the graph passes
             through unchanged (genai finds linear layers by their conv_state and pairs each with one)
    softmax layers  past_key_values.{i}.key / .value -> present.{i}.key / .value   [B, H, past_len, d]

genai learns every shape from the graph's inputs (only batch, and past_len of a KV cache, are dynamic) and
allocates one conv_state shape and one recurrent_state shape for all linear layers, so those must agree.
With past_present_share_buffer true genai binds one buffer as both past and present of a linear layer;
the standard-op graph still reads the past state after writing parts of the present one, so the folder
says false and `check_genai_folder` refuses true.

genai always stops at its EOS token: the BPE's <|endoftext|>, and for byte models byte 0 (NUL), the one
byte genai's text API cannot carry anyway (it passes C strings). Decoding invalid UTF-8 to text is lossier
in genai's tokenizer than Python's errors="replace" (it can drop the byte after an invalid one); the token
ids are exact either way, and `GenaiLanguageModel` streams text through slab-edge's own decoder.

`genai_config` and `tokenizer_files` write the folder's JSON files (the export adds the graph);
`check_genai_folder` checks a folder; `open_genai` runs one.

    info = check_genai_folder("lm-genai/")            # InputError naming what does not fit
    with open_genai("lm-genai/", threads=2) as lm:
        result = lm.generate(lm.tokenizer.encode("def main("), max_new_tokens=64, on_text=print)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slab_edge.data.text_tokenizer import (
    BPE_PREFIX,
    BYTE_SPEC,
    EOS_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    StreamDecoder,
    Tokenizer,
    check_tokenizer_matches,
)
from slab_edge.errors import BackendError, InputError
from slab_edge.runtime.generate import (
    INPUT_IDS,
    LOGITS,
    GenerationResult,
    Sampler,
    StateSpec,
    parse_state_layout,
)

GENAI_CONFIG = "genai_config.json"
GENAI_MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: metadata task of the one-graph genai export
GENAI_TASK = "lm-genai"
#: genai's generic decoder-only pipeline (its model types are a closed list)
GENAI_MODEL_TYPE = "llama"
#: the EOS genai stops at for byte-level models (the byte vocabulary has no spare id)
BYTE_EOS_ID = 0
#: state kind -> (genai_config inputs key, outputs key, genai's default past and present name templates)
STATE_NAMES = {
    "key": ("past_key_names", "present_key_names", "past_key_values.%d.key", "present.%d.key"),
    "value": ("past_value_names", "present_value_names", "past_key_values.%d.value", "present.%d.value"),
    "conv_state": (
        "past_conv_names",
        "present_conv_names",
        "past_key_values.%d.conv_state",
        "present.%d.conv_state",
    ),
    "recurrent_state": (
        "past_recurrent_names",
        "present_recurrent_names",
        "past_key_values.%d.recurrent_state",
        "present.%d.recurrent_state",
    ),
}
#: state kinds genai keeps one shape for across layers
UNIFORM_KINDS = ("conv_state", "recurrent_state")


def import_genai():
    """onnxruntime_genai, or BackendError saying how to install it (it needs onnxruntime >= 1.31)."""
    try:
        import onnxruntime_genai
    except ImportError as err:
        raise BackendError(
            f"onnxruntime-genai is not installed or does not load ({err}); pip install 'slab-edge[genai]' "
            "(onnxruntime-genai 0.18 needs onnxruntime >= 1.31)"
        ) from None
    return onnxruntime_genai


def is_genai_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / GENAI_CONFIG).is_file()


def tokenizer_digest(tokenizer_json: str | Mapping[str, Any]) -> str:
    """sha256 of a tokenizer.json's token -> id mapping and merges (key order and formatting ignored).

    Two tokenizer files with the same digest have the same tokens under the same ids; the export stores it
    in the graph's metadata (``tokenizer_sha256``), so a folder with another tokenizer beside the model is
    refused.
    """
    data = json.loads(tokenizer_json) if isinstance(tokenizer_json, str) else tokenizer_json
    try:
        model = data["model"]
        vocab = sorted((str(t), int(i)) for t, i in model.get("vocab", {}).items())
        # `tokenizers` writes merges as "a b" strings or as [a, b] pairs depending on its version
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        added = sorted((int(t["id"]), str(t["content"])) for t in data.get("added_tokens") or [])
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"tokenizer.json is not a Hugging Face tokenizer file ({err})") from None
    canonical = json.dumps({"type": model.get("type"), "vocab": vocab, "merges": merges, "added": added})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The folder's JSON files


def genai_config(
    layout: list[dict[str, Any]], vocab_size: int, hidden_size: int, context_length: int, eos_token_id: int
) -> dict[str, Any]:
    """genai_config.json of a graph with this ``state_layout``: the names of every state kind it has.

    Heads and head size are informational (genai reads every shape from the graph): the KV cache's where
    there is one, else the first linear layer's recurrent_state [B, H, d_k, ...].
    """
    kinds = {e["name"] for e in layout}
    inputs: dict[str, str] = {"input_ids": INPUT_IDS}
    outputs: dict[str, str] = {"logits": LOGITS}
    for kind, (in_key, out_key, past, present) in STATE_NAMES.items():
        if kind in kinds:
            inputs[in_key], outputs[out_key] = past, present
    kv = next((e for e in layout if e["name"] == "key"), None)
    ref = kv or next(e for e in layout if e["name"] == "recurrent_state")
    heads, head_size = int(ref["shape"][1]), int(ref["shape"][3] if kv else ref["shape"][2])
    return {
        "model": {
            "type": GENAI_MODEL_TYPE,
            "vocab_size": int(vocab_size),
            "context_length": int(context_length),
            "bos_token_id": int(eos_token_id),
            "eos_token_id": int(eos_token_id),
            "pad_token_id": int(eos_token_id),
            "decoder": {
                "filename": GENAI_MODEL_FILE,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "hidden_size": int(hidden_size),
                "num_hidden_layers": max(e["layer"] for e in layout) + 1,
                "num_attention_heads": heads,
                "num_key_value_heads": heads,
                "head_size": head_size,
                "inputs": inputs,
                "outputs": outputs,
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "max_length": int(context_length),
            "min_length": 0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
            "repetition_penalty": 1.0,
            "length_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
            "early_stopping": True,
            "past_present_share_buffer": False,  # see the module docstring
        },
    }


def tokenizer_files(tokenizer: Tokenizer, context_length: int) -> dict[str, str]:
    """{file name: text}: the tokenizer as the Hugging Face tokenizer.json + tokenizer_config.json."""
    special = {}
    if tokenizer.kind == "bpe":
        special = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # the generic class of a tokenizer.json
        "model_max_length": int(context_length),
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    return {TOKENIZER_FILE: tokenizer.to_json(), TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2) + "\n"}


# ---------------------------------------------------------------------------------------------------------
# The folder check


@dataclass(frozen=True)
class GenaiFolder:
    """A checked genai folder: its config, the graph's slab-edge metadata and state layout."""

    folder: Path
    config: dict[str, Any]
    metadata: dict[str, Any]
    layout: list[StateSpec]
    vocab_size: int
    eos_token_id: int

    @property
    def tokenizer_spec(self) -> str:
        return str(self.metadata.get("tokenizer", BYTE_SPEC))

    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer, read from the folder (byte models: the byte tokenizer itself)."""
        if self.tokenizer_spec == BYTE_SPEC:
            return ByteTokenizer()
        if self.tokenizer_spec.startswith(BPE_PREFIX):
            return BPETokenizer.from_file(self.folder / TOKENIZER_FILE)
        raise InputError(
            f"genai folder {self.folder} has no tokenizer (metadata tokenizer {self.tokenizer_spec!r})"
        )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{what} {path} is not valid JSON ({err})") from None


def _dims(shape) -> str:
    return "[" + ", ".join("?" if d is None or isinstance(d, str) else str(d) for d in shape) + "]"


def check_genai_folder(folder: str | os.PathLike) -> GenaiFolder:
    """Check that a genai folder's config, graph and tokenizer belong together; InputError otherwise.

    Checked: genai_config.json (names, vocab size, layer count, past_present_share_buffer false), the graph's
    slab-edge metadata and inputs/outputs (every state tensor's shape as its state_layout says, one shape for
    every linear layer's conv_state and recurrent_state), and tokenizer.json (its size, its digest against
    the one recorded at export, the EOS id).
    """
    from slab_edge.runtime.loader import load

    folder = Path(folder)
    where = f"genai folder {folder}"
    if not is_genai_folder(folder):
        raise InputError(f"{where}: no {GENAI_CONFIG} (not an export-lm --format genai folder)")
    config = _read_json(folder / GENAI_CONFIG, "genai config")
    try:
        model_cfg = config["model"]
        decoder = model_cfg["decoder"]
        vocab_size = int(model_cfg["vocab_size"])
        eos = int(model_cfg.get("eos_token_id", 0))  # genai's default
        filename = str(decoder["filename"])
        num_layers = int(decoder["num_hidden_layers"])
        names_in, names_out = dict(decoder["inputs"]), dict(decoder["outputs"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{where}: {GENAI_CONFIG} lacks or mistypes model / decoder field {err}") from None
    if config.get("search", {}).get("past_present_share_buffer", False):
        raise InputError(
            f"{where}: search.past_present_share_buffer must be false: genai would bind one buffer as both "
            "past and present state, and the graph reads the past state after writing the present one"
        )
    graph = folder / filename
    if not graph.is_file():
        raise InputError(f"{where}: decoder graph {filename} not found")
    with load(graph, threads=1, graph_optimization="disable") as session:
        meta, inputs, outputs = session.metadata, session.inputs, session.outputs
    if meta.get("task") != GENAI_TASK:
        raise InputError(
            f"{where}: {filename} is not a slab-edge genai graph (metadata task {meta.get('task')!r})"
        )
    layout = parse_state_layout(meta, f"{where}: {filename}")
    if int(meta.get("vocab_size", -1)) != vocab_size:
        raise InputError(
            f"{where}: {GENAI_CONFIG} says vocab_size {vocab_size}, the graph was exported with "
            f"{meta.get('vocab_size')}"
        )
    graph_layers = max(s.layer for s in layout) + 1
    if graph_layers != num_layers:
        raise InputError(f"{where}: {GENAI_CONFIG} says {num_layers} layers, the graph has {graph_layers}")
    check_genai_layout(layout, where)
    _check_graph_io(where, layout, {s.name: s for s in inputs}, {s.name: s for s in outputs}, vocab_size)
    _check_names(where, layout, names_in, names_out)
    if (names_in.get("input_ids"), names_out.get("logits")) != (INPUT_IDS, LOGITS):
        raise InputError(f"{where}: {GENAI_CONFIG} must name the graph's {INPUT_IDS} and {LOGITS}")
    info = GenaiFolder(folder, config, meta, layout, vocab_size, eos)
    if info.tokenizer_spec != "none":
        _check_tokenizer_files(info, where)
    return info


def _check_graph_io(
    where: str, layout: list[StateSpec], inputs: dict, outputs: dict, vocab_size: int
) -> None:
    want_in = {INPUT_IDS, *(s.input for s in layout)}
    want_out = {LOGITS, *(s.output for s in layout)}
    if set(inputs) != want_in or set(outputs) != want_out:
        raise InputError(
            f"{where}: graph inputs/outputs do not match its state_layout (inputs "
            f"{sorted(set(inputs) ^ want_in)} / outputs {sorted(set(outputs) ^ want_out)} differ)"
        )
    logits = outputs[LOGITS].shape
    if len(logits) != 3 or logits[-1] != vocab_size:
        raise InputError(f"{where}: logits must be [batch, 1, {vocab_size}], the graph has {_dims(logits)}")
    for spec in layout:
        for name in (spec.input, spec.output):
            got = (inputs if name == spec.input else outputs)[name].shape
            fits = len(got) == len(spec.shape) and all(
                isinstance(want, str) or want == have for want, have in zip(spec.shape, got)
            )
            if not fits:
                raise InputError(
                    f"{where}: state {name} has shape {_dims(got)} in the graph, "
                    f"its state_layout says {_dims(spec.shape)}"
                )


def check_genai_layout(layout: list[StateSpec], where: str) -> None:
    """InputError unless genai can carry this state: known kinds, one shape per linear-layer kind."""
    first: dict[str, StateSpec] = {}
    for spec in layout:
        if spec.name not in STATE_NAMES:
            raise InputError(
                f"{where}: state {spec.input} has kind {spec.name!r}, genai knows {list(STATE_NAMES)}"
            )
        if spec.name in UNIFORM_KINDS:
            ref = first.setdefault(spec.name, spec)
            if ref.shape != spec.shape or ref.dtype != spec.dtype:
                raise InputError(
                    f"{where}: onnxruntime-genai keeps one {spec.name} shape for every linear layer, "
                    f"but layer {ref.layer} has {_dims(ref.shape)} {ref.dtype.name} and layer {spec.layer} "
                    f"{_dims(spec.shape)} {spec.dtype.name}"
                )


def _check_names(where: str, layout: list[StateSpec], names_in: dict, names_out: dict) -> None:
    """Each state tensor must be named as genai will look for it (config templates or genai's defaults)."""
    for spec in layout:
        in_key, out_key, in_default, out_default = STATE_NAMES[spec.name]
        expected = (
            names_in.get(in_key, in_default) % spec.layer,
            names_out.get(out_key, out_default) % spec.layer,
        )
        if (spec.input, spec.output) != expected:
            raise InputError(
                f"{where}: layer {spec.layer}'s {spec.name} is {spec.input} -> {spec.output} in the graph, "
                f"{GENAI_CONFIG} makes genai feed {expected[0]} -> {expected[1]}"
            )


def _check_tokenizer_files(info: GenaiFolder, where: str) -> None:
    if not (info.folder / TOKENIZER_CONFIG_FILE).is_file():
        raise InputError(f"{where}: {TOKENIZER_CONFIG_FILE} not found (onnxruntime-genai needs it)")
    data = _read_json(info.folder / TOKENIZER_FILE, "tokenizer")
    digest = tokenizer_digest(data)
    ids = {int(i) for i in data["model"].get("vocab", {}).values()}
    added = {str(t["content"]): int(t["id"]) for t in data.get("added_tokens") or []}
    ids |= set(added.values())
    if ids != set(range(info.vocab_size)):
        raise InputError(
            f"tokenizer mismatch: {where}: {TOKENIZER_FILE} has {len(ids)} token ids "
            f"({min(ids, default=0)}..{max(ids, default=-1)}), "
            f"the model's vocabulary is 0..{info.vocab_size - 1}"
        )
    if digest != info.metadata.get("tokenizer_sha256"):
        raise InputError(
            f"tokenizer mismatch: {where}: {TOKENIZER_FILE} is not the tokenizer the model was exported with "
            "(same size, other token ids: its vocabulary digest differs)"
        )
    eos = added.get(EOS_TOKEN, BYTE_EOS_ID)
    if info.eos_token_id != eos:
        raise InputError(
            f"{where}: {GENAI_CONFIG} eos_token_id is {info.eos_token_id}, the tokenizer's EOS is {eos}"
        )


# ---------------------------------------------------------------------------------------------------------
# Generation


class GenaiLanguageModel:
    """A checked genai folder loaded in onnxruntime-genai, with the model's own tokenizer.

    Args:
        folder: an export-lm --format genai folder.
        tokenizer: override the folder's tokenizer (checked against the model).
        threads: intra-op threads of genai's ONNX Runtime session (None: genai's default).
        provider: "cpu" (default) or a genai execution provider name ("cuda", ...: needs that genai build).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        tokenizer: Tokenizer | None = None,
        threads: int | None = None,
        provider: str = "cpu",
    ) -> None:
        self.info = check_genai_folder(folder)
        og = import_genai()
        config = og.Config(str(self.info.folder))
        if threads is not None:
            if int(threads) < 1:
                raise InputError(f"threads must be >= 1, got {threads}")
            config.overlay(
                json.dumps(
                    {"model": {"decoder": {"session_options": {"intra_op_num_threads": int(threads)}}}}
                )
            )
        if provider != "cpu":
            config.clear_providers()
            config.append_provider(provider)
        try:
            self.model = og.Model(config)
        except Exception as err:  # genai raises RuntimeError with its own message
            raise BackendError(
                f"onnxruntime-genai cannot load {self.info.folder}: {_first_line(err)}"
            ) from None
        self._og = og
        tokenizer = tokenizer or self.info.tokenizer()
        check_tokenizer_matches(
            tokenizer, self.info.tokenizer_spec, self.info.vocab_size, f"genai folder {self.info.folder}"
        )
        self.tokenizer = tokenizer
        self.vocab_size = self.info.vocab_size
        self.eos_id = self.info.eos_token_id

    def generator(self, max_length: int, sampler: Sampler | None = None):
        """A fresh onnxruntime_genai.Generator for up to `max_length` tokens (prompt included)."""
        sampler = sampler or Sampler()
        params = self._og.GeneratorParams(self.model)
        options: dict[str, Any] = {"max_length": int(max_length), "do_sample": not sampler.greedy}
        if not sampler.greedy:
            options.update(
                temperature=float(sampler.temperature),
                top_k=int(sampler.top_k or self.vocab_size),
                top_p=float(sampler.top_p),
                random_seed=-1 if sampler.seed is None else int(sampler.seed),
            )
        params.set_search_options(**options)
        return self._og.Generator(self.model, params)

    def generate(
        self,
        prompt_ids: list[int] | np.ndarray,
        max_new_tokens: int,
        sampler: Sampler | None = None,
        stop_at_eos: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Prompt, then up to `max_new_tokens` tokens by genai's own search (greedy or its sampler).

        Greedy output is the same as slab-edge's runtime; sampling uses genai's sampler and random numbers.
        genai stops at its EOS token (the token is included in the result).
        """
        if not stop_at_eos:
            raise InputError(
                "onnxruntime-genai always stops at its EOS token: --no-stop needs a slab-format export"
            )
        ids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InputError("empty prompt: give at least one token")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise InputError(
                f"token ids must be in [0, {self.vocab_size}), got {int(ids.min())}..{int(ids.max())}"
            )
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        stream = StreamDecoder(self.tokenizer)
        pieces: list[str] = []
        tokens: list[int] = []

        def emit(piece: str) -> None:
            if piece:
                pieces.append(piece)
                if on_text:
                    on_text(piece)

        try:
            generator = self.generator(ids.size + max_new_tokens, sampler)
            t0 = time.perf_counter()
            generator.append_tokens(ids.astype(np.int32)[None])
            t1 = time.perf_counter()
            while not generator.is_done():
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                tokens.append(token)
                if token != self.eos_id:
                    emit(stream.push(token))
        except Exception as err:
            raise BackendError(f"onnxruntime-genai failed: {_first_line(err)}") from None
        emit(stream.flush())
        t2 = time.perf_counter()
        return GenerationResult(
            prompt_tokens=int(ids.size),
            tokens=tokens,
            text="".join(pieces),
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
            stopped_at_eos=bool(tokens) and tokens[-1] == self.eos_id,
        )

    def close(self) -> None:
        self.model = None

    def __enter__(self) -> GenaiLanguageModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_genai(
    folder: str | os.PathLike, tokenizer: Tokenizer | None = None, **options: Any
) -> GenaiLanguageModel:
    """Check and load a genai folder (options: threads=, provider=)."""
    return GenaiLanguageModel(folder, tokenizer, **options)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
