"""SLAB-Swin (LLSS) and Swin-T-PRepBN: conformance with the official code, folding, the timm interface.

Models run at the reduced widths of the conformance vectors (C 8 or 4, head dim 4) with the real depths,
windows and the 224 input, batch 1-2.
"""

from __future__ import annotations

import _hier_checks as checks
import pytest
import timm
import torch
from _helpers import conformance_meta, load_conformance, require_conformance

from slab_edge.errors import CheckpointError
from slab_edge.layers.reparam import reparameterize_model
from slab_edge.models import resolve_model_name
from slab_edge.models._convert import load_checkpoint
from slab_edge.models.swin import checkpoint_filter_fn, relative_position_index, shifted_window_mask

T_REDUCED = {"embed_dim": 8, "num_heads": (2, 4, 8, 16)}
S_REDUCED = {"embed_dim": 4, "num_heads": (1, 2, 4, 8)}
#: timm name -> (official config, conformance variant, reduced kwargs). Reduced B == reduced S (same
#: depths; only width and heads differ at full size), so the slab_swin_s vectors cover slab_swin_b.
MODELS = {
    "slab_swin_tiny_patch4_224": ("slab_swin_t", "slab_swin_t", T_REDUCED),
    "slab_swin_small_patch4_224": ("slab_swin_s", "slab_swin_s", S_REDUCED),
    "slab_swin_base_patch4_224": ("slab_swin_b", "slab_swin_s", S_REDUCED),
    "swin_tiny_prepbn_patch4_window7_224": ("swin_t_prepbn", "swin_t_prepbn", T_REDUCED),
}
NAMES = list(MODELS)
SLA_NAMES = [n for n in NAMES if n.startswith("slab_")]


def reduced(name: str) -> dict:
    return MODELS[name][2]


# ----------------------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("name", NAMES)
def test_conformance_with_official_logits(name):
    """Official reduced weights load strictly through the filter; logits (and folded logits) match."""
    _, variant, kwargs = MODELS[name]
    diff, folded_diff = checks.check_conformance(name, variant, kwargs, checkpoint_filter_fn)
    print(f"{name} vs {variant}: max|diff| {diff:.2e}, folded {folded_diff:.2e}")


@pytest.mark.parametrize("name", NAMES)
def test_structure_matches_conformance_architecture(name):
    """Per stage: dim, resolution, depth, heads, attention type, window, shift, SLA positional encoding."""
    _, variant, kwargs = MODELS[name]
    arch = conformance_meta(variant)["architecture"]
    model = checks.build(name, kwargs)
    assert len(model.layers) == len(arch["stages"])
    for stage, spec in zip(model.layers, arch["stages"]):
        blocks = list(stage.blocks)
        assert len(blocks) == spec["depth"]
        assert [b.dim for b in blocks] == [spec["dim"]] * spec["depth"]
        assert [list(b.resolution) for b in blocks] == [spec["input_resolution"]] * spec["depth"]
        assert ["L" if b.is_linear else "S" for b in blocks] == spec["attn_types"]
        assert [b.window for b in blocks] == spec["window_sizes"]
        assert [b.shift for b in blocks] == spec["shift_sizes"]
        assert [b.attn.num_heads for b in blocks] == [spec["num_heads"]] * spec["depth"]
        assert [b.mlp.fc1.out_features for b in blocks] == [spec["mlp_hidden"]] * spec["depth"]
        assert (not isinstance(stage.downsample, torch.nn.Identity)) == spec["downsample"]
        for b in blocks:
            if b.is_linear:
                assert list(b.attn.positional_encoding.shape) == spec["attn_positional_encoding_shape"]
                assert list(b.attn.dwc.kernel_size) == spec["dwc_kernel"]
            assert (b.attn_mask is not None) == (b.shift > 0)
    assert model.num_features == arch["num_features"]


def test_patch_embed_fold_does_not_reproduce_official_merge_bug():
    """Official PatchEmbed.merge_bn drops alpha * conv bias (logit error 0.114 here); our fold keeps it."""
    from safetensors.torch import load_file

    path = require_conformance() / "swin_t_prepbn_reduced.merged_out.safetensors"
    merged = load_file(str(path))
    state, x, unmerged = load_conformance("swin_t_prepbn")
    model = checks.build("swin_tiny_prepbn_patch4_window7_224", T_REDUCED).eval()
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    with torch.no_grad():
        folded = reparameterize_model(model)(x)
    torch.testing.assert_close(folded, unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded, merged["logits_with_patchembed_alpha_bias_fix"], atol=1e-5, rtol=1e-5)
    official_bug = (folded - merged["logits"]).abs().max()
    assert official_bug > 0.05, f"folded logits reproduce the official (buggy) merge: {official_bug:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_full_size_model_takes_official_keys_and_shapes(name):
    config = MODELS[name][0]
    checks.check_official_key_list(name, config, checkpoint_filter_fn)


def test_checkpoint_of_another_variant_is_rejected_by_name():
    state, _, _ = load_conformance("slab_swin_t")
    model = checks.build("slab_swin_small_patch4_224", S_REDUCED)
    with pytest.raises(CheckpointError, match="missing keys|unexpected keys|shape"):
        load_checkpoint(model, state)


# ----------------------------------------------------------------------------------------- folding
@pytest.mark.parametrize("name", NAMES)
def test_fold_parity_idempotence_and_deploy_reload(name):
    rel = checks.check_fold(name, reduced(name))
    print(f"{name}: fold max|diff| / max|logit| = {rel:.2e}")


def test_final_norm_without_classifier_is_declared_unfoldable():
    checks.check_headless_final_norm_is_listed("slab_swin_tiny_patch4_224", T_REDUCED)


# ----------------------------------------------------------------------------------------- timm interface
@pytest.mark.parametrize("name", ["slab_swin_tiny_patch4_224", "swin_tiny_prepbn_patch4_window7_224"])
def test_forward_backward_train_mode(name):
    checks.check_forward_backward(name, reduced(name), checkpointing=name.startswith("slab_"))  # both paths


@pytest.mark.parametrize("name", NAMES)
def test_default_cfg_and_pre_logits(name):
    checks.check_default_cfg(name, reduced(name))


def test_reset_classifier():
    checks.check_reset_classifier("slab_swin_tiny_patch4_224", T_REDUCED)


def test_forward_intermediates_and_features_only():
    checks.check_intermediates("slab_swin_tiny_patch4_224", T_REDUCED, [8, 16, 32, 64])


def test_official_names_resolve():
    for name, (config, _, _) in MODELS.items():
        assert resolve_model_name(config) == name
        assert name in timm.list_models("*swin*")


@pytest.mark.parametrize("name", NAMES)
def test_torchscript(name):
    checks.check_torchscript(name, reduced(name))


@pytest.mark.parametrize("name", ["slab_swin_tiny_patch4_224"])
def test_onnx_export_smoke(name):
    # Depths 1-1-2-1 keep one SLA stage, one shifted-window block and the 7x7 stage at a fraction of the cost.
    checks.check_onnx_smoke(name, dict(reduced(name), depths=(1, 1, 2, 1)))


# ----------------------------------------------------------------------------------------- bad input
def test_wrong_image_size_names_the_expected_size():
    checks.check_bad_image("slab_swin_tiny_patch4_224", T_REDUCED)


def test_unsupported_img_size_at_construction():
    with pytest.raises(ValueError, match="multiple of 32"):
        checks.build("swin_tiny_prepbn_patch4_window7_224", T_REDUCED, img_size=200)
    with pytest.raises(ValueError, match="window 7"):
        checks.build("swin_tiny_prepbn_patch4_window7_224", T_REDUCED, img_size=256)
    with pytest.raises(ValueError, match="SLA window"):
        checks.build("slab_swin_tiny_patch4_224", T_REDUCED, img_size=448)
    # All-softmax Swin takes any multiple of 224: windows tile every stage map.
    model = checks.build("swin_tiny_prepbn_patch4_window7_224", T_REDUCED, img_size=448)
    assert [b.window for b in model.layers[0].blocks] == [7, 7] and model.layers[0].blocks[1].shift == 3


# ----------------------------------------------------------------------------------------- norms & maths
def test_prepbn_defaults_and_overrides():
    assert checks.progressive_decay_steps(checks.build("slab_swin_tiny_patch4_224", T_REDUCED)) == {60_000}
    model = checks.build("slab_swin_tiny_patch4_224", T_REDUCED, prepbn_steps=1234, prepbn_warmup=10)
    assert checks.progressive_decay_steps(model) == {1234}
    prepbn = checks.build("swin_tiny_prepbn_patch4_window7_224", T_REDUCED)
    assert checks.norm_kinds(prepbn) == {"RepBN"}
    with pytest.raises(ValueError, match="prepbn_steps"):
        checks.build("swin_tiny_prepbn_patch4_window7_224", T_REDUCED, prepbn_steps=1000)


def test_shift_mask_and_relative_index_maths():
    # Relative index covers every (dy, dx) pair exactly once per query; (i, i) maps to the table centre.
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and int(idx.diagonal().unique()) == 12 and len(idx[0].unique()) == 9
    mask = shifted_window_mask(14, 14, 7, 3)  # 4 windows of 49 tokens
    assert mask.shape == (4, 49, 49)
    assert torch.count_nonzero(mask[0]) == 0  # the top-left window holds only original neighbours
    # Bottom-right window: 4 regions of 4x4, 4x3, 3x4, 3x3 tokens; a token sees only its own region.
    allowed = (mask[3] == 0).sum(dim=1)
    assert sorted(allowed.unique().tolist()) == [9, 12, 16]
