"""Progress output: a live bar on a terminal, a few plain lines in a log, nothing when off."""

from __future__ import annotations

import io

from pplvm._progress import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_per_interval_and_a_final_line():
    log = io.StringIO()
    with progress(1000, "training", unit="steps", file=log, interval=3600) as bar:
        for _ in range(1000):
            bar.update(1)
        bar.set_postfix({"train_loss": "1.5"})
    lines = log.getvalue().splitlines()
    assert len(lines) == 1  # 1000 updates inside one interval: only the closing line
    assert lines[0].startswith("training: 1000/1000 steps (100%)") and "train_loss=1.5" in lines[0]

    log = io.StringIO()
    bar = progress(4, "evaluate", file=log, interval=0.0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    bar.close()  # closing twice writes nothing more
    assert len(log.getvalue().splitlines()) == 5  # every update past the interval, then the end
    assert "~0 s left" in log.getvalue().splitlines()[-2]


def test_a_terminal_gets_a_live_bar_and_disabled_prints_nothing():
    tty = _Tty()
    bar = progress(10, "training", file=tty)
    bar.update(10)
    bar.close()
    assert "\r" in tty.getvalue()  # redrawn in place
    quiet = io.StringIO()
    bar = progress(10, "training", enabled=False, file=quiet)
    bar.update(10)
    bar.close()
    assert quiet.getvalue() == ""
