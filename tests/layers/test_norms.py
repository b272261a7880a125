"""RepBN and the progressive norm: maths, schedule by optimizer steps, eval semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slab_edge.layers.norms import (
    ProgressiveNorm,
    RepBN,
    advance_progressive_norms,
    current_mix_weight,
    set_progressive_schedule,
)
from slab_edge.testing import randomize_norm_statistics


def test_repbn_matches_batchnorm1d_on_channels_first_tokens():
    torch.manual_seed(0)
    norm = RepBN(6)
    randomize_norm_statistics(norm)
    x = torch.randn(3, 10, 6)
    ref_bn = nn.BatchNorm1d(6)
    ref_bn.load_state_dict(norm.bn.state_dict())
    for mode in ("train", "eval"):
        norm.train(mode == "train")
        ref_bn.train(mode == "train")
        expected = ref_bn(x.transpose(1, 2)).transpose(1, 2) + norm.alpha.detach() * x
        torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-5)
    # running statistics were updated identically in the train pass
    torch.testing.assert_close(norm.bn.running_mean, ref_bn.running_mean)


def test_repbn_affine_equals_eval_forward():
    norm = RepBN(5)
    randomize_norm_statistics(norm, seed=3)
    norm.eval()
    x = torch.randn(2, 7, 5)
    scale, shift = norm.affine()
    torch.testing.assert_close(norm(x), (x.double() * scale + shift).float(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("first", ["layernorm", "rmsnorm"])
def test_progressive_norm_mixes_by_schedule_and_uses_repbn_in_eval(first):
    torch.manual_seed(1)
    norm = ProgressiveNorm(8, decay_steps=4, warmup_steps=2, first=first)
    randomize_norm_statistics(norm)
    x = torch.randn(4, 5, 8)
    expected_g = [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    for step, g in enumerate(expected_g):
        norm.step.fill_(step)
        assert float(norm.mix_weight()) == pytest.approx(g)
        norm.train()
        ln_out = norm.ln(x)
        bn_state = {k: v.clone() for k, v in norm.repbn.state_dict().items()}
        out = norm(x)
        norm.repbn.load_state_dict(bn_state)  # undo the running-stat update of the check below
        rep_out = norm.repbn(x)
        norm.repbn.load_state_dict(bn_state)
        torch.testing.assert_close(out, g * ln_out + (1 - g) * rep_out, atol=1e-6, rtol=1e-5)
        norm.eval()
        torch.testing.assert_close(norm(x), norm.repbn(x))


def test_forward_calls_never_advance_the_schedule():
    model = nn.Sequential(ProgressiveNorm(4, decay_steps=10), ProgressiveNorm(4, decay_steps=10)).train()
    for _ in range(5):
        model(torch.randn(2, 3, 4))
    assert current_mix_weight(model) == 1.0
    advance_progressive_norms(model, steps=3)
    assert current_mix_weight(model) == pytest.approx(0.7)
    assert all(int(m.step) == 3 for m in model)


def test_schedule_survives_state_dict_round_trip():
    a = ProgressiveNorm(4, decay_steps=100, warmup_steps=5)
    set_progressive_schedule(a, step=42)
    b = ProgressiveNorm(4, decay_steps=1, warmup_steps=0)
    b.load_state_dict(a.state_dict())
    assert (int(b.step), int(b.warmup_steps), int(b.decay_steps)) == (42, 5, 100)
    assert float(b.mix_weight()) == pytest.approx(1 - 37 / 100)


def test_zero_decay_means_pure_repbn_after_warmup():
    norm = ProgressiveNorm(4, decay_steps=0, warmup_steps=2)
    assert float(norm.mix_weight()) == 1.0
    norm.step.fill_(2)
    assert float(norm.mix_weight()) == 0.0


def test_every_parameter_gets_a_gradient_in_training():
    # DDP without find_unused_parameters relies on this, warm-up included.
    norm = ProgressiveNorm(4, decay_steps=10, warmup_steps=3).train()
    norm(torch.randn(3, 5, 4)).pow(2).sum().backward()
    assert all(p.grad is not None for p in norm.parameters())


def test_unknown_first_norm_is_rejected():
    with pytest.raises(ValueError, match="layernorm"):
        ProgressiveNorm(4, first="groupnorm")
