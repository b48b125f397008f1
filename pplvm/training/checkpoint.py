"""Checkpoints: plain state_dicts written atomically, read back with ``weights_only=True``.

Nothing here pickles code: a checkpoint holds tensors, numbers, strings, lists and dicts only,
so loading one never runs code from the file. Writes go to a temporary file in the same
folder, are flushed to disk, and then replace the old file in one ``os.replace``: a crash
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import RunDirError

FORMAT = "pplvm-checkpoint/1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"no checkpoint at {str(path)!r}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say so, never unpickle it
        # torch's message suggests weights_only=False, i.e. running the file's code: never pass that on
        why = (
            "it holds Python objects other than tensors, numbers and strings, which pplvm never unpickles"
            if "weights_only" in str(err)
            else str(err).strip().splitlines()[0]
            if str(err).strip()
            else type(err).__name__
        )
        raise RunDirError(f"{str(path)!r} is not a readable pplvm checkpoint ({why})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunDirError(f"{str(path)!r} is not a pplvm checkpoint (format {FORMAT})")
    return state
