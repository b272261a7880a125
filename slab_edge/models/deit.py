"""SLAB DeiT family: SLAB-DeiT (SLA + progressive norm) and DeiT-PRepBN (softmax + RepBN / progressive norm).

timm names [official builder]:
    slab_deit_tiny_patch16_224 [slab_deit_t]      SLA in all 12 blocks, ProgressiveNorm(LN 1e-6 -> RepBN, 60k)
    slab_deit_small_patch16_224 [slab_deit_s]     same, width 384 / 6 heads
    deit_tiny_prepbn_patch16_224 [deit_t_prepbn]  softmax attention, plain RepBN
    deit_small_prepbn_patch16_224 [deit_s_prepbn] softmax attention, ProgressiveNorm(300k)
    slab_deit_digits / deit_digits                small 32x32 models for the digits data (not official)

Semantics follow the official code (REFERENCE §3):
- SLAB-DeiT has no class token: official checkpoints carry a `cls_token` their forward never reads, and
  `checkpoint_filter_fn` drops it (the model has no parameter without a gradient); the positional table is
  [1, 196, C]; tokens are mean-pooled after the final norm. The SLA positional encoding is sized to the
  token grid of `img_size` (14x14 at 224).
- DeiT-PRepBN prepends a class token (positional table [1, 197, C]) and classifies x[:, 0] after the
  final norm.
- A model runs at the image size it was built for; another size raises InputError (a ValueError) unless the
  model is built with `dynamic_img_size=True`, which bicubically resamples the positional table and the SLA
  positional encodings every forward. `checkpoint_filter_fn` resamples them once when a checkpoint was
  trained on another grid.

Re-parameterization (`slab_edge.reparameterize_model`): norm1 folds into attn.qkv, norm2 into mlp.fc1, the
final norm into the head (pooling and x[:, 0] commute with a per-channel affine). After that fold,
`forward_features` returns PRE-norm tokens (the norm lives in the head); `forward_head` still gives the
same logits, and `forward_head(pre_logits=True)` returns pooled pre-norm features. With num_classes=0 there
is no head to absorb the final norm and it is kept (listed in `unfoldable_norms`). norm_type='layernorm'
(ablation baseline) cannot be folded at all: LayerNorm statistics depend on the input.

TorchScript (torch.jit.script, deprecated in current torch but still supported) and torch.fx (timm's
feature extraction; hence no `from __future__ import annotations`, see _common) work for fixed-size
models; `dynamic_img_size=True` resamples through timm in eager / torch.export / ONNX only.
"""

import math
from typing import Tuple, Union  # noqa: UP035  TorchScript reads typing.Tuple, not tuple[...] strings

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from slab_edge.layers.reparam import absorb_into_following
from slab_edge.layers.sla import SimplifiedLinearAttention
from slab_edge.models._common import (
    ConvPatchEmbed,
    PreNormBlock,
    check_image_size,
    ensure_bias,
    init_linear_trunc_normal,
    is_foldable,
    make_norm_layer,
    new_head,
    norm_or_identity,
    tokens_to_nhwc,
    unfoldable_norm_names,
)
from slab_edge.models._convert import convert_official_norms, resample_grid_embedding, unwrap_state_dict
from slab_edge.models._registry import register_slab_model

torch.fx.wrap("check_image_size")  # traced graphs keep the input check as one call (see _common)

__all__ = ["Attention", "Block", "SlabDeiT", "checkpoint_filter_fn"]


class Attention(nn.Module):
    """Softmax multi-head self-attention (official DeiT layout: fused qkv, proj). [B, N, C] -> [B, N, C]."""

    __jit_unused_properties__ = ["input_linear"]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def input_linear(self) -> list[nn.Linear]:
        return [self.qkv]

    def forward(self, x: torch.Tensor, hw: Tuple[int, int] | None = None) -> torch.Tensor:  # noqa: UP006
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, h, N, d]
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Block(PreNormBlock):
    """DeiT block: SLA (or timm's softmax Attention) in a pre-norm block. [B, N, C] -> [B, N, C].

    `reparameterize()` folds norm1 into the attention input projection(s) and norm2 into mlp.fc1.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer=nn.LayerNorm,
        norm_type: str = "prepbn",
        attn_type: str = "sla",
        grid_size: tuple[int, int] = (14, 14),
        kernel_size: int = 5,
        dynamic_img_size: bool = False,
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        if attn_type == "sla":
            attn = SimplifiedLinearAttention(
                dim,
                num_heads,
                grid_size,
                qkv_bias=qkv_bias,
                kernel_size=kernel_size,
                proj_drop=proj_drop,
                dynamic_size=dynamic_img_size,
                **dd,
            )
        elif attn_type == "softmax":
            attn = Attention(
                dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd
            )
        else:
            raise ValueError(f"attn_type must be 'sla' or 'softmax', got {attn_type!r}")
        super().__init__(dim, attn, mlp_ratio, proj_drop, drop_path, norm_layer, norm_type, deploy, **dd)
        if deploy and norm_type != "layernorm":
            for layer in self.attn.input_linear:
                ensure_bias(layer)


class SlabDeiT(nn.Module):
    """DeiT with SLAB options: SLA or softmax attention, progressive norm / RepBN / LayerNorm.

    Input [B, in_chans, H, W] at `img_size`; output logits [B, num_classes].

    Args:
        img_size: input size the positional tables are built for (int or (H, W)).
        patch_size: patch (= token stride).
        in_chans: input channels.
        num_classes: classifier outputs (0: no head, forward returns pooled features).
        global_pool: 'token' (class token), 'avg' (mean over grid tokens) or '' (no pooling).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer shape.
        attn_type: 'sla' (simplified linear attention; requires global_pool != 'token') or 'softmax'.
        norm_type: 'prepbn' (progressive LN -> RepBN), 'repbn' or 'layernorm'.
        prepbn_steps: decay steps T of the progressive norm (official: 60k SLAB-DeiT, 300k DeiT-S-PRepBN).
        prepbn_warmup: LayerNorm-only steps before the decay.
        class_token: prepend a class token (and a positional row for it). Default: global_pool == 'token'.
        drop_rate, pos_drop_rate, attn_drop_rate, drop_path_rate: dropout / stochastic depth.
        kernel_size: SLA depthwise-conv kernel (5 officially).
        dynamic_img_size: accept other image sizes by resampling positional tables each forward.
        deploy: build the folded (re-parameterized) structure: foldable norms are Identity and the
            absorbing Linears have biases, so a `reparameterize_model` state dict loads strictly.
        device, dtype: where and in which dtype parameters and buffers are created (timm's factory kwargs).
    """

    __jit_unused_properties__ = ["unfoldable_norms"]

    def __init__(
        self,
        img_size: Union[int, tuple[int, int]] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attn_type: str = "softmax",
        norm_type: str = "prepbn",
        prepbn_steps: int = 60_000,
        prepbn_warmup: int = 0,
        class_token: bool | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float | None = None,
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
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        class_token = (global_pool == "token") if class_token is None else class_token
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if attn_type == "sla" and class_token:
            raise ValueError(
                "attn_type='sla' works on the token grid only: use global_pool='avg' (no class token)"
            )
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.attn_type, self.norm_type = attn_type, norm_type
        self.dynamic_img_size = dynamic_img_size
        self.deploy = deploy
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_prefix_tokens = 1 if class_token else 0
        self.output_fmt = "NLC" if class_token else "NHWC"  # of forward_features (timm reads it)
        self.grad_checkpointing = False
        self._traits = {"fixed_input_size": not dynamic_img_size}
        norm_layer = make_norm_layer(norm_type, decay_steps=prepbn_steps, warmup_steps=prepbn_warmup)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if class_token else None
        num_tokens = self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim, **dd))
        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, patch_size, **dd)
        self.pos_drop = nn.Dropout(drop_rate if pos_drop_rate is None else pos_drop_rate)
        dpr = (
            torch.linspace(0, drop_path_rate, depth, device="cpu").tolist() if depth > 1 else [drop_path_rate]
        )
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    norm_type=norm_type,
                    attn_type=attn_type,
                    grid_size=self.grid_size,
                    kernel_size=kernel_size,
                    dynamic_img_size=dynamic_img_size,
                    deploy=deploy,
                    **dd,
                )
                for i in range(depth)
            ]
        )
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)
        ]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        # The final norm folds into the head; without a head it stays.
        self.norm = norm_or_identity(norm_layer, embed_dim, norm_type, deploy and num_classes > 0, **dd)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_trunc_normal)

    # ---- timm interface -------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New head (num_classes=0: Identity). On a reparameterized model the folded final norm is lost."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool == "token" and self.num_prefix_tokens == 0:
                raise ValueError("this model has no class token: use global_pool='avg' or ''")
            self.global_pool = global_pool
        self.head = new_head(self, self.embed_dim, num_classes)

    @property
    def unfoldable_norms(self) -> list[str]:
        """Norms `reparameterize_model` may leave: LayerNorms (input-dependent), and the final norm when
        there is no head to absorb it."""
        names = unfoldable_norm_names(self)
        if not isinstance(self.head, nn.Linear) and is_foldable(self.norm):
            names.append("norm")
        return names

    # ---- forward --------------------------------------------------------------------------------------
    def _pos_embed(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:  # noqa: UP006
        if self.num_prefix_tokens > 0 and self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = self.pos_embed
        if (hw[0] != self.grid_size[0] or hw[1] != self.grid_size[1]) and not torch.jit.is_scripting():
            pos = self._resampled_pos_embed(hw)  # dynamic_img_size (eager / export only)
        return self.pos_drop(x + pos)

    def _resampled_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        return resample_grid_embedding(self.pos_embed, hw, self.num_prefix_tokens, old_hw=self.grid_size)

    def _grid(self, x: torch.Tensor) -> Tuple[int, int]:  # noqa: UP006
        check_image_size(x, self.in_chans, self.img_size, self.dynamic_img_size, self.patch_size)
        if not self.dynamic_img_size:
            return self.grid_size  # the only grid the check lets through (constant for torch.fx)
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> normalized features (pre-norm after final-norm folding): the token map
        [B, H/p, W/p, C] of a model without class token (`output_fmt` 'NHWC'), else the tokens
        [B, 1 + N, C] ('NLC')."""
        hw = self._grid(x)
        x = self._pos_embed(self.patch_embed(x), hw)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return self._features_out(self.norm(x), hw)

    def _features_out(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:  # noqa: UP006
        """Final tokens [B, prefix + N, C] in forward_features' layout (`output_fmt`)."""
        return x if self.num_prefix_tokens > 0 else tokens_to_nhwc(x, hw)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """forward_features' output -> logits [B, num_classes] (pre_logits: pooled features [B, C])."""
        if self.global_pool == "avg":
            x = (
                x[:, self.num_prefix_tokens :].mean(dim=1)
                if self.num_prefix_tokens > 0
                else x.mean(dim=[1, 2])
            )
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Union[int, list[int]] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Block outputs as features.

        Args:
            x: [B, C_in, H, W].
            indices: last n blocks (int), given block indices (list), or all (None).
            return_prefix_tokens: also return the class token of each intermediate (NCHW only).
            norm: apply the final norm to each intermediate.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' ([B, C, H/p, W/p]) or 'NLC' ([B, N, C] incl. prefix tokens).
            intermediates_only: return only the list of intermediates.

        Returns:
            list of intermediates, or (final features as forward_features gives them, list of intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError("output_fmt must be 'NCHW' or 'NLC'")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        hw = self._grid(x)
        b = x.shape[0]
        x = self._pos_embed(self.patch_embed(x), hw)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = blk(x, hw)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        if output_fmt == "NCHW":
            prefix = [y[:, : self.num_prefix_tokens] for y in intermediates]
            intermediates = [
                y[:, self.num_prefix_tokens :].reshape(b, hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous()
                for y in intermediates
            ]
            if return_prefix_tokens and self.num_prefix_tokens:
                intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self._features_out(self.norm(x), hw), intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop blocks after the last wanted index (and the final norm / head) for feature extraction."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # ---- re-parameterization --------------------------------------------------------------------------
    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the final norm into the head (blocks fold themselves; call via reparameterize_model)."""
        if is_foldable(self.norm) and isinstance(self.head, nn.Linear):
            absorb_into_following(self.norm, self.head)
            self.norm = nn.Identity()
        self.deploy = True


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


_DIGITS_CFG = dict(
    num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)

default_cfgs = generate_default_cfgs(
    {
        # pool_size: the token map forward_features returns without a class token
        "slab_deit_tiny_patch16_224": _cfg(pool_size=(14, 14)),
        "slab_deit_small_patch16_224": _cfg(pool_size=(14, 14)),
        "deit_tiny_prepbn_patch16_224": _cfg(),
        "deit_small_prepbn_patch16_224": _cfg(),
        "slab_deit_digits": _cfg(**_DIGITS_CFG, pool_size=(8, 8)),
        "deit_digits": _cfg(**_DIGITS_CFG, pool_size=(8, 8)),
    }
)


def checkpoint_filter_fn(state_dict: dict, model: SlabDeiT) -> dict[str, torch.Tensor]:
    """Official SLAB / DeiT-PRepBN (or slab-edge) checkpoint -> this model's state dict.

    Unwraps {'model': ...} checkpoints and 'module.' prefixes, renames official LinearNorm entries
    (see slab_edge.models._convert), drops the `cls_token` official SLAB-DeiT checkpoints carry unused
    when the model has no class token, and bicubically resamples `pos_embed` and every SLA
    `positional_encoding` when the model was built for another token grid. Anything that still does not
    fit (another variant) is left as is, so a strict load names the mismatching keys.
    """
    state = convert_official_norms(unwrap_state_dict(state_dict))
    if model.cls_token is None:
        state.pop("cls_token", None)
    target = model.state_dict()
    for key, value in list(state.items()):
        want = target.get(key)
        if want is None or want.shape == value.shape or want.dim() != 3 or value.dim() != 3:
            continue
        if value.shape[-1] != want.shape[-1]:
            continue
        if key == "pos_embed":
            prefix = model.num_prefix_tokens
        elif key.endswith("attn.positional_encoding"):
            prefix = 0
        else:
            continue
        n_src = value.shape[1] - prefix
        if n_src <= 0 or math.isqrt(n_src) ** 2 != n_src:
            continue
        state[key] = resample_grid_embedding(value, model.grid_size, prefix)
    return state


def _create_deit(variant: str, pretrained: bool = False, **kwargs) -> SlabDeiT:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        SlabDeiT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


_SLAB_ARGS = dict(attn_type="sla", norm_type="prepbn", global_pool="avg", prepbn_steps=60_000)


@register_slab_model(official="slab_deit_t")
def slab_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> SlabDeiT:
    """SLAB-DeiT-T: SLA in all blocks, progressive LN -> RepBN (60k steps), mean pooling."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, **_SLAB_ARGS)
    return _create_deit("slab_deit_tiny_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_slab_model(official="slab_deit_s")
def slab_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> SlabDeiT:
    """SLAB-DeiT-S: SLA in all blocks, progressive LN -> RepBN (60k steps), mean pooling."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, **_SLAB_ARGS)
    return _create_deit("slab_deit_small_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_slab_model(official="deit_t_prepbn")
def deit_tiny_prepbn_patch16_224(pretrained: bool = False, **kwargs) -> SlabDeiT:
    """DeiT-T with plain RepBN norms, softmax attention, class token."""
    model_args = dict(
        patch_size=16, embed_dim=192, depth=12, num_heads=3, attn_type="softmax", norm_type="repbn"
    )
    return _create_deit("deit_tiny_prepbn_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_slab_model(official="deit_s_prepbn")
def deit_small_prepbn_patch16_224(pretrained: bool = False, **kwargs) -> SlabDeiT:
    """DeiT-S with progressive LN -> RepBN (300k steps), softmax attention, class token."""
    model_args = dict(
        patch_size=16, embed_dim=384, depth=12, num_heads=6, attn_type="softmax", norm_type="prepbn",
        prepbn_steps=300_000,
    )  # fmt: skip
    return _create_deit("deit_small_prepbn_patch16_224", pretrained, **dict(model_args, **kwargs))


_DIGITS_ARGS = dict(
    img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0, global_pool="avg",
    class_token=False, num_classes=10, prepbn_steps=1_500,
)  # fmt: skip


@register_slab_model
def slab_deit_digits(pretrained: bool = False, **kwargs) -> SlabDeiT:
    """Small SLAB-DeiT for 32x32 digits (8x8 = 64 tokens, 0.49 M params): SLA + progressive norm.

    `attn_type='sla'|'softmax'` and `norm_type='prepbn'|'layernorm'|'repbn'` switch the ablation on the
    same backbone (mean pooling, no class token in every case). prepbn_steps defaults to 1,500 optimizer
    steps (REFERENCE §2: about 4/5 of the total); training code should set it for its own run length.
    """
    model_args = dict(_DIGITS_ARGS, attn_type="sla", norm_type="prepbn")
    return _create_deit("slab_deit_digits", pretrained, **dict(model_args, **kwargs))


@register_slab_model
def deit_digits(pretrained: bool = False, **kwargs) -> SlabDeiT:
    """The digits backbone as a plain DeiT (softmax attention, LayerNorm, mean pooling): the baseline."""
    model_args = dict(_DIGITS_ARGS, attn_type="softmax", norm_type="layernorm")
    return _create_deit("deit_digits", pretrained, **dict(model_args, **kwargs))
