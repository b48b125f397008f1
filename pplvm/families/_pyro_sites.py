"""How the continuous local sites of a traced user model (:mod:`.pyro_model`) lie, for the
amortized guide that serves them site by site (:class:`~.capabilities.LocalLayout`).

Rows: every continuous local site ``(B, L)`` is a site per datum. Sequences: the sites a
``for t in pyro.markov(...)`` loop names one per step (``z_1 .. z_T``, :func:`._pyro_trace.time_steps`)
are step sites, when their number is the batch's padded length (``x.shape[1]``, as Pyro's DMM
loops) or its longest sequence; their stem and first index come from the model traced on the
data's first rows, so a batch of any other length names its steps as the model does. A step
site the model masks beyond each sequence's length is masked by the guide too, and one it does
not mask is not. Other sites of a sequence model are sites per sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..data.base import Batch
from ._pyro_trace import _is_sample, _trace_once, time_steps
from .capabilities import LocalLayout, StepSites

if TYPE_CHECKING:
    from .pyro_model import PyroModel


def local_layout(model: PyroModel) -> LocalLayout:
    """The layout of ``model``'s continuous local sites (its ``structure``, and for sequences one
    trace on those of its example rows that are shorter than their padding, if any)."""
    s = model.structure
    if s.site_reasons:
        return LocalLayout(refusal=s.site_reasons)
    dims = {name: s.continuous_shapes[name][0] for name in s.continuous}
    example = model.example
    if not (isinstance(example, Batch) and example.lengths is not None):
        return LocalLayout(rows=tuple(dims.items()))
    short = example.lengths < example.x.shape[1]
    example = example[short] if bool(short.any()) else example  # padded (x.shape[1]) ≠ longest: one count tells
    call = model._fn[0]
    trace = _trace_once(
        call,
        example,
        uses_param=f"{call.label}: uses pyro.param",
        failed=f"{call.label}: calling it on {len(example)} sequences of the data failed",
    )
    padded, longest = example.x.shape[1], int(example.lengths.max())
    steps, grouped, reasons = [], set(), []
    for stem, probed in time_steps(s.continuous).items():
        names = time_steps([n for n in trace.nodes if _is_sample(trace.nodes[n])]).get(stem, [])
        index = [int(n[len(stem) :]) for n in names]
        follows = "padded" if len(names) == padded else "longest" if len(names) == longest else None
        if follows is None or index != list(range(index[0], index[0] + len(index))):
            continue  # not one per step: sites per sequence that happen to end in digits
        shapes = {tuple(trace.nodes[n]["fn"].event_shape) for n in names}
        if len(shapes) > 1:
            reasons.append(f"its step sites {names[0]} … {names[-1]} change shape over time ({sorted(shapes)})")
            continue
        masked = _masked(trace, names, example.lengths)
        steps.append(StepSites(stem, index[0], dims[probed[0]], follows, masked))
        grouped |= set(probed)
    rows = tuple((n, L) for n, L in dims.items() if n not in grouped)
    return LocalLayout(rows=rows, steps=tuple(steps), sequences=True, refusal="; ".join(reasons))


def _masked(trace, names: list[str], lengths: torch.Tensor) -> bool:
    """Whether the model's step sites add nothing beyond each sequence's length (True where
    the example rows have no padded step to tell)."""
    for t, name in enumerate(names):
        beyond = t >= lengths
        if not bool(beyond.any()):
            continue
        site = trace.nodes[name]
        log_p = site["fn"].log_prob(site["value"])
        mask = site["mask"]
        if mask is not None:
            log_p = torch.where(mask, log_p, torch.zeros_like(log_p))
        if log_p.shape != lengths.shape:
            return True  # not one value per sequence: left as the model writes it
        return bool((log_p[beyond.to(log_p.device)] == 0).all())
    return True
