"""Opening an ``.npz`` archive of named arrays, for every reader of one (sequences, named arrays)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError


def open_npz(path: str | Path, name: str):
    """The archive at ``path`` as ``(file handle, NpzFile)``, or a DataError naming ``name``."""
    path = Path(path)
    where = f"{name} {str(path)!r}"
    if not path.is_file():
        raise DataError(f"{where}: no such file")
    if path.suffix.lower() != ".npz":
        raise DataError(f"{where}: expected an .npz file, got {path.suffix or 'no suffix'!r}")
    fh = open(path, "rb")  # ours to close: numpy leaks its own handle when the archive is damaged
    try:
        archive = np.load(fh, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not named arrays")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        fh.close()
        raise DataError(f"{where}: not a readable .npz archive ({err})") from None
    return fh, archive
