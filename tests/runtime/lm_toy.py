"""A toy export-lm folder built with onnx.helper (no torch) for fast generation-loop tests.

One graph computes both prefill and decode (T = 1): a decaying recurrent state and a growing KV-like cache,

    state_T = 0.5^T past_state + sum_t 0.5^(T-1-t) E[x_t]                       [B, D]
    kv_T    = concat(past_kv, F[x] as [B, 2, T, 3], axis=2)                      [B, 2, P+T, 3]
    logits  = W[x_{T-1}] + state_T @ U + sum(kv_T) * r                          [B, V]

so feeding a prompt in pieces, in one call, or token by token gives the same logits — `reference_logits`
computes them in numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slab_edge.runtime.metadata import encode_metadata

VOCAB = 256
DIM = 8


def toy_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "E": rng.standard_normal((VOCAB, DIM)).astype(np.float32),
        "F": (0.1 * rng.standard_normal((VOCAB, 6))).astype(np.float32),
        "W": rng.standard_normal((VOCAB, VOCAB)).astype(np.float32),
        "U": rng.standard_normal((DIM, VOCAB)).astype(np.float32),
        "r": rng.standard_normal(VOCAB).astype(np.float32),
    }


def state_layout() -> list[dict]:
    return [
        {"layer": 0, "name": "S", "input": "past.0.S", "output": "present.0.S", "shape": ["batch", DIM],
         "dtype": "float32"},
        {"layer": 0, "name": "kv", "input": "past.0.kv", "output": "present.0.kv",
         "shape": ["batch", 2, "past_len", 3], "dtype": "float32"},
    ]  # fmt: skip


def reference_logits(ids: list[int], seed: int = 0) -> np.ndarray:
    """Logits [V] after consuming `ids` from an empty state, token by token in float64."""
    w = {k: v.astype(np.float64) for k, v in toy_weights(seed).items()}
    state = np.zeros(DIM)
    kv_sum = 0.0
    for x in ids:
        state = 0.5 * state + w["E"][x]
        kv_sum += w["F"][x].sum()
    return w["W"][ids[-1]] + state @ w["U"] + kv_sum * w["r"]


def _graph(task: str, seed: int):
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one_i"], ["T"], axis=0),  # scalar T
        helper.make_node("Cast", ["T"], ["Tf"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["zero_f", "Tf", "one_f"], ["pos"]),  # [T]
        helper.make_node("Sub", ["Tf", "one_f"], ["Tm1"]),
        helper.make_node("Sub", ["Tm1", "pos"], ["age"]),  # T-1-t
        helper.make_node("Pow", ["half", "age"], ["w"]),  # [T]
        helper.make_node("Unsqueeze", ["w", "axes_0_2"], ["w3"]),  # [1, T, 1]
        helper.make_node("Gather", ["E", "input_ids"], ["emb"], axis=0),  # [B, T, D]
        helper.make_node("Mul", ["emb", "w3"], ["wemb"]),
        helper.make_node("ReduceSum", ["wemb", "axes_1"], ["new"], keepdims=0),  # [B, D]
        helper.make_node("Pow", ["half", "Tf"], ["decay"]),
        helper.make_node("Mul", ["past.0.S", "decay"], ["kept"]),
        helper.make_node("Add", ["kept", "new"], ["present.0.S"]),
        helper.make_node("Gather", ["F", "input_ids"], ["f"], axis=0),  # [B, T, 6]
        helper.make_node("Reshape", ["f", "kv_shape"], ["f4"]),  # [B, T, 2, 3]
        helper.make_node("Transpose", ["f4"], ["f5"], perm=[0, 2, 1, 3]),  # [B, 2, T, 3]
        helper.make_node("Concat", ["past.0.kv", "f5"], ["present.0.kv"], axis=2),
        helper.make_node("ReduceSum", ["present.0.kv", "axes_123"], ["kvsum"], keepdims=1),  # [B,1,1,1]
        helper.make_node("Reshape", ["kvsum", "col"], ["kvcol"]),  # [B, 1]
        helper.make_node("Mul", ["kvcol", "r"], ["kvterm"]),  # [B, V]
        helper.make_node("Gather", ["input_ids", "minus_one"], ["last"], axis=1),  # [B]
        helper.make_node("Gather", ["W", "last"], ["wl"], axis=0),  # [B, V]
        helper.make_node("MatMul", ["present.0.S", "U"], ["su"]),
        helper.make_node("Add", ["wl", "su"], ["partial"]),
        helper.make_node("Add", ["partial", "kvterm"], ["logits"]),
    ]
    weights = toy_weights(seed)
    consts = {
        "one_i": np.array(1, dtype=np.int64),
        "zero_f": np.array(0.0, dtype=np.float32),
        "one_f": np.array(1.0, dtype=np.float32),
        "half": np.array(0.5, dtype=np.float32),
        "axes_0_2": np.array([0, 2], dtype=np.int64),
        "axes_1": np.array([1], dtype=np.int64),
        "axes_123": np.array([1, 2, 3], dtype=np.int64),
        "kv_shape": np.array([0, -1, 2, 3], dtype=np.int64),
        "col": np.array([-1, 1], dtype=np.int64),
        "minus_one": np.array(-1, dtype=np.int64),
    }
    seq = "T" if task == "lm-prefill" else 1
    graph = helper.make_graph(
        nodes,
        f"toy_{task}",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq]),
            helper.make_tensor_value_info("past.0.S", TensorProto.FLOAT, ["batch", DIM]),
            helper.make_tensor_value_info("past.0.kv", TensorProto.FLOAT, ["batch", 2, "past_len", 3]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", VOCAB]),
            helper.make_tensor_value_info("present.0.S", TensorProto.FLOAT, ["batch", DIM]),
            helper.make_tensor_value_info("present.0.kv", TensorProto.FLOAT, ["batch", 2, "total_len", 3]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in {**weights, **consts}.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def make_toy_lm(
    folder: Path,
    max_prompt_len: int | None = 5,
    seed: int = 0,
    tokenizer: str = "byte",
    vocab_size: int = VOCAB,
    overrides: dict | None = None,
) -> Path:
    """Write folder/prefill.onnx and folder/decode.onnx with export-lm metadata; returns the folder."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    for task, name in (("lm-prefill", "prefill.onnx"), ("lm-decode", "decode.onnx")):
        model = _graph(task, seed)
        meta = {
            "task": task,
            "model": "toy_lm",
            "tokenizer": tokenizer,
            "vocab_size": vocab_size,
            "state_layout": state_layout(),
            "max_prompt_len": max_prompt_len if task == "lm-prefill" else 1,
        }
        meta.update((overrides or {}).get(task, {}))
        for key, value in encode_metadata(meta).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(folder / name))
    return folder


#: the toy's tensors under onnxruntime-genai's names: layer 0 linear (S), layer 1 a KV cache (kv)
GENAI_RENAMES = {
    "past.0.S": "past_key_values.0.recurrent_state",
    "present.0.S": "present.0.recurrent_state",
    "past.0.kv": "past_key_values.1.key",
    "present.0.kv": "present.1.key",
    "logits": "logits_last",
}


def genai_state_layout() -> list[dict]:
    return [
        {"layer": 0, "name": "conv_state", "input": "past_key_values.0.conv_state",
         "output": "present.0.conv_state", "shape": ["batch", 1, 1], "dtype": "float32"},
        {"layer": 0, "name": "recurrent_state", "input": "past_key_values.0.recurrent_state",
         "output": "present.0.recurrent_state", "shape": ["batch", DIM], "dtype": "float32"},
        {"layer": 1, "name": "key", "input": "past_key_values.1.key", "output": "present.1.key",
         "shape": ["batch", 2, "past_len", 3], "dtype": "float32"},
        {"layer": 1, "name": "value", "input": "past_key_values.1.value", "output": "present.1.value",
         "shape": ["batch", 2, "past_len", 3], "dtype": "float32"},
    ]  # fmt: skip


def make_toy_genai(folder: Path, seed: int = 0, context_length: int = 64) -> Path:
    """The toy graph as an export-lm --format genai folder (same logits as `reference_logits`).

    The prefill graph's tensors are renamed to genai's names; a passed-through conv_state placeholder, a
    value cache beside the key cache (unused by the logits) and logits [B, 1, V] complete the contract.
    """
    import json

    import onnx
    from onnx import TensorProto, helper

    from slab_edge.data.text_tokenizer import ByteTokenizer
    from slab_edge.runtime.genai import BYTE_EOS_ID, genai_config, tokenizer_digest, tokenizer_files

    model = _graph("lm-prefill", seed)
    graph = model.graph
    for node in graph.node:
        node.input[:] = [GENAI_RENAMES.get(n, n) for n in node.input]
        node.output[:] = [GENAI_RENAMES.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output]:
        value.name = GENAI_RENAMES.get(value.name, value.name)
    graph.node.extend(
        [
            helper.make_node("Identity", ["past_key_values.0.conv_state"], ["present.0.conv_state"]),
            helper.make_node("Concat", ["past_key_values.1.value", "f5"], ["present.1.value"], axis=2),
            helper.make_node("Unsqueeze", ["logits_last", "axes_1"], ["logits"]),  # [B, 1, V]
        ]
    )
    graph.input.extend(
        [
            helper.make_tensor_value_info("past_key_values.0.conv_state", TensorProto.FLOAT, ["batch", 1, 1]),
            helper.make_tensor_value_info(
                "past_key_values.1.value", TensorProto.FLOAT, ["batch", 2, "past_len", 3]
            ),
        ]
    )
    del graph.output[0]  # logits [B, V] becomes logits_last, an inner value
    graph.output.extend(
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, VOCAB]),
            helper.make_tensor_value_info("present.0.conv_state", TensorProto.FLOAT, ["batch", 1, 1]),
            helper.make_tensor_value_info("present.1.value", TensorProto.FLOAT, ["batch", 2, "total_len", 3]),
        ]
    )
    layout = genai_state_layout()
    files = tokenizer_files(ByteTokenizer(), context_length)
    meta = {
        "task": "lm-genai",
        "model": "toy_lm",
        "tokenizer": "byte",
        "vocab_size": VOCAB,
        "state_layout": layout,
        "max_prompt_len": None,
        "tokenizer_sha256": tokenizer_digest(files["tokenizer.json"]),
    }
    for key, value in encode_metadata(meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    config = genai_config(layout, VOCAB, DIM, context_length, BYTE_EOS_ID)
    (folder / "genai_config.json").write_text(json.dumps(config, indent=2))
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder
