"""``lowrank``: a low-rank multivariate normal over the globals (AutoLowRankMultivariateNormal)."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal

from .autoguides import build_autoguide, globals_only, start
from .base import Guide, InitScale


class LowRank(Guide):
    r"""Low-rank multivariate normal over the globals (AutoLowRankMultivariateNormal).

    **q.** :math:`q(\theta) = \mathcal N(\mu, W W^\top + \mathrm{diag}\, d)` jointly over every
    global's unconstrained coordinates, so it captures their correlations (a label-switching
    mixture's weights and means, say) at rank-R cost.

    **Needs** global latents and no continuous local ones (those need a guide of their own:
    ``amortized``, ``exact``, ``meanfield``); enumerated locals stay in the model. **Offers** no
    local proposal.
    """

    names = ("lowrank",)
    Config = InitScale

    def refusal(self, model: Any) -> str | None:
        return globals_only(model, "guide.kind = 'lowrank'")

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        init = start(model, x, generator)
        return build_autoguide(AutoLowRankMultivariateNormal, model, init, self.config.init_scale, {})
