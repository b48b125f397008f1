"""The ``pplvm`` subcommands, one module per group; :mod:`pplvm.cli` parses the arguments and
calls them. Each ``cmd_*`` takes the parsed arguments and returns the exit status. Every
module here imports only the standard library at its top (``pplvm --help`` imports neither
torch nor Pyro): what a command needs it imports when it runs.

- :mod:`.train`: ``fit``, ``resume``;
- :mod:`.query`: ``evaluate``, ``sample``, ``two-sample``;
- :mod:`.describe`: ``summary``, ``render``, ``list``;
- :mod:`.export`: ``export``;
- :mod:`.workflows`: ``compare``, ``sbc``, ``sweep``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any


def _png(path: str | Path | None, option: str) -> Path | None:
    """The image file ``option`` names, refused before any work unless it ends in ``.png``
    (plots are written as PNG bytes, which another suffix would misname); None stays None."""
    if path is None:
        return None
    from ..errors import ArgumentError

    if Path(path).suffix.lower() != ".png":
        raise ArgumentError(f"{option} {str(path)!r}: plots are written as PNG; give a file name ending in .png")
    return Path(path)


def _emit(obj: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(obj, sort_keys=True) if as_json else text)


def _interrupted(err: KeyboardInterrupt, run_dir: Path | None = None, hint: str = "") -> int:
    """One line on stderr for an interrupted command (``hint``: how to go on, where no
    ``run_dir`` says it); the exit status is 128 + the signal."""
    signum = getattr(err, "signum", signal.SIGINT)
    what = "terminated" if signum == signal.SIGTERM else "interrupted"
    if run_dir is not None and (run_dir / "checkpoint.pt").is_file():
        hint = f"; the last checkpoint is kept in {run_dir} — continue with: pplvm resume {run_dir}"
    elif run_dir is not None:
        hint = f"; no checkpoint was written to {run_dir} yet"
    elif hint:
        hint = f"; {hint}"
    from ..training import distributed

    if distributed.is_main():  # under torchrun (where the launcher stops the others with SIGTERM), rank 0 reports
        print(f"pplvm: {what}{hint}", file=sys.stderr)
    return 128 + int(signum)
