"""RepBN and the progressive norm (PRepBN): a LayerNorm/RMSNorm that fades linearly into RepBN.

The schedule counts *optimizer steps*, stored in buffers (so it survives checkpoints and resumes), and is
advanced explicitly by the training loop with `advance_progressive_norms(model)` — never by forward calls
(the official code decrements on every training forward, so gradient accumulation or extra forwards
silently change it).
"""

from __future__ import annotations

import torch
from torch import nn

from slab_edge.layers.fold import repbn_affine


class RepBN(nn.Module):
    """BatchNorm over channels plus a learnable scalar skip: BN(x) + alpha * x.

    Input [B, ..., C] (channels last, e.g. tokens [B, N, C]). Statistics are taken over every position of
    every sample, as BatchNorm1d over [B, C, N] does. `device` / `dtype` place the parameters and buffers
    (timm's factory kwargs).
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        alpha_init: float = 1.0,
        weight_init: float = 1.0,
        bias_init: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init), device=device, dtype=dtype))
        self.bn = nn.BatchNorm1d(dim, eps=eps, momentum=momentum, device=device, dtype=dtype)
        nn.init.constant_(self.bn.weight, weight_init)
        nn.init.constant_(self.bn.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [B*N, C]: same statistics as BatchNorm1d on [B, C, N]
        return (self.bn(flat) + self.alpha * flat).reshape(shape)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode (scale, shift), each [C], float64."""
        return repbn_affine(self.bn, self.alpha)


class ProgressiveNorm(nn.Module):
    """out = g * LN(x) + (1 - g) * RepBN(x) in training; RepBN(x) alone in eval.

    g = 1 for the first `warmup_steps` optimizer steps, then decays linearly to 0 over `decay_steps`.
    Buffers: `step` (optimizer steps taken), `warmup_steps`, `decay_steps`.

    Both branches run in every training forward (the LN-only warm-up included), so every parameter gets a
    gradient each step and DistributedDataParallel needs no `find_unused_parameters`. `device` / `dtype`
    place the parameters and buffers (the schedule buffers stay int64).
    """

    def __init__(
        self,
        dim: int,
        decay_steps: int = 60_000,
        warmup_steps: int = 0,
        first: str = "layernorm",
        eps: float = 1e-6,
        bn_eps: float = 1e-5,
        repbn_init: tuple[float, float, float] = (1.0, 1.0, 0.0),
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if first == "layernorm":
            self.ln = nn.LayerNorm(dim, eps=eps, **dd)
        elif first == "rmsnorm":
            self.ln = nn.RMSNorm(dim, eps=eps, **dd)
        else:
            raise ValueError(f"ProgressiveNorm first norm must be 'layernorm' or 'rmsnorm', got {first!r}")
        alpha, weight, bias = repbn_init
        self.repbn = RepBN(dim, eps=bn_eps, alpha_init=alpha, weight_init=weight, bias_init=bias, **dd)
        steps = {"device": device, "dtype": torch.long}
        self.register_buffer("step", torch.zeros((), **steps))
        self.register_buffer("warmup_steps", torch.tensor(int(warmup_steps), **steps))
        self.register_buffer("decay_steps", torch.tensor(int(decay_steps), **steps))

    def mix_weight(self) -> torch.Tensor:
        """Current LN weight g in [0, 1] as a float32 scalar tensor."""
        return progressive_mix_weight(self.step, self.warmup_steps, self.decay_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.repbn(x)
        g = self.mix_weight().to(x.dtype)
        return g * self.ln(x) + (1 - g) * self.repbn(x)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode (scale, shift), each [C], float64 (the RepBN branch)."""
        return self.repbn.affine()

    def extra_repr(self) -> str:
        return f"warmup_steps={int(self.warmup_steps)}, decay_steps={int(self.decay_steps)}"


def progressive_mix_weight(step: torch.Tensor, warmup: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """g(step) = 1 during warm-up, then max(0, 1 - (step - warmup) / decay). decay == 0 means pure RepBN."""
    after = (step - warmup).clamp(min=0).float()
    g = (1.0 - after / decay.clamp(min=1).float()).clamp(0.0, 1.0)
    g = torch.where(step < warmup, torch.ones_like(g), g)
    return torch.where(decay <= 0, torch.where(step < warmup, g, torch.zeros_like(g)), g)


def progressive_norms(model: nn.Module) -> list[ProgressiveNorm]:
    return [m for m in model.modules() if isinstance(m, ProgressiveNorm)]


@torch.no_grad()
def advance_progressive_norms(model: nn.Module, steps: int = 1) -> None:
    """Advance every progressive norm's schedule by `steps` optimizer steps. Call after optimizer.step()."""
    for norm in progressive_norms(model):
        norm.step.add_(steps)


@torch.no_grad()
def set_progressive_schedule(
    model: nn.Module, decay_steps: int | None = None, warmup_steps: int | None = None, step: int | None = None
) -> int:
    """Set schedule buffers on every progressive norm; returns how many norms were touched."""
    norms = progressive_norms(model)
    for norm in norms:
        if decay_steps is not None:
            norm.decay_steps.fill_(int(decay_steps))
        if warmup_steps is not None:
            norm.warmup_steps.fill_(int(warmup_steps))
        if step is not None:
            norm.step.fill_(int(step))
    return len(norms)


def current_mix_weight(model: nn.Module) -> float | None:
    """The LN weight g shared by the model's progressive norms (None if it has none)."""
    norms = progressive_norms(model)
    return float(norms[0].mix_weight()) if norms else None


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) of a norm that is affine in eval mode (RepBN, ProgressiveNorm, BatchNorm), else None."""
    if isinstance(norm, (RepBN, ProgressiveNorm)):
        return norm.affine()
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        from slab_edge.layers.fold import batchnorm_affine

        return batchnorm_affine(norm)
    return None


#: Module types counted as "norms" by the fold check.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    RepBN,
    ProgressiveNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.GroupNorm,
)
