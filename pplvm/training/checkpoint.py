"""Checkpoints: plain state_dicts written atomically, read back with ``weights_only=True``.

Nothing here pickles code: a checkpoint holds tensors, numbers, strings, lists and dicts only,
so loading one never runs code from the file. Writes go through
:func:`pplvm.rundir.write_atomic` (a temporary file in the same folder, flushed to disk, then
one ``os.replace``): a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import RunDirError
from ..rundir import write_atomic

FORMAT = "pplvm-checkpoint/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    write_atomic(path, buf.getvalue())


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
