"""SLAB-CSwin ("LLSS"), registered in timm.

Structure and parameter names follow the official SLAB code (github.com/xinghaochen/SLAB, f58db00):

    stage1_conv_embed: Conv 7x7/4 (pad 2) -> tokens -> norm             [B, 56*56, C]
    stageN.j: x + proj(attention(qkv(norm1(x)))), x + mlp(norm2(x))    (pre-norm blocks)
    mergeN: tokens -> map -> Conv 3x3/2 (pad 1) -> tokens -> norm        (C -> 2C, H -> H/2)
    norm -> mean over tokens -> head

Attention per block: qkv = Linear(C, 3C) on the normalized tokens, then either one branch over the
whole map (`attns.0`, all heads) when the stage's split size equals the map side (and always in the
last stage), or two cross-shaped branches on channel halves (`attns.0`: vertical stripes H x split,
`attns.1`: horizontal stripes split x W, half the heads each), concatenated before `proj`.

- 'L' stages (1-2) use the SLA split sizes 56 and 28 = the map side: one global SLA branch. SLA
  (REFERENCE §1: k += positional encoding [1, N, C], ReLU feature maps, fp32 core, one 5x5 depthwise conv
  on V shared by the heads) plus LePE: a 3x3 depthwise conv `get_v` over all channels of V, added to the
  output. The official SLA module carries a parameter `scale` [1, 1, C] (zero-initialised) that its
  forward never reads: FLatten's focusing function divided q and k by softplus(scale), and SLAB dropped the
  focusing function but kept the parameter, so it never gets a gradient. This model has no such parameter;
  `checkpoint_filter_fn` drops it from official checkpoints (which then load strictly).
- 'S' stages (3-4) use CSwin's softmax LePE attention (scale head_dim^-0.5) with split 7: cross-shaped
  14x7 / 7x14 stripes in stage 3, full 7x7 attention in stage 4.
Norms are progressive norms (LayerNorm -> RepBN over `prepbn_steps` = 120k optimizer steps).

Folding (`reparameterize()`, eval semantics): norm1 -> qkv, norm2 -> mlp.fc1, the conv-embed and merge
norms -> their convs' output channels, final norm -> head. Every norm folds (the final norm stays only
when there is no classifier; it is then listed in `model.unfoldable_norms`).

Image size is fixed at construction (`img_size`, a multiple of 32 whose stage maps the split sizes
divide); a forward with another size raises ValueError naming the expected size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from slab_edge.layers.reparam import absorb_into_following, absorb_into_preceding
from slab_edge.models._common import PooledTokenClassifier, check_image_size, make_norm_layer, tokens_to_nhwc
from slab_edge.models._registry import register_slab_model
from slab_edge.ops.sla import SLA_EPS, sla_core
from slab_edge.ops.sla_fused import linear_attention, use_fused

torch.fx.wrap("check_image_size")  # traced graphs keep the input check as one call (see _common)
torch.fx.wrap("sla_core")  # one call in traced graphs: its product order depends on the token count

__all__ = ["SlabCSwinTransformer", "checkpoint_filter_fn"]

#: Decay steps T of the progressive norm in the official SLAB-CSwin configs (REFERENCE §2).
SLAB_CSWIN_PREPBN_STEPS = 120_000


# ----------------------------------------------------------------------------------------- stripe maths
def img_to_stripes(x: torch.Tensor, res: int, h_sp: int, w_sp: int) -> torch.Tensor:
    """Tokens [B, res*res, C] -> stripes [B * nS, h_sp * w_sp, C] (row-major stripes and tokens)."""
    b, _, c = x.shape
    x = x.view(b, res // h_sp, h_sp, res // w_sp, w_sp, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h_sp * w_sp, c)


def stripes_to_img(x: torch.Tensor, res: int, h_sp: int, w_sp: int) -> torch.Tensor:
    """Inverse of img_to_stripes: [B * nS, h_sp * w_sp, C] -> [B, res*res, C]."""
    c = x.shape[-1]
    x = x.view(-1, res // h_sp, res // w_sp, h_sp, w_sp, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, res * res, c)


# ----------------------------------------------------------------------------------------- attention
class LePEAttention(nn.Module):
    """Softmax attention inside stripes plus LePE (3x3 depthwise conv on V), on one channel group.

    Input q, k, v [B, res*res, C] (C = this branch's channels); output [B, res*res, C].

    Args:
        dim: C of this branch.
        res: side of the square stage map.
        idx: -1 whole map, 0 vertical stripes (res x split), 1 horizontal stripes (split x res).
        split: stripe width.
        num_heads: heads of this branch.
    """

    def __init__(
        self,
        dim: int,
        res: int,
        idx: int,
        split: int,
        num_heads: int,
        attn_drop: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.dim, self.res, self.num_heads = dim, res, num_heads
        self.h_sp, self.w_sp = _stripe_shape(res, idx, split)
        self.scale = (dim // num_heads) ** -0.5
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, device=device, dtype=dtype)
        self.attn_drop = nn.Dropout(attn_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B', n, C] -> [B', h, n, d]."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        res, h_sp, w_sp = self.res, self.h_sp, self.w_sp
        q = self._heads(img_to_stripes(q, res, h_sp, w_sp))
        k = self._heads(img_to_stripes(k, res, h_sp, w_sp))
        v = img_to_stripes(v, res, h_sp, w_sp)  # [B', n, C]
        bs, n, c = v.shape
        lepe = self.get_v(v.transpose(1, 2).reshape(bs, c, h_sp, w_sp)).reshape(bs, c, n).transpose(1, 2)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))  # [B', h, n, n]
        out = (attn @ self._heads(v)).transpose(1, 2).reshape(bs, n, c) + lepe
        return stripes_to_img(out, res, h_sp, w_sp)


class LePESLA(nn.Module):
    """Simplified linear attention inside stripes plus LePE, on one channel group.

    Input q, k, v [B, res*res, C]; output [B, res*res, C]. Parameters (official names): positional_encoding
    [1, n, C] added to k, get_v (3x3 depthwise LePE conv on V, all C channels), dwc (one depthwise conv over
    the head dimension, shared by all heads, on V). The official module's unused `scale` is not kept (see
    the module docstring).
    """

    def __init__(
        self,
        dim: int,
        res: int,
        idx: int,
        split: int,
        num_heads: int,
        kernel_size: int = 5,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.res, self.num_heads = dim, res, num_heads
        self.head_dim = dim // num_heads
        self.h_sp, self.w_sp = _stripe_shape(res, idx, split)
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        d = self.head_dim
        self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d, **dd)
        self.positional_encoding = nn.Parameter(torch.zeros(1, self.h_sp * self.w_sp, dim, **dd))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        res, h_sp, w_sp = self.res, self.h_sp, self.w_sp
        heads, d = self.num_heads, self.head_dim
        q = img_to_stripes(q, res, h_sp, w_sp)  # [B', n, C]
        k = img_to_stripes(k, res, h_sp, w_sp) + self.positional_encoding
        v = img_to_stripes(v, res, h_sp, w_sp)
        bs, n, c = v.shape
        v_map = v.transpose(1, 2).reshape(bs, c, h_sp, w_sp)  # [B', C, h_sp, w_sp]
        lepe = self.get_v(v_map).reshape(bs, c, n).transpose(1, 2)  # [B', n, C]
        fmap = self.dwc(v_map.reshape(bs * heads, d, h_sp, w_sp)).reshape(bs, heads, d, n)  # [B', h, d, n]
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript only drops a bare is_scripting branch)
            if use_fused(q, k, v, d):
                # tokens first: [B', n, h, d] views of the stripes into one fused operator (k in q's dtype,
                # as in layers.sla)
                out = linear_attention(
                    F.relu(q).reshape(bs, n, heads, d),
                    F.relu(k.to(q.dtype)).reshape(bs, n, heads, d),
                    v.reshape(bs, n, heads, d),
                    SLA_EPS,
                )
                out = (out + fmap.permute(0, 3, 1, 2)).reshape(bs, n, c) + lepe
                return stripes_to_img(out, res, h_sp, w_sp)
        q = F.relu(q).reshape(bs, n, heads, d).transpose(1, 2)  # [B', h, n, d]
        k = F.relu(k).reshape(bs, n, heads, d).transpose(1, 2)
        out = sla_core(q, k, v.reshape(bs, n, heads, d).transpose(1, 2))  # [B', h, n, d], float32
        out = (out + fmap.transpose(2, 3)).transpose(1, 2).reshape(bs, n, c).to(v.dtype) + lepe
        return stripes_to_img(out, res, h_sp, w_sp)


def _stripe_shape(res: int, idx: int, split: int) -> tuple[int, int]:
    if idx == -1:
        return res, res
    if idx == 0:
        return res, split
    if idx == 1:
        return split, res
    raise ValueError(f"stripe branch index must be -1, 0 or 1, got {idx}")


# ----------------------------------------------------------------------------------------- blocks
class CSwinBlock(nn.Module):
    """Pre-norm CSwin block on [B, res*res, C] tokens.

    Args:
        dim: C.
        res: side of the stage map.
        num_heads: heads (split between the two stripe branches).
        split: stripe width; equal to `res` (or `last_stage`) means one branch over the whole map.
        attn_type: 'L' (SLA + LePE) or 'S' (softmax LePE attention).
    """

    def __init__(
        self,
        dim: int,
        res: int,
        num_heads: int,
        split: int,
        attn_type: str,
        norm_layer,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        last_stage: bool = False,
        kernel_size: int = 5,
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim, self.res = dim, res
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias or deploy, **dd)
        self.norm1 = nn.Identity() if deploy else norm_layer(dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(drop)
        one_branch = last_stage or split == res
        self.branch_num = 1 if one_branch else 2
        branches = (
            [(-1, dim, num_heads)]
            if one_branch
            else [(0, dim // 2, num_heads // 2), (1, dim // 2, num_heads // 2)]
        )
        if attn_type == "L":
            attns = [LePESLA(c, res, idx, split, h, kernel_size, **dd) for idx, c, h in branches]
        else:
            attns = [LePEAttention(c, res, idx, split, h, attn_drop, **dd) for idx, c, h in branches]
        self.attns = nn.ModuleList(attns)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop, **dd)
        self.norm2 = nn.Identity() if deploy else norm_layer(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.dim
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # each [B, N, C]
        if self.branch_num == 1:
            out = self.attns[0](q, k, v)
        else:
            half = c // 2
            outs = []
            for i, attn in enumerate(self.attns):
                lo, hi = i * half, (i + 1) * half
                outs.append(attn(q[..., lo:hi], k[..., lo:hi], v[..., lo:hi]))
            out = torch.cat(outs, dim=-1)
        x = x + self.drop_path(self.proj_drop(self.proj(out)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold norm1 into qkv and norm2 into mlp.fc1 (eval semantics); idempotent."""
        if absorb_into_following(self.norm1, self.qkv):
            self.norm1 = nn.Identity()
        if absorb_into_following(self.norm2, self.mlp.fc1):
            self.norm2 = nn.Identity()


class MapToTokens(nn.Module):
    """[B, C, H, W] -> [B, H*W, C], contiguous (with the norm after it folded away, a transposed view would be
    the layout of the whole residual stream)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2).contiguous()


#: ends the error message for another image size
_FIXED_SIZE_REASON = (
    "its attention positional encodings and stripes are fixed to the stage maps of that size (resize the "
    "input, or build the model with img_size=... if that size is supported)"
)


class ConvEmbed(nn.Sequential):
    """Official `stage1_conv_embed`: Conv2d(in, C, 7, stride 4, pad 2), tokens, norm ([B, N, C] out)."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        img_size: int,
        norm_layer,
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_chans, dim, 7, stride=4, padding=2, device=device, dtype=dtype),
            MapToTokens(),
            nn.Identity() if deploy else norm_layer(dim, device=device, dtype=dtype),
        )
        self.in_chans, self.img_size = in_chans, img_size
        self.size_reason = _FIXED_SIZE_REASON  # an attribute: TorchScript reads no global strings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, self.in_chans, (self.img_size, self.img_size), False, 1, self.size_reason)
        for layer in self:
            x = layer(x)
        return x

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the norm into the conv's output channels (W' = a W, c' = a c + b); idempotent."""
        if absorb_into_preceding(self[0], self[2]):
            self[2] = nn.Identity()


class MergeBlock(nn.Module):
    """Official `Merge_Block`: [B, res*res, C] -> map -> Conv2d(C, C', 3, /2, pad 1) -> tokens -> norm."""

    def __init__(
        self, dim: int, dim_out: int, res: int, norm_layer, deploy: bool = False, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.res = res
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1, device=device, dtype=dtype)
        self.norm = nn.Identity() if deploy else norm_layer(dim_out, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = self.conv(x.transpose(1, 2).reshape(b, c, self.res, self.res))
        return self.norm(x.flatten(2).transpose(1, 2).contiguous())

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the norm into the conv's output channels; idempotent."""
        if absorb_into_preceding(self.conv, self.norm):
            self.norm = nn.Identity()


# ----------------------------------------------------------------------------------------- model
class SlabCSwinTransformer(PooledTokenClassifier):
    """CSwin Transformer with SLA stages and progressive / re-parameterizable BatchNorm.

    Args:
        img_size: square input side the model is built for (fixed; multiple of 32).
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier).
        embed_dim: C of stage 1 (doubles every stage).
        depths: blocks per stage.
        num_heads: heads per stage.
        split_size: stripe width of softmax ('S') stages.
        la_split_size: stripe width of SLA ('L') stages (official "56-28-14-7").
        attn_types: one letter per stage, 'L' or 'S'.
        mlp_ratio: MLP hidden / C.
        qkv_bias: bias on qkv.
        drop_rate: dropout in MLPs and after the attention projection.
        attn_drop_rate: attention-probability dropout (softmax stages).
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        norm_type: 'prepbn', 'repbn' or 'layernorm' (baseline, not foldable).
        prepbn_steps: decay steps T of the progressive norm (default 120k, official).
        prepbn_warmup: LayerNorm-only optimizer steps before the decay.
        kernel_size: SLA depthwise-conv kernel.
        global_pool: 'avg' or ''.
        deploy: build the folded graph (norms = Identity) for deploy checkpoints.
        device, dtype: where and in which dtype parameters and buffers are created (timm's factory kwargs).
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 64,
        depths: Sequence[int] = (2, 4, 18, 1),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        split_size: Sequence[int] = (1, 2, 7, 7),
        la_split_size: Sequence[int] = (56, 28, 14, 7),
        attn_types: str = "LLSS",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_type: str = "prepbn",
        prepbn_steps: int | None = None,
        prepbn_warmup: int = 0,
        kernel_size: int = 5,
        global_pool: str = "avg",
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if isinstance(img_size, (tuple, list)):
            if len(set(img_size)) != 1:
                raise ValueError(f"CSwin models take square images, got img_size={tuple(img_size)}")
            img_size = img_size[0]
        if len(depths) != 4 or len(attn_types) != 4 or set(attn_types) - {"L", "S"}:
            raise ValueError(
                f"CSwin has 4 stages: need 4 depths and 4 'L'/'S' attn_types, got {attn_types!r}"
            )
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if norm_type != "prepbn" and prepbn_steps is not None:
            raise ValueError(
                f"prepbn_steps applies to the progressive norm only; this model uses norm_type={norm_type!r}"
            )
        if img_size % 32:
            raise ValueError(
                f"img_size must be a multiple of 32 (stride-4 stem and three 2x merges), got {img_size}"
            )
        self.num_classes, self.global_pool = num_classes, global_pool
        self.img_size, self.in_chans, self.norm_type = img_size, in_chans, norm_type
        steps = SLAB_CSWIN_PREPBN_STEPS if prepbn_steps is None else prepbn_steps
        norm_layer = make_norm_layer(norm_type, decay_steps=steps, warmup_steps=prepbn_warmup, ln_eps=1e-5)
        fold = deploy and norm_type != "layernorm"
        dims = [embed_dim * 2**i for i in range(4)]
        self.stage_resolutions = [img_size // 4 // 2**i for i in range(4)]
        self.final_resolution = self.stage_resolutions[-1]  # of forward_features' map (less after pruning)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()

        self.stage1_conv_embed = ConvEmbed(in_chans, embed_dim, img_size, norm_layer, deploy=fold, **dd)
        self.feature_info = []
        for i in range(4):
            res = self.stage_resolutions[i]
            last = i == 3
            split = la_split_size[i] if attn_types[i] == "L" else split_size[i]
            if not last and split != res and (res % split or split > res):
                raise ValueError(
                    f"img_size {img_size} gives a {res}x{res} map in stage {i + 1} that its stripe width "
                    f"{split} does not divide; SLAB-CSwin's split sizes fit img_size 224"
                )
            if not last and split != res and num_heads[i] % 2:
                raise ValueError(
                    f"stage {i + 1} splits its heads between two stripe branches: needs an even count"
                )
            blocks = [
                CSwinBlock(
                    dims[i],
                    res,
                    num_heads[i],
                    split,
                    attn_types[i],
                    norm_layer,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) + j],
                    last_stage=last,
                    kernel_size=kernel_size,
                    deploy=fold,
                    **dd,
                )  # fmt: skip
                for j in range(depths[i])
            ]
            setattr(self, f"stage{i + 1}", nn.Sequential(*blocks))
            if not last:
                merge = MergeBlock(dims[i], dims[i + 1], res, norm_layer, deploy=fold, **dd)
                setattr(self, f"merge{i + 1}", merge)
            self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stage{i + 1}"})
        self.grad_checkpointing = False
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.Identity() if fold and num_classes > 0 else norm_layer(self.num_features, **dd)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _stages(self) -> list[tuple[nn.Module, nn.Sequential]]:
        """(entry module, blocks) per stage: the conv embed, then merge1..merge3."""
        entries = [self.stage1_conv_embed, self.merge1, self.merge2, self.merge3]
        blocks = [self.stage1, self.stage2, self.stage3, self.stage4]
        return list(zip(entries, blocks))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """fnmatch patterns of parameters trained without weight decay: none beyond timm's 1-d rule.

        The official CSwin lists `pos_embed` / `cls_token`, names this model does not have, so the SLA
        positional encodings are decayed there too.
        """
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay: stem, then per stage (or per block), then the norm."""
        if coarse:
            blocks = [(r"^(?:stage|merge)(\d+)", None), (r"^norm", (99999,))]
        else:
            blocks = [(r"^stage(\d+)\.(\d+)", None), (r"^merge(\d+)", (99998,)), (r"^norm", (99999,))]
        return {"stem": r"^stage1_conv_embed", "blocks": blocks}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (BatchNorm running statistics then update twice)."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> the last stage's normalized map [B, R, R, C] (NHWC)."""
        x = self.stage1_conv_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stage1, x)
            x = checkpoint_seq(self.stage2, self.merge1(x))
            x = checkpoint_seq(self.stage3, self.merge2(x))
            x = checkpoint_seq(self.stage4, self.merge3(x))
        else:
            x = self.stage4(self.merge3(self.stage3(self.merge2(self.stage2(self.merge1(self.stage1(x)))))))
        return tokens_to_nhwc(self.norm(x), (self.final_resolution, self.final_resolution))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage feature maps [B, C_i, H_i, W_i] (each stage's output before the next merge).

        Returns the list, or (the last run stage's map [B, R, R, C], normalized as forward_features when
        every stage ran, the list).

        Args:
            x: [B, 3, H, W].
            indices: last n stages if int, all if None, else the listed stage indices.
            norm: apply the final norm to the last stage's map.
            stop_early: stop after the last requested stage.
            output_fmt: 'NCHW' only.
            intermediates_only: return only the list.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        stages = self._stages()
        take, max_index = feature_take_indices(len(stages), indices)
        if stop_early:
            stages = stages[: max_index + 1]
        intermediates = []
        for i, (entry, blocks) in enumerate(stages):
            x = entry(x)
            for blk in blocks:
                x = blk(x)
            if i in take:
                intermediates.append(self._to_nchw(self.norm(x) if norm and i == 3 else x, i))
        if intermediates_only:
            return intermediates
        if len(stages) == 4:
            x = self.norm(x)
        res = self.final_resolution if len(stages) == 4 else self.stage_resolutions[len(stages) - 1]
        return tokens_to_nhwc(x, (res, res)), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop stages (and norm/head) not needed to produce the requested intermediates."""
        take, max_index = feature_take_indices(4, indices)
        prune_end = max_index < 3
        for i in range(max_index + 1, 4):
            setattr(self, f"stage{i + 1}", nn.Sequential())
            setattr(self, f"merge{i}", nn.Identity())
        self.final_resolution = self.stage_resolutions[max_index]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take


# ----------------------------------------------------------------------------------------- cfgs & weights
def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,  # official test transform: resize 256, center crop 224
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stage1_conv_embed.0",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"slab_cswin_tiny_224": _cfg(), "slab_cswin_small_224": _cfg()})


#: `stage{i}.{j}.attns.{k}.scale` of the official SLA branches (LePEAttention's scale is a float, no key)
_UNUSED_SLA_SCALE = re.compile(r"^stage\d+\.\d+\.attns\.\d+\.scale$")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official SLAB-CSwin state dict (or training checkpoint) to this model.

    The official names are kept: the LinearNorm entries are renamed to ProgressiveNorm ones, and the
    SLA branches' unused `scale` parameters are dropped (see the module docstring).
    """
    from slab_edge.models._convert import convert_official_norms, unwrap_state_dict

    state = convert_official_norms(unwrap_state_dict(state_dict))
    return {k: v for k, v in state.items() if not _UNUSED_SLA_SCALE.match(k)}


def _create_cswin(variant: str, pretrained: bool = False, **kwargs) -> SlabCSwinTransformer:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        SlabCSwinTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": out_indices, "feature_cls": "getter"},
        **kwargs,
    )


@register_slab_model(official="slab_cswin_t")
def slab_cswin_tiny_224(pretrained: bool = False, **kwargs) -> SlabCSwinTransformer:
    """SLAB-CSwin-T: C 64, depths 2-4-18-1, heads 2-4-8-16, LLSS, progressive norm (T = 120k)."""
    args = dict(embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), attn_types="LLSS")
    return _create_cswin("slab_cswin_tiny_224", pretrained, **dict(args, **kwargs))


@register_slab_model(official="slab_cswin_s")
def slab_cswin_small_224(pretrained: bool = False, **kwargs) -> SlabCSwinTransformer:
    """SLAB-CSwin-S: C 64, depths 2-4-32-2, heads 2-4-8-16, LLSS, progressive norm (T = 120k)."""
    args = dict(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16), attn_types="LLSS")
    return _create_cswin("slab_cswin_small_224", pretrained, **dict(args, **kwargs))
