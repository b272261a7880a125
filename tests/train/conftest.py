"""Training tests: the tiny fixture model is registered here; `slow` tests run only on request.

Slow tests (accuracy targets, the ablation, the full demo) take minutes on 2 CPU cores. Run them with
`SLAB_EDGE_SLOW=1 pytest tests/train` or `pytest tests/train -m slow`.
"""

from __future__ import annotations

import os

import pytest
import train_fixtures  # noqa: F401  (registers tiny_slab_test with timm)


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("-m", default="") or ""
    if os.environ.get("SLAB_EDGE_SLOW") == "1" or ("slow" in markexpr and "not slow" not in markexpr):
        return
    skip = pytest.mark.skip(reason="slow (minutes on 2 CPU cores): set SLAB_EDGE_SLOW=1 or pass -m slow")
    for item in items:
        if "slow" in item.keywords and "tests/train" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
