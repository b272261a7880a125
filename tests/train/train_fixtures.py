"""Tiny test fixtures for the training tests: a registered micro SLAB model and small data folders.

`tiny_slab_test` is a 1-block SLAB-style ViT (SLA + progressive norm, ~4k parameters) that follows the
repo's re-parameterization protocol, so tests of the trainer do not depend on the zoo's model sizes.
It is registered in timm only (not in slab_edge's zoo list), so zoo-wide tests never see it.
Importing this module registers it; subprocess tests put this folder on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from timm.layers import DropPath
from timm.models import register_model
from torch import nn

from slab_edge.layers.norms import ProgressiveNorm
from slab_edge.layers.reparam import absorb_into_following
from slab_edge.layers.sla import SimplifiedLinearAttention

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _norm(dim: int, norm_type: str, deploy: bool) -> nn.Module:
    if deploy and norm_type != "layernorm":
        return nn.Identity()
    if norm_type == "layernorm":
        return nn.LayerNorm(dim)
    return ProgressiveNorm(dim, decay_steps=10)


class TinyBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, grid: tuple[int, int], norm_type: str, deploy: bool, drop_path: float
    ):
        super().__init__()
        self.norm1 = _norm(dim, norm_type, deploy)
        self.attn = SimplifiedLinearAttention(dim, heads, grid)
        self.norm2 = _norm(dim, norm_type, deploy)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.fc2(self.act(self.fc1(self.norm2(x)))))

    def reparameterize(self) -> None:
        if isinstance(self.norm1, ProgressiveNorm) and absorb_into_following(self.norm1, self.attn.qkv):
            self.norm1 = nn.Identity()
        if isinstance(self.norm2, ProgressiveNorm) and absorb_into_following(self.norm2, self.fc1):
            self.norm2 = nn.Identity()


class TinySlab(nn.Module):
    """[B, 3, S, S] -> patches of 4 -> 1 SLAB block -> final norm -> mean pool -> head."""

    def __init__(
        self,
        img_size: int = 16,
        num_classes: int = 10,
        embed_dim: int = 8,
        depth: int = 1,
        norm_type: str = "prepbn",
        drop_path_rate: float = 0.0,
        deploy: bool = False,
        **_: object,
    ) -> None:
        super().__init__()
        grid = (img_size // 4, img_size // 4)
        self.patch_embed = nn.Conv2d(3, embed_dim, 4, stride=4)
        self.blocks = nn.Sequential(
            *[TinyBlock(embed_dim, 2, grid, norm_type, deploy, drop_path_rate) for _ in range(depth)]
        )
        self.norm = _norm(embed_dim, norm_type, deploy)
        self.head = nn.Linear(embed_dim, num_classes)
        self.pretrained_cfg = {
            "input_size": (3, img_size, img_size),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, C]
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))  # pooling commutes with the per-channel affine of eval RepBN

    def reparameterize(self) -> None:
        if isinstance(self.norm, ProgressiveNorm) and absorb_into_following(self.norm, self.head):
            self.norm = nn.Identity()


@register_model
def tiny_slab_test(pretrained: bool = False, **kwargs) -> TinySlab:
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return TinySlab(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# configs and subprocess helpers

#: a fast digits config for the tiny model: 16x16 inputs, batch 32 -> 44 steps per epoch
TINY = {
    "model": "tiny_slab_test",
    "data": "digits",
    "input_size": 16,
    "epochs": 1,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup_epochs": 0.1,
    "progress": False,
    "plot": False,
    "recal_epochs": 0,
    "recal_steps": 4,
}


def tiny_config(tmp_path: Path, **overrides):
    from slab_edge.train.recipes import resolve_train_config

    values = {**TINY, "output": str(tmp_path / "run"), **overrides}
    return resolve_train_config(cli_values=values)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # identical thread counts in every process: identical float results
    return env


def run_python(
    code: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with the fixtures importable."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or subprocess_env(),
    )


def train_script(
    values: dict,
    resume: str | None = None,
    kill_at_update: int | None = None,
    kill_at_manifest: int | None = None,
) -> str:
    """Python source that trains with `values`, optionally SIGKILLing itself.

    kill_at_update: right after that update (a checkpoint may or may not have been written).
    kill_at_manifest: inside the k-th write of checkpoints/last.json, after its tensor files were written
        and before the manifest is replaced (the worst moment for a crash).
    """
    return f"""
import json, os, signal, torch
torch.set_num_threads(1)
import train_fixtures  # registers tiny_slab_test
import slab_edge.train.checkpoint as ck
from slab_edge.train.recipes import resolve_train_config
from slab_edge.train.vision import train_vision

cfg = resolve_train_config(cli_values=json.loads({json.dumps(json.dumps(values))}))
kill_at, kill_manifest = {kill_at_update!r}, {kill_at_manifest!r}
writes = {{"n": 0}}
real_write = ck.atomic_write_json

def write_or_die(path, obj):
    if str(path).endswith("last.json"):
        writes["n"] += 1
        if writes["n"] == kill_manifest:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_write(path, obj)

ck.atomic_write_json = write_or_die

def killer(event, info):
    if kill_at is not None and event == "step" and info["update"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

train_vision(cfg, resume={resume!r}, callbacks=[killer])
"""
