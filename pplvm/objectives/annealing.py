"""KL annealing: a weight β on the local latents' density ratio, following a schedule.

``β (log p(z) - log q(z | x))`` replaces ``log p(z) - log q(z | x)`` in every objective when
the site ``z`` is scored with scale β in both model and guide; :class:`ScaleSites` does that
for named sites, so one mechanism serves Trace_ELBO, TraceMeanField_ELBO (its analytic KL
takes the guide site's scale) and the Renyi / IWAE bounds alike. The trainer enters
``schedule(progress)`` around each training step, with ``progress`` the epochs done so far
(fractional within an epoch); held-out evaluation runs outside it, so ``valid_loss`` is
always the objective itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyro.poutine.messenger import Messenger


class ScaleSites(Messenger):
    """Multiply the log-density of the named sample sites by ``scale`` wherever they are
    scored (model and guide)."""

    def __init__(self, sites: tuple[str, ...], scale: float):
        super().__init__()
        self.sites, self.scale = frozenset(sites), float(scale)

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["name"] in self.sites:
            msg["scale"] = self.scale * msg["scale"]


@dataclass(frozen=True)
class KLSchedule:
    """``β(progress) = kl_weight * min(1, progress / warmup_epochs)`` on ``sites``."""

    sites: tuple[str, ...]
    kl_weight: float = 1.0
    warmup_epochs: float = 0.0

    def beta(self, progress: float) -> float:
        if self.warmup_epochs <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, progress / self.warmup_epochs)

    def __call__(self, progress: float) -> ScaleSites:
        """The handler to enter around a training step taken at ``progress`` epochs."""
        return ScaleSites(self.sites, self.beta(progress))

    def values(self, progress: float) -> dict[str, float]:
        """What to log beside the loss."""
        return {"kl_weight": self.beta(progress)}
