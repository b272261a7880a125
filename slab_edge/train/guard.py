"""Non-finite guard: skip an update whose loss or gradient norm is NaN/inf; stop after K in a row.

SLAB's own tracker reports NaNs during the LayerNorm -> RepBN transition; one bad batch should cost one
skipped update, not the run. The loop calls `check(...)` after backward (and after the all-reduce in DDP,
so every rank takes the same decision):

    verdict = guard.check(loss, grad_norm, step=step, mix_weight=g, lr=lr)
    if verdict.skip:
        optimizer.zero_grad(set_to_none=True)   # no optimizer step, no schedule advance
        continue

After `patience` consecutive bad updates `check` raises NonFiniteError naming the step, mix weight and lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slab_edge.errors import SlabEdgeError

__all__ = ["GuardVerdict", "NonFiniteError", "NonFiniteGuard"]


class NonFiniteError(SlabEdgeError):
    """Too many consecutive non-finite updates: the run cannot make progress."""


@dataclass
class GuardVerdict:
    skip: bool
    reason: str = ""


class NonFiniteGuard:
    """Counts consecutive non-finite updates.

    Args:
        patience: stop after this many consecutive skipped updates (K); 0 disables stopping (still skips).
    """

    def __init__(self, patience: int = 20) -> None:
        self.patience = int(patience)
        self.consecutive = 0
        self.total_skipped = 0

    def check(
        self,
        loss: float,
        grad_norm: float | None,
        *,
        step: int,
        mix_weight: float | None = None,
        lr: float | None = None,
    ) -> GuardVerdict:
        """Verdict for one update; raises NonFiniteError after `patience` bad updates in a row.

        Args:
            loss: the (rank-averaged) loss of the update.
            grad_norm: total gradient norm before clipping (None when not computed).
            step: optimizer steps taken so far (the step this update would have been).
        """
        bad = []
        if not math.isfinite(loss):
            bad.append(f"loss={loss}")
        if grad_norm is not None and not math.isfinite(grad_norm):
            bad.append(f"grad_norm={grad_norm}")
        if not bad:
            self.consecutive = 0
            return GuardVerdict(skip=False)
        self.consecutive += 1
        self.total_skipped += 1
        reason = ", ".join(bad)
        if self.patience and self.consecutive >= self.patience:
            mix = "n/a (no progressive norm)" if mix_weight is None else f"{mix_weight:.4f}"
            lr_text = "n/a" if lr is None else f"{lr:.3g}"
            raise NonFiniteError(
                f"stopped at optimizer step {step}: {self.consecutive} consecutive non-finite updates "
                f"({reason}); LN mix weight {mix}, lr {lr_text}. Try a lower lr, a longer progressive-norm "
                "schedule (prepbn_decay 0.8 = 80% of the run) or gradient clipping"
            )
        return GuardVerdict(skip=True, reason=reason)

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total_skipped": self.total_skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total_skipped = int(state.get("total_skipped", 0))
