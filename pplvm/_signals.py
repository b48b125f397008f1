"""Ctrl-C and SIGTERM during a command: raised as :class:`KeyboardInterrupt` where they land,
and raised again at the next training step if the first one was swallowed.

Python drops an exception raised while it runs a ``__del__`` method or a weakref callback
(it prints "Exception ignored in ..." and carries on), and a signal's exception is raised in
whatever code runs when the signal arrives. Without the second chance, a Ctrl-C landing in such
a callback would leave a long fit running; with it, the loop stops one step later. The handlers
are installed by the command line only (:func:`handling`); the library checks :func:`check`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (temporary files removed,
    the run directory's lock released, the last checkpoint kept)."""

    signum = signal.SIGTERM


_pending: int | None = None  # the signal received and not yet acted on


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum, frame) -> None:
    global _pending
    _pending = signum
    raise _interrupt(signum)


def check() -> None:
    """Raise the interrupt of a signal received under :func:`handling` that nothing acted on."""
    if _pending is not None:
        raise _interrupt(_pending)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise (and are remembered for :func:`check`). A SIGINT the
    process was started ignoring (a background job of a script) stays ignored, as Python itself
    has it. Main thread only (elsewhere Python cannot install handlers: nothing changes)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, _on_signal) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending = None
