"""SLAB-Swin ("LLSS") and Swin-PRepBN, registered in timm.

Structure and parameter names follow the official SLAB code (github.com/xinghaochen/SLAB, f58db00):

    patch_embed.proj (Conv 4x4/4) -> patch_embed.norm                      [B, 56*56, C]
    layers.i.blocks.j: x + attn(norm1(x)), x + mlp(norm2(x))              (pre-norm blocks)
    layers.i.downsample (stages 1-3): 2x2 neighbours concat -> norm -> reduction (Linear, no bias)
    norm -> mean over tokens -> head

SLAB-Swin: stages 1-2 ('L') run simplified linear attention over the whole stage map (the configured
window of 56 clamps to the 56x56 / 28x28 stage resolution, so there is one window and no shift; the SLA
positional encoding is window^2 = H*W tokens). Stages 3-4 ('S') keep softmax window attention, window 7,
relative position bias, and the shifted-window mask on odd blocks (stage 4 is 7x7: one window, no shift).
Norms are progressive norms (LayerNorm -> RepBN over `prepbn_steps` optimizer steps).
Swin-T-PRepBN: every stage softmax window-7 attention, plain RepBN everywhere.

Folding (`reparameterize()`, eval semantics): block norm1 -> attn.qkv, norm2 -> mlp.fc1, PatchMerging
norm -> reduction (gains a bias), PatchEmbed norm -> proj conv output *including* alpha * conv bias (the
official PatchEmbed.merge_bn drops that term), final norm -> head (mean pooling commutes with a
per-channel affine map). Every norm folds; the one exception is the final norm of a model without a
classifier (num_classes=0, head = Identity), which is then listed in `model.unfoldable_norms`.

Image size is fixed at construction (`img_size`): the SLA positional encodings are sized to the stage
maps and the window maths needs every softmax stage map to be a multiple of the window. A forward with
another size raises ValueError naming the expected size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from slab_edge.layers.reparam import absorb_into_following, absorb_into_preceding
from slab_edge.layers.sla import SimplifiedLinearAttention
from slab_edge.models._common import PooledTokenClassifier, check_image_size, make_norm_layer, tokens_to_nhwc
from slab_edge.models._registry import register_slab_model

torch.fx.wrap("check_image_size")  # traced graphs keep the input check as one call (see _common)

__all__ = ["SlabSwinTransformer", "checkpoint_filter_fn"]

#: Decay steps T of the progressive norm in the official SLAB-Swin configs (REFERENCE §2).
SLAB_SWIN_PREPBN_STEPS = 60_000


# ----------------------------------------------------------------------------------------- window maths
def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, window * window, C], windows in row-major order, tokens row-major inside."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of window_partition: [B * nW, window * window, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """[N, N] index (N = window^2) into a [(2w-1)^2, heads] relative-position bias table.

    Entry (i, j) encodes (dy, dx) = pos_i - pos_j as (dy + w - 1) * (2w - 1) + (dx + w - 1).
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Additive attention mask [nW, N, N] for shifted windows: 0 inside a region, -100 across regions.

    After the cyclic shift by -shift, the last `window` rows (and columns) of the map mix tokens that
    were not neighbours; each axis splits into 3 regions ([0, n-window), [n-window, n-shift),
    [n-shift, n)), and tokens may only attend to tokens of the same region pair.
    """

    def regions(n: int) -> torch.Tensor:
        idx = torch.arange(n)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    region_id = (regions(h)[:, None] * 3 + regions(w)[None, :]).float()  # [H, W]
    ids = window_partition(region_id[None, :, :, None], window).squeeze(-1)  # [nW, N]
    differs = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, -100.0)


# ----------------------------------------------------------------------------------------- attention
class WindowAttention(nn.Module):
    """Softmax multi-head attention inside windows with a learned relative position bias.

    Input [B * nW, N, C] (N = window^2), optional additive mask [nW, N, N]; output [B * nW, N, C].
    """

    def __init__(
        self,
        dim: int,
        window: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window, self.num_heads = dim, window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads, **dd))
        # Structural, recomputed here; official checkpoints carry it and the filter drops it.
        index = relative_position_index(window).to(device)
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # [3, B', h, N, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B', h, N, N]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, h).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, h, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(b, h, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


# ----------------------------------------------------------------------------------------- blocks
class SwinBlock(nn.Module):
    """Pre-norm transformer block on a [B, H*W, C] token map: (shifted) window softmax attention or SLA.

    Args:
        dim: C.
        resolution: (H, W) of the stage map.
        num_heads: attention heads.
        window: window side; equal to the map side for global SLA.
        shift: cyclic shift (0 or window // 2); softmax blocks only.
        attn_type: 'S' (softmax window attention) or 'L' (SLA over the whole map).
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window: int,
        shift: int,
        attn_type: str,
        norm_layer,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        kernel_size: int = 5,
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim, self.resolution = dim, tuple(resolution)
        self.window, self.shift = window, shift
        self.is_linear = attn_type == "L"
        self.norm1 = nn.Identity() if deploy else norm_layer(dim, **dd)
        if self.is_linear:
            self.attn = SimplifiedLinearAttention(
                dim, num_heads, self.resolution, qkv_bias=qkv_bias or deploy, kernel_size=kernel_size,
                attn_drop=attn_drop, proj_drop=proj_drop, **dd,
            )  # fmt: skip
        else:
            self.attn = WindowAttention(
                dim, window, num_heads, qkv_bias or deploy, attn_drop, proj_drop, **dd
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.Identity() if deploy else norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        mask = shifted_window_mask(*self.resolution, window, shift).to(**dd) if shift > 0 else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H*W, C] -> [B, H*W, C]."""
        if self.is_linear:
            return self.attn(x)
        b, _, c = x.shape
        h, w = self.resolution
        x = x.view(b, h, w, c)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window), self.attn_mask)
        x = window_reverse(windows, self.window, h, w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x.reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold norm1 into attn.qkv and norm2 into mlp.fc1 (eval semantics); idempotent."""
        if absorb_into_following(self.norm1, self.attn.qkv):
            self.norm1 = nn.Identity()
        if absorb_into_following(self.norm2, self.mlp.fc1):
            self.norm2 = nn.Identity()


class PatchMerging(nn.Module):
    """2x downsampling: concat each 2x2 neighbourhood, norm, Linear(4C, 2C) without bias.

    Input [B, H*W, C] on an (H, W) map; output [B, H/2 * W/2, 2C].
    Concatenation order (official): (0,0), (1,0), (0,1), (1,1) as (row, col) offsets.
    """

    def __init__(
        self, dim: int, resolution: tuple[int, int], norm_layer, deploy: bool = False, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=deploy, device=device, dtype=dtype)
        self.norm = nn.Identity() if deploy else norm_layer(4 * dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        h, w = self.resolution
        # [B, H/2, 2(row), W/2, 2(col), C] -> [B, H/2, W/2, 2(col), 2(row), C]: row offset varies fastest.
        x = (
            x.view(b, h // 2, 2, w // 2, 2, c)
            .permute(0, 1, 3, 4, 2, 5)
            .reshape(b, (h // 2) * (w // 2), 4 * c)
        )
        return self.reduction(self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the norm into the reduction Linear (which gains a bias); idempotent."""
        if absorb_into_following(self.norm, self.reduction):
            self.norm = nn.Identity()


#: ends the error message for another image size
_FIXED_SIZE_REASON = (
    "its attention positional encodings and windows are fixed to the stage maps of that size (resize the "
    "input, or build the model with img_size=... if that size is supported)"
)


class PatchEmbed(nn.Module):
    """Conv patchify + norm: [B, 3, H, W] -> [B, H/p * W/p, C]. Checks the input size."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        norm_layer,
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.size_reason = _FIXED_SIZE_REASON  # an attribute: TorchScript reads no global strings
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, device=device, dtype=dtype)
        self.norm = nn.Identity() if deploy else norm_layer(embed_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, self.in_chans, (self.img_size, self.img_size), False, 1, self.size_reason)
        # contiguous tokens: with the norm folded away the transposed view would reach the first block as is
        return self.norm(self.proj(x).flatten(2).transpose(1, 2).contiguous())

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the norm into the conv's output channels: W' = a W, c' = a c + b (alpha * c included)."""
        if absorb_into_preceding(self.proj, self.norm):
            self.norm = nn.Identity()


class SwinStage(nn.Module):
    """Blocks on one resolution followed by the optional PatchMerging (official BasicLayer layout)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.downsample(x)


# ----------------------------------------------------------------------------------------- model
def _stage_windows(
    img_size: int, patch_size: int, attn_types: str, window_size: int, la_window_size: int, num_stages: int
) -> list[tuple[int, int, int]]:
    """(resolution, window, shift for odd blocks) per stage, following the official clamping rule.

    Raises:
        ValueError: an image size the fixed window maths cannot take.
    """
    if img_size % (patch_size * 2 ** (num_stages - 1)):
        raise ValueError(
            f"img_size {img_size} must be a multiple of {patch_size * 2 ** (num_stages - 1)} "
            "(patch size times the three 2x patch mergings)"
        )
    out = []
    for i in range(num_stages):
        res = img_size // patch_size // 2**i
        window = la_window_size if attn_types[i] == "L" else window_size
        if res <= window:  # official: a window at least as large as the map covers it, without shift
            out.append((res, res, 0))
            continue
        if attn_types[i] == "L":
            raise ValueError(
                f"img_size {img_size} gives a {res}x{res} map in stage {i + 1}, larger than its SLA window "
                f"{window}: windowed (shifted) SLA is not implemented; SLAB-Swin takes img_size <= "
                f"{la_window_size * patch_size}"
            )
        if res % window:
            raise ValueError(
                f"img_size {img_size} gives a {res}x{res} map in stage {i + 1}, not a multiple of the "
                f"window {window}; use a multiple of {window * patch_size * 2 ** (num_stages - 1)}"
            )
        out.append((res, window, window // 2))
    return out


class SlabSwinTransformer(PooledTokenClassifier):
    """Swin Transformer with progressive / re-parameterizable BatchNorm and SLA stages.

    Args:
        img_size: square input side the model is built for (fixed; see module docstring).
        patch_size: patch-embedding stride.
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier, forward returns pooled features).
        embed_dim: C of stage 1 (doubles every stage).
        depths: blocks per stage.
        num_heads: heads per stage.
        window_size: window of softmax ('S') stages.
        la_window_size: window of SLA ('L') stages; must cover the stage map (official 56).
        attn_types: one letter per stage, 'L' (SLA) or 'S' (softmax window attention).
        mlp_ratio: MLP hidden / C.
        qkv_bias: bias on the qkv projections.
        drop_rate: dropout after patch embedding, in MLPs and after attention projections.
        attn_drop_rate: attention-probability dropout (softmax stages).
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        norm_type: 'prepbn' (progressive norm), 'repbn' or 'layernorm' (baseline, not foldable).
        prepbn_steps: decay steps T of the progressive norm (optimizer steps).
        prepbn_warmup: LayerNorm-only optimizer steps before the decay.
        kernel_size: SLA depthwise-conv kernel.
        global_pool: 'avg' (mean over tokens) or '' (no pooling).
        deploy: build the folded graph (norms = Identity, reduction Linears with bias) for deploy
            checkpoints.
        device, dtype: where and in which dtype parameters and buffers are created (timm's factory kwargs).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        la_window_size: int = 56,
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
                raise ValueError(f"Swin models take square images, got img_size={tuple(img_size)}")
            img_size = img_size[0]
        num_stages = len(depths)
        if len(attn_types) != num_stages or set(attn_types) - {"L", "S"}:
            raise ValueError(f"attn_types needs one 'L'/'S' per stage ({num_stages}), got {attn_types!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if norm_type != "prepbn" and prepbn_steps is not None:
            raise ValueError(
                f"prepbn_steps applies to the progressive norm only; this model uses norm_type={norm_type!r}"
            )
        self.num_classes, self.global_pool = num_classes, global_pool
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.norm_type = norm_type
        steps = SLAB_SWIN_PREPBN_STEPS if prepbn_steps is None else prepbn_steps
        norm_layer = make_norm_layer(norm_type, decay_steps=steps, warmup_steps=prepbn_warmup, ln_eps=1e-5)
        fold = deploy and norm_type != "layernorm"
        windows = _stage_windows(img_size, patch_size, attn_types, window_size, la_window_size, num_stages)

        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, norm_layer, deploy=fold, **dd
        )
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        dims = [embed_dim * 2**i for i in range(num_stages)]
        stages, self.feature_info = [], []
        for i, (res, window, shift) in enumerate(windows):
            blocks = [
                SwinBlock(
                    dims[i],
                    (res, res),
                    num_heads[i],
                    window,
                    shift if j % 2 else 0,
                    attn_types[i],
                    norm_layer,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) + j],
                    kernel_size=kernel_size,
                    deploy=fold,
                    **dd,
                )  # fmt: skip
                for j in range(depths[i])
            ]
            last = i == num_stages - 1
            down = None if last else PatchMerging(dims[i], (res, res), norm_layer, deploy=fold, **dd)
            stages.append(SwinStage(blocks, down))
            self.feature_info.append(
                {"num_chs": dims[i], "reduction": patch_size * 2**i, "module": f"layers.{i}.blocks"}
            )
        self.layers = nn.Sequential(*stages)
        self.stage_resolutions = [w[0] for w in windows]
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

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """fnmatch patterns (timm's optimizer factory) of parameters trained without weight decay.

        As the official Swin recipe: relative-position tables only (its keyword list); the SLA positional
        encodings are decayed like other weights. 1-d parameters (biases, norms) are excluded by timm anyway.
        """
        return {"*relative_position_bias_table"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay: stem, then per stage (or per block), then the norm."""
        if coarse:
            return {"stem": r"^patch_embed", "blocks": [(r"^layers\.(\d+)", None), (r"^norm", (99999,))]}
        blocks = [
            (r"^layers\.(\d+)\.blocks\.(\d+)", None),
            (r"^layers\.(\d+)\.downsample", (99998,)),  # PatchMerging ends its stage (official layout)
            (r"^norm", (99999,)),
        ]
        return {"stem": r"^patch_embed", "blocks": blocks}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (BatchNorm running statistics then update twice)."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> the last stage's normalized map [B, R, R, C] (NHWC)."""
        x = self.pos_drop(self.patch_embed(x))
        x = self.layers(x)
        res = self.stage_resolutions[len(self.layers) - 1]
        return tokens_to_nhwc(self.norm(x), (res, res))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage feature maps [B, C_i, H_i, W_i] (before each PatchMerging).

        Returns the list, or (the map [B, R, R, C] the last run stage hands on, normalized as
        forward_features when every stage ran, the list).

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
        take, max_index = feature_take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        stages = self.layers[: max_index + 1] if stop_early else self.layers
        intermediates = []
        x = self.pos_drop(self.patch_embed(x))
        for i, stage in enumerate(stages):
            x = stage.blocks(x)
            if i in take:
                intermediates.append(self._to_nchw(self.norm(x) if norm and i == last else x, i))
            x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        if len(stages) == last + 1:
            x = self.norm(x)
        res = self.stage_resolutions[min(len(stages), last)]  # after a stopped stage's PatchMerging
        return tokens_to_nhwc(x, (res, res)), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop stages (and norm/head) not needed to produce the requested intermediates."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        prune_end = max_index < len(self.layers) - 1
        self.layers = self.layers[: max_index + 1]
        self.layers[-1].downsample = nn.Identity()
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
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "slab_swin_tiny_patch4_224": _cfg(),
        "slab_swin_small_patch4_224": _cfg(),
        "slab_swin_base_patch4_224": _cfg(),
        "swin_tiny_prepbn_patch4_window7_224": _cfg(),
    }
)

#: Structural buffers of official checkpoints that this implementation recomputes (non-persistent).
_STRUCTURAL_SUFFIXES = ("relative_position_index", "attn_mask")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official SLAB-Swin / Swin-PRepBN state dict (or training checkpoint) to this model.

    Drops the structural buffers (`relative_position_index`, `attn_mask`: recomputed here) and renames
    the official LinearNorm entries to ProgressiveNorm ones. Shapes are not resized: the official models
    are 224-only.
    """
    from slab_edge.models._convert import convert_official_norms, unwrap_state_dict

    state = unwrap_state_dict(state_dict)
    state = {k: v for k, v in state.items() if not k.endswith(_STRUCTURAL_SUFFIXES)}
    return convert_official_norms(state)


def _create_swin(variant: str, pretrained: bool = False, **kwargs) -> SlabSwinTransformer:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 6, 2))))))
    return build_model_with_cfg(
        SlabSwinTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": out_indices, "feature_cls": "getter"},
        **kwargs,
    )


@register_slab_model(official="slab_swin_t")
def slab_swin_tiny_patch4_224(pretrained: bool = False, **kwargs) -> SlabSwinTransformer:
    """SLAB-Swin-T: C 96, depths 2-2-6-2, heads 3-6-12-24, LLSS, progressive norm (T = 60k)."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_types="LLSS")
    return _create_swin("slab_swin_tiny_patch4_224", pretrained, **dict(args, **kwargs))


@register_slab_model(official="slab_swin_s")
def slab_swin_small_patch4_224(pretrained: bool = False, **kwargs) -> SlabSwinTransformer:
    """SLAB-Swin-S: C 96, depths 2-2-18-2, heads 3-6-12-24, LLSS, progressive norm (T = 60k)."""
    args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), attn_types="LLSS")
    return _create_swin("slab_swin_small_patch4_224", pretrained, **dict(args, **kwargs))


@register_slab_model(official="slab_swin_b")
def slab_swin_base_patch4_224(pretrained: bool = False, **kwargs) -> SlabSwinTransformer:
    """SLAB-Swin-B: C 128, depths 2-2-18-2, heads 4-8-16-32, LLSS, progressive norm (T = 60k)."""
    args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), attn_types="LLSS")
    return _create_swin("slab_swin_base_patch4_224", pretrained, **dict(args, **kwargs))


@register_slab_model(official="swin_t_prepbn")
def swin_tiny_prepbn_patch4_window7_224(pretrained: bool = False, **kwargs) -> SlabSwinTransformer:
    """Swin-T-PRepBN: Swin-T (softmax window 7 everywhere) with plain RepBN in place of every LayerNorm."""
    args = dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_types="SSSS", norm_type="repbn"
    )
    return _create_swin("swin_tiny_prepbn_patch4_window7_224", pretrained, **dict(args, **kwargs))
