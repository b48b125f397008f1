"""The progress helper: a tqdm bar on a terminal, sparse lines elsewhere, nothing when off."""

from __future__ import annotations

import io

from pplvm import _progress
from pplvm._progress import LineProgress, NoProgress, progress, reporting


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_not_a_terminal_prints_a_line_at_most_every_few_seconds(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_progress.time, "monotonic", clock)
    out = io.StringIO()
    bar = progress(1000, "evaluate", True, stream=out, every=5.0)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):  # 1000 updates over 20 s of (fake) time
        clock.t += 0.02
        bar.update(1)
        bar.set_postfix({"loss": "1.5"})
    bar.close()
    lines = out.getvalue().splitlines()
    # one line per 5 s (at 5, 10, 15, 20 s); the close adds nothing since the last line was at 1000
    assert len(lines) == 4
    assert lines[-1] == "evaluate: 1000/1000 it (100%), 20s, loss=1.5"


def test_short_task_prints_nothing_and_close_flushes_the_last_count(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(_progress.time, "monotonic", clock)
    out = io.StringIO()
    with progress(10, "sample", True, stream=out) as bar:
        bar.update(10)
    assert out.getvalue() == ""  # done before the first 5 s: silent
    with progress(10, "sample", True, stream=out) as bar:
        clock.t += 6
        bar.update(3)  # a line at 3/10
        bar.update(7)  # too soon for another
    # the time left at the mean rate so far (3 in 6 s: 7 more in 14 s), none once done
    assert out.getvalue().splitlines() == ["sample: 3/10 it (30%), 6s, ETA 14s", "sample: 10/10 it (100%), 6s"]


def test_time_left_counts_only_this_runs_progress_and_reads_in_minutes_and_hours(monkeypatch):
    """A resumed count (initial 500 of 1000) whose first 100 take 50 s has 400 left: 200 s."""
    clock = Clock()
    monkeypatch.setattr(_progress.time, "monotonic", clock)
    out = io.StringIO()
    bar = progress(1000, "fit", True, initial=500, stream=out, every=5.0)
    clock.t = 50.0
    bar.update(100)
    assert out.getvalue() == "fit: 600/1000 it (60%), 50s, ETA 3m20s\n"
    assert [_progress.duration(s) for s in (0.4, 59.6, 61, 3599, 3600 + 125)] == [
        "0s",
        "1m00s",
        "1m01s",
        "59m59s",
        "1h02m",
    ]


def test_terminal_gets_tqdm_and_disabled_gets_nothing():
    from tqdm import tqdm

    bar = progress(3, "x", True, stream=Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    out = io.StringIO()
    off = progress(3, "x", enabled=False, stream=out)
    assert isinstance(off, NoProgress) and not isinstance(off, LineProgress)
    off.update(3)
    off.close()
    assert out.getvalue() == ""


def test_library_loops_report_only_inside_reporting():
    out = io.StringIO()
    assert isinstance(progress(3, "x", stream=out), NoProgress)  # Python users: silent by default
    with reporting():
        assert isinstance(progress(3, "x", stream=out), LineProgress)
        with reporting(False):  # e.g. fit --quiet inside the CLI's reporting()
            assert not isinstance(progress(3, "x", stream=out), LineProgress)
    assert not isinstance(progress(3, "x", stream=out), LineProgress)


def test_long_commands_report_progress_on_stderr(monkeypatch, capsys, tmp_path):
    """`pplvm evaluate` of a VAE (importance sampling) and the export after `fit` print
    progress lines on a non-terminal stderr (every 0 s here instead of 5), and nothing on
    stdout, so --json stays one object."""
    import json

    from cases import CASES

    import pplvm
    from pplvm.cli import main

    monkeypatch.setattr(_progress, "EVERY", 0.0)
    card = next(c.values[0] for c in CASES if c.id == "vae-digits-dynamic-mlp")
    card = {
        **card,
        "evaluation": {**card["evaluation"], "samples": 8},
        "training": {**card["training"], "epochs": 1, "progress": True},
    }
    pplvm.fit(card, out=tmp_path / "run")
    err = capsys.readouterr().err
    assert "posterior predictive: 10/10 draw (100%)" in err  # the export after fit (5 draws x 2 chains)
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    out, err = capsys.readouterr()
    json.loads(out)
    n = json.loads(out)["n"]
    lines = err.splitlines()
    assert any(f"importance sampling: {8 * n}/{8 * n} draw (100%)" in line for line in lines)
    assert any(line.startswith("log-likelihood: ") and "pass (100%)" in line for line in lines)  # the passes around it
