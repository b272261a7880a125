"""Fusion maths: every fold against the unfolded computation, with randomized statistics."""

from __future__ import annotations

import torch
from torch import nn

from slab_edge.layers.fold import fold_affine_into_linear_input, fold_affine_into_output
from slab_edge.layers.norms import ProgressiveNorm, RepBN
from slab_edge.layers.reparam import (
    FoldCheckError,
    absorb_into_following,
    absorb_into_preceding,
    describe_fold,
    fold_metadata,
    remaining_norms,
    reparameterize_model,
)


def random_repbn(dim: int, seed: int = 0) -> RepBN:
    g = torch.Generator().manual_seed(seed)
    norm = RepBN(dim)
    norm.bn.running_mean.copy_(torch.rand(dim, generator=g) - 0.5)
    norm.bn.running_var.copy_(torch.rand(dim, generator=g) * 1.5 + 0.5)
    norm.bn.weight.data.copy_(torch.rand(dim, generator=g) + 0.5)
    norm.bn.bias.data.copy_((torch.rand(dim, generator=g) - 0.5) * 0.4)
    norm.alpha.data.fill_(1.3)
    return norm.eval()


def test_affine_into_linear_input_and_output():
    torch.manual_seed(0)
    w, b = torch.randn(5, 4), torch.randn(5)
    scale, shift = torch.randn(4).double(), torch.randn(4).double()
    x = torch.randn(3, 4)
    fw, fb = fold_affine_into_linear_input(w, b, scale, shift)
    expected = (x.double() * scale + shift) @ w.double().T + b.double()
    torch.testing.assert_close(x @ fw.T + fb, expected.float(), atol=1e-5, rtol=1e-5)
    scale_o, shift_o = torch.randn(5).double(), torch.randn(5).double()
    fw, fb = fold_affine_into_output(w, b, scale_o, shift_o)
    expected = (x.double() @ w.double().T + b.double()) * scale_o + shift_o
    torch.testing.assert_close(x @ fw.T + fb, expected.float(), atol=1e-5, rtol=1e-5)


def test_absorb_into_following_linear_without_bias():
    norm, lin = random_repbn(6, seed=1), nn.Linear(6, 3, bias=False)
    x = torch.randn(2, 9, 6)
    expected = lin(norm(x))
    assert absorb_into_following(norm, lin)
    torch.testing.assert_close(lin(x), expected, atol=1e-5, rtol=1e-5)


def test_absorb_into_preceding_conv_keeps_alpha_times_bias():
    # The official PatchEmbed fold drops alpha * conv bias; a non-zero bias and alpha != 0 expose it.
    torch.manual_seed(2)
    conv, norm = nn.Conv2d(3, 6, 4, stride=4), random_repbn(6, seed=2)
    nn.init.uniform_(conv.bias, 0.5, 1.0)
    x = torch.randn(2, 3, 16, 16)
    tokens = lambda y: y.flatten(2).transpose(1, 2)  # [B, N, C]
    expected = norm(tokens(conv(x)))
    assert absorb_into_preceding(conv, norm)
    torch.testing.assert_close(tokens(conv(x)), expected, atol=1e-5, rtol=1e-5)


class _Block(nn.Module):
    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        self.norm = ProgressiveNorm(dim)
        g = torch.Generator().manual_seed(seed)
        self.norm.repbn.bn.running_var.copy_(torch.rand(dim, generator=g) + 0.5)
        self.norm.repbn.bn.running_mean.copy_(torch.rand(dim, generator=g) - 0.5)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc(self.norm(x))

    def reparameterize(self):
        if absorb_into_following(self.norm, self.fc):
            self.norm = nn.Identity()


def test_reparameterize_model_is_a_parity_preserving_idempotent_copy():
    model = nn.Sequential(_Block(8, 0), _Block(8, 1)).eval()
    x = torch.randn(2, 5, 8)
    folded = reparameterize_model(model)
    assert remaining_norms(model) == ["0.norm", "1.norm"]  # the original is untouched
    assert remaining_norms(folded) == []
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    again = reparameterize_model(folded)
    torch.testing.assert_close(again(x), folded(x), atol=0, rtol=0)


def test_fold_check_names_the_norm_left_behind():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    try:
        reparameterize_model(model)
    except FoldCheckError as err:
        assert "1" in str(err)
    else:
        raise AssertionError("an unfoldable LayerNorm must fail the fold check")
    model.unfoldable_norms = ("1",)
    reparameterize_model(model)


def test_fold_metadata_says_what_was_folded_and_what_is_left():
    model = nn.Sequential(_Block(8, 0), _Block(8, 1)).eval()
    folded = reparameterize_model(model)
    assert fold_metadata(folded, model) == {"folded": True, "unfolded_norms": {}, "folded_norms": 2}
    assert describe_fold(fold_metadata(folded, model)) == "folded 2 norms"
    # a model that keeps norms by design (declared unfoldable): the fold passes, but the file must say so
    mixed = nn.Sequential(_Block(8, 0), nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8)).eval()
    mixed.unfoldable_norms = ("1", "3")
    meta = fold_metadata(reparameterize_model(mixed), mixed)
    assert meta == {"folded": False, "unfolded_norms": {"LayerNorm": 2}, "folded_norms": 1}
    assert describe_fold(meta) == "folded 1 norm; left unfolded: 2 LayerNorm"
    assert fold_metadata(mixed) == {"folded": False, "unfolded_norms": {"LayerNorm": 2, "ProgressiveNorm": 1}}


def test_a_layernorm_zoo_model_is_not_reported_folded():
    """deit_digits (the LayerNorm baseline) folds without error, keeping every norm: folded is false."""
    from slab_edge.models import create_model

    for name, expect in (("deit_digits", {"LayerNorm": 3}), ("slab_deit_digits", {})):
        model = create_model(name, embed_dim=24, depth=1).eval()
        meta = fold_metadata(reparameterize_model(model), model)
        assert meta["unfolded_norms"] == expect and meta["folded"] is (not expect)
        assert meta["folded_norms"] == 3 - sum(expect.values())  # norm1, norm2 and the final norm
