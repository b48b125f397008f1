"""A user's decoder or encoder, named in an amortized family's card by import path.

The contract (``model.decoder_target`` / ``model.encoder_target``, ``'package.module:name'``)::

    decoder(z)  or  decoder(z, side)    z (*S, B, L), side (B, C)
        -> a torch/Pyro Distribution with batch shape (*S, B) and event shape (D,)
    encoder(x)  or  encoder(x, side)    x (B, D), side (B, C)
        -> (loc, scale), each (B, L), scale > 0

``side`` is passed only by a conditional family (``cvae``). The target is a ``torch.nn.Module``
class (a ``PyroModule`` for Pyro features), built as ``Target(latent_dim=L, dim=D[, side_dim=C],
**options)`` with ``options`` from ``model.decoder_options`` / ``model.encoder_options``; a
module instance (copied) or a parameter-free function works too. Its parameters are trained
with the family's. pplvm's recipes (``model.init``, ``model.output_bias``,
``model.encoder_scale``) are pplvm's networks'; a user's module starts as it builds itself (a
decoder that defines ``start_at_mean(x)``, ``x`` the ``(N, D)`` training data, is called with it
when ``output_bias = "data_mean"``).

A *Bayesian* decoder gives some weights priors as ``PyroSample`` attributes
(``self.weight = PyroSample(dist.Normal(0, 1).expand([L, D]).to_event(2))``): they are global
latent sites of the model, named by their attribute path (``decoder.weight``), drawn once per
model call outside the data plate and guided by the family's guide over global latents. Under
vectorised particles such a weight arrives with batch dims ``(*S, 1)`` in front of its own
shape, so write the decoder to broadcast (e.g. ``(z.unsqueeze(-2) @ W).squeeze(-2)``). Draw
latent weights only through ``PyroSample`` attributes, never by ``pyro.sample`` inside
``forward``.
"""

from __future__ import annotations

import copy
from typing import Any

import pyro
import torch
from pyro import poutine

from .._targets import first_line, instantiate, resolve
from ..errors import CardError, DataError

_PROBE = (2, 3)  # (*S, B) of the placeholder latent a decoder is checked on


def build(
    target: str, options: dict[str, Any], key: str, what: str, *, latent_dim: int, dim: int, side_dim: int = 0
) -> torch.nn.Module:
    """The user's decoder or encoder (``what``) named by ``target``, built per the contract
    and checked on placeholder inputs; a CardError naming ``key`` otherwise."""
    supplied = {"latent_dim": latent_dim, "dim": dim, **({"side_dim": side_dim} if side_dim else {})}
    net = instantiate(resolve(target, key), options, key.replace("_target", "_options"), what, supplied)
    check = check_decoder if what == "decoder" else check_encoder
    # checked on a copy: a PyroModule that has run cannot become a submodule of the family
    check(copy.deepcopy(net) if isinstance(net, torch.nn.Module) else net, key, latent_dim, dim, side_dim)
    return net


def call(net, inputs: torch.Tensor, side: torch.Tensor | None):
    """``net(inputs)``, or ``net(inputs, side)`` with side information."""
    return net(inputs) if side is None else net(inputs, side)


def _probe(key: str, fn, *args):
    try:
        with torch.no_grad(), pyro.validation_enabled(False), poutine.block(), poutine.seed(rng_seed=0):
            return fn(*args)
    except Exception as err:  # the user's code: report what it raised, in one line
        raise CardError(
            f"{key}: calling it on placeholder inputs failed: {type(err).__name__}: {first_line(err)}"
        ) from None


def check_decoder(net, key: str, latent_dim: int, dim: int, side_dim: int = 0) -> torch.distributions.Support:
    """Raise a CardError naming ``key`` unless ``net`` maps ``z`` ``(2, 3, L)`` to a distribution
    with batch ``(2, 3)`` and event ``(D,)``; returns its support."""
    z = torch.zeros(*_PROBE, latent_dim)
    side = torch.zeros(_PROBE[-1], side_dim) if side_dim else None
    out = _probe(key, call, net, z, side)
    if not isinstance(out, torch.distributions.Distribution):
        raise CardError(f"{key}: expected the decoder to return a torch/Pyro Distribution, got {type(out).__name__}")
    if tuple(out.batch_shape) != _PROBE or tuple(out.event_shape) != (dim,):
        raise CardError(
            f"{key}: for z of shape {tuple(z.shape)} expected a distribution with batch shape {_PROBE} "
            f"and event shape ({dim},), got batch {tuple(out.batch_shape)} and event "
            f"{tuple(out.event_shape)} (use .to_event(1) over the data's columns)"
        )
    return out.support


def check_encoder(net, key: str, latent_dim: int, dim: int, side_dim: int = 0) -> None:
    """Raise a CardError naming ``key`` unless ``net`` maps ``x`` ``(3, D)`` to ``(loc, scale)``,
    each ``(3, L)``."""
    rows = _PROBE[-1]
    out = _probe(key, call, net, torch.zeros(rows, dim), torch.zeros(rows, side_dim) if side_dim else None)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise CardError(f"{key}: expected the encoder to return (loc, scale), two tensors, got {type(out).__name__}")
    shapes = [tuple(t.shape) for t in out]
    if any(s != (rows, latent_dim) for s in shapes):
        raise CardError(
            f"{key}: for x of shape ({rows}, {dim}) expected loc and scale of shape ({rows}, {latent_dim}) "
            f"each, got {shapes[0]} and {shapes[1]}"
        )


def latent_weights(owner: torch.nn.Module, decoder_call) -> tuple[dict[str, tuple[int, ...]], Any]:
    """The latent sites (name -> shape) a decoder draws when ``decoder_call()`` runs it, each
    checked to be a ``PyroSample`` attribute reachable from ``owner`` by its site name (so the
    family can draw it outside the data plate with :func:`draw`), and the support of the
    distribution it returns."""
    trace = _probe("model.decoder_target", lambda: poutine.trace(decoder_call).get_trace())
    support = trace.nodes["_RETURN"]["value"].support
    sites = {
        name: tuple(s["value"].shape)
        for name, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"]
    }
    for name in sites:
        if not _is_pyro_sample(owner, name):
            raise CardError(
                f"model.decoder_target: the decoder draws site {name!r} by pyro.sample in its forward; "
                "give latent weights as PyroSample attributes (pplvm draws those once per call, "
                "outside the data plate)"
            )
    return sites, support


def _is_pyro_sample(owner: torch.nn.Module, name: str) -> bool:
    *path, attr = name.split(".")
    module = owner
    for part in path:
        module = module._modules.get(part) if isinstance(module, torch.nn.Module) else None
        if module is None:
            return False
    return attr in module.__dict__.get("_pyro_samples", {})


def draw(owner: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Read each ``PyroSample`` attribute ``names`` of ``owner`` (inside ``owner``'s call, where
    PyroModule caches it): its site is drawn here, and the decoder then reads the same value."""
    for name in names:
        module = owner
        for part in name.split("."):
            module = getattr(module, part)


def check_support(support, x: torch.Tensor, name: str) -> None:
    """A DataError naming ``name`` unless every row of ``x`` ``(N, D)`` lies in ``support`` (the
    user's decoder's distribution's support)."""
    ok = support.check(x)
    while ok.dim() > 1:
        ok = ok.all(-1)
    bad = (~ok).nonzero().flatten()
    if len(bad):
        raise DataError(
            f"{name}: {len(bad)} row(s) (first: row {int(bad[0])}) lie outside the support of the "
            f"distribution model.decoder_target returns ({support}); transform the data (e.g. "
            "data.binarize) or change the decoder"
        )
