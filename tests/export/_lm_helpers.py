"""Tiny SLAB-LMs and their export-lm folders, shared by the LM export tests (one export per variant)."""

from __future__ import annotations

import contextlib
import io

import torch

from slab_edge import cli
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


def train_and_export_bpe_run(run) -> str:
    """`slab-edge train-lm` a 1-layer SLA + PRepBN model with a 300-token BPE for 2 steps into `run`, then
    `slab-edge export-lm` it to run/onnx; returns what export-lm printed."""
    tiny = "model_kwargs={dim: 32, num_layers: 1, num_heads: 2, ffn_dim: 64}"
    train = (
        f"train-lm --output {run} --steps 2 --seq-len 32 --batch-size 2 --max-corpus-bytes 60000 "
        "--val-fraction 0.2 --tokenizer bpe --bpe-vocab 300 --attention sla --norm prepbn "
        "--final-eval-tokens 512 --no-progress --threads 1 --set"
    ).split() + [tiny]
    assert cli.main(train) == 0
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert cli.main(["export-lm", str(run), "--threads", "1", "--parity-tokens", "16"]) == 0
    return log.getvalue()
