"""Shared by the export tests: reduced-size zoo configurations, weight randomization, cached LM exports.

Widths follow shared/reference/conformance (the official models at reduced width, e.g. SLAB-DeiT embed 24,
PVT [8, 16, 40, 64], Swin 8 with heads 2-4-8-16, CSwin 4 with heads 1-2-4-8); depths are cut to 1-2 blocks
per stage so a dynamo export takes seconds, keeping every block type (SLA and softmax stages, shifted
windows, PVT spatial reduction, CSwin stripes) in the graph.
"""

from __future__ import annotations

import torch
from torch import nn

#: name prefix -> constructor overrides (first match wins)
REDUCED: list[tuple[str, dict]] = [
    ("slab_deit_digits", {"embed_dim": 48, "depth": 2}),
    ("deit_digits", {"embed_dim": 48, "depth": 2}),
    ("slab_deit_", {"embed_dim": 24, "depth": 2, "num_classes": 10}),
    ("deit_", {"embed_dim": 24, "depth": 2, "num_classes": 10}),
    ("slab_pvt_", {"embed_dims": (8, 16, 40, 64), "depths": (1, 1, 1, 1), "num_classes": 10}),
    ("pvt_", {"embed_dims": (8, 16, 40, 64), "depths": (1, 1, 1, 1), "num_classes": 10}),
    ("slab_swin_", {"embed_dim": 8, "num_heads": (2, 4, 8, 16), "depths": (2, 1, 1, 1), "num_classes": 10}),
    ("swin_", {"embed_dim": 8, "num_heads": (2, 4, 8, 16), "depths": (2, 1, 1, 1), "num_classes": 10}),
    ("slab_cswin_", {"embed_dim": 4, "num_heads": (1, 2, 4, 8), "depths": (1, 1, 1, 1), "num_classes": 10}),
]


def reduced_kwargs(name: str) -> dict:
    for prefix, kwargs in REDUCED:
        if name.startswith(prefix):
            return dict(kwargs)
    return {"num_classes": 10}


def zoo_models() -> list[str]:
    """Every registered vision model (the zoo helpers add families over time)."""
    from slab_edge.models import list_models

    return list_models()


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Conformance-style random weights (in place): fan-in-scaled Linear/Conv, random BN statistics and
    affine, RepBN alpha, LayerNorm affine, positional tables. Logits come out O(1), so a 1e-4 parity bound
    means something, and folds that drop a term show up (default statistics hide them)."""
    from slab_edge.layers.norms import RepBN

    g = torch.Generator().manual_seed(seed)
    uniform = lambda shape, lo, hi: torch.rand(shape, generator=g) * (hi - lo) + lo
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            bound = 0.7 / module.weight[0].numel() ** 0.5
            module.weight.copy_(uniform(module.weight.shape, -bound, bound))
            if module.bias is not None:
                module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean.copy_(uniform(c, -0.5, 0.5))
            module.running_var.copy_(uniform(c, 0.5, 2.0))
            if module.weight is not None:
                module.weight.copy_(uniform(c, 0.5, 1.5))
                module.bias.copy_(uniform(c, -0.2, 0.2))
        elif isinstance(module, RepBN):
            module.alpha.copy_(uniform(1, 0.5, 1.5))
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.weight.copy_(uniform(module.weight.shape, 0.8, 1.2))
            module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
    for name, param in model.named_parameters():
        if "positional_encoding" in name or "pos_embed" in name or "cls_token" in name:
            param.copy_(torch.randn(param.shape, generator=g) * 0.1)
        elif "relative_position_bias_table" in name:
            param.copy_(torch.randn(param.shape, generator=g) * 0.5)
    return model


def build_reduced(name: str, seed: int = 0) -> nn.Module:
    """A reduced, randomized, eval-mode zoo model (training structure, norms not folded)."""
    from slab_edge.models import create_model

    torch.manual_seed(seed)
    return randomize(create_model(name, **reduced_kwargs(name)), seed).eval()


def write_custom_op_onnx(path, body: bool = False):
    """q, k, v [B, 4, 2, 8] -> one SlabLinearAttention node (domain slab) -> y; `body`: with a function body,
    as the `--custom-ops ort` export writes it (here a stand-in body: the build never runs it)."""
    import onnx
    from onnx import TensorProto, helper

    from slab_edge import native
    from slab_edge.export.onnx_export import set_metadata

    attrs = dict(eps=1e-6, plugin_version=native.PLUGIN_VERSION, plugin_namespace=native.PLUGIN_NAMESPACE)
    node = helper.make_node("SlabLinearAttention", ["q", "k", "v"], ["y"], domain=native.OP_DOMAIN,
                            name="blocks.0.attn/sla_core/fused", **attrs)  # fmt: skip
    functions = []
    if body:
        functions.append(helper.make_function(native.OP_DOMAIN, native.OP_TYPE, ["q", "k", "v"], ["y"],
                                              [helper.make_node("Identity", ["v"], ["y"])],
                                              [helper.make_opsetid("", 18)], attributes=["eps"]))  # fmt: skip
    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4, 2, 8])
    graph = helper.make_graph([node], "g", [tensor("q"), tensor("k"), tensor("v")], [tensor("y")])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(native.OP_DOMAIN, native.OP_DOMAIN_VERSION)]
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    set_metadata(model, {"model": "toy", "precision": "fp32"})
    onnx.save(model, str(path))
    return path


class LMExports:
    """export_lm results of tiny SLAB-LMs, made once per (attention, norm) for a test module.

    Args:
        folder: where the exports go (one sub-folder per variant).
        make_model: (attention, norm) -> the model to export.
        **export_kwargs: more export_lm arguments (e.g. ops="ort").
    """

    def __init__(self, folder, make_model, **export_kwargs) -> None:
        self.folder, self.make_model, self.export_kwargs, self.done = folder, make_model, export_kwargs, {}

    def get(self, attention: str, norm: str):
        """(model, LMExportReport, export folder) of one variant."""
        from slab_edge.export.lm import export_lm

        key = (attention, norm)
        if key not in self.done:
            model = self.make_model(attention, norm)
            out = self.folder / f"{attention}-{norm}"
            meta = {"tokenizer": "byte", "size": "tiny"}
            report = export_lm(model, out, meta=meta, threads=1, **self.export_kwargs)
            self.done[key] = (model, report, out)
        return self.done[key]


def check_long_prompt_and_continuation(model: nn.Module, out, graph_state=tuple) -> list:
    """An export of `model` in folder `out` on a 300-token prompt (5 chunks of 64) in one prefill call:
    logits and state vs PyTorch, the same prompt continued from a carried state, a decode step after it,
    and the state's shapes (a KV cache grows by the prompt's length, recurrent states keep their size).
    `graph_state` maps the model's flat state to the graphs' layout. Returns the export's state layout."""
    import numpy as np

    from slab_edge.export.lm import LOGIT_TOLERANCE
    from slab_edge.models.slab_lm import fold_lm
    from slab_edge.runtime.generate import open_lm
    from slab_edge.testing import assert_rel_close

    folded, _ = fold_lm(model)
    prompt = torch.randint(0, 256, (1, 300), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_logits, ref_state = folded.prefill(prompt)
        ref_step, _ = folded.step(prompt[0, -1:], ref_state)
    with open_lm(out, threads=1) as lm:
        logits, state = lm.prefill(prompt[0].numpy())
        np.testing.assert_allclose(logits, ref_logits[0, -1].numpy(), atol=LOGIT_TOLERANCE)
        for spec, want in zip(lm.layout, graph_state(ref_state)):
            assert_rel_close(torch.from_numpy(state[spec.input]), want, 1e-4, spec.input)
        # a prompt continued from a carried state equals the whole prompt at once, and decoding goes on
        _, first = lm.prefill(prompt[0, :130].numpy())
        continued, carried = lm.prefill(prompt[0, 130:].numpy(), first)
        np.testing.assert_allclose(continued, logits, atol=LOGIT_TOLERANCE)
        step, _ = lm.step(int(prompt[0, -1]), carried)
        np.testing.assert_allclose(step, ref_step[0].numpy(), atol=LOGIT_TOLERANCE)
        initial = lm.initial_state()
    for spec in lm.layout:
        want = list(initial[spec.input].shape)
        if spec.grows:  # [B, H, past_len, d]
            want[spec.shape.index("past_len")] = prompt.shape[1]
        assert list(state[spec.input].shape) == want, spec.input
    return lm.layout
