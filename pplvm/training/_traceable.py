"""Pyro's objectives in a form ``make_fx`` can record: no branch on a tensor's value.

:class:`TraceEnum_ELBO`'s expectation (``pyro.infer.util.Dice.compute_expectation``) asks
``(prob > 0).all()`` on the host, at every step, to choose between two ways of summing
``prob * cost``: plainly, or over the entries with ``prob > 0`` only (``masked_select``, whose
result's size depends on the values). A traced graph cannot hold either branch, so
:class:`TraceableDice` sums ``prob * where(prob > 0, cost, 0)``: the same number and the same
gradients as Pyro's plain sum where every probability is positive (the usual case), and as its
masked sum where some is 0 (a ``-inf`` cost there adds 0, as Pyro's mask makes it), for any
values. It is swapped in for Pyro's own only while a step is traced (:func:`traceable`).
"""

from __future__ import annotations

import contextlib
import math
import unittest.mock

import torch
from opt_einsum import shared_intermediates
from pyro.infer.util import Dice
from pyro.ops import packed
from pyro.ops.einsum.adjoint import require_backward
from pyro.ops.rings import MarginalRing


class TraceableDice(Dice):
    """``Dice`` whose :meth:`compute_expectation` has no host read (module docstring); the
    rest is Pyro 1.9's code, line for line."""

    def compute_expectation(self, costs):
        with shared_intermediates() as cache:
            ring = MarginalRing(cache=cache)
            expected_cost = 0.0
            for ordinal, cost_terms in costs.items():
                log_factors = self._get_log_factors(ordinal)
                scale = math.exp(sum(x for x in log_factors if not isinstance(x, torch.Tensor)))
                log_factors = [x for x in log_factors if isinstance(x, torch.Tensor)]

                # a query for the marginal probability of each cost term's dims
                queries = {frozenset(cost._pyro_dims): None for cost in cost_terms}
                for log_factor in log_factors:
                    key = frozenset(log_factor._pyro_dims)
                    if queries.get(key, False) is None:
                        queries[key] = log_factor
                for cost in cost_terms:
                    key = frozenset(cost._pyro_dims)
                    if queries[key] is None:
                        query = torch.zeros_like(cost)
                        query._pyro_dims = cost._pyro_dims
                        log_factors.append(query)
                        queries[key] = query

                sum_dims = set().union(*(x._pyro_dims for x in log_factors)) - ordinal
                for query in queries.values():
                    require_backward(query)
                root = ring.sumproduct(log_factors, sum_dims)
                root._pyro_backward()
                probs = {key: query._pyro_backward_result.exp() for key, query in queries.items()}

                for cost in cost_terms:
                    key = frozenset(cost._pyro_dims)
                    prob = probs[key]
                    prob._pyro_dims = queries[key]._pyro_dims
                    cost, prob = packed.broadcast_all(cost, prob)
                    # the one change: Pyro's `if not mask.all(): masked_select` as a select
                    cost = torch.where(prob > 0, cost, torch.zeros((), dtype=cost.dtype, device=cost.device))
                    expected_cost = expected_cost + scale * _fulldot(prob, cost)
        return expected_cost


def _fulldot(x, y):
    return x * y if x.dim() == 0 else torch.tensordot(x, y, dims=x.dim())


@contextlib.contextmanager
def traceable():
    """While a step is traced: Pyro's enumerated objective sums with :class:`TraceableDice`."""
    import pyro.infer.traceenum_elbo as traceenum

    with unittest.mock.patch.object(traceenum, "Dice", TraceableDice):
        yield
