"""``pplvm export``: write a fitted run's ``inference_data.nc`` from its checkpoint (a run fitted
with ``evaluation.export = false``, or one whose export is to be written again)."""

from __future__ import annotations

from pathlib import Path

from . import _emit


def cmd_export(args) -> int:
    from .. import rundir
    from ..run import Run

    run = Run.load(args.run_dir)
    with rundir.locked(Path(args.run_dir)):  # not while a resume of the run writes it
        path = run.write_inference_data()
    chains, draws = run._export_shape()
    _emit(
        {"schema": "pplvm.export/1", "run_dir": str(args.run_dir), "file": str(path), "chains": chains, "draws": draws},
        args.json,
        f"wrote {path} ({chains} chain(s) x {draws} draw(s) of the guide)",
    )
    return 0
