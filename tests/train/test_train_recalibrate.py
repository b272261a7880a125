"""BN recalibration: statistics re-estimated exactly, weights and modes untouched."""

from __future__ import annotations

import torch
from torch import nn

from slab_edge.layers.norms import ProgressiveNorm
from slab_edge.train.recalibrate import batchnorm_layers, recalibrate_bn


def test_cumulative_statistics_equal_the_data_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    batches = [torch.randn(16, 3) * 2 + 1 for _ in range(5)]
    weights = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    model.train()
    used = recalibrate_bn(model, [(b, torch.zeros(16)) for b in batches])
    assert used == 5
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    # cumulative average (momentum=None) of per-batch means / unbiased variances
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v)
    assert model.training and bn.training and bn.momentum == 0.1  # modes and momentum restored
    assert recalibrate_bn(nn.Linear(2, 2), [torch.randn(2, 2)]) == 0  # nothing to do without BN


def test_progressive_norm_recalibrates_its_repbn_branch():
    torch.manual_seed(0)
    norm = ProgressiveNorm(6, decay_steps=10)
    model = nn.Sequential(nn.Linear(6, 6), norm)
    assert batchnorm_layers(model) == [norm.repbn.bn]
    x = torch.randn(8, 5, 6) * 3 + 2  # [B, N, C] tokens
    recalibrate_bn(model, [x], steps=1)
    with torch.no_grad():
        h = model[0](x).reshape(-1, 6)
    torch.testing.assert_close(norm.repbn.bn.running_mean, h.mean(0), rtol=1e-5, atol=1e-5)
    assert int(norm.step) == 0  # the schedule is untouched
