"""Progress reporting for anything that can take more than a few seconds.

One choice, made here only: a live ``tqdm`` bar when stderr is a terminal, else a plain line
at most every ``every`` seconds (a CI log or a redirected file gets a handful of lines, not
one per update). Usage, in a command or the trainer loop::

    from pplvm._progress import progress

    with progress(total=len(chunks), desc="evaluate", enabled=show) as bar:
        for chunk in chunks:
            ...
            bar.update(1)
            bar.set_postfix({"loss": f"{loss:.4g}"})   # optional

``enabled=False`` gives an object with the same methods that does nothing. Both kinds write
to stderr, so ``--json`` output on stdout stays a single object.

Library loops deep inside a computation (importance sampling, exports) call ``progress(...)``
without ``enabled``: they then report only inside ``with reporting():``, which the CLI enters
around every command, so Python users see nothing unless they ask::

    with pplvm._progress.reporting():
        run.evaluate(x)
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from typing import Any, Iterator, TextIO

#: seconds between two lines when stderr is not a terminal
EVERY = 5.0
_REPORTING: contextvars.ContextVar[bool] = contextvars.ContextVar("pplvm_progress", default=False)


@contextlib.contextmanager
def reporting(on: bool = True) -> Iterator[None]:
    """Within the block, ``progress(...)`` calls that do not say ``enabled`` report (or not)."""
    token = _REPORTING.set(on)
    try:
        yield
    finally:
        _REPORTING.reset(token)


class _LineHandler(logging.Handler):
    """``pplvm: message`` on stderr, above a live bar rather than through it."""

    def emit(self, record: logging.LogRecord) -> None:
        line = f"pplvm: {self.format(record)}"
        try:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        except ImportError:  # pragma: no cover (tqdm is a dependency)
            print(line, file=sys.stderr)


@contextlib.contextmanager
def log_lines(on: bool = True) -> Iterator[None]:
    """Within the block, pplvm's log lines from INFO up (what the training step runs, the first
    epoch's time) go to stderr, one line each; the CLI enters it around every command."""
    if not on:
        yield
        return
    logger, handler = logging.getLogger("pplvm"), _LineHandler(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def progress(
    total: int | None,
    desc: str,
    enabled: bool | None = None,
    *,
    initial: int = 0,
    unit: str = "it",
    every: float | None = None,
    stream: TextIO | None = None,
):
    """A progress reporter with ``update(n)``, ``set_postfix(dict)``, ``close()`` and the
    context-manager protocol: a ``tqdm`` bar on a terminal, :class:`LineProgress` elsewhere,
    :class:`NoProgress` when ``enabled`` is false (``None``: as :func:`reporting` says)."""
    if enabled is None:
        enabled = _REPORTING.get()
    if not enabled:
        return NoProgress()
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, initial=initial, unit=unit, file=stream, leave=False, dynamic_ncols=True)
    return LineProgress(total, desc, initial=initial, unit=unit, every=EVERY if every is None else every, stream=stream)


class NoProgress:
    """Reports nothing."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, values: dict[str, Any] | None = None, **kw) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def duration(seconds: float) -> str:
    """``42s``, ``7m05s``, ``3h12m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress(NoProgress):
    """One line ``desc: n/total unit (p%), elapsed, ETA left, postfix`` at most every ``every``
    seconds (the time left at the mean rate so far, while some is left), and a last line on
    :meth:`close` if anything was reported since the previous one (nothing at all for a task
    that ends before the first ``every`` seconds)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        initial: int = 0,
        unit: str = "it",
        every: float = EVERY,
        stream: TextIO | None = None,
    ):
        self.total, self.desc, self.n, self.unit, self.every = total, desc, initial, unit, every
        self.stream = sys.stderr if stream is None else stream
        self.start = self.last = time.monotonic()
        self.first = initial  # the rate counts only this run's updates (a resumed count starts above 0)
        self.postfix = ""
        self.printed = False  # whether any line has been written
        self.pending = False  # updates since the last line

    def update(self, n: int = 1) -> None:
        self.n += n
        self.pending = True
        now = time.monotonic()
        if now - self.last >= self.every:
            self._line(now)

    def set_postfix(self, values: dict[str, Any] | None = None, **kw) -> None:
        items = {**(values or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if self.printed and self.pending:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        elapsed, done_here = now - self.start, self.n - self.first
        eta = ""
        if self.total and done_here > 0 and self.n < self.total:
            eta = f", ETA {duration(elapsed * (self.total - self.n) / done_here)}"
        print(f"{self.desc}: {done} {self.unit}{pct}, {elapsed:.0f}s{eta}{post}", file=self.stream, flush=True)
        self.last, self.printed, self.pending = now, True, False
