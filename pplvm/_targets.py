"""Objects a card names by import path, ``'package.module:name'``: a user's model, guide,
decoder or encoder. One place resolves such a path and builds a fresh object from it, for
every part of pplvm that accepts one (:mod:`pplvm.families.pyro_model`, :mod:`pplvm.decoders`)."""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from typing import Any, Callable

import torch

from .errors import CardError

#: what a card's import path must look like
TARGET_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


def resolve(target: str, key: str) -> Any:
    """The object named by ``'package.module:name'`` (a module in the current directory is
    found too), or a CardError naming ``key``."""
    module_name, _, attr = target.partition(":")
    try:
        with _cwd_on_path():
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise CardError(f"{key} = {target!r}: cannot import module {module_name!r} ({err})") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CardError(f"{key} = {target!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


@contextlib.contextmanager
def _cwd_on_path():
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def instantiate(
    obj: Any, options: dict[str, Any], key: str, what: str = "model", supplied: dict[str, Any] | None = None
) -> torch.nn.Module | Callable:
    """A fresh model (guide, decoder, ...) from what a target names: a module class is built
    with ``supplied`` (what pplvm knows, e.g. the latent and data dimensions) and ``options``
    as keyword arguments, a module instance is copied (two runs never share its parameters), a
    function is used as it is. ``key`` names the options' card field in errors."""
    supplied = supplied or {}
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        clash = sorted(set(supplied) & set(options))
        if clash:
            raise CardError(
                f"{key}: {', '.join(clash)} is passed by pplvm ({what} contract); remove it from the options"
            )
        args = ", ".join([*(f"{k}={v!r}" for k, v in supplied.items()), *(["**options"] if options else [])])
        try:
            return obj(**supplied, **options)
        except TypeError as err:
            raise CardError(f"{key}: building {obj.__name__}({args}) failed: {first_line(err)}") from None
    if options:
        raise CardError(f"{key}: options are keyword arguments of a module class; {type(obj).__name__} takes none")
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj)
    if callable(obj) and not isinstance(obj, type):
        return obj
    raise CardError(
        f"{key}: expected a Pyro {what} function, a PyroModule or a PyroModule class, got {type(obj).__name__}"
    )


def first_line(err: BaseException) -> str:
    """An exception's message without the trace shapes Pyro appends to it."""
    return str(err).strip().split("\n")[0]
