"""Small pieces shared by the model families: norm-layer factory, input-size check, init, classifier end.

Every constructor takes timm's factory kwargs `device` / `dtype` and passes them to each parameter and
buffer it creates (as timm's own models do), so `create_model(..., device="meta")` allocates nothing.

No `from __future__ import annotations` here (nor in deit.py): torch.fx copies the model forward's annotations
into the traced graph's code, and TorchScript cannot resolve them there when they are strings.
"""

from collections.abc import Callable
from functools import partial
from typing import Tuple  # noqa: UP035  TorchScript reads typing.Tuple, not tuple[...] strings

import torch
from timm.layers import DropPath, Mlp, get_device_dtype
from torch import nn

from slab_edge.errors import InputError
from slab_edge.layers.norms import ProgressiveNorm, RepBN, norm_affine
from slab_edge.layers.reparam import absorb_into_following

#: norm_type values the model builders accept.
MODEL_NORM_TYPES = ("prepbn", "repbn", "layernorm")


def make_norm_layer(
    norm_type: str, decay_steps: int = 60_000, warmup_steps: int = 0, ln_eps: float = 1e-6
) -> Callable[[int], nn.Module]:
    """A `dim -> norm module` factory.

    Args:
        norm_type: 'prepbn' (ProgressiveNorm: LayerNorm fading into RepBN over `decay_steps` optimizer
            steps, as the official LinearNorm), 'repbn' (plain RepBN) or 'layernorm' (the baseline).
        decay_steps: T of the progressive norm.
        warmup_steps: LayerNorm-only steps before the decay starts.
        ln_eps: LayerNorm eps (1e-6 in every official SLAB model).
    """
    if norm_type == "prepbn":
        return partial(ProgressiveNorm, decay_steps=decay_steps, warmup_steps=warmup_steps, eps=ln_eps)
    if norm_type == "repbn":
        return RepBN
    if norm_type == "layernorm":
        return partial(nn.LayerNorm, eps=ln_eps)
    raise ValueError(f"norm_type must be one of {', '.join(MODEL_NORM_TYPES)}, got {norm_type!r}")


def norm_or_identity(
    norm_layer: Callable[..., nn.Module], dim: int, norm_type: str, deploy: bool, device=None, dtype=None
) -> nn.Module:
    """The norm, or Identity in a deploy (folded) model when the norm is foldable (not LayerNorm)."""
    if deploy and norm_type != "layernorm":
        return nn.Identity()
    return norm_layer(dim, device=device, dtype=dtype)


def is_foldable(norm: nn.Module) -> bool:
    """True for norms that are a per-channel affine map in eval mode (RepBN, progressive norm, BN)."""
    return isinstance(norm, (RepBN, ProgressiveNorm, nn.modules.batchnorm._BatchNorm))


def unfoldable_norm_names(model: nn.Module) -> list[str]:
    """Names of top-level LayerNorm-like modules (input-dependent statistics: no fixed affine to fold).

    The LayerNorm inside a progressive norm does not count: in eval the progressive norm is its RepBN.
    """
    from slab_edge.layers.reparam import remaining_norms

    return [name for name in remaining_norms(model) if norm_affine(model.get_submodule(name)) is None]


def _shape(x: torch.Tensor) -> str:
    """'2x3x224x224' (TorchScript has no tuple(x.shape))."""
    return "x".join([str(size) for size in x.shape])


def check_image_size(
    x: torch.Tensor,
    in_chans: int,
    img_size: Tuple[int, int],  # noqa: UP006  (TorchScript)
    dynamic: bool,
    multiple: int,
    fixed_reason: str = "",
) -> Tuple[int, int]:  # noqa: UP006
    """Validate an image batch [B, C, H, W]; returns (H, W). TorchScript-compatible.

    A module calling it declares `torch.fx.wrap("check_image_size")`: torch.fx then records one call
    (the check runs in traced graphs too) instead of tracing its shape tests.

    Args:
        fixed_reason: why a fixed-size model takes only `img_size` (ends the error message); empty: the
            positional tables of DeiT / PVT, which dynamic_img_size=True resamples.

    Raises:
        InputError (a ValueError): wrong rank or channels, a size other than `img_size` for a
            fixed-size model, or (dynamic) a size not divisible by `multiple`.
    """
    if x.dim() != 4:
        raise InputError(f"expected an image batch [B, C, H, W], got a tensor of shape {_shape(x)}")
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    if c != in_chans:
        raise InputError(f"model takes {in_chans}-channel images, got {c} channels (input {_shape(x)})")
    if dynamic:
        if h % multiple or w % multiple or h < multiple or w < multiple:
            raise InputError(
                f"image size {h}x{w} is not a positive multiple of {multiple} (the total stride)"
            )
    elif h != img_size[0] or w != img_size[1]:
        if not fixed_reason:
            fixed_reason = (
                f"its positional encodings are fixed to that grid; build it with img_size=({h}, {w}) "
                "(checkpoint positional tables are resampled on load) or with dynamic_img_size=True "
                "(resampled every forward)"
            )
        raise InputError(
            f"model was built for {img_size[0]}x{img_size[1]} images, got {h}x{w}: {fixed_reason}"
        )
    return h, w


class ConvPatchEmbed(nn.Module):
    """Non-overlapping patch embedding: Conv2d(k = s = patch) then an optional norm over channels.

    Input [B, C_in, H, W]; output [B, (H/p)*(W/p), C] tokens. Parameter names follow the official code
    (`proj`, `norm`). `reparameterize()` folds an eval-affine norm into the conv output channels, bias
    included (the official Swin PatchEmbed.merge_bn drops the alpha * bias term; this fold does not).
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int,
        norm: nn.Module | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, device=device, dtype=dtype
        )
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous tokens first: with the norm folded away the transposed view would otherwise become the
        # layout of the whole residual stream (every add and every Linear input a strided copy on the GPU)
        x = self.proj(x).flatten(2).transpose(1, 2).contiguous()  # [B, N, C]
        return self.norm(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        from slab_edge.layers.reparam import absorb_into_preceding

        if is_foldable(self.norm):
            absorb_into_preceding(self.proj, self.norm)
            self.norm = nn.Identity()


def ensure_bias(layer: nn.Linear | nn.Conv2d) -> None:
    """Give a Linear/Conv a zero bias if it has none (deploy models: folded norms leave a bias)."""
    if layer.bias is None:
        weight = layer.weight
        layer.bias = nn.Parameter(torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype))


def init_linear_trunc_normal(module: nn.Module) -> None:
    """Linear weights ~ truncated N(0, 0.02), biases 0 (the DeiT / PVT initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def tokens_to_nhwc(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:  # noqa: UP006  (TorchScript)
    """Tokens [B, H*W, C] (row-major grid) -> feature map [B, H, W, C]: a reshape, no copy."""
    return x.reshape(x.shape[0], hw[0], hw[1], x.shape[-1])


def new_head(model: nn.Module, num_features: int, num_classes: int) -> nn.Module:
    """A classifier Linear (Identity for num_classes=0) on `model`'s device, in its dtype and mode."""
    head = (
        nn.Linear(num_features, num_classes, **get_device_dtype(model)) if num_classes > 0 else nn.Identity()
    )
    return head.train(model.training)


class PooledTokenClassifier(nn.Module):
    """The classifier end shared by the hierarchical families (PVT, Swin, CSwin): a Linear head on the mean of
    the last stage's feature map, with timm's classifier interface and the final-norm fold.

    A subclass defines `forward_features` (x -> the last stage's map [B, H, W, C], channels last as
    `output_fmt` says; `tokens_to_nhwc` turns stage tokens into it) and sets `num_features`, `num_classes`,
    `global_pool` ('avg' or ''), `head` and `norm` (nn.Identity when the family has no final norm).
    Its blocks fold themselves; `reparameterize` here runs last (children first) and folds the final norm.
    """

    __jit_unused_properties__ = ["unfoldable_norms"]
    #: layout of forward_features (timm reads it to find the spatial and channel axes)
    output_fmt = "NHWC"

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (on the model's device, in its dtype and train/eval mode). In a folded model the
        final norm lives in the head and is dropped with it."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = new_head(self, self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """[B, H, W, C] -> logits [B, num_classes] (or pooled features [B, C] with pre_logits; with
        global_pool '' the map itself goes to the head)."""
        if self.global_pool == "avg":
            x = x.mean(dim=[1, 2])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _to_nchw(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Stage tokens [B, N, C] -> feature map [B, C, R, R] on the square grid `stage_resolutions[stage]`
        (families with square stage grids: Swin, CSwin)."""
        res = self.stage_resolutions[stage]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], res, res)

    @property
    def unfoldable_norms(self) -> list[str]:
        """Norms that cannot fold: LayerNorms (baseline), and the final norm when there is no classifier."""
        names = unfoldable_norm_names(self)
        if (
            not isinstance(self.head, nn.Linear)
            and not isinstance(self.norm, nn.Identity)
            and "norm" not in names
        ):
            names.append("norm")
        return names

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the final norm into the head (runs after the blocks: children first). Idempotent."""
        if isinstance(self.head, nn.Linear) and absorb_into_following(self.norm, self.head):
            self.norm = nn.Identity()


class PreNormBlock(nn.Module):
    """Pre-norm transformer block on a token grid: x + attn(norm1(x), hw), then x + mlp(norm2(x)).
    [B, N, C] -> [B, N, C]. Shared by DeiT and PVT; the family builds the attention.

    `reparameterize()` folds norm1 into the attention's input projection(s) (`absorb_norm1`, which an
    attention without `input_linear` overrides through its own `absorb_input_norm`) and norm2 into mlp.fc1.

    Args:
        dim: C.
        attn: the token mixer, called as attn(x, hw).
        mlp_ratio, proj_drop, drop_path: MLP width ratio, dropout, stochastic depth.
        norm_layer, norm_type, deploy: as make_norm_layer / norm_or_identity.
        device, dtype: timm's factory kwargs.
    """

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp_ratio: float = 4.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer=nn.LayerNorm,
        norm_type: str = "prepbn",
        deploy: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = norm_or_identity(norm_layer, dim, norm_type, deploy, **dd)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_or_identity(norm_layer, dim, norm_type, deploy, **dd)
        self.mlp = Mlp(
            in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd
        )
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:  # noqa: UP006  (TorchScript)
        x = x + self.drop_path1(self.attn(self.norm1(x), hw))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if is_foldable(self.norm1):
            if hasattr(self.attn, "absorb_input_norm"):
                self.attn.absorb_input_norm(self.norm1)
            else:
                for layer in self.attn.input_linear:
                    absorb_into_following(self.norm1, layer)
            self.norm1 = nn.Identity()
        if is_foldable(self.norm2):
            absorb_into_following(self.norm2, self.mlp.fc1)
            self.norm2 = nn.Identity()
