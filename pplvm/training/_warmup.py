"""Linear warm-up of the learning rate (``training.lr_warmup_steps = N``).

An optimiser's k-th update (k = 1, 2, ...) runs at ``lr_k = lr_s · min(1, k / N)``, where
``lr_s`` is the lr the card's ``lr_schedule`` has set for the epoch (the schedule steps once per
epoch and keeps its own arithmetic: the warm-up factor is applied just before each update and
taken off just after it, so a chained schedule such as ``exponential`` never compounds it).

The update count lives in the optimiser's parameter groups (``warmup_updates``), so the
optimiser's own ``state_dict`` carries it into checkpoints and a resumed fit warms up where the
interrupted one stopped. The hooks run around every ``optimizer.step()``, whoever calls it: the
plain step, the compiled step (:mod:`.compiled`) and a GAN's two optimisers alike.
"""

from __future__ import annotations

import torch

#: the parameter-group key counting an optimiser's updates
UPDATES = "warmup_updates"
_SCHEDULED = "scheduled_lr"


def warmup_factor(update: int, steps: int) -> float:
    """``min(1, update / steps)``: the share of the scheduled lr the ``update``-th update (1-based) runs at."""
    return min(1.0, update / steps) if steps > 0 else 1.0


def add_lr_warmup(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.Optimizer:
    """Warm ``optimizer``'s lr up linearly over its first ``steps`` updates (none where ``steps`` is 0)."""
    if steps <= 0:
        return optimizer
    for group in optimizer.param_groups:
        group.setdefault(UPDATES, 0)

    def before(opt: torch.optim.Optimizer, args, kwargs) -> None:
        for group in opt.param_groups:
            group[UPDATES] += 1
            group[_SCHEDULED] = group["lr"]
            group["lr"] = group["lr"] * warmup_factor(group[UPDATES], steps)

    def after(opt: torch.optim.Optimizer, args, kwargs) -> None:
        for group in opt.param_groups:
            group["lr"] = group.pop(_SCHEDULED)

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
    return optimizer
