"""A graph model's nodes checked (:mod:`.graph`): every reference names a node of the right kind,
no cycle, exactly one observed node, and the side and chain nodes used as the module docstring of
:mod:`.graph` says; a malformed graph is refused in one line naming the node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import CardError

if TYPE_CHECKING:
    from .graph import NodeConfig

REFERENCES = (
    "probs",
    "given",
    "mean",
    "std",
    "weight",
    "input",
    "initial",
    "transition",
    "mixture",
    "side",
    "groups",
)


def named(n: NodeConfig, field: str) -> list[str]:
    """The nodes ``field`` of ``n`` names: none, one, or (a mean) a list whose sum it is."""
    value = getattr(n, field)
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []


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
        refs = [(f, ref) for f in REFERENCES for ref in named(n, f)]
        refs += [("shape", s) for s in n.shape if isinstance(s, str) and s != "D"]
        for field, ref in refs:
            if ref not in by_name:
                raise CardError(f"model.nodes: node {n.name!r}: {field} = {ref!r} names no node")
        for field, kinds in (
            ("given", ("categorical", "chain", "input")),
            ("input", ("gaussian", "input")),
            ("groups", ("input",)),
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
            if isinstance(s, str) and s != "D" and by_name[s].kind not in ("categorical", "chain", "input"):
                raise CardError(
                    f"model.nodes: node {n.name!r}: shape entry {s!r} must be 'D', a categorical, a chain or "
                    "an index input node"
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
            if ref in by_name and not (by_name[ref].kind in ("categorical", "chain", "input") and _is_size_ref(n, ref))
        ]
    _check_inputs(nodes, by_name)
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


def _check_inputs(nodes: list[NodeConfig], by_name: dict[str, NodeConfig]) -> None:
    """Input nodes: covariates (dim) enter as an observed node's input, group indices (size) as
    given, groups or a shape entry; a grouped gaussian draws from globals; a CardError naming the
    node and field otherwise."""
    for n in nodes:
        if n.kind == "input" and (n.dim is None) == (n.size is None):
            raise CardError(
                f"model.nodes: node {n.name!r} (kind 'input') needs dim (covariates) or size (a group "
                "index's levels), exactly one of them"
            )
        if n.groups is not None and n.kind != "gaussian":
            raise CardError(f"model.nodes: node {n.name!r}: groups is for gaussian nodes (a random effect)")
        for field in REFERENCES:
            for ref in named(n, field):
                target = by_name[ref]
                if target.kind != "input":
                    continue
                role = "index" if target.size is not None else "covariates"
                fits = field in ("given", "groups") if role == "index" else field == "input"
                if not fits:
                    use = "given, groups or a shape entry" if role == "index" else "input (weight or decoder)"
                    raise CardError(
                        f"model.nodes: node {n.name!r}: {field} = {ref!r} is an input node of {role}, which "
                        f"enters as {use}"
                    )
        for s in n.shape:
            if isinstance(s, str) and s != "D" and by_name[s].kind == "input" and by_name[s].size is None:
                raise CardError(
                    f"model.nodes: node {n.name!r}: shape entry {s!r} is an input of covariates; only an index "
                    "input (size) lends its size"
                )
        if n.groups is not None:
            if n.given is not None:
                raise CardError(
                    f"model.nodes: node {n.name!r}: a grouped node (groups = {n.groups!r}) is drawn per group, "
                    "not per row; it cannot be given a row's categorical"
                )
            for field in ("mean", "std"):
                for ref in named(n, field):
                    if by_name[ref].kind not in ("global", "param"):
                        raise CardError(
                            f"model.nodes: node {n.name!r}: {field} = {ref!r} must be a global or param node "
                            f"(a grouped node is drawn once per group, outside the rows)"
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
        if n.kind == "input" or isinstance(n.mean, list):
            raise CardError(f"model.nodes: node {n.name!r}: a chain graph takes no input nodes and a mean of one node")
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
    return ref in node.shape and ref not in [r for f in REFERENCES for r in named(node, f)]


def _require(n: NodeConfig) -> None:
    need = {"categorical": ("size", "probs"), "gaussian": ("dim",), "chain": ("size", "initial", "transition")}.get(
        n.kind, ()
    )
    for field in need:
        if getattr(n, field) is None:
            raise CardError(f"model.nodes: node {n.name!r} (kind {n.kind!r}) needs {field}")
    if n.kind == "observed":
        if (n.weight is not None or n.decoder) and n.input is None:
            raise CardError(
                f"model.nodes: node {n.name!r}: weight or decoder needs input (a gaussian node or covariates input)"
            )
        if n.decoder and n.weight is not None:
            raise CardError(f"model.nodes: node {n.name!r}: give weight or decoder, not both")
        if n.mean is None and n.weight is None and not n.decoder:
            raise CardError(f"model.nodes: node {n.name!r}: needs a mean, a weight or a decoder")
        if n.distribution == "normal" and n.std is None and not n.decoder:
            raise CardError(f"model.nodes: node {n.name!r}: distribution 'normal' needs std (a node or a number)")
    if n.kind == "global" and n.plate is not None and not n.shape:
        raise CardError(f"model.nodes: node {n.name!r}: plate {n.plate!r} needs a shape whose first entry is its size")
