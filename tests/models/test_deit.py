"""DeiT family: timm interface, official conformance, folding, deploy reload, export smoke, bad input."""

from __future__ import annotations

import pickle

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
from slab_edge.layers.norms import ProgressiveNorm, RepBN, progressive_mix_weight
from slab_edge.layers.reparam import remaining_norms, reparameterize_model
from slab_edge.models import OFFICIAL_NAMES, list_models
from slab_edge.models._convert import convert_official_norms, load_checkpoint, unwrap_state_dict
from slab_edge.models.deit import checkpoint_filter_fn

OFFICIAL = {
    "slab_deit_t": "slab_deit_tiny_patch16_224",
    "slab_deit_s": "slab_deit_small_patch16_224",
    "deit_t_prepbn": "deit_tiny_prepbn_patch16_224",
    "deit_s_prepbn": "deit_small_prepbn_patch16_224",
}
DIGITS = ["slab_deit_digits", "deit_digits"]
ALL = list(OFFICIAL.values()) + DIGITS
SOFTMAX = {"deit_tiny_prepbn_patch16_224", "deit_small_prepbn_patch16_224", "deit_digits"}


def build(name: str, **kwargs) -> nn.Module:
    """A reduced-width model (embed 24 like the conformance vectors) so every test stays fast."""
    if name not in DIGITS:
        kwargs = {"embed_dim": 24, "num_classes": 10, **kwargs}
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def image(model: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(1))


def test_registry_and_official_aliases():
    for official, name in OFFICIAL.items():
        assert name in timm.list_models() and name in list_models()
        assert OFFICIAL_NAMES[official] == name
    assert set(DIGITS) <= set(list_models())


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name):
    model = build(name).train()
    model.set_grad_checkpointing(name.startswith("slab_"))  # both paths run
    x = image(model)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.requires_grad and p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ALL)
def test_default_cfg(name):
    model = build(name)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, *model.img_size)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and cfg["interpolation"] == "bicubic"
    assert 0 < cfg["crop_pct"] <= 1
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, nn.Conv2d) and first.in_channels == cfg["input_size"][0]
    head = model.get_submodule(cfg["classifier"])
    assert isinstance(head, nn.Linear) and head is model.get_classifier()
    assert model.default_cfg is model.pretrained_cfg
    if name in DIGITS:
        assert (
            cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 10 and tuple(cfg["mean"]) == (0.5,) * 3
        )
        n_params = sum(p.numel() for p in model.parameters())
        assert 0.3e6 <= n_params <= 1.0e6, n_params


@pytest.mark.parametrize("name", ["slab_deit_tiny_patch16_224", "deit_tiny_prepbn_patch16_224"])
def test_reset_classifier_and_pre_logits(name):
    model = build(name).eval()
    x = image(model)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", ["slab_deit_tiny_patch16_224", "deit_tiny_prepbn_patch16_224"])
def test_forward_intermediates_and_features_only(name):
    model = build(name).eval()
    x = image(model)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, indices=[0, 5, 11])
        assert [f.shape for f in feats] == [(2, 24, 14, 14)] * 3
        torch.testing.assert_close(final, model.forward_features(x))
        nlc = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
        assert [f.shape[1] for f in nlc] == [196 + model.num_prefix_tokens] * 2
        extractor = build(name, features_only=True, out_indices=(3, 7)).eval()
        maps = extractor(x)
    assert [m.shape for m in maps] == [(2, 24, 14, 14)] * 2
    assert extractor.feature_info.channels() == [24, 24]
    assert extractor.feature_info.reduction() == [16, 16]


@pytest.mark.parametrize("name", ["slab_deit_tiny_patch16_224", "deit_tiny_prepbn_patch16_224"])
def test_torchscript(name):
    model = build(name).eval()
    x = image(model)
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated; it still has to work
        scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_export_smoke(tmp_path):
    """torch.export + ONNX (dynamo exporter) + ONNX Runtime on one SLA and one softmax model, folded."""
    ort = pytest.importorskip("onnxruntime")
    for name in ["slab_deit_digits", "deit_tiny_prepbn_patch16_224"]:
        model = reparameterize_model(randomize_norm_statistics(build(name)))
        x = image(model, batch=1)
        exported = torch.export.export(model, (x,))
        with torch.no_grad():
            ref = model(x)
            torch.testing.assert_close(exported.module()(x), ref, atol=1e-5, rtol=1e-5)
        if name != "slab_deit_digits":
            continue  # the ONNX exporter is slow; one SLA model is the smoke test (issue 4 tests the rest)
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert abs(out - ref.numpy()).max() <= 1e-4 * max(1.0, float(ref.abs().max())), name


def test_conformance_vectors_present():
    require_conformance()
    assert sorted(conformance_variants("deit")) == sorted(OFFICIAL)


@pytest.mark.parametrize("variant", conformance_variants("deit") or ["(absent)"])
def test_conformance(variant):
    require_conformance()
    meta = conformance_meta(variant)
    state, x, logits = load_conformance(variant)
    arch = meta["architecture"]
    model = timm.create_model(
        OFFICIAL[variant], embed_dim=arch["embed_dim"], depth=arch["depth"], num_heads=arch["num_heads"],
        num_classes=meta["num_classes"],
    ).eval()  # fmt: skip
    assert list(model.pos_embed.shape) == arch["pos_embed_shape"]
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    # SLAB-DeiT: the official cls_token is never read; the filter drops it and the model has none
    unused = state["cls_token"].numel() if variant.startswith("slab_") else 0
    assert (model.cls_token is None) == variant.startswith("slab_") and "cls_token" in state
    assert sum(p.numel() for p in model.parameters()) == meta["parameter_count"] - unused
    with torch.no_grad():
        out = model(x)
    diff = (out - logits).abs().max().item()
    print(f"{variant}: max |diff| {diff:.3g} (max |logit| {logits.abs().max():.3g})")
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)
    schedule = [m for m in model.modules() if isinstance(m, ProgressiveNorm)]
    for norm in schedule:  # official warm=0, iter=0: schedule finished
        assert int(norm.step) == int(norm.decay_steps) and int(norm.warmup_steps) == 0
        assert float(norm.mix_weight()) == 0.0


@pytest.mark.parametrize("name", ALL)
def test_fold_parity_deploy_reload_idempotent(name):
    model = randomize_layernorms(randomize_norm_statistics(randomize_weights(build(name)))).eval()
    x = image(model)
    deploy, rel = fold_parity(model, x)
    assert rel <= 1e-5, f"fold parity {rel:.3g}"
    assert remaining_norms(deploy) == list(model.unfoldable_norms)
    if model.norm_type != "layernorm":
        assert remaining_norms(deploy) == []
    again = reparameterize_model(deploy)
    with torch.no_grad():
        torch.testing.assert_close(again(x), deploy(x), atol=0, rtol=0)
    ref_sd, again_sd = deploy.state_dict(), again.state_dict()
    assert list(ref_sd) == list(again_sd) and all(torch.equal(ref_sd[k], again_sd[k]) for k in ref_sd)
    rebuilt = build(name, deploy=True).eval()
    rebuilt.load_state_dict(deploy.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), deploy(x), atol=0, rtol=0)


def test_final_norm_without_head_is_kept_and_listed():
    model = randomize_norm_statistics(
        randomize_weights(build("slab_deit_tiny_patch16_224", num_classes=0))
    ).eval()
    deploy, rel = fold_parity(model, image(model))
    assert rel <= 1e-5 and remaining_norms(deploy) == ["norm"] == deploy.unfoldable_norms


def test_wrong_image_size_is_a_clear_error():
    model = build("slab_deit_tiny_patch16_224").eval()
    with pytest.raises(InputError, match=r"built for 224x224 images, got 256x256") as info:
        model(torch.randn(1, 3, 256, 256))
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="3-channel"):
        model(torch.randn(1, 1, 224, 224))


@pytest.mark.parametrize("name", ["slab_deit_tiny_patch16_224", "deit_tiny_prepbn_patch16_224"])
def test_img_size_and_dynamic_img_size(name):
    require_conformance()
    official = {v: k for k, v in OFFICIAL.items()}[name]
    state, _, _ = load_conformance(official)
    small = build(name, img_size=160).eval()  # 10x10 grid: positional tables resampled on load
    load_checkpoint(small, state)
    assert small(torch.randn(1, 3, 160, 160)).shape == (1, 10)
    fixed = load_checkpoint(build(name).eval(), state)
    dynamic = load_checkpoint(build(name, dynamic_img_size=True).eval(), state)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), fixed(x))
        assert torch.isfinite(dynamic(torch.randn(1, 3, 288, 192))).all()
        torch.testing.assert_close(dynamic(torch.randn(1, 3, 160, 160)).shape, torch.Size([1, 10]))
    with pytest.raises(InputError, match="multiple of 16"):
        dynamic(torch.randn(1, 3, 200, 224))


def test_other_variant_checkpoint_names_keys_and_shapes():
    require_conformance()
    softmax_state, _, _ = load_conformance("deit_t_prepbn")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build("slab_deit_tiny_patch16_224"), softmax_state)
    msg = str(info.value)
    assert "missing keys" in msg and "blocks.*.attn.positional_encoding (x12)" in msg
    assert "unexpected keys" in msg and "blocks.*.norm1.alpha (x12)" in msg
    assert "pos_embed (1, 197, 24) vs model (1, 196, 24)" in msg
    small_state, _, _ = load_conformance("slab_deit_s")  # 6 heads: DWC over head_dim 4 instead of 8
    with pytest.raises(
        CheckpointError, match=r"shape mismatches: blocks\.0\.attn\.dwc\.weight \(4, 1, 5, 5\)"
    ):
        load_checkpoint(build("slab_deit_tiny_patch16_224"), small_state)


def test_official_linearnorm_conversion_keeps_the_schedule():
    def official(prefix, warm, it, total, dim=4):
        return {
            prefix + "warm": torch.tensor(warm), prefix + "iter": torch.tensor(it),
            prefix + "total_step": torch.tensor(total), prefix + "norm1.weight": torch.ones(dim),
            prefix + "norm2.alpha": torch.ones(1), prefix + "norm2.bn.running_mean": torch.zeros(dim),
        }  # fmt: skip

    state = convert_official_norms({**official("a.norm1.", 5, 100, 100), **official("norm.", 0, 40, 100)})
    assert set(state) == {
        p + s
        for p in ("a.norm1.", "norm.")
        for s in ("warmup_steps", "step", "decay_steps", "ln.weight", "repbn.alpha", "repbn.bn.running_mean")
    }
    assert [int(state["a.norm1." + k]) for k in ("warmup_steps", "step", "decay_steps")] == [5, 0, 100]
    assert [int(state["norm." + k]) for k in ("warmup_steps", "step", "decay_steps")] == [0, 60, 100]
    g = progressive_mix_weight(state["norm.step"], state["norm.warmup_steps"], state["norm.decay_steps"])
    assert abs(float(g) - 40 / 100) < 1e-7  # official lambda = iter / total_step
    assert convert_official_norms(state).keys() == state.keys()  # idempotent


def test_unwrap_and_official_pickle_checkpoint(tmp_path):
    require_conformance()
    state, x, logits = load_conformance("slab_deit_t")
    wrapped = {"model": {"module." + k: v for k, v in state.items()}, "epoch": 3, "config": _FakeConfig()}
    assert unwrap_state_dict(wrapped).keys() == state.keys()
    path = tmp_path / "ckpt_best.pth"
    torch.save(wrapped, path)
    with pytest.raises(pickle.UnpicklingError):  # what weights_only=True says about the pickled config
        torch.load(path, weights_only=True)
    model = load_checkpoint(build("slab_deit_tiny_patch16_224").eval(), path)
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(model, tmp_path / "absent.pth")


class _FakeConfig(dict):
    """Stands in for the yacs CfgNode the official training script pickles into checkpoints."""


def test_norm_types_and_prepbn_steps():
    tiny = build("slab_deit_tiny_patch16_224")
    assert {int(m.decay_steps) for m in tiny.modules() if isinstance(m, ProgressiveNorm)} == {60_000}
    small = build("deit_small_prepbn_patch16_224")
    assert {int(m.decay_steps) for m in small.modules() if isinstance(m, ProgressiveNorm)} == {300_000}
    plain = build("deit_tiny_prepbn_patch16_224")
    assert not any(isinstance(m, ProgressiveNorm) for m in plain.modules())
    assert sum(isinstance(m, RepBN) for m in plain.modules()) == 25
    custom = build("slab_deit_digits", prepbn_steps=123, prepbn_warmup=7)
    assert {
        (int(m.decay_steps), int(m.warmup_steps)) for m in custom.modules() if isinstance(m, ProgressiveNorm)
    } == {(123, 7)}
    for attn, norm in [("softmax", "layernorm"), ("softmax", "prepbn"), ("sla", "prepbn"), ("sla", "repbn")]:
        model = build("slab_deit_digits", attn_type=attn, norm_type=norm).eval()
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="norm_type"):
        build("slab_deit_digits", norm_type="batchnorm")
    with pytest.raises(ValueError, match="sla"):
        build("slab_deit_digits", global_pool="token", class_token=True)
