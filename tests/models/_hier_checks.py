"""Checks shared by the hierarchical families (Swin, CSwin): each takes a timm name and reduced kwargs.

Reduced widths as in the conformance vectors keep every structural choice (depths, windows, split sizes,
attention types) and the 224 input, so the checks exercise the real model graph at a fraction of the cost.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from _helpers import load_conformance, randomize_layernorms, randomize_norm_statistics, shared_dir
from torch import nn

import slab_edge  # noqa: F401  (registers the zoo)
from slab_edge.errors import InputError
from slab_edge.layers.norms import NORM_TYPES, ProgressiveNorm
from slab_edge.layers.reparam import remaining_norms, reparameterize_model


def build(name: str, reduced: dict, **kwargs) -> nn.Module:
    return timm.create_model(name, num_classes=kwargs.pop("num_classes", 10), **reduced, **kwargs)


def image(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomize_weights(model: nn.Module, seed: int = 0, weight_scale: float = 0.5) -> nn.Module:
    """Every weight drawn as in the conformance recipe, plus randomized norm statistics and affines.

    Linear/Conv U(+-weight_scale/sqrt(fan_in)), biases U(+-0.1), SLA positional encodings N(0, 0.1),
    relative-position tables N(0, 0.5): residual branches then matter (trunc-normal 0.02 init makes them
    negligible, which would let a wrong fold pass). The conformance recipe's 0.7 makes the 40-block CSwin-S
    so sensitive that a 1-ulp weight change moves its logits by ~6e-6 relative (the fold's own rounding
    then reaches 1e-5); 0.5 keeps the branches large but the model well-conditioned.
    """
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            bound = weight_scale / math.sqrt(module.weight[0].numel())
            module.weight.copy_((torch.rand(module.weight.shape, generator=g) * 2 - 1) * bound)
            if module.bias is not None:
                module.bias.copy_((torch.rand(module.bias.shape, generator=g) * 2 - 1) * 0.1)
    for name, param in model.named_parameters():
        if name.endswith("positional_encoding"):
            param.copy_(torch.randn(param.shape, generator=g) * 0.1)
        elif name.endswith("relative_position_bias_table"):
            param.copy_(torch.randn(param.shape, generator=g) * 0.5)
    randomize_norm_statistics(model, seed + 1)
    randomize_layernorms(model, seed + 2)
    return model


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


# ----------------------------------------------------------------------------------------- conformance
def check_conformance(name: str, variant: str, reduced: dict, filter_fn) -> tuple[float, float]:
    """Official reduced weights -> filter -> strict load; logits and folded logits vs the official ones.

    Returns (max |diff| unfolded, max |diff| folded).
    """
    state, x, expected = load_conformance(variant)
    model = build(name, reduced).eval()
    model.load_state_dict(filter_fn(state, model), strict=True)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        folded = reparameterize_model(model)(x)
        torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    return float((out - expected).abs().max()), float((folded - expected).abs().max())


def read_official_keys(config: str) -> dict[str, torch.Tensor]:
    """Official full-size state dict as meta tensors of the listed shapes."""
    root = shared_dir()
    path = root / "reference" / "official_state_dicts" / f"{config}.txt" if root is not None else None
    if path is None or not path.is_file():
        pytest.skip(
            f"official key list {config}.txt not found: set SLAB_EDGE_SHARED or place shared/ beside the repo"
        )
    state = {}
    for line in path.read_text().splitlines():
        key, _, shape = line.partition(" ")
        dims = tuple(int(s) for s in shape.split("x")) if shape.strip() else ()
        state[key] = torch.empty(dims, device="meta")
    return state


def check_official_key_list(name: str, config: str, filter_fn) -> None:
    """The full-size model (meta device, no memory) takes the official checkpoint's keys and shapes."""
    official = read_official_keys(config)
    with torch.device("meta"):
        model = timm.create_model(name)
    converted = filter_fn(official, model)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in converted.items()}
    assert sorted(ours) == sorted(theirs), set(ours) ^ set(theirs)
    assert ours == theirs


# ----------------------------------------------------------------------------------------- folding
def check_fold(name: str, reduced: dict) -> float:
    """Randomized weights and statistics: folded logits match, no norm left, idempotent, deploy reload."""
    model = randomize_weights(build(name, reduced)).eval()
    x = image()
    with torch.no_grad():
        ref = model(x)
        deploy = reparameterize_model(model)
        rel = max_rel(deploy(x), ref)
        assert rel <= 1e-5, f"fold parity {rel:.2e} > 1e-5 (relative to max |logit| {ref.abs().max():.3g})"
        assert remaining_norms(deploy) == []
        assert list(model.unfoldable_norms) == []
        # Idempotent: folding again changes nothing.
        again = reparameterize_model(deploy)
        for (k, a), (k2, b) in zip(deploy.state_dict().items(), again.state_dict().items()):
            assert k == k2 and torch.equal(a, b), k
        # A model built with deploy=True loads the folded state dict strictly and computes the same.
        built = build(name, reduced, deploy=True).eval()
        assert remaining_norms(built) == []
        built.load_state_dict(deploy.state_dict(), strict=True)
        torch.testing.assert_close(built(x), deploy(x), atol=0, rtol=0)
    return rel


def check_headless_final_norm_is_listed(name: str, reduced: dict) -> None:
    """Without a classifier the final norm has nowhere to go: it stays and is declared unfoldable."""
    model = build(name, reduced, num_classes=0).eval()
    deploy = reparameterize_model(model)
    assert remaining_norms(deploy) == ["norm"] == list(deploy.unfoldable_norms)
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), model(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------- timm interface
def check_forward_backward(name: str, reduced: dict, checkpointing: bool = False) -> None:
    """Training mode (progressive norms mix LN and RepBN): shapes, finite values, gradients everywhere."""
    model = build(name, reduced, drop_path_rate=0.1).train()
    model.set_grad_checkpointing(checkpointing)
    out = model(image(batch=2))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(dim=1).mean().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"no gradient for {pname}"
        assert torch.isfinite(param.grad).all(), pname


def check_default_cfg(name: str, reduced: dict) -> None:
    model = build(name, reduced).eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and 0 < cfg["crop_pct"] <= 1
    state = model.state_dict()
    first = dict(model.named_modules())[cfg["first_conv"]]
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3
    assert state[cfg["classifier"] + ".weight"].shape == (10, model.num_features)
    assert model.get_classifier() is model.head
    with torch.no_grad():
        feats = model.forward_features(image())
        h, w = cfg["pool_size"]
        assert feats.shape == (1, h, w, model.num_features) and model.output_fmt == "NHWC"
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (1, model.num_features)
        torch.testing.assert_close(model.head(pooled), model.forward_head(feats))


def check_reset_classifier(name: str, reduced: dict) -> None:
    model = build(name, reduced).eval()
    x = image()
    with torch.no_grad():
        model.reset_classifier(5)
        assert model(x).shape == (1, 5)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == (1, 7, 7, model.num_features)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")


def check_intermediates(name: str, reduced: dict, channels: list[int]) -> None:
    """forward_intermediates gives NCHW maps per stage; features_only wraps it (and prunes)."""
    torch.manual_seed(0)
    model = build(name, reduced).eval()
    x = image()
    sides = [56, 28, 14, 7]
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [tuple(m.shape) for m in maps] == [(1, c, s, s) for c, s in zip(channels, sides)]
        torch.testing.assert_close(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[1], maps[3])
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed.permute(0, 2, 3, 1), final)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], maps[1])
    torch.manual_seed(0)  # same initial weights as `model`
    feat = build(name, reduced, features_only=True, out_indices=(0, 1)).eval()
    assert feat.feature_info.channels() == channels[:2]
    assert feat.feature_info.reduction() == [4, 8]
    with torch.no_grad():
        outs = feat(x)
    assert [tuple(o.shape) for o in outs] == [(1, channels[0], 56, 56), (1, channels[1], 28, 28)]
    torch.testing.assert_close(outs[1], maps[1])


def check_torchscript(name: str, reduced: dict) -> None:
    model = build(name, reduced).eval()
    scripted = torch.jit.script(model)
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-6, rtol=1e-6)


def check_onnx_smoke(name: str, reduced: dict) -> None:
    """Folded model -> torch.onnx.export (dynamo) -> ONNX Runtime, roughly the same logits, no norm ops."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = reparameterize_model(randomize_weights(build(name, reduced)))
    x = image()
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, verbose=False)
    proto = program.model_proto
    data = proto.SerializeToString()
    ops = {node.op_type for node in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    assert not ops & {"BatchNormalization", "LayerNormalization"}, ops
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert max_rel(torch.from_numpy(got), ref) < 1e-4


# ----------------------------------------------------------------------------------------- bad input & norms
def check_bad_image(name: str, reduced: dict) -> None:
    model = build(name, reduced).eval()
    with pytest.raises(ValueError, match="224x224") as info:
        model(torch.zeros(1, 3, 192, 192))
    assert isinstance(info.value, InputError)
    with pytest.raises(ValueError, match="3"):
        model(torch.zeros(1, 1, 224, 224))


def progressive_decay_steps(model: nn.Module) -> set[int]:
    return {int(m.decay_steps) for m in model.modules() if isinstance(m, ProgressiveNorm)}


def norm_kinds(model: nn.Module) -> set[str]:
    top = set(remaining_norms(model))
    return {type(m).__name__ for n, m in model.named_modules() if n in top and isinstance(m, NORM_TYPES)}
