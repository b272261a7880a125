"""Our numpy/PIL eval transform against timm's own (torchvision) eval transform. Imports torch (allowed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from slab_edge.runtime import EvalTransform

timm_data = pytest.importorskip("timm.data", reason="timm (the [train] extra) is needed for the parity check")


@pytest.mark.parametrize("wh", [(300, 200), (200, 300), (224, 224), (100, 60), (513, 257)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("crop_pct", [0.875, 0.95, 1.0, 1.25])
@pytest.mark.parametrize("size", [(3, 224, 224), (3, 160, 192)])
def test_matches_timm_eval_transform(wh, interpolation, crop_pct, size):
    rng = np.random.default_rng(sum(wh))
    image = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    reference = timm_data.create_transform(
        input_size=size, interpolation=interpolation, crop_pct=crop_pct, mean=mean, std=std
    )(image).numpy()
    ours = EvalTransform(size, mean, std, interpolation, crop_pct)(image)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
