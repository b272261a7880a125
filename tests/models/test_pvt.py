"""PVT family: timm interface, official conformance, folding (incl. the sr conv), deploy reload, bad input."""

from __future__ import annotations

import pytest
import timm
import torch
from _helpers import (
    conformance_meta,
    conformance_variants,
    fold_parity,
    load_conformance,
    randomize_layernorms,
    randomize_norm_statistics,
    randomize_weights,
    require_conformance,
)
from torch import nn

import slab_edge  # noqa: F401  registers the zoo
from slab_edge.errors import CheckpointError, InputError
from slab_edge.layers.fold import batchnorm_affine
from slab_edge.layers.norms import ProgressiveNorm
from slab_edge.layers.reparam import remaining_norms, reparameterize_model
from slab_edge.models import OFFICIAL_NAMES, list_models
from slab_edge.models._convert import load_checkpoint
from slab_edge.models.pvt import SpatialReductionAttention, checkpoint_filter_fn, fold_affine_into_conv_input

OFFICIAL = {
    "slab_pvt_t": "slab_pvt_tiny",
    "slab_pvt_s": "slab_pvt_small",
    "slab_pvt_m": "slab_pvt_medium",
    "pvt_t_prepbn": "pvt_tiny_prepbn",
    "pvt_s_prepbn": "pvt_small_prepbn",
    "pvt_m_prepbn": "pvt_medium_prepbn",
}
ALL = list(OFFICIAL.values())
DIMS = (8, 16, 40, 64)  # the conformance width of the tiny variants (heads 1/2/5/8 -> head_dim 8)


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{"embed_dims": DIMS, "num_classes": 10, **kwargs})


def image(batch: int = 2, size: int = 224) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registry_and_official_aliases():
    for official, name in OFFICIAL.items():
        assert name in timm.list_models() and name in list_models()
        assert OFFICIAL_NAMES[official] == name


@pytest.mark.parametrize("name", ["slab_pvt_tiny", "pvt_tiny_prepbn"])
def test_forward_backward(name):
    model = build(name).train()
    model.set_grad_checkpointing(name.startswith("slab_"))  # both paths run
    out = model(image())
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ALL)
def test_structure_and_default_cfg(name):
    model = build(name)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and 0 < cfg["crop_pct"] <= 1
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    depths = {"tiny": [2, 2, 2, 2], "small": [3, 4, 6, 3], "medium": [3, 4, 18, 3]}
    size = next(s for s in depths if s in name)
    assert [len(stage.blocks) for stage in model.stages] == depths[size]
    attn = [type(stage.blocks[0].attn).__name__ for stage in model.stages]
    if name.startswith("slab_"):
        assert attn == ["SimplifiedLinearAttention"] * 4
    else:
        assert attn == ["SpatialReductionAttention"] * 4
        assert [stage.blocks[0].attn.sr_ratio for stage in model.stages] == [8, 4, 2, 1]
    assert {int(m.decay_steps) for m in model.modules() if isinstance(m, ProgressiveNorm)} == {300_000}


def test_reset_classifier_pre_logits_intermediates_features_only():
    model = build("pvt_tiny_prepbn").eval()
    x = image()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pooled.shape == (2, 64)
        final, feats = model.forward_intermediates(x)
        assert [tuple(f.shape) for f in feats] == [
            (2, 8, 56, 56),
            (2, 16, 28, 28),
            (2, 40, 14, 14),
            (2, 64, 7, 7),
        ]
        torch.testing.assert_close(final, model.forward_features(x))
        assert final.shape == (2, 7, 7, 64) and model.output_fmt == "NHWC"
        torch.testing.assert_close(feats[-1].permute(0, 2, 3, 1), final)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], feats[1])
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        extractor = build("slab_pvt_tiny", features_only=True, out_indices=(1, 2)).eval()
        maps = extractor(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 28, 28), (2, 40, 14, 14)]
    assert extractor.feature_info.channels() == [16, 40] and extractor.feature_info.reduction() == [8, 16]
    assert len(extractor.model.stages) == 3  # pruned after the last wanted stage


@pytest.mark.parametrize("name", ["slab_pvt_tiny", "pvt_tiny_prepbn"])
def test_torchscript(name):
    model = randomize_norm_statistics(randomize_weights(build(name))).eval()
    x = image()
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated; it still has to work
        scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-6, rtol=1e-6)
        deploy = reparameterize_model(model)
        torch.testing.assert_close(torch.jit.script(deploy)(x), deploy(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(torch.jit.Error, match="InputError: model was built for 224x224 images, got 256x256"):
        scripted(image(1, 256))  # the input check is compiled in


def test_export_smoke(tmp_path):
    """torch.export of both attention kinds (folded), ONNX + ONNX Runtime for the softmax one."""
    ort = pytest.importorskip("onnxruntime")
    x = image(batch=1)
    for name in ["slab_pvt_tiny", "pvt_tiny_prepbn"]:
        model = reparameterize_model(randomize_norm_statistics(build(name)))
        exported = torch.export.export(model, (x,))
        with torch.no_grad():
            ref = model(x)
            torch.testing.assert_close(exported.module()(x), ref, atol=1e-5, rtol=1e-5)
    path = tmp_path / "pvt.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert abs(out - ref.numpy()).max() <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_conformance_vectors_present():
    require_conformance()
    assert sorted(conformance_variants("pvt")) == sorted(OFFICIAL)


@pytest.mark.parametrize("variant", conformance_variants("pvt") or ["(absent)"])
def test_conformance(variant):
    require_conformance()
    meta = conformance_meta(variant)
    kwargs = meta["constructor_kwargs_used"]
    state, x, logits = load_conformance(variant)
    model = timm.create_model(
        OFFICIAL[variant], embed_dims=kwargs["embed_dims"], num_heads=kwargs["num_heads"],
        depths=kwargs["depths"], num_classes=meta["num_classes"],
    ).eval()  # fmt: skip
    assert model.attn_type == kwargs["attn_type"]
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    assert sum(p.numel() for p in model.parameters()) == meta["parameter_count"]
    with torch.no_grad():
        out = model(x)
    diff = (out - logits).abs().max().item()
    print(f"{variant}: max |diff| {diff:.3g} (max |logit| {logits.abs().max():.3g})")
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_fold_parity_deploy_reload_idempotent(name):
    model = randomize_layernorms(randomize_norm_statistics(randomize_weights(build(name)))).eval()
    x = image()
    deploy, rel = fold_parity(model, x)
    assert rel <= 1e-5, f"fold parity {rel:.3g}"
    assert remaining_norms(deploy) == [] == deploy.unfoldable_norms
    again = reparameterize_model(deploy)
    with torch.no_grad():
        torch.testing.assert_close(again(x), deploy(x), atol=0, rtol=0)
    ref_sd, again_sd = deploy.state_dict(), again.state_dict()
    assert list(ref_sd) == list(again_sd) and all(torch.equal(ref_sd[k], again_sd[k]) for k in ref_sd)
    rebuilt = build(name, deploy=True).eval()
    rebuilt.load_state_dict(deploy.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), deploy(x), atol=0, rtol=0)


def test_layernorm_variant_lists_unfoldable_norms():
    model = randomize_norm_statistics(
        randomize_weights(build("pvt_tiny_prepbn", norm_type="layernorm"))
    ).eval()
    deploy, rel = fold_parity(model, image())
    assert rel <= 1e-5
    assert (
        remaining_norms(deploy) == deploy.unfoldable_norms
        and "stages.0.blocks.0.attn.norm" in deploy.unfoldable_norms
    )


def test_sr_conv_input_fold_is_exact():
    """norm1 -> sr conv input side: compare against the unfolded conv on a random affine input."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(6, 6, kernel_size=4, stride=4)
    bn = nn.BatchNorm1d(6).eval()
    bn.running_mean.uniform_(-0.5, 0.5, generator=g)
    bn.running_var.uniform_(0.5, 2.0, generator=g)
    scale, shift = batchnorm_affine(bn)
    x = torch.randn(2, 6, 16, 16, generator=g)
    ref = conv(x * scale.float()[None, :, None, None] + shift.float()[None, :, None, None])
    weight, bias = fold_affine_into_conv_input(conv.weight, conv.bias, scale, shift)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(x, weight, bias, stride=4), ref, atol=1e-5, rtol=1e-5
    )
    attn = SpatialReductionAttention(8, 2, sr_ratio=1)  # sr 1: no reduction, no sr / norm keys (official)
    assert sorted(attn.state_dict()) == [
        "kv.bias",
        "kv.weight",
        "proj.bias",
        "proj.weight",
        "q.bias",
        "q.weight",
    ]


def test_wrong_image_size_and_dynamic_img_size():
    model = build("slab_pvt_tiny").eval()
    with pytest.raises(InputError, match=r"built for 224x224 images, got 256x256"):
        model(image(1, 256))
    require_conformance()
    for variant in ("slab_pvt_t", "pvt_t_prepbn"):
        state, x, logits = load_conformance(variant)
        dynamic = load_checkpoint(build(OFFICIAL[variant], dynamic_img_size=True).eval(), state)
        with torch.no_grad():
            torch.testing.assert_close(dynamic(x), logits, atol=1e-5, rtol=1e-5)
            assert dynamic(image(1, 256)).shape == (1, 10)
        with pytest.raises(InputError, match="multiple of 32"):
            dynamic(image(1, 240))
        resized = load_checkpoint(build(OFFICIAL[variant], img_size=160).eval(), state)
        assert [tuple(resized.get_parameter(f"stages.{i}.pos_embed").shape[:2]) for i in (0, 3)] == [
            (1, 1600),
            (1, 25),
        ]
        assert torch.isfinite(resized(image(1, 160))).all()


def test_other_variant_checkpoint_names_keys_and_shapes():
    require_conformance()
    softmax_state, _, _ = load_conformance("pvt_t_prepbn")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build("slab_pvt_tiny"), softmax_state)
    msg = str(info.value)
    assert "missing keys" in msg and "stages.*.blocks.*.attn.positional_encoding (x8)" in msg
    assert "unexpected keys" in msg and "stages.*.blocks.*.attn.sr.{bias,weight} (x6)" in msg
    small_state, _, _ = load_conformance("slab_pvt_s")  # other depths and widths
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build("slab_pvt_tiny"), small_state)
    msg = str(info.value)
    assert (
        "unexpected keys: stages.*.blocks.*.norm1.{step,decay_steps,warmup_steps} (x8)" in msg
        and "missing keys" not in msg
    )
    assert "shape mismatches: stages.0.pos_embed (1, 3136, 4) vs model (1, 3136, 8)" in msg
