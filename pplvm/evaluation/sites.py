"""Names of a model's sites as a Pyro model writes them: the ones that repeat per time step."""

from __future__ import annotations

import re
from typing import Iterable


def time_steps(names: Iterable[str]) -> dict[str, list[str]]:
    """Sites that repeat one per time step, as a Pyro model's ``for t in pyro.markov(...)`` loop
    names them (``z_1, z_2, ...``): stem -> names in step order, for stems with two or more."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        match = _STEP.fullmatch(name)
        if match:
            groups.setdefault(match.group(1), []).append((int(match.group(2)), name))
    return {stem: [n for _, n in sorted(members)] for stem, members in groups.items() if len(members) > 1}


def step(name: str) -> int:
    """The time step a repeated site's name ends with (``z_12`` -> 12)."""
    return int(_STEP.fullmatch(name).group(2))


_STEP = re.compile(r"(.*?)(\d+)")
