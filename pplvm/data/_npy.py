"""One reader of ``.npy`` files for every data source and command (tables, images, ``--data``).

numpy's own errors describe numpy, not the file: an empty file raises ``EOFError``, a text
file "contains pickled data" and is advised ``allow_pickle=True``. Here each way a file can fail
to be a plain array is one :class:`~pplvm.errors.DataError` line naming the file (by the card key
or option it came from) and what it holds instead. Pickled (object) arrays are never loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

MAGIC = b"\x93NUMPY"
NOT_PLAIN = "not a plain numeric .npy array"


def existing(path: str | Path, field: str) -> Path:
    """``path`` as a :class:`Path`, refused in one line when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{field} {str(path)!r}: no such file")
    return path


def read_npy(path: str | Path, field: str = "data.path") -> np.ndarray:
    """The array in the ``.npy`` file ``path``; ``field`` names it in errors (``data.path``,
    ``--data``)."""
    path = existing(path, field)
    where = f"{field} {str(path)!r}"
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
            fh.seek(0)
            if head[: len(MAGIC)] != MAGIC:
                raise DataError(f"{where}: {NOT_PLAIN} ({_what(head)})")
            try:
                return np.load(fh, allow_pickle=False)
            except ValueError as err:
                if "pickle" in str(err) or "Object arrays" in str(err):
                    raise DataError(
                        f"{where}: {NOT_PLAIN} (it holds Python objects, which are never unpickled; "
                        "save a numeric array)"
                    ) from None
                raise DataError(f"{where}: {NOT_PLAIN} (damaged or truncated: {err})") from None
            except EOFError:
                raise DataError(f"{where}: {NOT_PLAIN} (truncated: the data end before the header says)") from None
    except OSError as err:
        raise DataError(f"{where}: cannot read the file ({err.strerror or err})") from None


def _what(head: bytes) -> str:
    """What a file that lacks the ``.npy`` header looks like, from its first bytes."""
    if not head:
        return "the file is empty: 0 bytes"
    if head.startswith(b"PK"):
        return "it is a zip archive: an .npz holds named arrays"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # (not just a character cut at the 512th byte)
            return "it has no .npy header"
    return "it is a text file; a CSV table is read from a .csv file"
