"""SLAB-CSwin (LLSS): conformance with the official code, folding, the timm interface.

Models run at the reduced widths of the conformance vectors (C 4, head dim 4) with the real depths, split
sizes and the 224 input, batch 1-2.
"""

from __future__ import annotations

import _hier_checks as checks
import pytest
import timm
import torch
from _helpers import conformance_meta, load_conformance

from slab_edge.errors import CheckpointError
from slab_edge.models import resolve_model_name
from slab_edge.models._convert import convert_official_norms, load_checkpoint
from slab_edge.models.cswin import LePESLA, checkpoint_filter_fn, img_to_stripes, stripes_to_img

REDUCED = {"embed_dim": 4, "num_heads": (1, 2, 4, 8)}
#: timm name -> official config (= conformance variant)
MODELS = {"slab_cswin_tiny_224": "slab_cswin_t", "slab_cswin_small_224": "slab_cswin_s"}
NAMES = list(MODELS)


# ----------------------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("name", NAMES)
def test_conformance_with_official_logits(name):
    """Official reduced weights load strictly through the filter; logits (and folded logits) match."""
    diff, folded_diff = checks.check_conformance(name, MODELS[name], REDUCED, checkpoint_filter_fn)
    print(f"{name} vs {MODELS[name]}: max|diff| {diff:.2e}, folded {folded_diff:.2e}")


@pytest.mark.parametrize("name", NAMES)
def test_structure_matches_conformance_architecture(name):
    """Per stage: dim, resolution, depth, attention type, branches (stripe shapes, heads), SLA/LePE shapes."""
    arch = conformance_meta(MODELS[name])["architecture"]
    model = checks.build(name, REDUCED)
    stem = model.stage1_conv_embed[0]
    spec = arch["stem_conv"]
    assert (list(stem.kernel_size), list(stem.stride), list(stem.padding)) == (
        spec["kernel"], spec["stride"], spec["padding"],
    )  # fmt: skip
    assert list(model.merge1.conv.kernel_size) == arch["merge_conv"]["kernel"]
    assert list(model.merge1.conv.stride) == arch["merge_conv"]["stride"]
    for i, spec in enumerate(arch["stages"]):
        blocks = list(getattr(model, f"stage{i + 1}"))
        assert len(blocks) == spec["depth"]
        assert {b.dim for b in blocks} == {spec["dim"]} and {b.res for b in blocks} == {spec["resolution"]}
        assert [b.branch_num for b in blocks] == spec["branch_num"]
        kinds = ["L" if isinstance(b.attns[0], LePESLA) else "S" for b in blocks]
        assert kinds == spec["attn_types"]
        assert {b.mlp.fc1.out_features for b in blocks} == {spec["mlp_hidden"]}
        for b in blocks:
            got = [
                {"dim": a.dim, "num_heads": a.num_heads, "head_dim": a.dim // a.num_heads, "H_sp": a.h_sp,
                 "W_sp": a.w_sp}
                for a in b.attns
            ]  # fmt: skip
            assert got == spec["branches"]
            for a in b.attns:
                assert list(a.get_v.kernel_size) == spec["lepe_kernel"]
                if isinstance(a, LePESLA):
                    assert list(a.positional_encoding.shape) == spec["attn_positional_encoding_shape"]
                    assert list(a.dwc.kernel_size) == spec["dwc_kernel"]


@pytest.mark.parametrize("name", NAMES)
def test_full_size_model_takes_official_keys_and_shapes(name):
    checks.check_official_key_list(name, MODELS[name], checkpoint_filter_fn)


def test_official_unused_sla_scale_is_dropped():
    """The official SLA branches carry a `scale` their forward never reads (the vectors randomize it, so the
    matching logits above show it is unread); the filter drops exactly those keys, the model has none."""
    state, _, _ = load_conformance("slab_cswin_t")
    model = checks.build("slab_cswin_tiny_224", REDUCED)
    dropped = set(convert_official_norms(state)) - set(checkpoint_filter_fn(state, model))
    assert dropped == {k for k in state if k.endswith(".scale")}
    assert sorted(dropped) == [f"stage1.{j}.attns.0.scale" for j in range(2)] + [
        f"stage2.{j}.attns.0.scale" for j in range(4)
    ]
    assert not [n for n, _ in model.named_parameters() if n.endswith("scale")]


def test_checkpoint_of_another_variant_is_rejected_by_name():
    state, _, _ = load_conformance("slab_cswin_s")
    model = checks.build("slab_cswin_tiny_224", REDUCED)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_checkpoint(model, state)


# ----------------------------------------------------------------------------------------- folding
@pytest.mark.parametrize("name", NAMES)
def test_fold_parity_idempotence_and_deploy_reload(name):
    rel = checks.check_fold(name, REDUCED)
    print(f"{name}: fold max|diff| / max|logit| = {rel:.2e}")


def test_final_norm_without_classifier_is_declared_unfoldable():
    checks.check_headless_final_norm_is_listed("slab_cswin_tiny_224", REDUCED)


# ----------------------------------------------------------------------------------------- timm interface
@pytest.mark.parametrize("checkpointing", [False, True])
def test_forward_backward_train_mode(checkpointing):
    checks.check_forward_backward("slab_cswin_tiny_224", REDUCED, checkpointing)


@pytest.mark.parametrize("name", NAMES)
def test_default_cfg_and_pre_logits(name):
    checks.check_default_cfg(name, REDUCED)


def test_reset_classifier():
    checks.check_reset_classifier("slab_cswin_tiny_224", REDUCED)


def test_forward_intermediates_and_features_only():
    checks.check_intermediates("slab_cswin_tiny_224", REDUCED, [4, 8, 16, 32])


def test_official_names_resolve():
    for name, config in MODELS.items():
        assert resolve_model_name(config) == name
        assert name in timm.list_models("slab_cswin*")


@pytest.mark.parametrize("name", NAMES)
def test_torchscript(name):
    checks.check_torchscript(name, REDUCED)


def test_onnx_export_smoke():
    # Depths 1-1-1-1 keep both SLA stages, a two-branch stripe stage and the full last stage.
    checks.check_onnx_smoke("slab_cswin_tiny_224", dict(REDUCED, depths=(1, 1, 1, 1)))


# ----------------------------------------------------------------------------------------- bad input & maths
def test_wrong_image_size_names_the_expected_size():
    checks.check_bad_image("slab_cswin_tiny_224", REDUCED)


def test_unsupported_img_size_at_construction():
    with pytest.raises(ValueError, match="multiple of 32"):
        checks.build("slab_cswin_tiny_224", REDUCED, img_size=200)
    with pytest.raises(ValueError, match="stripe width"):
        checks.build("slab_cswin_tiny_224", REDUCED, img_size=256)  # 64x64 stage 1 vs SLA split 56


def test_prepbn_defaults_and_overrides():
    assert checks.progressive_decay_steps(checks.build("slab_cswin_tiny_224", REDUCED)) == {120_000}
    model = checks.build("slab_cswin_tiny_224", REDUCED, prepbn_steps=777)
    assert checks.progressive_decay_steps(model) == {777}
    assert checks.norm_kinds(checks.build("slab_cswin_tiny_224", REDUCED, norm_type="repbn")) == {"RepBN"}


def test_stripes_round_trip():
    x = torch.randn(2, 14 * 14, 3)
    for h_sp, w_sp in [(14, 7), (7, 14), (14, 14)]:
        stripes = img_to_stripes(x, 14, h_sp, w_sp)
        assert stripes.shape == (2 * 14 * 14 // (h_sp * w_sp), h_sp * w_sp, 3)
        torch.testing.assert_close(stripes_to_img(stripes, 14, h_sp, w_sp), x, atol=0, rtol=0)
    # Vertical stripes of width 7: the first stripe holds columns 0-6 of every row.
    grid = torch.arange(14 * 14).float().reshape(1, 196, 1)
    first = img_to_stripes(grid, 14, 14, 7)[0, :, 0].reshape(14, 7)
    torch.testing.assert_close(first, torch.arange(196).float().reshape(14, 14)[:, :7])
