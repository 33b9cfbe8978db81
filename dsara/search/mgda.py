"""The two-task min-norm (MGDA) combination of gradients used in DSARA's stage 2.

For g1 = g_nat and g2 = g_adv, the point of the segment {gamma*g1 + (1-gamma)*g2, gamma in [0,1]}
with the smallest norm is at gamma* = clip(((g2 - g1) . g2) / ||g2 - g1||^2, 0, 1) (Sener & Koltun,
2018; DSARA reference code). Everything stays on the device: no host sync.
"""

from __future__ import annotations

import torch


def flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1).float() for g in grads])


def min_norm_gamma(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """gamma* in [0, 1] minimizing ||gamma*g1 + (1-gamma)*g2||; 0.5 when g1 == g2 (any works)."""
    diff = g2 - g1
    denom = diff.dot(diff)
    gamma = diff.dot(g2) / denom.clamp_min(1e-30)
    return torch.where(denom > 0, gamma.clamp(0.0, 1.0), torch.full_like(gamma, 0.5))


def combine(g_nat: list[torch.Tensor], g_adv: list[torch.Tensor], how: str = "mgda"
            ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Combine per-parameter gradient lists; returns (direction, gamma) with gamma a 0-dim tensor."""
    if how == "sum":
        gamma = g_nat[0].new_full((), float("nan"), dtype=torch.float32)  # no host-to-device copy
        return [a + b for a, b in zip(g_nat, g_adv)], gamma
    gamma = min_norm_gamma(flat(g_nat), flat(g_adv))
    return [gamma * a + (1 - gamma) * b for a, b in zip(g_nat, g_adv)], gamma
