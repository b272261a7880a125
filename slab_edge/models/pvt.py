"""SLAB PVT family (PVT v1 layout): SLAB-PVT (SLA everywhere) and PVT-PRepBN (spatial-reduction softmax).

timm names [official builder]:
    slab_pvt_tiny / slab_pvt_small / slab_pvt_medium [slab_pvt_t/s/m]   attention 'LLLL', SLA without
        spatial reduction (official la_sr '1111'): split q / kv projections, DWC, per-stage positional
        encoding
    pvt_tiny_prepbn / pvt_small_prepbn / pvt_medium_prepbn [pvt_t/s/m_prepbn]   attention 'SSSS': softmax
        with spatial reduction sr = 8/4/2/1 (Conv2d(k = s = sr) then a norm on the reduced keys/values)
All: widths [64, 128, 320, 512], heads [1, 2, 5, 8], mlp ratios [8, 8, 4, 4], sr [8, 4, 2, 1], depths
[2,2,2,2] / [3,4,6,3] / [3,4,18,3]; every norm (patch embeddings, blocks, sr norm) is a progressive norm
(LayerNorm eps 1e-6 -> RepBN over 300k steps); no class token and no final norm: tokens of stage 4 are
mean-pooled, then the head.

Parameters live in timm-style stages: `stages.{i}.patch_embed`, `stages.{i}.pos_embed`,
`stages.{i}.blocks.{j}` (attn.q / attn.kv / attn.sr / attn.norm inside as officially). `checkpoint_filter_fn`
maps the official names (patch_embed{i+1}, pos_embed{i+1}, block{i+1}) onto them and renames the
progressive norms, so official checkpoints load strictly.

Image size: stage i works on a (H / 4 / 2^i) grid and its positional table is sized for `img_size`.
Another input size raises InputError (a ValueError) unless `dynamic_img_size=True`: then the positional
tables are resampled bilinearly (what the official code does at run time) and the SLA positional
encodings bicubically; sizes must be multiples of 32.

Re-parameterization: each patch-embedding norm folds into its conv's output channels (with the
alpha * bias term the official Swin PatchEmbed.merge_bn drops); norm1 folds into attn.q and attn.kv (SLA,
sr = 1) or into attn.q and the INPUT side of the sr conv (softmax, sr > 1: k = s = sr, no padding, so every
output sees whole windows and the fold is exact); the sr norm folds into attn.kv; norm2 into mlp.fc1.
There is no final norm. norm_type='layernorm' cannot be folded (input-dependent statistics).

TorchScript (torch.jit.script, deprecated in current torch but still supported) and torch.fx (timm's
feature extraction) work for fixed-size models; `dynamic_img_size=True` resamples in eager / torch.export /
ONNX only.
"""

from __future__ import annotations

import math
import re
from typing import List, Tuple  # noqa: UP035  TorchScript reads typing.List / Tuple, not list[...] strings

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from slab_edge.layers.fold import set_linear_or_conv
from slab_edge.layers.norms import norm_affine
from slab_edge.layers.reparam import absorb_into_following
from slab_edge.layers.sla import SimplifiedLinearAttention
from slab_edge.models._common import (
    ConvPatchEmbed,
    PooledTokenClassifier,
    PreNormBlock,
    check_image_size,
    ensure_bias,
    init_linear_trunc_normal,
    is_foldable,
    make_norm_layer,
    norm_or_identity,
    tokens_to_nhwc,
    unfoldable_norm_names,
)
from slab_edge.models._convert import convert_official_norms, resample_grid_embedding, unwrap_state_dict
from slab_edge.models._registry import register_slab_model

torch.fx.wrap("check_image_size")  # traced graphs keep the input check as one call (see _common)

__all__ = [
    "Block",
    "PVTStage",
    "SlabPVT",
    "SpatialReductionAttention",
    "checkpoint_filter_fn",
    "fold_affine_into_conv_input",
]

NUM_STAGES = 4


def fold_affine_into_conv_input(
    weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv2d(scale * x + shift) for an unpadded, ungrouped conv: W' = W diag(scale) over input channels,
    c' = c + sum_{i,kh,kw} W[o, i, kh, kw] shift[i].

    Exact only when every output position sees a whole kernel window (no padding), which holds for
    PVT's spatial-reduction conv (kernel = stride = sr, padding 0).

    Args:
        weight: [out, in, kh, kw]; bias: [out] or None; scale, shift: [in].
    """
    w = weight.double()
    new_bias = (w * shift.double()[None, :, None, None]).sum(dim=(1, 2, 3))
    if bias is not None:
        new_bias = new_bias + bias.double()
    return (w * scale.double()[None, :, None, None]).to(weight.dtype), new_bias.to(weight.dtype)


class SpatialReductionAttention(nn.Module):
    """PVT softmax attention: queries from every token, keys/values from a sr x sr reduced map.

    Input [B, N, C] on an (H, W) grid; output [B, N, C]. With sr > 1: x -> Conv2d(C, C, k=s=sr) -> norm
    -> kv; with sr == 1 the kv projection reads x directly (`sr` and `norm` are parameter-free Identities,
    so the state dict has no sr / norm keys, as the official one).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
        norm_layer=nn.LayerNorm,
        norm_type: str = "prepbn",
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        self.sr: nn.Module = nn.Identity()
        self.norm: nn.Module = nn.Identity()
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, **dd)
            self.norm = norm_or_identity(norm_layer, dim, norm_type, deploy, **dd)
            if deploy and norm_type != "layernorm":
                ensure_bias(self.kv)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:  # noqa: UP006  (TorchScript)
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, N, d]
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(b, c, hw[0], hw[1])).flatten(2).transpose(1, 2)
            kv_in = self.norm(reduced)  # [B, N / sr^2, C]
        else:
            kv_in = x
        kv = self.kv(kv_in).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(
            q, kv[0], kv[1], dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))

    @torch.no_grad()
    def absorb_input_norm(self, norm: nn.Module) -> None:
        """Fold an eval-affine norm applied to this layer's input into q and (kv | the sr conv input)."""
        absorb_into_following(norm, self.q)
        if self.sr_ratio > 1:
            weight, bias = fold_affine_into_conv_input(self.sr.weight, self.sr.bias, *norm_affine(norm))
            set_linear_or_conv(self.sr, weight, bias)
        else:
            absorb_into_following(norm, self.kv)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the sr norm into the kv projection."""
        if self.sr_ratio > 1 and is_foldable(self.norm):
            absorb_into_following(self.norm, self.kv)
            self.norm = nn.Identity()


class Block(PreNormBlock):
    """PVT block on an (H, W) token grid: SLA ('L') or spatial-reduction attention ('S') in a pre-norm block.
    [B, N, C] -> [B, N, C]."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        grid_size: tuple[int, int],
        attn_type: str = "L",
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer=nn.LayerNorm,
        norm_type: str = "prepbn",
        kernel_size: int = 5,
        dynamic_img_size: bool = False,
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        if attn_type == "L":
            attn = SimplifiedLinearAttention(
                dim,
                num_heads,
                grid_size,
                qkv_bias=qkv_bias,
                kernel_size=kernel_size,
                proj_drop=proj_drop,
                split_qkv=True,
                dynamic_size=dynamic_img_size,
                **dd,
            )
        elif attn_type == "S":
            attn = SpatialReductionAttention(
                dim, num_heads, qkv_bias, attn_drop, proj_drop, sr_ratio, norm_layer, norm_type, deploy, **dd
            )
        else:
            raise ValueError(f"attention type must be 'L' (SLA) or 'S' (softmax), got {attn_type!r}")
        super().__init__(dim, attn, mlp_ratio, proj_drop, drop_path, norm_layer, norm_type, deploy, **dd)
        if deploy and norm_type != "layernorm":
            ensure_bias(self.attn.q)
            if attn_type == "L" or sr_ratio == 1:
                ensure_bias(self.attn.kv)


class PVTStage(nn.Module):
    """One PVT stage: patch embedding, + positional table, blocks on the stage grid.

    Input [B, C_in, H, W] (the image, or the previous stage's map); output tokens [B, H' * W', C] with
    (H', W') = (H, W) / `patch_size`. `pos_embed` [1, H' * W', C] is built for `grid_size`; another grid
    (dynamic_img_size) resamples it bilinearly, as the official code does at run time.
    """

    def __init__(
        self,
        in_chans: int,
        dim: int,
        patch_size: int,
        stride: int,
        grid_size: tuple[int, int],
        blocks: list[nn.Module],
        embed_norm: nn.Module,
        drop_rate: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.stride = stride  # of this stage's grid w.r.t. the image
        self.grid_size: Tuple[int, int] = (int(grid_size[0]), int(grid_size[1]))  # noqa: UP006
        self.patch_embed = ConvPatchEmbed(
            in_chans, dim, patch_size, norm=embed_norm, device=device, dtype=dtype
        )
        self.pos_embed = nn.Parameter(
            torch.zeros(1, grid_size[0] * grid_size[1], dim, device=device, dtype=dtype)
        )
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:  # noqa: UP006  (TorchScript)
        x = self.patch_embed(x)  # [B, C, H, W] -> [B, N, C]
        pos = self.pos_embed
        if (hw[0] != self.grid_size[0] or hw[1] != self.grid_size[1]) and not torch.jit.is_scripting():
            pos = self._resampled_pos_embed(hw)  # dynamic_img_size (eager / export only)
        x = self.pos_drop(x + pos)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return x

    def _resampled_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        return resample_grid_embedding(self.pos_embed, hw, 0, old_hw=self.grid_size, mode="bilinear")


def _per_stage(value, name: str) -> tuple:
    value = tuple(value) if isinstance(value, (list, tuple)) else (value,) * NUM_STAGES
    if len(value) != NUM_STAGES:
        raise ValueError(f"{name} needs {NUM_STAGES} values (one per stage), got {len(value)}")
    return value


class SlabPVT(PooledTokenClassifier):
    """Pyramid Vision Transformer (v1 layout) with SLAB options.

    Input [B, in_chans, H, W] at `img_size`; output logits [B, num_classes].

    Args:
        img_size: input size the positional tables are built for (a multiple of 32).
        patch_size: stride of the first patch embedding (later stages halve the grid).
        in_chans, num_classes: input channels, classifier outputs (0: no head).
        global_pool: 'avg' (mean over stage-4 tokens) or '' (no pooling).
        embed_dims, num_heads, mlp_ratios, depths, sr_ratios: per-stage shape.
        attn_type: per-stage letters, 'L' = SLA without spatial reduction, 'S' = softmax with sr
            ('LLLL' SLAB-PVT, 'SSSS' PVT-PRepBN); 'sla' / 'softmax' mean all stages.
        norm_type: 'prepbn' (progressive LN -> RepBN), 'repbn' or 'layernorm'.
        prepbn_steps: decay steps T of the progressive norm (official: 300k).
        prepbn_warmup: LayerNorm-only steps before the decay.
        qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, kernel_size: as in PVT / SLA.
        dynamic_img_size: accept other sizes (multiples of 32) by resampling positional tables per forward.
        deploy: build the folded structure (foldable norms Identity, absorbing layers with biases).
        device, dtype: where and in which dtype parameters and buffers are created (timm's factory kwargs).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        depths=(2, 2, 2, 2),
        sr_ratios=(8, 4, 2, 1),
        attn_type: str = "LLLL",
        norm_type: str = "prepbn",
        prepbn_steps: int = 300_000,
        prepbn_warmup: int = 0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        kernel_size: int = 5,
        dynamic_img_size: bool = False,
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (PVT has no class token), got {global_pool!r}")
        attn_type = {"sla": "LLLL", "softmax": "SSSS"}.get(attn_type, attn_type)
        if len(attn_type) != NUM_STAGES or set(attn_type) - {"L", "S"}:
            raise ValueError(f"attn_type must be 4 letters of L (SLA) / S (softmax), got {attn_type!r}")
        embed_dims, num_heads = _per_stage(embed_dims, "embed_dims"), _per_stage(num_heads, "num_heads")
        mlp_ratios, depths = _per_stage(mlp_ratios, "mlp_ratios"), _per_stage(depths, "depths")
        sr_ratios = _per_stage(sr_ratios, "sr_ratios")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.total_stride = patch_size * 2 ** (NUM_STAGES - 1)
        if self.img_size[0] % self.total_stride or self.img_size[1] % self.total_stride:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of the total stride {self.total_stride}"
            )
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.patch_size = patch_size
        self.embed_dims, self.depths = embed_dims, depths
        self.attn_type, self.norm_type = attn_type, norm_type
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.dynamic_img_size = dynamic_img_size
        self.deploy = deploy
        self._traits = {"fixed_input_size": not dynamic_img_size}
        norm_layer = make_norm_layer(norm_type, decay_steps=prepbn_steps, warmup_steps=prepbn_warmup)

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info = [], []
        cur, prev_dim = 0, in_chans
        for i in range(NUM_STAGES):
            stride = patch_size * 2**i
            grid = (self.img_size[0] // stride, self.img_size[1] // stride)
            blocks = [
                Block(
                    embed_dims[i],
                    num_heads[i],
                    mlp_ratios[i],
                    grid,
                    attn_type=attn_type[i],
                    sr_ratio=sr_ratios[i],
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[cur + j],
                    norm_layer=norm_layer,
                    norm_type=norm_type,
                    kernel_size=kernel_size,
                    dynamic_img_size=dynamic_img_size,
                    deploy=deploy,
                    **dd,
                )
                for j in range(depths[i])
            ]
            embed_norm = norm_or_identity(norm_layer, embed_dims[i], norm_type, deploy, **dd)
            stages.append(
                PVTStage(
                    prev_dim,
                    embed_dims[i],
                    patch_size if i == 0 else 2,
                    stride,
                    grid,
                    blocks,
                    embed_norm,
                    drop_rate,
                    **dd,
                )  # fmt: skip
            )
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=stride, module=f"stages.{i}"))
            cur += depths[i]
            prev_dim = embed_dims[i]
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(embed_dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for stage in self.stages:
            nn.init.trunc_normal_(stage.pos_embed, std=0.02)
        self.apply(init_linear_trunc_normal)

    # ---- timm interface -------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"stages.*.pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stages\.0\.(?:patch_embed|pos_embed)", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @property
    def unfoldable_norms(self) -> list[str]:
        """Norms `reparameterize_model` may leave: LayerNorms only (norm_type='layernorm')."""
        return unfoldable_norm_names(self)

    # ---- forward --------------------------------------------------------------------------------------
    def _stage_grids(self, x: torch.Tensor) -> List[Tuple[int, int]]:  # noqa: UP006  (TorchScript)
        """Checks the image batch [B, C_in, H, W]; the (H', W') token grid of each stage."""
        h, w = check_image_size(x, self.in_chans, self.img_size, self.dynamic_img_size, self.total_stride)
        grids: List[Tuple[int, int]] = []  # noqa: UP006
        for stage in self.stages:
            # a fixed-size model sees only its built grids: constants, which torch.fx can trace through
            grids.append((h // stage.stride, w // stage.stride) if self.dynamic_img_size else stage.grid_size)
        return grids

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> last-stage map [B, H/32, W/32, C4] (NHWC; PVT has no final norm)."""
        grids = self._stage_grids(x)
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x, grids[i])  # [B, N, C]
            if i < last:
                x = tokens_to_nhwc(x, grids[i]).permute(0, 3, 1, 2).contiguous()  # next stage's input
        return tokens_to_nhwc(x, grids[last])

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs as NCHW feature maps [B, C_i, H / (4 * 2^i), W / (4 * 2^i)].

        Args:
            x: [B, C_in, H, W].
            indices: last n stages (int), given stage indices (list), or all (None).
            norm: accepted for the timm interface; PVT has no final norm, so it changes nothing.
            stop_early: stop after the last requested stage.
            output_fmt: 'NCHW' only.
            intermediates_only: return only the list of feature maps.

        Returns:
            list of feature maps, or (the last run stage's map [B, H', W', C] as forward_features gives it,
            list of feature maps).
        """
        if output_fmt != "NCHW":
            raise ValueError("PVT intermediates are NCHW feature maps")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = max_index if (stop_early or intermediates_only) else len(self.stages) - 1
        grids = self._stage_grids(x)
        intermediates = []
        for i, stage in enumerate(self.stages[: last + 1]):
            x = tokens_to_nhwc(stage(x, grids[i]), grids[i])  # [B, H', W', C]
            if i in take_indices or i < last:
                nchw = x.permute(0, 3, 1, 2).contiguous()
                if i in take_indices:
                    intermediates.append(nchw)
                if i < last:
                    x = nchw  # the next stage's input
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted index (and the head) for feature extraction."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        self.num_features = self.head_hidden_size = self.embed_dims[max_index]
        if prune_head or max_index < NUM_STAGES - 1:
            self.reset_classifier(0, "")
        return take_indices

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Model level: nothing beyond the blocks and patch embeddings (no final norm)."""
        self.deploy = True


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        name: _cfg()
        for name in (
            "slab_pvt_tiny",
            "slab_pvt_small",
            "slab_pvt_medium",
            "pvt_tiny_prepbn",
            "pvt_small_prepbn",
            "pvt_medium_prepbn",
        )
    }
)


#: official per-stage names (1-based stage index) -> ours
_OFFICIAL_STAGE_KEY = re.compile(r"^(patch_embed|pos_embed|block)([1-9])(\.|$)")
_STAGE_PARTS = {"patch_embed": "patch_embed", "pos_embed": "pos_embed", "block": "blocks"}


def official_to_stage_key(key: str) -> str:
    """'block2.0.attn.q.weight' -> 'stages.1.blocks.0.attn.q.weight' (and patch_embed{i} / pos_embed{i});
    other keys unchanged."""
    match = _OFFICIAL_STAGE_KEY.match(key)
    if match is None:
        return key
    part, stage, sep = match.groups()
    return f"stages.{int(stage) - 1}.{_STAGE_PARTS[part]}{sep}{key[match.end() :]}"


def checkpoint_filter_fn(state_dict: dict, model: SlabPVT) -> dict[str, torch.Tensor]:
    """Official SLAB-PVT / PVT-PRepBN (or slab-edge) checkpoint -> this model's state dict.

    Unwraps {'model': ...} checkpoints and 'module.' prefixes, renames official LinearNorm entries
    (slab_edge.models._convert) and the official per-stage names (`official_to_stage_key`), and resamples
    `stages.{i}.pos_embed` (bilinear, as the official code does at run time) and SLA `positional_encoding`s
    (bicubic) when the model was built for another image size. Anything else that does not fit is left for
    a strict load to name.
    """
    state = convert_official_norms(unwrap_state_dict(state_dict))
    state = {official_to_stage_key(k): v for k, v in state.items()}
    target = model.state_dict()
    for key, value in list(state.items()):
        want = target.get(key)
        if want is None or want.shape == value.shape or want.dim() != 3 or value.dim() != 3:
            continue
        is_pos_embed = key.endswith(".pos_embed")
        if value.shape[-1] != want.shape[-1] or not (is_pos_embed or key.endswith(".positional_encoding")):
            continue
        n_src = value.shape[1]
        if math.isqrt(n_src) ** 2 != n_src:
            continue
        grid = model.stages[int(key.split(".")[1])].grid_size
        state[key] = resample_grid_embedding(value, grid, 0, mode="bilinear" if is_pos_embed else "bicubic")
    return state


def _create_pvt(variant: str, pretrained: bool = False, **kwargs) -> SlabPVT:
    out_indices = kwargs.pop("out_indices", tuple(range(NUM_STAGES)))
    return build_model_with_cfg(
        SlabPVT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


_PVT_ARGS = dict(
    patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
    sr_ratios=(8, 4, 2, 1), qkv_bias=True, norm_type="prepbn", prepbn_steps=300_000,
)  # fmt: skip
_DEPTHS = {"tiny": (2, 2, 2, 2), "small": (3, 4, 6, 3), "medium": (3, 4, 18, 3)}
#: official drop_path_rate per size (training recipe; no effect in eval)
_DROP_PATH = {"tiny": 0.0, "small": 0.1, "medium": 0.3}


def _pvt(variant: str, size: str, attn_type: str, pretrained: bool, kwargs: dict) -> SlabPVT:
    model_args = dict(_PVT_ARGS, depths=_DEPTHS[size], drop_path_rate=_DROP_PATH[size], attn_type=attn_type)
    return _create_pvt(variant, pretrained, **dict(model_args, **kwargs))


@register_slab_model(official="slab_pvt_t")
def slab_pvt_tiny(pretrained: bool = False, **kwargs) -> SlabPVT:
    """SLAB-PVT-T: SLA (no spatial reduction) in every stage, progressive norms."""
    return _pvt("slab_pvt_tiny", "tiny", "LLLL", pretrained, kwargs)


@register_slab_model(official="slab_pvt_s")
def slab_pvt_small(pretrained: bool = False, **kwargs) -> SlabPVT:
    """SLAB-PVT-S: SLA (no spatial reduction) in every stage, progressive norms."""
    return _pvt("slab_pvt_small", "small", "LLLL", pretrained, kwargs)


@register_slab_model(official="slab_pvt_m")
def slab_pvt_medium(pretrained: bool = False, **kwargs) -> SlabPVT:
    """SLAB-PVT-M: SLA (no spatial reduction) in every stage, progressive norms."""
    return _pvt("slab_pvt_medium", "medium", "LLLL", pretrained, kwargs)


@register_slab_model(official="pvt_t_prepbn")
def pvt_tiny_prepbn(pretrained: bool = False, **kwargs) -> SlabPVT:
    """PVT-T-PRepBN: spatial-reduction softmax attention, progressive norms."""
    return _pvt("pvt_tiny_prepbn", "tiny", "SSSS", pretrained, kwargs)


@register_slab_model(official="pvt_s_prepbn")
def pvt_small_prepbn(pretrained: bool = False, **kwargs) -> SlabPVT:
    """PVT-S-PRepBN: spatial-reduction softmax attention, progressive norms."""
    return _pvt("pvt_small_prepbn", "small", "SSSS", pretrained, kwargs)


@register_slab_model(official="pvt_m_prepbn")
def pvt_medium_prepbn(pretrained: bool = False, **kwargs) -> SlabPVT:
    """PVT-M-PRepBN: spatial-reduction softmax attention, progressive norms."""
    return _pvt("pvt_medium_prepbn", "medium", "SSSS", pretrained, kwargs)
