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

Parameter names are the official ones (patch_embed1..4, pos_embed1..4, block1..4, attn.q / attn.kv /
attn.sr / attn.norm), so official checkpoints convert by renaming the progressive norms only.

Image size: stage i works on a (H / 4 / 2^i) grid and its positional table is sized for `img_size`.
Another input size raises InputError (a ValueError) unless `dynamic_img_size=True`: then the positional
tables are resampled bilinearly (what the official code does at run time) and the SLA positional
encodings bicubically; sizes must be multiples of 32.

Re-parameterization: each patch-embedding norm folds into its conv's output channels (with the
alpha * bias term the official Swin PatchEmbed.merge_bn drops); norm1 folds into attn.q and attn.kv (SLA,
sr = 1) or into attn.q and the INPUT side of the sr conv (softmax, sr > 1: k = s = sr, no padding, so every
output sees whole windows and the fold is exact); the sr norm folds into attn.kv; norm2 into mlp.fc1.
There is no final norm. norm_type='layernorm' cannot be folded (input-dependent statistics).

TorchScript: not supported. The official per-stage names (block1..block4) are kept so checkpoints load
by name, and the stage loop reaches them by name, which TorchScript cannot compile; SLA layers do not
script either. Use torch.export or ONNX export.
"""

from __future__ import annotations

import math

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
    unfoldable_norm_names,
)
from slab_edge.models._convert import convert_official_norms, resample_grid_embedding, unwrap_state_dict
from slab_edge.models._registry import register_slab_model

__all__ = [
    "Block",
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
    -> kv; with sr == 1 the kv projection reads x directly (no sr conv, no norm).
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
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = norm_or_identity(norm_layer, dim, norm_type, deploy)
            if deploy and norm_type != "layernorm":
                ensure_bias(self.kv)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
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
    ) -> None:
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
            )
        elif attn_type == "S":
            attn = SpatialReductionAttention(
                dim, num_heads, qkv_bias, attn_drop, proj_drop, sr_ratio, norm_layer, norm_type, deploy
            )
        else:
            raise ValueError(f"attention type must be 'L' (SLA) or 'S' (softmax), got {attn_type!r}")
        super().__init__(dim, attn, mlp_ratio, proj_drop, drop_path, norm_layer, norm_type, deploy)
        if deploy and norm_type != "layernorm":
            ensure_bias(self.attn.q)
            if attn_type == "L" or sr_ratio == 1:
                ensure_bias(self.attn.kv)


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
    ) -> None:
        super().__init__()
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
        self.num_stages = NUM_STAGES
        self.grad_checkpointing = False
        self._traits = {"fixed_input_size": not dynamic_img_size}
        norm_layer = make_norm_layer(norm_type, decay_steps=prepbn_steps, warmup_steps=prepbn_warmup)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.pos_drop = nn.Dropout(drop_rate)
        self.grid_sizes: list[tuple[int, int]] = []
        self.feature_info = []
        cur, prev_dim = 0, in_chans
        for i in range(NUM_STAGES):
            stride = patch_size * 2**i
            grid = (self.img_size[0] // stride, self.img_size[1] // stride)
            self.grid_sizes.append(grid)
            embed = ConvPatchEmbed(
                prev_dim,
                embed_dims[i],
                patch_size if i == 0 else 2,
                norm=norm_or_identity(norm_layer, embed_dims[i], norm_type, deploy),
            )
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dims[i])))
            blocks = nn.ModuleList(
                [
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
                    )
                    for j in range(depths[i])
                ]
            )
            setattr(self, f"block{i + 1}", blocks)
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=stride, module=f"block{i + 1}"))
            cur += depths[i]
            prev_dim = embed_dims[i]
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for i in range(NUM_STAGES):
            nn.init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        self.apply(init_linear_trunc_normal)

    # ---- timm interface -------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        return {f"pos_embed{i + 1}" for i in range(self.num_stages)}

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed1|^pos_embed1", blocks=[(r"^(?:patch_embed|pos_embed|block)(\d+)", None)]
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @property
    def unfoldable_norms(self) -> list[str]:
        """Norms `reparameterize_model` may leave: LayerNorms only (norm_type='layernorm')."""
        return unfoldable_norm_names(self)

    # ---- forward --------------------------------------------------------------------------------------
    def _pos_embed(self, stage: int, hw: tuple[int, int]) -> torch.Tensor:
        table = getattr(self, f"pos_embed{stage + 1}")
        if tuple(hw) == self.grid_sizes[stage]:
            return table
        # dynamic_img_size: the official code interpolates bilinearly at run time
        return resample_grid_embedding(table, hw, 0, old_hw=self.grid_sizes[stage], mode="bilinear")

    def _run_stages(
        self, x: torch.Tensor, take: list[int] | None = None, last: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stages 0..last on an image [B, C_in, H, W].

        Returns:
            (tokens [B, N, C] after the last stage's blocks, NCHW maps of the stages listed in `take`).
        """
        h, w = check_image_size(x, self.in_chans, self.img_size, self.dynamic_img_size, self.total_stride)
        b = x.shape[0]
        last = self.num_stages - 1 if last is None else last
        feats = []
        for i in range(last + 1):
            stride = self.patch_size * 2**i
            hw = (h // stride, w // stride)
            x = getattr(self, f"patch_embed{i + 1}")(x)  # [B, C, H', W'] -> [B, N, C]
            x = self.pos_drop(x + self._pos_embed(i, hw))
            for blk in getattr(self, f"block{i + 1}"):
                if self.grad_checkpointing and self.training:
                    x = torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
                else:
                    x = blk(x, hw)
            if i < last or (take is not None and i in take):
                fmap = x.reshape(b, hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous()  # [B, C, H', W']
                if take is not None and i in take:
                    feats.append(fmap)
                if i < last:
                    x = fmap
        return x, feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> stage-4 tokens [B, H/32 * W/32, C4] (PVT has no final norm)."""
        return self._run_stages(x)[0]

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
            list of feature maps, or (stage-4 tokens [B, N, C4], list of feature maps).
        """
        if output_fmt != "NCHW":
            raise ValueError("PVT intermediates are NCHW feature maps")
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        last = max_index if (stop_early or intermediates_only) else None
        x, intermediates = self._run_stages(x, take=take_indices, last=last)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted index (and the head) for feature extraction."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            for prefix in ("patch_embed", "pos_embed", "block"):
                delattr(self, f"{prefix}{i + 1}")
        self.num_stages = max_index + 1
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
        "first_conv": "patch_embed1.proj",
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


def checkpoint_filter_fn(state_dict: dict, model: SlabPVT) -> dict[str, torch.Tensor]:
    """Official SLAB-PVT / PVT-PRepBN (or slab-edge) checkpoint -> this model's state dict.

    Unwraps {'model': ...} checkpoints and 'module.' prefixes, renames official LinearNorm entries
    (slab_edge.models._convert), and resamples `pos_embed{i}` (bilinear, as the official code does at run
    time) and SLA `positional_encoding`s (bicubic) when the model was built for another image size.
    Anything else that does not fit is left for a strict load to name.
    """
    state = convert_official_norms(unwrap_state_dict(state_dict))
    target = model.state_dict()
    for key, value in list(state.items()):
        want = target.get(key)
        if want is None or want.shape == value.shape or want.dim() != 3 or value.dim() != 3:
            continue
        if (
            value.shape[-1] != want.shape[-1]
            or not key.startswith("pos_embed")
            and "positional_encoding" not in key
        ):
            continue
        stage = int(key[len("pos_embed")]) - 1 if key.startswith("pos_embed") else int(key[len("block")]) - 1
        n_src = value.shape[1]
        if math.isqrt(n_src) ** 2 != n_src:
            continue
        mode = "bilinear" if key.startswith("pos_embed") else "bicubic"
        state[key] = resample_grid_embedding(value, model.grid_sizes[stage], 0, mode=mode)
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
