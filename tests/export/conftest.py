"""Fixtures for export tests: one dynamo export per zoo model per session, shared by the ONNX, precision
and engine-build tests (export is the slow step, a few seconds per reduced model)."""

from __future__ import annotations

import pytest
import torch
from _export_helpers import build_reduced, reduced_kwargs


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Tiny models: one intra-op thread is as fast as two, and much faster on a loaded machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ZooExports:
    """Lazily exported reduced zoo models: name -> (PreparedModel, ExportReport)."""

    def __init__(self, folder):
        self.folder = folder
        self.done: dict[str, tuple] = {}

    def get(self, name: str):
        if name not in self.done:
            from slab_edge.export.checkpoint import prepare_model
            from slab_edge.export.onnx_export import export_model

            prepared = prepare_model(name, model=build_reduced(name), model_kwargs=reduced_kwargs(name))
            report = export_model(prepared, self.folder / f"{name}.onnx")[0]
            self.done[name] = (prepared, report)
        return self.done[name]


@pytest.fixture(scope="session")
def zoo_exports(tmp_path_factory) -> ZooExports:
    return ZooExports(tmp_path_factory.mktemp("zoo_onnx"))
