"""The Pyro model a graph of nodes describes (:mod:`.graph`): a PyroModule whose ``forward``
samples the nodes in order, and the observed site's likelihood (with a chain graph, the chain
summed out by :class:`~pplvm.distributions.HiddenMarkovChain`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from pyro.ops.indexing import Vindex

from ..data.base import Batch
from ..decoders import NetworkConfig, make_decoder
from ..decoders.side import SideInformation
from ..distributions import HiddenMarkovChain
from ..errors import CardError, DataError
from ._graph_check import check_graph, named
from ._pyro_inputs import input_array, missing

if TYPE_CHECKING:
    from .graph import NodeConfig


class GraphModule(PyroModule):
    """The Pyro model a graph of nodes describes; ``forward(x)`` over a ``(B, D)`` batch (a
    ``Batch(x, y)`` with a side node)."""

    def __init__(self, nodes: list[NodeConfig], dim: int):
        super().__init__()
        # follows .to(device): the priors' and likelihoods' constants are made on it
        self.register_buffer("_origin", torch.zeros(()), persistent=False)
        self.nodes = check_graph(nodes)
        self.by_name = {n.name: n for n in self.nodes}
        self.dim = dim
        self.sizes = {n.name: n.size for n in self.nodes if n.kind in ("categorical", "chain", "input") and n.size}
        #: the input nodes, each a named array of the data beside x (covariates or a group index)
        self.inputs = [n for n in self.nodes if n.kind == "input"]
        self.chain = next((n for n in self.nodes if n.kind == "chain"), None)
        #: the side node (None without one) and how its y enters the decoder and the encoder
        self.side_node = next((n for n in self.nodes if n.kind == "side"), None)
        self.side = side_of(self.side_node)
        self.decoders = torch.nn.ModuleDict()
        for n in self.nodes:
            if n.kind == "param":
                value = torch.full(self.shape(n), float(n.init))
                setattr(
                    self, n.name, PyroParam(value, constraint=constraints.positive) if n.positive else PyroParam(value)
                )
            if n.kind == "observed" and n.decoder:
                latent = next(m for m in self.nodes if m.name == n.input)
                net = NetworkConfig(
                    latent_dim=latent.dim, hidden=n.hidden, activation=n.activation, likelihood=n.distribution
                )
                self.decoders[n.name] = make_decoder(net, dim, self.side.size if n.side else 0)

    def shape(self, n: NodeConfig) -> tuple[int, ...]:
        return tuple(self.dim if s == "D" else self.sizes[s] if isinstance(s, str) else int(s) for s in n.shape)

    def forward(self, x):
        """``x``: ``(B, D)`` rows, with a side node a :class:`~pplvm.data.Batch` ``(x, y)`` (y:
        ``(B,)`` labels or ``(B, C)`` covariates), or for a chain graph a Batch of padded sequences
        ``(B, T, D)`` with ``lengths``."""
        values: dict[str, Any] = {}
        for n in self.inputs:  # (B, dim) covariates or (B,) group indices
            if not isinstance(x, Batch) or n.name not in x.inputs:
                raise DataError(
                    f"data: node {n.name!r} is the data's input {n.name!r}; pass pplvm.fit(card, data={{'x': ..., "
                    f"{n.name!r}: ...}}) or a source with named inputs (data.source = 'arrays')"
                )
            values[n.name] = x.inputs[n.name]
        if self.side_node is not None:  # (B, C) features, one-hot for labels
            if not isinstance(x, Batch) or x.y is None:
                raise DataError(
                    f"data: node {self.side_node.name!r} is side information y; pass pplvm.data.Batch(x, y)"
                )
            values[self.side_node.name] = self.side(x)
        x = x.x if isinstance(x, Batch) and self.chain is None else x
        plates: dict[str, pyro.plate] = {}  # one plate per name, entered by each of its nodes
        for n in self.nodes:
            if n.kind == "param":
                values[n.name] = getattr(self, n.name)
            elif n.kind == "global":
                if n.plate is not None and n.plate not in plates:
                    plates[n.plate] = pyro.plate(n.plate, self.shape(n)[0], dim=-1)
                values[n.name] = self._global(n, plates.get(n.plate))
            elif n.kind == "gaussian" and n.groups is not None:  # a random effect: one draw per group level
                if n.groups not in plates:
                    plates[n.groups] = pyro.plate(n.groups, self.sizes[n.groups], dim=-1)
                with plates[n.groups]:
                    mean = self._mean(values, n) if n.mean else self._origin.new_zeros(n.dim)
                    std = self._std(values, n, self._origin.new_ones(n.dim))
                    d = dist.Normal(mean, std)
                    d = d.expand(torch.broadcast_shapes(d.batch_shape, (n.dim,)))
                    values[n.name] = pyro.sample(n.name, d.to_event(1))
        if self.chain is not None:
            with pyro.plate("data", len(x), dim=-1):
                n = next(m for m in self.nodes if m.kind == "observed")
                return pyro.sample(n.name, self._chain(values, n, x), obs=x.x)
        with pyro.plate("data", len(x), dim=-1):
            for n in self.nodes:
                if n.kind == "categorical":
                    values[n.name] = pyro.sample(n.name, dist.Categorical(values[n.probs]))
                elif n.kind == "gaussian" and n.groups is None:  # a default prior on the data's device
                    mean = self._mean(values, n) if n.mean else x.new_zeros(n.dim)
                    std = self._std(values, n, x.new_ones(n.dim))
                    values[n.name] = pyro.sample(n.name, dist.Normal(mean, std).to_event(1))
            n = next(m for m in self.nodes if m.kind == "observed")
            return pyro.sample(n.name, self._likelihood(values, n), obs=x)

    def _global(self, n: NodeConfig, plate: pyro.plate | None) -> torch.Tensor:
        """A global latent of shape ``shape``; in ``plate`` (over the first entry) if given."""
        shape = self.shape(n)
        if n.prior == "dirichlet":  # over the last dim
            d = dist.Dirichlet(self._origin.new_full(shape, n.concentration))
        else:
            loc, scale = self._origin.new_tensor(n.loc), self._origin.new_tensor(n.scale)
            base = dist.Normal(loc, scale) if n.prior == "normal" else dist.LogNormal(loc, scale)
            d = base.expand(shape[1:] if n.plate else shape)
        if n.plate is None:
            return pyro.sample(n.name, d.to_event(len(d.batch_shape)))
        if plate.size != shape[0]:
            raise CardError(
                f"model.nodes: node {n.name!r}: plate {n.plate!r} has size {plate.size} elsewhere, {shape[0]} here"
            )
        with plate:
            if n.prior == "dirichlet":
                return pyro.sample(n.name, d.to_event(len(d.batch_shape) - 1))
            return pyro.sample(n.name, d.to_event(len(d.batch_shape)))

    def _pick(self, values: dict[str, Any], name: str, given: str | None) -> torch.Tensor:
        """``values[name]``; when its shape starts with the categorical ``given``, indexed by
        the state of ``given`` (enumerated or sampled), as the GMM family indexes its means."""
        t = values[name]
        node = self.by_name[name]
        if node.groups is not None:  # (*S, G, L) per group level: each row its own group's
            return Vindex(t.unsqueeze(-3))[..., values[node.groups], :]
        if given is None or not node.shape or node.shape[0] != given:
            return t
        event = len(node.shape) - 1
        index = (Ellipsis, values[given]) + (slice(None),) * event
        return Vindex(t.unsqueeze(-event - 2))[index]

    def _mean(self, values, n: NodeConfig) -> torch.Tensor:
        """The sum of the nodes ``n.mean`` names, each indexed as :meth:`_pick` does."""
        terms = [self._pick(values, ref, n.given) for ref in named(n, "mean")]
        return terms[0] if len(terms) == 1 else sum(terms[1:], terms[0])

    def _std(self, values, n: NodeConfig, default: torch.Tensor) -> torch.Tensor:
        if n.std is None:
            return default
        if isinstance(n.std, float):
            return self._origin.new_tensor(n.std)
        return self._pick(values, n.std, n.given)

    def _likelihood(self, values, n: NodeConfig) -> dist.Distribution:
        if n.decoder:
            return self.decoders[n.name](values[n.input], values[n.side] if n.side else None)
        mean = self._mean(values, n) if n.mean else self._origin.new_zeros(())
        if n.weight is not None:
            w = self._pick(values, n.weight, n.given)  # (..., D, L)
            mean = mean + (w @ values[n.input].unsqueeze(-1)).squeeze(-1)
        if n.distribution == "bernoulli":
            return dist.Bernoulli(logits=mean).to_event(1)
        return dist.Normal(mean, self._std(values, n, self._origin.new_ones(()))).to_event(1)

    def _chain(self, values: dict[str, Any], n: NodeConfig, x: Batch) -> HiddenMarkovChain:
        """The observed sequences with the chain (and any per-step mixture) summed out: batch
        ``(*S, B)``, event ``(T, D)``. Globals may carry draw dims ``S`` in front (vectorised
        particles); each is flattened to one leading dim so that they line up."""
        c = self.chain

        def own(name: str) -> tuple[int, ...]:
            return self.shape(self.by_name[name])

        draws = values[c.transition].numel() // (c.size * c.size)
        lead = (draws,) if draws > 1 else ()
        device = values[c.transition].device

        def aligned(t: torch.Tensor, shape: tuple[int, ...], slots: int) -> torch.Tensor:
            """``t`` ``(*S, *shape)`` as ``(*lead, 1 × slots, *shape)``."""
            t = torch.as_tensor(t, device=device)
            if t.numel() == math.prod(shape):
                return t.reshape((1,) * (len(lead) + slots) + shape)
            return t.reshape(lead + (1,) * slots + shape)

        tiny = torch.finfo(values[c.transition].dtype).tiny
        initial = aligned(values[c.initial], own(c.initial), 1).clamp_min(tiny).log()  # (*S, 1, K)
        transition = aligned(values[c.transition], own(c.transition), 1).clamp_min(tiny).log()  # (*S, 1, K, K)
        mean = aligned(values[n.mean], own(n.mean), 2) if n.mean else torch.zeros((), device=device)
        if n.distribution == "bernoulli":
            step = dist.Bernoulli(logits=mean).to_event(1)
        else:
            std = (
                torch.tensor(n.std, device=device)
                if isinstance(n.std, float)
                else aligned(values[n.std], own(n.std), 2)
            )
            step = dist.Normal(mean, std).to_event(1)
        if n.mixture is not None:  # (*S, 1, 1, K, M) components, weights (*S, 1, 1, K, M)
            weights = aligned(values[self.by_name[n.mixture].probs], own(self.by_name[n.mixture].probs), 2)
            step = dist.MixtureSameFamily(dist.Categorical(probs=weights), step)
        step = step.expand(lead + (1, 1, c.size))
        return HiddenMarkovChain(initial, transition, step, x.x.shape[-2], x.lengths, latent=c.name)

    def placeholder(self, rows: int, dim: int) -> Any:
        """``rows`` zero rows with zero inputs: what the model is traced on."""
        if not self.inputs:
            return torch.zeros(rows, dim)
        inputs = {
            n.name: torch.zeros(rows, n.dim) if n.dim else torch.zeros(rows, dtype=torch.long) for n in self.inputs
        }
        return Batch(torch.zeros(rows, dim), inputs=inputs)

    def check_inputs(self, data: Any, name: str) -> dict[str, torch.Tensor]:
        """The data's named inputs as the input nodes take them (``(N, dim)`` floats, ``(N,)``
        indices in ``0..size-1``), or a DataError naming the node: missing, of the wrong shape,
        out of range, with missing entries, or an input no node takes."""
        given = data.inputs if isinstance(data, Batch) else {}
        extra = sorted(set(given) - {n.name for n in self.inputs})
        if extra:
            raise DataError(
                f"{name}: the data's input(s) {', '.join(extra)} are no node of kind 'input' in model.nodes"
            )
        out = {}
        for n in self.inputs:
            where = f"{name}: node {n.name!r} (kind 'input')"
            if n.name not in given:
                raise DataError(
                    f"{where} needs the data's input {n.name!r}; the data give {', '.join(given) or 'none'}"
                )
            t = input_array(given[n.name], where, len(data))
            if missing(t).any():
                raise DataError(f"{where}: {int(missing(t).sum())} rows miss it (-1 or NaN); a graph needs every entry")
            if n.dim is not None:
                t = t.to(torch.get_default_dtype())
                t = t[:, None] if t.dim() == 1 and n.dim == 1 else t
                if tuple(t.shape[1:]) != (n.dim,):
                    raise DataError(f"{where}: expected shape (N, {n.dim}) (dim = {n.dim}), got {tuple(t.shape)}")
            elif t.dtype != torch.long or t.dim() != 1 or (len(t) and int(t.max()) >= n.size):
                raise DataError(
                    f"{where}: expected one integer index per row in 0..{n.size - 1} (size = {n.size}), "
                    f"got dtype {t.dtype}, shape {tuple(t.shape)}" + (f", max {t.max()}" if t.numel() else "")
                )
            out[n.name] = t
        return out

    def check_data(self, x: torch.Tensor, name: str) -> None:
        n = next(m for m in self.nodes if m.kind == "observed")
        x = x.x if isinstance(x, Batch) else x
        if n.distribution == "bernoulli" and len(x) and not ((x == 0) | (x == 1)).all():
            raise DataError(
                f"{name}: node {n.name!r} has distribution 'bernoulli', which needs 0/1 data; "
                "set data.binarize or use distribution = 'normal'"
            )


class Conditioning:
    """What an amortized encoder of a graph sees beside x: the side node's features and the
    input nodes' (covariates as they are, group indices one-hot), ``(B, size)``; None for none."""

    def __init__(self, module: GraphModule):
        self.side = module.side
        self.inputs = [(n.name, n.dim, n.size) for n in module.inputs]
        self.size = self.side.size + sum(dim or size for _, dim, size in self.inputs)

    def __call__(self, data: Any) -> torch.Tensor | None:
        parts = [self.side(data)] if self.side.kind != "none" else []
        for name, dim, size in self.inputs:
            t = data.inputs[name]
            parts.append(
                t.to(torch.get_default_dtype())
                if dim
                else torch.nn.functional.one_hot(t, size).to(parts[0].dtype if parts else torch.get_default_dtype())
            )
        return torch.cat(parts, -1) if parts else None


def side_of(node: NodeConfig | None) -> SideInformation:
    """How the side node's y enters the networks (nothing without a side node)."""
    if node is None:
        return SideInformation()
    if node.classes is not None:
        return SideInformation("labels", node.classes, f"node {node.name!r}: classes")
    return SideInformation("covariates", node.dim, f"node {node.name!r}: dim")
