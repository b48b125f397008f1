"""Declarative models: a graph of nodes in the card (``model.family = "graph"``).

Each ``[[model.nodes]]`` table is one node::

    kind = "param"        a point-estimated parameter: shape, init, positive
    kind = "global"       a global latent with a prior: normal (loc, scale), lognormal (loc, scale)
                          or dirichlet (concentration) over its last dim; shape; optional plate
                          (the first entry of shape is that plate's size)
    kind = "categorical"  a discrete local latent (enumerated) with `size` states and `probs`, a
                          global or param node of shape [size]
    kind = "gaussian"     a continuous local latent of `dim` entries, Normal(mean, std) where mean
                          and std name nodes (default 0 and 1); a node whose shape starts with
                          the categorical `given` is indexed by its state (a prior that depends
                          on a parent)
    kind = "side"         side information y given with each row (data as ``Batch(x, y)``, as for
                          the cvae family): class labels 0..`classes`-1 (entered one-hot) or
                          covariates of `dim` entries; an observed node's decoder takes it
                          (`side`), and so does the amortized encoder
    kind = "observed"     the likelihood of the data row: `distribution` normal or bernoulli, with
                          its mean from `mean` (a node, indexed by `given`), plus `weight @ input`
                          (a linear map (D, L) or (K, D, L) of a gaussian node), or a `decoder`
                          network (MLP widths `hidden`) of `input` (and of the side node `side`:
                          input [z, y]); `std` a node or number (normal)
    kind = "chain"        a Markov chain of `size` states over the time steps of each sequence:
                          z_0 ~ Categorical(`initial`), z_t | z_{t-1} ~ Categorical(`transition`
                          row z_{t-1}), nodes of shape [size] and [size, size]; the observed node
                          then emits each step given the chain (`given` = the chain), optionally
                          through a `mixture`: a categorical node (probs of shape [chain, size])
                          drawn afresh at each step. The states (and mixture components) are summed
                          out exactly inside the observed site (the forward algorithm,
                          :class:`~pplvm.distributions.HiddenMarkovChain`); the data are sequences.

Shapes are lists of integers, ``"D"`` (the data's columns) or a categorical node's name (its
size). pplvm builds a Pyro model (a PyroModule) from the nodes and traces it like a user's own
model (:mod:`.pyro_model`): the guides and objectives that fit, the log-likelihood (exact when
every local latent is enumerated) and everything else follow. A malformed graph — a reference
to no node, a cycle, two observed nodes, a likelihood that does not match the data — is refused
in one line naming the node.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pyro
import pyro.distributions as dist
import torch
from pydantic import Field
from pyro import poutine
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from pyro.ops.indexing import Vindex

from ..data.base import Batch
from ..data.sequences import as_sequences
from ..decoders import Activation, Encoder, NetworkConfig, make_decoder, mlp
from ..decoders.side import SideEncoder, SideInformation
from ..distributions import HiddenMarkovChain
from ..errors import CardError, DataError
from ..schema import Section
from .base import over_draws
from .pyro_model import ContinuousPyroModel, PyroModel, TracedConfig, _ScaleDataPlate, trace_structure

Shape = list[int | str]


class NodeConfig(Section):
    """One node of a graph model (see the module docstring for what each kind reads)."""

    name: str = Field(..., pattern=r"^[A-Za-z_]\w*$")
    kind: Literal["param", "global", "categorical", "gaussian", "side", "observed", "chain"]
    shape: Shape = Field([], description="param / global: the shape; ints, 'D' or a categorical node's name")
    init: float = Field(0.0, description="param: initial value of every entry")
    positive: bool = Field(False, description="param: constrained positive")
    prior: Literal["normal", "lognormal", "dirichlet"] = "normal"
    loc: float = 0.0
    scale: float = Field(1.0, gt=0)
    concentration: float = Field(1.0, gt=0)
    plate: str | None = Field(None, description="global: the first entry of shape is this plate's size")
    size: int | None = Field(None, ge=2, description="categorical / chain: number of states")
    probs: str | None = Field(None, description="categorical: node holding the state probabilities")
    dim: int | None = Field(None, ge=1, description="gaussian: number of entries; side: width of covariates y")
    classes: int | None = Field(None, ge=2, description="side: y holds class labels 0..classes-1 (one-hot inputs)")
    given: str | None = Field(None, description="gaussian / observed: categorical parent indexing mean, std, weight")
    mean: str | None = Field(None, description="gaussian / observed: node of the mean")
    std: str | float | None = Field(None, description="gaussian / observed (normal): node or number")
    distribution: Literal["normal", "bernoulli"] = "normal"
    weight: str | None = Field(None, description="observed: linear map node, (D, L) or (K, D, L) with given")
    input: str | None = Field(None, description="observed: the gaussian node fed to weight or decoder")
    decoder: bool = Field(False, description="observed: decode input with an MLP (pplvm.decoders)")
    side: str | None = Field(None, description="observed decoder: a side node, decoded with input ([z, y])")
    hidden: list[int] = Field([200, 200], description="observed decoder: hidden widths (reversed, as the VAE's)")
    activation: Activation = "tanh"
    initial: str | None = Field(None, description="chain: node of the initial-state probabilities, shape [size]")
    transition: str | None = Field(
        None,
        description="chain: node of the transition probabilities, shape "
        "[size, size], rows indexed by the previous state",
    )
    length: int = Field(100, ge=1, description="chain: time steps of the sequences sample() draws")
    mixture: str | None = Field(
        None,
        description="observed, in a chain graph: a categorical node drawn at each "
        "step given the chain (probs of shape [chain, size]); mean and std then have "
        "shape [chain, mixture, ...]",
    )


class GraphConfig(TracedConfig):
    family: Literal["graph"] = "graph"
    nodes: list[NodeConfig] = Field(..., min_length=1, description="the graph's nodes, [[model.nodes]]")


REFERENCES = ("probs", "given", "mean", "std", "weight", "input", "initial", "transition", "mixture", "side")


def check_graph(nodes: list[NodeConfig]) -> list[NodeConfig]:
    """The nodes in an order where every node comes after those it names; a CardError naming
    the node for a reference to no node, a reference of the wrong kind, a cycle, or not
    exactly one observed node."""
    by_name: dict[str, NodeConfig] = {}
    for n in nodes:
        if n.name in by_name:
            raise CardError(f"model.nodes: two nodes are named {n.name!r}")
        by_name[n.name] = n
    observed = [n.name for n in nodes if n.kind == "observed"]
    if len(observed) != 1:
        raise CardError(f"model.nodes: expected exactly one node of kind 'observed' (the data), got {len(observed)}")
    parents: dict[str, list[str]] = {}
    for n in nodes:
        refs = [(f, getattr(n, f)) for f in REFERENCES if isinstance(getattr(n, f), str)]
        refs += [("shape", s) for s in n.shape if isinstance(s, str) and s != "D"]
        for field, ref in refs:
            if ref not in by_name:
                raise CardError(f"model.nodes: node {n.name!r}: {field} = {ref!r} names no node")
        for field, kinds in (
            ("given", ("categorical", "chain")),
            ("input", ("gaussian",)),
            ("probs", ("global", "param")),
            ("initial", ("global", "param")),
            ("transition", ("global", "param")),
            ("mixture", ("categorical",)),
            ("side", ("side",)),
        ):
            ref = getattr(n, field)
            if ref is not None and by_name[ref].kind not in kinds:
                raise CardError(
                    f"model.nodes: node {n.name!r}: {field} = {ref!r} must be a {' or '.join(kinds)} "
                    f"node, not {by_name[ref].kind!r}"
                )
        for s in n.shape:
            if isinstance(s, str) and s != "D" and by_name[s].kind not in ("categorical", "chain"):
                raise CardError(
                    f"model.nodes: node {n.name!r}: shape entry {s!r} must be 'D', a categorical or a chain node"
                )
        for field, ref in refs:
            if by_name[ref].kind == "side" and field != "side":
                raise CardError(
                    f"model.nodes: node {n.name!r}: {field} = {ref!r} is a side node, which only an "
                    f"observed node's decoder takes (side = {ref!r})"
                )
        _require(n)
        parents[n.name] = [
            ref
            for _, ref in refs
            if ref in by_name and not (by_name[ref].kind in ("categorical", "chain") and _is_size_ref(n, ref))
        ]
    _check_side(nodes)
    _check_chain(nodes, by_name)
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = " -> ".join(path[path.index(name) :] + (name,))
            raise CardError(f"model.nodes: node {name!r} is in a cycle: {cycle}")
        state[name] = "open"
        for p in parents[name]:
            visit(p, path + (name,))
        state[name] = "done"
        order.append(name)

    for n in nodes:
        visit(n.name, ())
    return [by_name[name] for name in order]


def _check_side(nodes: list[NodeConfig]) -> None:
    """At most one side node, labels (classes) or covariates (dim), taken by the observed node's
    decoder; a CardError naming the node otherwise."""
    sides = [n for n in nodes if n.kind == "side"]
    observed = next(n for n in nodes if n.kind == "observed")
    if len(sides) > 1:
        raise CardError(f"model.nodes: expected at most one node of kind 'side' (the data's y), got {len(sides)}")
    for n in sides:
        if (n.classes is None) == (n.dim is None):
            raise CardError(
                f"model.nodes: node {n.name!r} (kind 'side') needs classes (labels) or dim "
                "(covariates), exactly one of them"
            )
        if observed.side != n.name:
            raise CardError(
                f"model.nodes: node {n.name!r}: no decoder takes this side node; set side = "
                f"{n.name!r} on the observed node (with decoder = true)"
            )
    if observed.side is not None and not observed.decoder:
        raise CardError(
            f"model.nodes: node {observed.name!r}: side = {observed.side!r} needs decoder = true "
            "(the decoder takes [input, side])"
        )


def _check_chain(nodes: list[NodeConfig], by_name: dict[str, NodeConfig]) -> None:
    """A graph with a chain node: one chain, the observed node emits given it, and its other
    local nodes are the emission's mixture components; a CardError naming the node otherwise."""
    chains = [n for n in nodes if n.kind == "chain"]
    observed = next(n for n in nodes if n.kind == "observed")
    if not chains:
        if observed.mixture is not None:
            raise CardError(
                f"model.nodes: node {observed.name!r}: mixture needs a chain node (a mixture per "
                "time step); without one, give the observed node a categorical parent with given"
            )
        return
    if len(chains) > 1:
        raise CardError(f"model.nodes: expected at most one node of kind 'chain', got {len(chains)}")
    chain = chains[0]
    if observed.given != chain.name:
        raise CardError(
            f"model.nodes: node {observed.name!r}: in a graph with the chain {chain.name!r}, the "
            f"observed node emits given it (given = {chain.name!r})"
        )
    if observed.weight is not None or observed.decoder:
        raise CardError(
            f"model.nodes: node {observed.name!r}: a chain's emission takes mean and std "
            "(weight and decoder need a gaussian input, which a chain graph has not)"
        )
    for n in nodes:
        if n.kind == "gaussian":
            raise CardError(
                f"model.nodes: node {n.name!r}: a chain graph sums its local latents out exactly; a "
                "gaussian local node is not supported there"
            )
        if n.kind == "categorical" and n.name != observed.mixture:
            raise CardError(
                f"model.nodes: node {n.name!r}: in a chain graph a categorical node is the observed "
                f"node's mixture (mixture = {n.name!r})"
            )
    if observed.mixture is not None:
        probs = by_name[by_name[observed.mixture].probs]
        if probs.shape != [chain.name, observed.mixture]:
            raise CardError(
                f"model.nodes: node {probs.name!r}: the mixture's probs need shape "
                f"[{chain.name!r}, {observed.mixture!r}] (one row per chain state), got {probs.shape}"
            )


def _is_size_ref(node: NodeConfig, ref: str) -> bool:
    """A categorical named only in ``shape`` lends its size, not a dependency."""
    return ref in node.shape and ref not in [getattr(node, f) for f in REFERENCES]


def _require(n: NodeConfig) -> None:
    need = {"categorical": ("size", "probs"), "gaussian": ("dim",), "chain": ("size", "initial", "transition")}.get(
        n.kind, ()
    )
    for field in need:
        if getattr(n, field) is None:
            raise CardError(f"model.nodes: node {n.name!r} (kind {n.kind!r}) needs {field}")
    if n.kind == "observed":
        if (n.weight is not None or n.decoder) and n.input is None:
            raise CardError(f"model.nodes: node {n.name!r}: weight or decoder needs input (a gaussian node)")
        if n.decoder and n.weight is not None:
            raise CardError(f"model.nodes: node {n.name!r}: give weight or decoder, not both")
        if n.mean is None and n.weight is None and not n.decoder:
            raise CardError(f"model.nodes: node {n.name!r}: needs a mean, a weight or a decoder")
        if n.distribution == "normal" and n.std is None and not n.decoder:
            raise CardError(f"model.nodes: node {n.name!r}: distribution 'normal' needs std (a node or a number)")
    if n.kind == "global" and n.plate is not None and not n.shape:
        raise CardError(f"model.nodes: node {n.name!r}: plate {n.plate!r} needs a shape whose first entry is its size")


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
        self.sizes = {n.name: n.size for n in self.nodes if n.kind in ("categorical", "chain")}
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
        if self.side_node is not None:  # (B, C) features, one-hot for labels
            if not isinstance(x, Batch) or x.y is None:
                raise DataError(
                    f"data: node {self.side_node.name!r} is side information y; pass pplvm.data.Batch(x, y)"
                )
            values[self.side_node.name] = self.side(x)
            x = x.x
        plates: dict[str, pyro.plate] = {}  # one plate per name, entered by each of its nodes
        for n in self.nodes:
            if n.kind == "param":
                values[n.name] = getattr(self, n.name)
            elif n.kind == "global":
                if n.plate is not None and n.plate not in plates:
                    plates[n.plate] = pyro.plate(n.plate, self.shape(n)[0], dim=-1)
                values[n.name] = self._global(n, plates.get(n.plate))
        if self.chain is not None:
            with pyro.plate("data", len(x), dim=-1):
                n = next(m for m in self.nodes if m.kind == "observed")
                return pyro.sample(n.name, self._chain(values, n, x), obs=x.x)
        with pyro.plate("data", len(x), dim=-1):
            for n in self.nodes:
                if n.kind == "categorical":
                    values[n.name] = pyro.sample(n.name, dist.Categorical(values[n.probs]))
                elif n.kind == "gaussian":  # a default prior on the data's device
                    mean = self._pick(values, n.mean, n.given) if n.mean else x.new_zeros(n.dim)
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
        if given is None or not node.shape or node.shape[0] != given:
            return t
        event = len(node.shape) - 1
        index = (Ellipsis, values[given]) + (slice(None),) * event
        return Vindex(t.unsqueeze(-event - 2))[index]

    def _std(self, values, n: NodeConfig, default: torch.Tensor) -> torch.Tensor:
        if n.std is None:
            return default
        if isinstance(n.std, float):
            return self._origin.new_tensor(n.std)
        return self._pick(values, n.std, n.given)

    def _likelihood(self, values, n: NodeConfig) -> dist.Distribution:
        if n.decoder:
            return self.decoders[n.name](values[n.input], values[n.side] if n.side else None)
        mean = self._pick(values, n.mean, n.given) if n.mean else self._origin.new_zeros(())
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

    def check_data(self, x: torch.Tensor, name: str) -> None:
        n = next(m for m in self.nodes if m.kind == "observed")
        x = x.x if isinstance(x, Batch) else x
        if n.distribution == "bernoulli" and len(x) and not ((x == 0) | (x == 1)).all():
            raise DataError(
                f"{name}: node {n.name!r} has distribution 'bernoulli', which needs 0/1 data; "
                "set data.binarize or use distribution = 'normal'"
            )


def side_of(node: NodeConfig | None) -> SideInformation:
    """How the side node's y enters the networks (nothing without a side node)."""
    if node is None:
        return SideInformation()
    if node.classes is not None:
        return SideInformation("labels", node.classes, f"node {node.name!r}: classes")
    return SideInformation("covariates", node.dim, f"node {node.name!r}: dim")


class GraphModel(PyroModel):
    """A model declared as a graph of nodes in the card (see the module docstring)."""

    Config = GraphConfig

    @classmethod
    def from_config(cls, config: GraphConfig, dim: int, model: Any = None, guide: Any = None) -> "GraphModel":
        if model is not None:
            raise CardError(
                "model.family = 'graph' builds its model from model.nodes; a model object of your "
                "own is model.family = 'pyro'"
            )
        module = GraphModule(config.nodes, dim)
        if module.chain is not None:  # traced on placeholder sequences of two steps
            structure = trace_structure(
                module,
                dim,
                "model.nodes",
                example=lambda rows: Batch(torch.zeros(rows, 2, dim), lengths=torch.full((rows,), 2)),
            )
            return ChainGraphModel(config, dim, module, structure, guide, "model.nodes")
        side = module.side
        example = (
            None
            if side.kind == "none"
            else (
                lambda rows: Batch(
                    torch.zeros(rows, dim),
                    y=(torch.zeros(rows, dtype=torch.long) if side.kind == "labels" else torch.zeros(rows, side.size)),
                )
            )
        )
        structure = trace_structure(module, dim, "model.nodes", example=example)
        kind = ContinuousGraphModel if structure.continuous else GraphModel
        return kind(config, dim, module, structure, guide, "model.nodes")

    @classmethod
    def needs_labels(cls, config: GraphConfig) -> str | None:
        """A graph with a side node takes the data source's labels as y (``Batch(x, y)``)."""
        side = next((n.name for n in config.nodes if n.kind == "side"), None)
        return None if side is None else f"model.nodes: node {side!r} (kind 'side')"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.side = self.holder.module.side
        self.uses_labels = self.side.kind != "none"

    def model_input(self, x):
        """The values of ``x``; with a side node, ``Batch(x, y)``."""
        if self.side.kind == "none":
            return super().model_input(x)
        return Batch(x.x, y=x.y) if isinstance(x, Batch) else x  # (a plain tensor is refused by the model)

    def placeholder(self, n: int):
        """``n`` zero rows; with a side node, given :meth:`SideInformation.default` as y (the
        classes in turn)."""
        rows = super().placeholder(n)
        if self.side.kind == "none":
            return rows
        return Batch(rows, y=self.side.default(n).to(self.device))

    def prepare(self, data, name="data"):
        if self.side.kind == "none":
            x = super().prepare(data, name)
        else:
            x = self.side.batch(data, self.dim, name, f"node {self.holder.module.side_node.name!r}")
        self.holder.module.check_data(x, name)
        return x

    def init_values(self, x, generator):
        # a decoder node starts at the mean row, as the vae family's decoder does (model.output_bias)
        for decoder in self.holder.module.decoders.values():
            decoder.start_at_mean(x.x if isinstance(x, Batch) else x)
        return super().init_values(x, generator)


class ContinuousGraphModel(GraphModel, ContinuousPyroModel):
    """A graph model with a continuous local latent (the amortized encoder serves it, given the
    side node's y beside x where there is one)."""

    def make_encoder(self) -> torch.nn.Module:
        if self.side.kind == "none":
            return super().make_encoder()
        c = self.config
        head = mlp(self.dim + self.side.size, c.hidden, 2 * self.latent_dim, c.activation)
        return SideEncoder(Encoder(torch.nn.Identity(), head, c.min_scale), self.side)


class ChainGraphModel(GraphModel):
    """A graph model with a chain node: a hidden Markov model over sequences (a
    :class:`~pplvm.data.Batch` of padded ``(B, T, D)`` with ``lengths``), its states summed out
    inside the observed site (``collapsed``), so the log-likelihood is exact and the state
    marginals and Viterbi path come from the chain's distribution, as for the ``hmm`` family."""

    sequential = True
    collapsed = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        chain = self.holder.module.chain
        self.local_sites = (chain.name,)
        self.enumerated = True
        self.length = chain.length

    def forward(self, x=None, num_data=None):
        """``x``: a Batch of B padded sequences (or None: generate ``num_data`` sequences of the
        chain's ``length`` steps); with ``num_data`` the data plate is scaled by ``num_data / B``."""
        model = self._fn[0]
        if x is None:
            if num_data is None:
                raise ValueError("give x, or num_data sequences to generate")
            steps = torch.zeros(num_data, self.length, self.dim, device=self.device)
            return poutine.uncondition(model)(
                Batch(steps, lengths=torch.full((num_data,), self.length, device=self.device))
            )
        if num_data is not None and num_data != len(x):
            with _ScaleDataPlate(self.plate_name, num_data / len(x)):
                return model(x)
        return model(x)

    @torch.no_grad()
    def log_likelihood(self, x, params, **kwargs) -> torch.Tensor:
        """``log p(x_n | θ)`` of each sequence, ``(*S, N)``, the chain summed out exactly."""

        def one(theta):
            site = poutine.trace(self.conditioned(theta)).get_trace(x).nodes[self.observed_site]
            return site["fn"].log_prob(site["value"])

        return over_draws(params, self.structure.global_shapes, one)

    def evaluation_cost(self, x):
        """Per (draw, sequence): the forward pass's ``(T, K, K)`` factors and ``(T, K, D)`` emission terms."""
        k = self.holder.module.chain.size
        return int(x.x.shape[-2]) * k * (k + self.dim * 4)

    def prepare(self, data, name="data"):
        if not isinstance(data, Batch):
            raise DataError(
                f"{name}: node {self.holder.module.chain.name!r} is a chain over time, so the data are "
                "sequences: a sequence source (synthetic_hmm, sequence_file, ...) or "
                "pplvm.data.as_sequences([seq1, seq2, ...])"
            )
        batch = as_sequences(data, name, dim=self.dim)
        self.holder.module.check_data(batch, name)
        return batch
