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
                          on a parent); with `groups` (an index input) one draw per group level,
                          a random effect b_g ~ Normal(mean, std) (mean and std globals or params,
                          e.g. a learnt scale), each row taking its own group's: (1 | group) in a
                          formula
    kind = "side"         side information y given with each row (data as ``Batch(x, y)``, as for
                          the cvae family): class labels 0..`classes`-1 (entered one-hot) or
                          covariates of `dim` entries; an observed node's decoder takes it
                          (`side`), and so does the amortized encoder
    kind = "input"        a named input of the data (an array beside x: pplvm.fit(data={"x": ..., "u": ...}),
                          data.source = "arrays", data.input_columns), under the node's name: covariates
                          of `dim` entries (float, (N, dim)), which an observed node's weight or
                          decoder takes (`input`), or a group index with `size` levels (integers
                          0..size-1, (N,)), which `given` indexes by (as a categorical's state) and
                          `groups` draws one effect per level of
    kind = "observed"     the likelihood of the data row: `distribution` normal or bernoulli, with
                          its mean from `mean` (a node, indexed by `given`; a list of nodes is their
                          sum), plus `weight @ input` (a linear map (D, L) or (K, D, L) of a
                          gaussian node or covariates input), or a `decoder`
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

Shapes are lists of integers, ``"D"`` (the data's columns) or a categorical node's or index
input's name (its size). A regression of one response on covariates with a random intercept
per group, ``x ~ u + (1 | group)`` as a formula would say (``models/`` has none; the tests and
``examples/pyro_classics/mixed_regression_graph.toml`` do)::

    u (input, dim 2)   group (input, size 8)   W (param [1, 2])   b0 (param [1])   tau (param, positive)
    b (gaussian, dim 1, groups "group", mean "b0", std "tau")   b_g ~ N(b0, tau²)
    obs (observed, mean "b", weight "W", input "u", std "sigma")  x ~ N(b_group + W u, sigma²)

pplvm builds a Pyro model (a PyroModule) from the nodes and traces it like a user's own
model (:mod:`.pyro_model`): the guides and objectives that fit, the log-likelihood (exact when
every local latent is enumerated) and everything else follow. A malformed graph — a reference
to no node, a cycle, two observed nodes, a likelihood that does not match the data — is refused
in one line naming the node.

Here are the card's schema and the family; the graph's check is :mod:`._graph_check`, the Pyro
model built from the nodes :mod:`._graph_module` (both re-exported here).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from pyro import poutine

from ..data.base import Batch
from ..data.sequences import as_sequences
from ..decoders import Activation, Encoder, mlp
from ..decoders.side import SideEncoder
from ..errors import CardError, DataError
from ..schema import Section
from ._graph_check import REFERENCES, check_graph  # noqa: F401  (re-exported: the graph's check)
from ._graph_module import Conditioning, GraphModule, side_of  # noqa: F401  (re-exported: the graph's Pyro model)
from ._pyro_inputs import Caller
from .base import over_draws
from .pyro_model import ContinuousPyroModel, PyroModel, TracedConfig, _ScaleDataPlate, trace_structure

Shape = list[int | str]


class NodeConfig(Section):
    """One node of a graph model (see the module docstring for what each kind reads)."""

    name: str = Field(..., pattern=r"^[A-Za-z_]\w*$", description="the node's name, which other nodes refer to")
    kind: Literal["param", "global", "categorical", "gaussian", "side", "input", "observed", "chain"] = Field(
        description="what the node is (pplvm.families.graph describes what each kind reads)"
    )
    shape: Shape = Field([], description="param / global: the shape; ints, 'D' or a categorical node's name")
    init: float = Field(0.0, description="param: initial value of every entry")
    positive: bool = Field(False, description="param: constrained positive")
    prior: Literal["normal", "lognormal", "dirichlet"] = Field("normal", description="global: its prior")
    loc: float = Field(0.0, description="global: loc of a normal or lognormal prior")
    scale: float = Field(1.0, gt=0, description="global: scale of a normal or lognormal prior")
    concentration: float = Field(1.0, gt=0, description="global: concentration of a dirichlet prior")
    plate: str | None = Field(None, description="global: the first entry of shape is this plate's size")
    size: int | None = Field(None, ge=2, description="categorical / chain: number of states; input: group levels")
    probs: str | None = Field(None, description="categorical: node holding the state probabilities")
    dim: int | None = Field(
        None, ge=1, description="gaussian: number of entries; side: width of covariates y; input: of covariates"
    )
    classes: int | None = Field(None, ge=2, description="side: y holds class labels 0..classes-1 (one-hot inputs)")
    given: str | None = Field(
        None, description="gaussian / observed: categorical parent or index input indexing mean, std, weight"
    )
    groups: str | None = Field(None, description="gaussian: an index input; one draw per level (a random effect)")
    mean: str | list[str] | None = Field(None, description="gaussian / observed: node of the mean (a list: the sum)")
    std: str | float | None = Field(None, description="gaussian / observed (normal): node or number")
    distribution: Literal["normal", "bernoulli"] = Field("normal", description="observed: the likelihood")
    weight: str | None = Field(None, description="observed: linear map node, (D, L) or (K, D, L) with given")
    input: str | None = Field(None, description="observed: gaussian node or covariates input fed to weight or decoder")
    decoder: bool = Field(False, description="observed: decode input with an MLP (pplvm.decoders)")
    side: str | None = Field(None, description="observed decoder: a side node, decoded with input ([z, y])")
    hidden: list[int] = Field([200, 200], description="observed decoder: hidden widths (reversed, as the VAE's)")
    activation: Activation = Field("tanh", description="observed decoder: nonlinearity of the hidden layers")
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


class GraphModel(PyroModel):
    r"""A model declared in the card as a graph of nodes (``[[model.nodes]]``), built into a Pyro model.

    **Prior and likelihood.** Each node is a factor of
    :math:`p(\theta)\, \prod_n p(z_n \mid \theta, u_n)\, p(x_n \mid z_n, \theta, u_n, y_n)`:
    ``global`` nodes are the global latents θ (normal, lognormal or Dirichlet priors; ``param``
    nodes are point estimates instead), ``categorical`` and ``gaussian`` nodes the local
    latents :math:`z_n` (a ``gaussian`` with ``groups``: a random effect per group level),
    ``input`` and ``side`` nodes what the data carry beside x (covariates or group indices
    :math:`u_n`; labels :math:`y_n`), and the one ``observed`` node the likelihood: normal or
    Bernoulli with mean ``mean[given] + weight @ input`` or a ``decoder`` network. A ``chain``
    node makes the data sequences and the model an HMM (:math:`z_{n,t} \mid z_{n,t-1}` from
    ``transition``), its states summed out inside the observed site. The module's docstring
    lists every node kind and field.

    **Marginal: exact or estimated**, as for :class:`~pplvm.families.pyro_model.PyroModel`,
    whose tracing builds everything else: with only enumerated locals (``categorical``,
    ``chain``) ``log_likelihood`` is exact (tensor contraction, or the forward algorithm); with
    a ``gaussian`` local it is the importance-sampled estimate with the run's guide as proposal
    (categorical locals summed out exactly inside each weight).

    **Latent structure → guides and objectives.** Globals: an autoguide (``map``,
    ``meanfield``, ``lowrank``, ``flow``, ``Auto*``). Categorical or chain locals: ``enum`` (Pyro's
    ``TraceEnum_ELBO``). A gaussian local: the ``amortized``
    encoder (given the side node's y and the input nodes beside x), per-datum ``meanfield``
    normals or a ``flow``, and the SVI objectives over reparameterised sites where no
    categorical node sits beside it (else ``enum``). A malformed graph is refused in one line
    naming the node.

    **Card.** ``model.nodes`` (each node's ``name``, ``kind`` and its kind's fields) and the
    encoder's ``hidden``, ``activation``. From ``models/mfa_wine.toml`` (a mixture of factor
    analysers, the component enumerated, the factor amortized; abridged):

    .. code-block:: toml

        [[model.nodes]]               # mixture weights: a global latent
        name = "pi"
        kind = "global"
        prior = "dirichlet"
        shape = ["c"]

        [[model.nodes]]               # the component of each row: enumerated
        name = "c"
        kind = "categorical"
        size = 3
        probs = "pi"

        [[model.nodes]]               # the factor of each row: amortized encoder
        name = "z"
        kind = "gaussian"
        dim = 1

        [[model.nodes]]               # x | c, z ~ Normal(mu_c + W_c z, psi)
        name = "obs"
        kind = "observed"
        mean = "mu"
        weight = "W"
        input = "z"
        std = "psi"
        given = "c"
    """

    Config = GraphConfig
    takes_labels = False  # a side node's labels: needs_labels

    @classmethod
    def from_config(
        cls, config: GraphConfig, dim: int, model: Any = None, guide: Any = None, example: Any = None
    ) -> "GraphModel":
        if model is not None:
            raise CardError(
                "model.family = 'graph' builds its model from model.nodes; a model object of your "
                "own is model.family = 'pyro'"
            )
        module = GraphModule(config.nodes, dim)
        if module.chain is not None:  # traced on placeholder sequences of two steps
            structure = trace_structure(
                module,
                lambda rows: Batch(torch.zeros(rows, 2, dim), lengths=torch.full((rows,), 2)),
                "model.nodes",
                module=True,
                checks=False,
            )
            return ChainGraphModel(config, dim, module, structure, guide, "model.nodes")
        side = module.side

        def placeholder(rows):
            base = module.placeholder(rows, dim)
            if side.kind == "none":
                return base
            y = torch.zeros(rows, dtype=torch.long) if side.kind == "labels" else torch.zeros(rows, side.size)
            return Batch(base, y=y) if torch.is_tensor(base) else base.replace(y=y)

        structure = trace_structure(module, placeholder, "model.nodes", module=True, checks=False)
        kind = ContinuousGraphModel if structure.continuous else GraphModel
        rows = None  # generating beside inputs: the data's first rows' (placeholder zeros without data)
        if module.inputs:
            given = isinstance(example, Batch) and all(n.name in example.inputs for n in module.inputs)
            rows = Batch(example.x, inputs=example.inputs) if given else module.placeholder(5, dim)
        return kind(config, dim, module, structure, guide, "model.nodes", example=rows)

    @classmethod
    def needs_labels(cls, config: GraphConfig) -> str | None:
        """A graph with a side node takes the data source's labels as y (``Batch(x, y)``)."""
        side = next((n.name for n in config.nodes if n.kind == "side"), None)
        return None if side is None else f"model.nodes: node {side!r} (kind 'side')"

    @staticmethod
    def caller(user: Any, label: str) -> Caller:
        """The graph's module takes the batch itself."""
        return Caller.batch(user, label)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.side = self.holder.module.side
        self.uses_labels = self.side.kind != "none"

    def model_input(self, x):
        """The values of ``x``; with a side node, ``Batch(x, y)``."""
        if self.side.kind == "none":
            return super().model_input(x)
        return x.replace(index=None) if isinstance(x, Batch) else x  # (a plain tensor is refused by the model)

    def placeholder(self, n: int):
        """``n`` zero rows; with a side node, given :meth:`SideInformation.default` as y (the
        classes in turn)."""
        rows = super().placeholder(n)
        if self.side.kind == "none":
            return rows
        y = self.side.default(n).to(self.device)
        return rows.replace(y=y) if isinstance(rows, Batch) else Batch(rows, y=y)

    def prepare(self, data, name="data"):
        module = self.holder.module
        inputs = module.check_inputs(data, name)
        rest = data.replace(inputs={}) if isinstance(data, Batch) else data
        if self.side.kind == "none":
            x = super().prepare(rest, name)
        else:
            x = self.side.batch(rest, self.dim, name, f"node {module.side_node.name!r}")
        if inputs:
            x = (x if isinstance(x, Batch) else Batch(x)).replace(inputs=inputs)
        module.check_data(x, name)
        return x

    def init_values(self, x, generator):
        # a decoder node starts at the mean row, as the vae family's decoder does (model.output_bias)
        for decoder in self.holder.module.decoders.values():
            decoder.start_at_mean(x.x if isinstance(x, Batch) else x)
        return super().init_values(x, generator)


class ContinuousGraphModel(GraphModel, ContinuousPyroModel):
    """A graph model with a continuous local latent (the amortized encoder serves it, given the
    side node's y and the input nodes beside x where there are any)."""

    def make_encoder(self) -> torch.nn.Module:
        given = Conditioning(self.holder.module)  # the side node's y and the input nodes, beside x
        if not given.size:
            return super().make_encoder()
        c = self.config
        head = mlp(self.dim + given.size, c.hidden, 2 * self.latent_dim, c.activation)
        return SideEncoder(Encoder(torch.nn.Identity(), head, c.min_scale), given)


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
