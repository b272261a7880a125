"""Tiny SLAB-LMs and their export-lm folders, shared by the LM export tests (one export per variant)."""

from __future__ import annotations

import torch

from slab_edge.export.lm import export_lm
from slab_edge.models.slab_lm import create_slab_lm

VARIANTS = [("sla", "prepbn"), ("gla", "prepbn"), ("softmax", "rmsnorm")]


def tiny_lm(attention: str, norm: str, seed: int = 0):
    """The tiny config with weights large enough for clear greedy margins and random BN statistics."""
    torch.manual_seed(seed)
    model = create_slab_lm("tiny", attention=attention, norm=norm, init_std=0.1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):  # default statistics (0, 1) would hide fold bugs
                module.running_mean.normal_(0.0, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.normal_(1.0, 0.3, generator=gen)
                module.bias.normal_(0.0, 0.3, generator=gen)
            if type(module).__name__ == "RepBN":
                module.alpha.fill_(0.7)
    return model.eval()


class Exports:
    """(attention, norm) -> (model, LMExportReport, folder), exported once in `format` (slab | genai)."""

    def __init__(self, folder, format: str = "slab"):
        self.folder, self.format, self.done = folder, format, {}

    def get(self, attention: str, norm: str):
        key = (attention, norm)
        if key not in self.done:
            model = tiny_lm(attention, norm)
            out = self.folder / f"{attention}-{norm}"
            meta = {"tokenizer": "byte", "size": "tiny"}
            report = export_lm(model, out, meta=meta, threads=1, format=self.format)
            self.done[key] = (model, report, out)
        return self.done[key]
