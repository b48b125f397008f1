"""Objects a card names by import path, ``'package.module:name'``: a user's model, guide,
decoder or encoder. One place resolves such a path and builds a fresh object from it, for
every part of pplvm that accepts one (:mod:`pplvm.families.pyro_model`, :mod:`pplvm.decoders`)."""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
import sysconfig
import traceback
from typing import Any, Callable, Iterator

import torch

from .errors import CardError, PplvmError

#: what a card's import path must look like
TARGET_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


def resolve(target: str, key: str) -> Any:
    """The object named by ``'package.module:name'`` (a module in the current directory is
    found too), or a CardError naming ``key``."""
    module_name, _, attr = target.partition(":")
    head = f"{key} = {target!r}"
    try:
        with _cwd_on_path():
            module = importlib.import_module(module_name)
    except SyntaxError as err:  # the module's own source (a SyntaxError names its file and line)
        where = f"{_shown(err.filename)}:{err.lineno}" if err.filename else f"line {err.lineno}"
        raise CardError(f"{head}: module {module_name!r} has a syntax error at {where}: {err.msg}") from None
    except ImportError as err:
        raise CardError(f"{head}: cannot import module {module_name!r} ({first_line(err)}){at(err)}") from None
    except SystemExit as err:  # sys.exit() at import would end pplvm silently, with status 0
        raise CardError(f"{head}: importing module {module_name!r} called sys.exit({err.code!r}){at(err)}") from None
    except Exception as err:  # whatever the module's top level raises: one line, where it raised
        raise CardError(
            f"{head}: importing module {module_name!r} raised {type(err).__name__}: {first_line(err)}{at(err)}"
        ) from None
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


@contextlib.contextmanager
def one_line(what: str, error: type[Exception] = CardError) -> Iterator[None]:
    """Run a user's code (a model, a guide): what it raises becomes one ``error`` line, ``what``
    then :func:`described` (pplvm's own errors, already one line, and Ctrl-C pass as they are);
    the cause stays chained for Python."""
    try:
        yield
    except PplvmError:
        raise
    except (Exception, SystemExit) as err:  # SystemExit: it would end pplvm silently
        raise error(f"{what}: {described(err)}") from err


def described(err: BaseException) -> str:
    """A user's exception in one line: its type and first line (a ``sys.exit``: its code), and
    where the user's code raised it (:func:`at`)."""
    if isinstance(err, SystemExit):
        return f"it called sys.exit({err.code!r}){at(err)}"
    return f"{type(err).__name__}: {first_line(err)}{at(err)}"


def at(err: BaseException) -> str:
    """`` (at FILE:LINE)``: where the user's code raised ``err`` — the innermost frame outside
    pplvm, Python's standard library and installed packages, followed through the exceptions
    it was raised from — or ``""`` when none is."""
    library = [
        os.path.dirname(__file__),
        *{sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")},
    ]
    library = [os.path.realpath(p) + os.sep for p in library if p]
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in reversed(chain):  # the innermost exception first: the user's frame is in its traceback
        frames = [
            f
            for f in traceback.extract_tb(e.__traceback__)
            if not f.filename.startswith("<") and not os.path.realpath(f.filename).startswith(tuple(library))
        ]
        if frames:
            return f" (at {_shown(frames[-1].filename)}:{frames[-1].lineno})"
    return ""


def _shown(path: str) -> str:
    """A file as the user named it: relative to the working directory when it lies under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def first_line(err: BaseException) -> str:
    """An exception's message without the trace shapes Pyro appends to it."""
    return str(err).strip().split("\n")[0]
