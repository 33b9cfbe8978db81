"""The standard adversarial-training methods: PGD-AT, TRADES, MART, FGSM-RS (their objectives are
in `dsara.train.losses`), with the attack defaults of each reference code."""

from __future__ import annotations

from ..losses import fgsm_rs, mart, pgd_at, trades
from .base import Method

RECORDS = (
    # 10 steps of 2/255 at 8/255 (Madry et al.; Rice et al.), crafted in train mode
    Method("pgd-at", pgd_at, 0.25, 10),
    # TRADES' and MART's code: eval mode, start x + 0.001 N(0, 1); 10 steps of ~2/255 at 8/255
    Method("trades", trades, 0.25, 10, "eval", "normal"),
    Method("mart", mart, 0.25, 10, "eval", "normal"),
    # Wong et al.: one step of 1.25 eps from a uniform start, train mode
    Method("fgsm-rs", fgsm_rs, 1.25, 1),
)
