"""SLAB-LM -> an onnxruntime-genai folder (`slab-edge export-lm --format genai`).

genai runs one decoder graph for the prompt and for every decode step, names the state its own way and
reads a Hugging Face tokenizer; slab_edge.runtime.genai describes the folder, the state mapping and the
check. This module builds it from a folded model:

    model.onnx  the chunkwise prefill graph (any T, past state in, present state out; T = 1 is a decode step)
                with genai's names and logits [B, 1, V]; each layer's state is mapped by its mixer's state
                layout (SLA: conv + [S | z]; GLA: S + a passed-through [B, 1, 1] placeholder conv_state;
                softmax: key / value), so hybrid stacks map layer by layer; with export_lm's ops="ort" the
                graph is traced from the contrib-op model (SLA's "Sz" is genai's recurrent_state as it is)
    genai_config.json, tokenizer.json (+ tokenizer_config.json)

Everything is written into a staging folder beside the output and checked there before it is moved in:
ONNX Runtime vs PyTorch (prompt logits and state, decode-step logits), `check_genai_folder`, and, when
onnxruntime-genai is installed, genai's own greedy loop (its logits at every step and its tokens vs
PyTorch generate()). A failed check writes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slab_edge.data.text_tokenizer import BPE_PREFIX, BYTE_SPEC
from slab_edge.errors import BackendError, InputError
from slab_edge.export.lm import LMExportReport, _check_parity, _example_inputs, _export_graph, _finish
from slab_edge.io import check_writable_dir, staged_folder
from slab_edge.runtime.genai import (
    BYTE_EOS_ID,
    GENAI_CONFIG,
    GENAI_MODEL_FILE,
    GENAI_TASK,
    STATE_NAMES,
    TOKENIZER_FILE,
    check_genai_folder,
    check_genai_layout,
    genai_config,
    import_genai,
    tokenizer_digest,
    tokenizer_files,
)
from slab_edge.runtime.generate import BATCH_DIM, PAST_DIM, StateSpec

__all__ = ["GenaiStateMap", "export_lm_genai", "genai_state_layout", "genai_state_maps"]

State = tuple[torch.Tensor, ...]
#: shape of the conv_state placeholder of linear layers that have no conv (GLA)
PLACEHOLDER_SHAPE = (1, 1)


@dataclass(frozen=True)
class GenaiStateMap:
    """How one layer's state (its mixer's `state_names` order) becomes genai's two state tensors.

    kinds: the genai names of the two tensors ("conv_state", "recurrent_state") or ("key", "value").
    to_genai(state, past_first): the layer's state -> the two tensors (past_first: the incoming first
        tensor, for placeholders passed through).
    from_genai(first, second): the two tensors -> the layer's state.
    """

    kinds: tuple[str, str]
    to_genai: Callable[[State, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    from_genai: Callable[[torch.Tensor, torch.Tensor], State]


def _sla_pack(state: State, _past_conv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, z, conv = state  # S [B, H, d, d], z [B, H, d], conv [B, C, W-1]
    return conv, torch.cat([s, z.unsqueeze(-1)], dim=-1)  # recurrent_state [B, H, d, d + 1]


def _sla_unpack(conv: torch.Tensor, recurrent: torch.Tensor) -> State:
    return recurrent[..., :-1], recurrent[..., -1], conv


#: a mixer's state_names -> its genai mapping (("Sz", "conv"): SLA on ONNX Runtime's contrib ops, --ops ort,
#: whose packed state is already genai's recurrent_state)
STATE_MAPS: dict[tuple[str, ...], GenaiStateMap] = {
    ("S", "z", "conv"): GenaiStateMap(("conv_state", "recurrent_state"), _sla_pack, _sla_unpack),
    ("Sz", "conv"): GenaiStateMap(
        ("conv_state", "recurrent_state"), lambda state, _: (state[1], state[0]), lambda conv, sz: (sz, conv)
    ),
    ("S",): GenaiStateMap(
        ("conv_state", "recurrent_state"),
        lambda state, past_conv: (past_conv, state[0]),  # GLA: the placeholder goes through unchanged
        lambda _placeholder, s: (s,),
    ),
    ("k_cache", "v_cache"): GenaiStateMap(
        ("key", "value"), lambda state, _: tuple(state), lambda k, v: (k, v)
    ),
}


def genai_state_maps(model: nn.Module) -> list[GenaiStateMap]:
    """The mapping of every layer, from its mixer's state layout (InputError for one genai cannot carry)."""
    maps = []
    for i, layer in enumerate(model.layers):
        names = tuple(layer.attn.state_names)
        if names not in STATE_MAPS:
            raise InputError(
                f"layer {i} ({type(layer.attn).__name__}) has state {list(names)}: no onnxruntime-genai "
                f"mapping (known: {[list(k) for k in STATE_MAPS]})"
            )
        maps.append(STATE_MAPS[names])
    return maps


def _genai_state(
    model: nn.Module, maps: list[GenaiStateMap], flat: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """The model's flat state -> genai's flat state (two tensors per layer, layer order)."""
    out: list[torch.Tensor] = []
    for layer_state, mapping in zip(model.split_state(flat), maps):
        placeholder = layer_state[0].new_zeros(layer_state[0].shape[0], *PLACEHOLDER_SHAPE)
        out.extend(mapping.to_genai(layer_state, placeholder))
    return out


def genai_state_layout(model: nn.Module) -> list[dict[str, Any]]:
    """The genai graph's ``state_layout`` metadata: {layer, name, input, output, shape, dtype} per tensor."""
    maps = genai_state_maps(model)
    example = _genai_state(model, maps, model.init_state(1, device="meta"))
    layout = []
    for i, mapping in enumerate(maps):
        for kind, tensor in zip(mapping.kinds, example[2 * i : 2 * i + 2]):
            shape: list[int | str] = [BATCH_DIM, *tensor.shape[1:]]
            if kind in ("key", "value"):
                shape[2] = PAST_DIM
            _, _, past, present = STATE_NAMES[kind]
            layout.append(
                {
                    "layer": i,
                    "name": kind,
                    "input": past % i,
                    "output": present % i,
                    "shape": shape,
                    "dtype": str(tensor.dtype).replace("torch.", ""),
                }
            )
    check_genai_layout([StateSpec.from_json(e) for e in layout], "--format genai")
    return layout


class _GenaiGraph(nn.Module):
    """input_ids [B, T] + genai past state -> (logits [B, 1, V] of the last position, *present state)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.maps = genai_state_maps(model)

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        m = self.model
        x = m.embed(input_ids)  # [B, T, C]
        present: list[torch.Tensor] = []
        for i, (layer, mapping) in enumerate(zip(m.layers, self.maps)):
            first, second = past[2 * i], past[2 * i + 1]
            x, state = layer(x, mapping.from_genai(first, second), output_final_state=True)
            present.extend(mapping.to_genai(state, first))
        return (m.head(m.norm(x[:, -1:])), *present)


# ---------------------------------------------------------------------------------------------------------
# parity


def _ort_parity(model: nn.Module, graph: Path, report: LMExportReport, threads: int | None) -> None:
    """Prompt logits + state and 16 decode steps of the genai graph on plain ONNX Runtime vs PyTorch."""
    from slab_edge.runtime.onnxruntime_session import OnnxRuntimeSession

    maps = genai_state_maps(model)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (1, 100), generator=gen)  # > one chunk of 64
    with OnnxRuntimeSession(graph, threads=threads) as session:
        layout = session.metadata["state_layout"]

        def run(ids: np.ndarray, state: dict[str, np.ndarray]):
            out = session.run({"input_ids": ids, **state})
            return out["logits"][:, -1], {e["input"]: out[e["output"]] for e in layout}

        init = _genai_state(model, maps, model.init_state(1))
        state = {e["input"]: t.numpy() for e, t in zip(layout, init)}
        logits, state = run(prompt.numpy(), state)
        with torch.no_grad():
            ref_logits, ref_state = model.prefill(prompt)
        report.prefill_max_abs = float(np.abs(logits[0] - ref_logits[0, -1].numpy()).max())
        report.state_max_abs = max(
            float(np.abs(state[e["input"]] - t.numpy()).max())
            for e, t in zip(layout, _genai_state(model, maps, ref_state))
        )
        report.state_bytes = int(sum(t.numel() * t.element_size() for t in init))
        worst = 0.0
        for token in torch.randint(0, vocab, (16,), generator=gen):
            with torch.no_grad():
                ref_step, ref_state = model.step(token.view(1), ref_state)
            step, state = run(token.view(1, 1).numpy(), state)
            worst = max(worst, float(np.abs(step[0] - ref_step[0].numpy()).max()))
        report.step_max_abs = worst


def _genai_parity(
    model: nn.Module, folder: Path, eos_token_id: int, report: LMExportReport, parity_tokens: int
) -> None:
    """onnxruntime-genai's own greedy loop vs PyTorch: its logits at every step and its tokens."""
    og = import_genai()
    prompt = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=parity_tokens, eos_token_id=eos_token_id)[0, 12:].tolist()
        ref_logits, state = model.prefill(prompt)
    ref_logits = ref_logits[:, -1]
    try:
        genai_model = og.Model(str(folder))
        params = og.GeneratorParams(genai_model)
        params.set_search_options(max_length=12 + parity_tokens, do_sample=False)
        generator = og.Generator(genai_model, params)
        generator.append_tokens(prompt.numpy().astype(np.int32))
        tokens, worst = [], 0.0
        while not generator.is_done():
            logits = np.asarray(generator.get_logits()).reshape(-1)
            worst = max(worst, float(np.abs(logits - ref_logits[0].numpy()).max()))
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            with torch.no_grad():
                ref_logits, state = model.step(torch.tensor(tokens[-1:]), state)
    except Exception as err:  # genai raises RuntimeError with its own message
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackendError(f"onnxruntime-genai cannot run the exported folder: {first[:300]}") from None
    same = next((i for i, (a, b) in enumerate(zip(ref, tokens)) if a != b), min(len(ref), len(tokens)))
    report.greedy_match = (same, len(ref))
    report.genai_max_abs = worst


# ---------------------------------------------------------------------------------------------------------
# the export


def export_lm_genai(
    folded: nn.Module,
    folder: Path,
    common: dict[str, Any],
    tokenizer,
    report: LMExportReport,
    opset: int,
    simplify: bool = True,
    parity: bool = True,
    parity_tokens: int = 64,
    threads: int | None = None,
    graph_model: nn.Module | None = None,
    translations: dict | None = None,
):
    """Write the genai folder of a folded model (called by `export_lm(..., format="genai")`).

    Args:
        folded: the folded eval-mode CPU model.
        folder: the output folder (files already there are replaced, others are left alone).
        common: export_lm's metadata (model name, version, tokenizer spec, vocab size, ...).
        tokenizer: the model's tokenizer, or None for tokenizer "none" (no tokenizer files, no greedy check).
        report: export_lm's LMExportReport, filled in here.
        opset, simplify, parity, parity_tokens, threads: as export_lm.
        graph_model: the model the graph is traced from (export_lm's ops="ort" model; default `folded`),
            with `translations` for its custom ops; parity is always measured against `folded`.
    """
    start = time.perf_counter()
    graph_model = folded if graph_model is None else graph_model
    layout = genai_state_layout(graph_model)
    if layout != genai_state_layout(folded):  # both must map onto the same genai state
        raise BackendError("the --ops graph model's genai state differs from the folded model's")
    eos = BYTE_EOS_ID if tokenizer is None or tokenizer.eos_id is None else int(tokenizer.eos_id)
    cfg = folded.config
    config = genai_config(layout, cfg.vocab_size, cfg.dim, cfg.context_length, eos)
    files = {GENAI_CONFIG: json.dumps(config, indent=2) + "\n"}
    meta = {**common, "task": GENAI_TASK, "state_layout": layout, "max_prompt_len": None}
    if tokenizer is not None:
        files.update(tokenizer_files(tokenizer, cfg.context_length))
        meta["tokenizer"] = BYTE_SPEC if tokenizer.kind == "byte" else BPE_PREFIX + TOKENIZER_FILE
        meta["tokenizer_sha256"] = tokenizer_digest(files[TOKENIZER_FILE])
    example = _example_inputs(graph_model, 2, 70, 3)
    example = (example[0], *_genai_state(graph_model, genai_state_maps(graph_model), example[1:]))
    proto = _export_graph(_GenaiGraph(graph_model), example, layout, True, opset, translations=translations)
    proto = _finish(proto, meta, simplify)
    report.metadata = meta
    report.nodes = {"model": len(proto.graph.node)}
    import onnx

    created = not folder.exists()
    check_writable_dir(folder)
    try:
        with staged_folder(folder) as stage:
            onnx.save(proto, str(stage / GENAI_MODEL_FILE))
            for name, text in files.items():
                (stage / name).write_text(text, encoding="utf-8")
            if parity:
                _ort_parity(folded, stage / GENAI_MODEL_FILE, report, threads)
            check_genai_folder(stage)
            if parity and tokenizer is not None and parity_tokens > 0:
                try:
                    import_genai()
                except BackendError as err:
                    report.greedy_note = f"not compared: {err}"
                else:
                    _genai_parity(folded, stage, eos, report, parity_tokens)
            if parity:
                _check_parity(report)
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    report.files = [GENAI_MODEL_FILE, *files]
    report.seconds += time.perf_counter() - start
    return report
