"""SLAB-LM -> two ONNX graphs for edge generation: a parallel prefill and a recurrent decode step.

    prefill.onnx  input_ids [B, T] int64, past.{i}.{name} ...  ->  logits [B, V] (last position), present.*
    decode.onnx   input_ids [B, 1] int64, past.{i}.{name} ...  ->  logits [B, V], present.{i}.{name} ...

The state of every layer is explicit: for SLA S [B, H, d, d] and z [B, H, d] (attention state and its
normalizer, float32) and conv [B, C, W-1] (the short conv's last inputs); for GLA S [B, H, d_k, d_v] (the
gate is computed from the input, so it carries no state); for softmax attention k_cache / v_cache
[B, H, past_len, d]. A hybrid (attention_pattern) mixes them layer by layer: its softmax layers' KV caches
share one past_len. Names and shapes are written to the metadata key ``state_layout`` (symbolic dims
"batch" and "past_len"), next to ``tokenizer``, ``vocab_size`` and ``max_prompt_len`` (null: any length).

The prefill graph is the chunkwise form with a dynamic prompt length T, made of standard ops only: states
across chunks come from cumulative sums (SLA) or a masked pairwise decay product (GLA), so no ONNX Loop or
Scan is needed and a whole prompt runs in one call. It also takes a past state, so a prompt can continue
an earlier conversation; for linear attention the state it returns has the same size whatever T is.

PRepBN norms are folded (`reparameterize_model`) before export; the folding parity and the ONNX Runtime vs
PyTorch parity (prefill logits and state, step-by-step logits, greedy tokens through the torch-free
generation loop) are measured on the written temp files before they are renamed into place: an export that
fails a check writes nothing.

`ops="ort"` writes the same two graphs on ONNX Runtime's recurrent contrib ops instead (GLA and SLA layers
as com.microsoft.LinearAttention / CausalConvWithState, softmax layers unchanged; SLA's S and z travel as
one state "Sz"): see slab_edge/export/lm_ort_ops.py. Its parity is measured against the same folded model.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slab_edge.errors import BackendError, InputError, SlabEdgeError
from slab_edge.io import atomic_path
from slab_edge.runtime.generate import BATCH_DIM, DECODE_FILE, INPUT_IDS, LOGITS, PAST_DIM, PREFILL_FILE

__all__ = ["LMExportReport", "export_lm", "lm_state_layout", "prepare_lm"]

DEFAULT_OPSET = 18
#: export-lm --format: slab-edge's two-graph folder, or an onnxruntime-genai folder
EXPORT_FORMATS = ("slab", "genai")
#: ORT vs PyTorch logits, fp32, absolute (also the brief's step-logit goal)
LOGIT_TOLERANCE = 1e-4
#: metadata tokenizer of graphs exported without one (decode benchmarks of random models)
NO_TOKENIZER = "none"
#: largest prompt / KV-cache length declared to torch.export (the graphs themselves have no limit)
_MAX_DYNAMIC = 1 << 20


@dataclass
class LMExportReport:
    """What `export_lm` wrote and measured."""

    folder: Path
    metadata: dict[str, Any]
    fold_max_abs: float | None  #: folded vs unfolded PyTorch logits (None: nothing to fold)
    prefill_max_abs: float = float("nan")  #: ORT vs PyTorch, last-position logits after the prompt
    state_max_abs: float = float("nan")  #: ORT vs PyTorch, every state tensor after the prompt
    step_max_abs: float = float("nan")  #: ORT vs PyTorch, logits of every decode step
    greedy_match: tuple[int, int] = (0, 0)  #: (identical leading greedy tokens, tokens compared)
    state_bytes: int = 0  #: the decode state of one sequence (at past_len 0 for a KV cache)
    nodes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    genai_max_abs: float | None = None  #: onnxruntime-genai's logits along its greedy loop (genai format)
    greedy_note: str = ""  #: why greedy tokens were not compared, when they were not
    files: list[str] = field(default_factory=list)  #: the files written into `folder`

    def lines(self) -> list[str]:
        fold = (
            "nothing to fold (RMSNorm)" if self.fold_max_abs is None else f"max|diff| {self.fold_max_abs:.2e}"
        )
        same, total = self.greedy_match
        ops = self.metadata.get("ops", "standard")
        if "min_onnxruntime" in self.metadata:
            ops += f" (needs onnxruntime >= {self.metadata['min_onnxruntime']})"
        runner = "onnxruntime-genai" if self.genai_max_abs is not None else "the torch-free runtime"
        greedy = self.greedy_note or f"{same}/{total} tokens identical to PyTorch generate() ({runner})"
        lines = [
            f"folding (PyTorch, folded vs unfolded logits): {fold}",
            f"prefill (ORT vs PyTorch): logits max|diff| {self.prefill_max_abs:.2e}, "
            f"state max|diff| {self.state_max_abs:.2e}",
            f"decode steps (ORT vs PyTorch): logits max|diff| {self.step_max_abs:.2e} "
            f"(tol {LOGIT_TOLERANCE:.0e})",
        ]
        if self.genai_max_abs is not None:
            lines.append(
                f"onnxruntime-genai greedy loop vs PyTorch: logits max|diff| {self.genai_max_abs:.2e}"
            )
        nodes = ", ".join(f"{name} {count}" for name, count in self.nodes.items())
        return [
            *lines,
            f"greedy generation: {greedy}",
            f"state per sequence: {self.state_bytes:,} bytes; nodes: {nodes}; ops: {ops}",
        ]


# ---------------------------------------------------------------------------------------------------------
# graph wrappers


def _state_io_names(model: nn.Module) -> list[tuple[int, str]]:
    """[(layer index, state name)] in the model's flat state order ("layers.{i}.{name}")."""
    out = []
    for full in model.state_names():
        _, layer, name = full.split(".", 2)
        out.append((int(layer), name))
    return out


def lm_state_layout(model: nn.Module) -> list[dict[str, Any]]:
    """The ``state_layout`` metadata: {layer, name, input, output, shape, dtype} per state tensor."""
    layout = []
    for (layer, name), spec in zip(_state_io_names(model), model.state_spec()):
        shape = [
            BATCH_DIM if d == "batch" else PAST_DIM if isinstance(d, str) else int(d) for d in spec["shape"]
        ]
        layout.append(
            {
                "layer": layer,
                "name": name,
                "input": f"past.{layer}.{name}",
                "output": f"present.{layer}.{name}",
                "shape": shape,
                "dtype": spec["dtype"],
            }
        )
    return layout


class _PrefillGraph(nn.Module):
    """input_ids [B, T] + flat past state -> (logits [B, V] of the last position, *present state)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        m = self.model
        x = m.embed(input_ids)  # [B, T, C]
        present: list[torch.Tensor] = []
        for layer, layer_state in zip(m.layers, m.split_state(past)):
            x, s = layer(x, layer_state, output_final_state=True)
            present.extend(s)
        # only the last position's logits: the head over every prompt position would be wasted work
        return (m.head(m.norm(x[:, -1])), *present)


class _DecodeGraph(nn.Module):
    """input_ids [B, 1] + flat past state -> (logits [B, V], *present state): the recurrent form."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        logits, present = self.model.step(input_ids[:, 0], past)
        return (logits, *present)


# ---------------------------------------------------------------------------------------------------------
# model preparation


def prepare_lm(source: str | os.PathLike | nn.Module) -> tuple[nn.Module, dict[str, Any], Path | None]:
    """(eval-mode CPU model with chunk-form attention, its metadata, folder holding its tokenizer file)."""
    if isinstance(source, nn.Module):
        model, meta, folder = source, {}, None
    else:
        from slab_edge.train.lm import load_lm

        model, meta, folder = load_lm(source)
    model = model.cpu().eval()
    for module in model.modules():
        if hasattr(module, "mode") and getattr(module, "mode", None) in ("auto", "fla", "recurrent"):
            module.mode = "chunk"  # the PyTorch chunkwise form is what ONNX gets (fla has no export path)
    return model, meta, folder


# ---------------------------------------------------------------------------------------------------------
# torch -> ONNX


def _example_inputs(model: nn.Module, batch: int, seq: int, past: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    state = []
    for spec in model.state_spec():
        shape = [batch if d == "batch" else past if isinstance(d, str) else d for d in spec["shape"]]
        state.append(0.1 * torch.rand(*shape, generator=gen))
    return (ids, *state)


def _export_graph(
    wrapper: nn.Module,
    example: tuple,
    layout: list[dict],
    seq_dim: bool,
    opset: int,
    optimize: bool = True,
    translations: dict | None = None,
):
    """torch.onnx.export (dynamo) with dynamic batch, prompt length (prefill) and KV-cache length.

    `translations`: custom_translation_table for custom torch ops (the contrib ops of lm_ort_ops).
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("T", min=1, max=_MAX_DYNAMIC)
    past = torch.export.Dim("past_len", min=0, max=_MAX_DYNAMIC)
    ids_dims = {0: batch, 1: seq} if seq_dim else {0: batch}
    state_dims = []
    for entry in layout:
        dims = {0: batch}
        if PAST_DIM in entry["shape"]:
            dims[entry["shape"].index(PAST_DIM)] = past
        state_dims.append(dims)
    input_names = [INPUT_IDS, *(e["input"] for e in layout)]
    output_names = [LOGITS, *(e["output"] for e in layout)]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                example,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"input_ids": ids_dims, "past": tuple(state_dims)},
                verbose=False,
                optimize=optimize,
                custom_translation_table=translations,
            )
    except SlabEdgeError:
        raise
    except Exception as err:  # exporter reports are long: keep the first line
        first = next((ln for ln in str(err).strip().splitlines() if ln.strip()), type(err).__name__)
        raise BackendError(f"torch.onnx (dynamo) could not export the SLAB-LM graph: {first[:300]}") from err
    return program.model_proto


def _finish(proto, metadata: dict[str, Any], simplify: bool):
    from slab_edge.export.onnx_export import check_onnx, finalize_graph, set_metadata

    proto = finalize_graph(proto, simplify=simplify)
    set_metadata(proto, metadata)
    check_onnx(proto)
    return proto


# ---------------------------------------------------------------------------------------------------------
# parity


def _parity(
    model: nn.Module,
    prefill_path: Path,
    decode_path: Path,
    tokenizer,
    report: LMExportReport,
    parity_tokens: int,
    threads: int | None,
    graph_state=tuple,
) -> None:
    """Fill the report's ORT vs PyTorch numbers from the written (temp) files.

    `graph_state` maps the model's flat state to the graphs' state layout (identity for standard ops).
    """
    from slab_edge.runtime.generate import LanguageModel
    from slab_edge.runtime.onnxruntime_session import OnnxRuntimeSession

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (1, 100), generator=gen)  # > one chunk of 64
    with (
        OnnxRuntimeSession(prefill_path, threads=threads) as prefill,
        OnnxRuntimeSession(decode_path, threads=threads) as decode,
    ):
        lm = LanguageModel(prefill, decode, tokenizer)
        with torch.no_grad():
            ref_logits, ref_state = model.prefill(prompt)
        ort_logits, ort_state = lm.prefill(prompt[0].numpy())
        report.prefill_max_abs = float(np.abs(ort_logits - ref_logits[0, -1].numpy()).max())
        report.state_max_abs = max(
            float(np.abs(ort_state[e["input"]] - t.numpy()).max())
            for e, t in zip(lm.metadata["state_layout"], graph_state(ref_state))
        )
        report.state_bytes = lm.state_bytes(lm.initial_state())
        # decode steps from the same state, feeding the same tokens to both
        steps = torch.randint(0, vocab, (16,), generator=gen)
        state_t, state_o, worst = ref_state, ort_state, 0.0
        for token in steps:
            with torch.no_grad():
                logit_t, state_t = model.step(token.view(1), state_t)
            logit_o, state_o = lm.step(int(token), state_o)
            worst = max(worst, float(np.abs(logit_o - logit_t[0].numpy()).max()))
        report.step_max_abs = worst
        # greedy generation: runtime loop on ONNX Runtime vs the model's own generate()
        if parity_tokens > 0:
            short = prompt[:, :12]
            with torch.no_grad():
                ref_ids = model.generate(short, max_new_tokens=parity_tokens)[0, short.shape[1] :].tolist()
            ort_ids = lm.generate(short[0].numpy(), parity_tokens, stop_at_eos=False).tokens
            same = next(
                (i for i, (a, b) in enumerate(zip(ref_ids, ort_ids)) if a != b),
                min(len(ref_ids), len(ort_ids)),
            )
            report.greedy_match = (same, parity_tokens)


def _check_parity(report: LMExportReport) -> None:
    worst = max(report.prefill_max_abs, report.step_max_abs, report.genai_max_abs or 0.0)
    if not worst <= LOGIT_TOLERANCE:  # also catches NaN
        raise BackendError(
            f"ONNX Runtime disagrees with PyTorch: logits max|diff| {worst:.2e} > {LOGIT_TOLERANCE:.0e} "
            "(nothing written)"
        )


# ---------------------------------------------------------------------------------------------------------
# the export


def export_lm(
    source: str | os.PathLike | nn.Module,
    output: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    parity: bool = True,
    parity_tokens: int = 64,
    threads: int | None = None,
    save_folded: str | os.PathLike | None = None,
    meta: dict[str, Any] | None = None,
    graphs: tuple[str, ...] = ("prefill", "decode"),
    ops: str = "standard",
    format: str = "slab",
) -> LMExportReport:
    """Fold and export a SLAB-LM to `output`/prefill.onnx + decode.onnx (+ tokenizer.json for BPE).

    format "genai" writes an onnxruntime-genai folder instead (slab_edge.export.lm_genai).

    Args:
        source: a train-lm run folder, model.safetensors, checkpoint manifest, or a SlabLM module.
        output: the export folder (created; existing files are replaced atomically).
        opset: ONNX opset (>= 17).
        simplify: run onnxslim on both graphs.
        parity: ORT vs PyTorch before writing (BackendError beyond 1e-4); runs when both graphs are made.
        parity_tokens: greedy tokens compared through the runtime's generation loop (0 = skip).
        threads: ONNX Runtime threads for the parity check.
        save_folded: also write the folded PyTorch weights (deploy=True) to this .safetensors file.
        meta: metadata of a module `source` (tokenizer spec, size, attention, norm); files carry their own.
            tokenizer "none" exports graphs without a tokenizer (benchmarks; no parity check).
        graphs: which graphs to write ("prefill", "decode"); benchmarks of decoding need only "decode".
        ops: "standard" (ONNX ops only, any runtime) or "ort" (ONNX Runtime >= 1.25.1's LinearAttention
            and CausalConvWithState for GLA / SLA layers; see lm_ort_ops).
        format: "slab" (prefill + decode graphs for slab_edge.runtime) | "genai" (one graph,
            genai_config.json and Hugging Face tokenizer files for onnxruntime-genai; `graphs` is ignored).
    """
    from slab_edge import __version__
    from slab_edge.data.text_tokenizer import ByteTokenizer, load_tokenizer

    if opset < 17:
        raise InputError(f"opset {opset} is too old: slab-edge exports need opset >= 17")
    from slab_edge.export.lm_ort_ops import OPS

    if ops not in OPS:
        raise InputError(f"ops must be one of {', '.join(OPS)}, got {ops!r}")
    if format not in EXPORT_FORMATS:
        raise InputError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    unknown = sorted(set(graphs) - {"prefill", "decode"})
    if unknown or not graphs:
        raise InputError(f"graphs must be a non-empty subset of prefill, decode; got {list(graphs)}")
    parity = parity and set(graphs) == {"prefill", "decode"}
    start = time.perf_counter()
    model, file_meta, tok_folder = prepare_lm(source)
    meta = {**file_meta, **(meta or {})}
    spec = str(meta.get("tokenizer", "byte"))
    if spec == NO_TOKENIZER:  # benchmark graphs of random models: nothing to generate text with
        tokenizer, parity = None, False
    else:
        tokenizer = ByteTokenizer() if spec == "byte" else load_tokenizer(spec, tok_folder)
    if tokenizer is not None and tokenizer.vocab_size != model.config.vocab_size:
        raise InputError(
            f"tokenizer {spec} has {tokenizer.vocab_size} tokens, "
            f"but the model's vocabulary is {model.config.vocab_size}"
        )
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"export-lm output {folder} is a file; give a folder")
    from slab_edge.export.checkpoint import state_dict_sha256
    from slab_edge.layers.reparam import fold_metadata
    from slab_edge.models.slab_lm import fold_lm

    if isinstance(source, nn.Module):  # provenance unknown, unless the caller says (e.g. "random")
        provenance = {"weights": str(meta.get("weights", "module"))}
    else:
        provenance = {"weights": "checkpoint", "weights_sha256": state_dict_sha256(model.state_dict())}
    folded, fold_diff = fold_lm(model)
    folded = folded.cpu().eval()
    folding = fold_metadata(folded, model)

    cfg = model.config
    name = f"slab_lm_{meta.get('size', 'custom')}_{cfg.attention_label}_{cfg.norm}"
    graph_model, graph_state, translations = folded, tuple, None
    if ops == "ort":  # GLA / SLA layers on ONNX Runtime's contrib ops, softmax layers as they are
        from slab_edge.export import lm_ort_ops

        graph_model = lm_ort_ops.ort_ops_model(folded)
        graph_state = functools.partial(lm_ort_ops.to_graph_state, graph_model)
        translations = lm_ort_ops.TRANSLATIONS
    layout = lm_state_layout(graph_model)
    ops_meta = lm_ort_ops.ort_ops_metadata(graph_model, layout) if ops == "ort" else {"ops": "standard"}
    common = {
        "model": name,
        "version": __version__,
        **folding,
        **provenance,
        "precision": "fp32",
        "tokenizer": spec,
        "state_layout": layout,
        "vocab_size": int(cfg.vocab_size),
        "dynamic_batch": True,
        **ops_meta,
    }
    if format == "genai":
        from slab_edge.export.lm_genai import export_lm_genai

        report = LMExportReport(folder=folder, metadata=common, fold_max_abs=fold_diff)
        report.seconds = time.perf_counter() - start
        export_lm_genai(
            folded,
            folder,
            common,
            tokenizer,
            report,
            opset,
            simplify,
            parity,
            parity_tokens,
            threads,
            graph_model=graph_model,
            translations=translations,
        )
        if save_folded is not None:
            from slab_edge.train.checkpoint import write_safetensors

            write_safetensors(save_folded, folded.state_dict(), {**meta, "deploy": True, **folding})
        return report
    protos = {}
    if "prefill" in graphs:
        example = _example_inputs(graph_model, 2, 70, 3)
        proto = _export_graph(
            _PrefillGraph(graph_model), example, layout, True, opset, translations=translations
        )
        protos[PREFILL_FILE] = _finish(
            proto, {**common, "task": "lm-prefill", "max_prompt_len": None}, simplify
        )
    if "decode" in graphs:
        example = _example_inputs(graph_model, 2, 1, 3)
        proto = _export_graph(
            _DecodeGraph(graph_model), example, layout, False, opset, translations=translations
        )
        protos[DECODE_FILE] = _finish(proto, {**common, "task": "lm-decode", "max_prompt_len": 1}, simplify)

    from slab_edge.io import check_writable_dir

    created = not folder.exists()
    check_writable_dir(folder)
    report = LMExportReport(folder=folder, metadata=common, fold_max_abs=fold_diff)
    report.nodes = {file.split(".")[0]: len(proto.graph.node) for file, proto in protos.items()}
    report.files = [
        *protos,
        *([tokenizer.file_name] if tokenizer is not None and tokenizer.kind == "bpe" else []),
    ]
    import onnx

    # every file is written under a temp name, checked, and renamed only when all of them are good
    try:
        with contextlib.ExitStack() as stack:
            temps = {}
            for file, proto in protos.items():
                temps[file] = stack.enter_context(atomic_path(folder / file))
                onnx.save(proto, str(temps[file]))
            if tokenizer is not None and tokenizer.kind == "bpe":
                tok_tmp = stack.enter_context(atomic_path(folder / tokenizer.file_name))
                shutil.copyfile(Path(tok_folder) / tokenizer.file_name, tok_tmp)
            if save_folded is not None:
                from slab_edge.train.checkpoint import write_safetensors

                folded_tmp = stack.enter_context(atomic_path(save_folded))
                write_safetensors(folded_tmp, folded.state_dict(), {**meta, "deploy": True, **folding})
            if parity:
                paths = temps[PREFILL_FILE], temps[DECODE_FILE]
                _parity(folded, *paths, tokenizer, report, parity_tokens, threads, graph_state)
                _check_parity(report)
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # leave no empty export folder behind either
        raise
    report.seconds = time.perf_counter() - start
    return report
