"""Progress for long work, as a good command-line tool shows it.

On a terminal: a live tqdm bar (redrawn in place). Anywhere else (a log file, CI, a pipe): a
plain line at most every ``interval`` seconds and one at the end, so a log holds a few lines
per minute rather than one per update. Disabled: nothing at all.

Every long loop in pplvm (training, importance sampling, exports, SBC) reports through
:func:`progress`, so the choice is made in one place.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

#: seconds between two lines when the output is not a terminal
LOG_INTERVAL = 5.0


def progress(total: int | None, desc: str, *, initial: int = 0, unit: str = "it", enabled: bool = True,
             file: TextIO | None = None, interval: float = LOG_INTERVAL):
    """A progress reporter with tqdm's ``update(n)``, ``set_postfix(dict)`` and ``close()``
    (also a context manager), writing to ``file`` (default: standard error)."""
    stream = sys.stderr if file is None else file
    if not enabled:
        return _Silent()
    if _isatty(stream):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, leave=False,
                    dynamic_ncols=True)
    return _LogLines(total, desc, initial=initial, unit=unit, file=stream, interval=interval)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, values: dict[str, Any] | None = None, **kw) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _LogLines(_Silent):
    """``desc: 120/600 steps (20%), 3.1 s elapsed, ~12 s left, loss=1.23`` every ``interval`` s."""

    def __init__(self, total, desc, *, initial, unit, file, interval):
        self.total, self.desc, self.n, self.unit, self.file = total, desc, initial, unit, file
        self.interval, self.start = interval, time.monotonic()
        self.started_at, self.last, self.postfix, self.closed = initial, self.start, {}, False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, values: dict[str, Any] | None = None, **kw) -> None:
        self.postfix = {**(values or {}), **kw}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic(), final=True)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{elapsed:.1f} s")
        done = self.n - self.started_at
        if not final and self.total and done > 0:
            parts.append(f"~{elapsed / done * (self.total - self.n):.0f} s left")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        print(f"{self.desc}: {', '.join(parts)}", file=self.file, flush=True)
