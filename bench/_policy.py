"""The step a card gets by default, as the benches time it: the trainer's rule for the card,
told the length of a fit (:data:`FIT_STEPS`), stepped until ``training.compile = "auto"`` has
made its choices (Pyro's validated first step, the trace, inductor or not: see
:mod:`pplvm.training.compiled`), so the timed steps are the steady state of such a fit."""

from __future__ import annotations

#: the fit the default rule is told it is in: 100 epochs of 50,000 rows at batch 100
FIT_STEPS = 50_000


def settled(rule, batch, n: int, fit_steps: int = FIT_STEPS):
    """``(step, what)``: a step callable of ``rule`` on ``batch`` (the trainer's: Pyro's
    validation on the first step only, a finiteness check), after the default policy settled;
    ``what`` is the rule's own description of what runs."""
    import pyro
    import torch

    from pplvm.training.compiled import TIMED_STEPS

    rule.plan(fit_steps)
    first = [True]

    def step():
        with pyro.validation_enabled(first[0]):
            first[0] = False
            if not torch.isfinite(rule.step(batch, n, 0.0)):
                raise RuntimeError("non-finite loss")

    for _ in range(3 * TIMED_STEPS + 5):  # the first step, the traced steps timed, the trial
        step()
    return step, rule.describe()
