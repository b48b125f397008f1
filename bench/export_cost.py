"""The export after a fit against the fit itself, for a point-estimate run (issue 22).

    PYTHONPATH=. python bench/export_cost.py [--epochs 100] [--sides before,draws,after]

A 16-state Bernoulli HMM with the MAP guide (objective enum) on polyphonic-music-like data: 229
binary sequences of 88 notes, 50-150 steps, drawn from a random sticky 16-state Bernoulli HMM
(``data.source = "synthetic_hmm"``; the real sets are not offline). Each side fits the card
(no run directory: training alone), then writes the run directory's artifacts
(``Run.write_artifacts``: inference_data.nc, figures, summary.txt) and prints CPU seconds (one
thread) of the fit and of the export, their ratio (goal: export / fit <= 0.10), and the
export's parts (arviz export: draws, log-likelihood, replicates; netCDF; figures + summary):

- ``before``: the code before this change: ``evaluation.chains x evaluation.draws`` (4 x 100)
  draws of the point estimate, all identical, and the Bernoulli emission scored elementwise
  (``Bernoulli(p).to_event(1).log_prob``, ``(S, N, T, K, D)`` terms);
- ``draws``: 4 x 100 draws, the emission as one GEMM (:class:`BernoulliFeatures`);
- ``after``: one draw of one chain (the guide declares a point estimate), the GEMM.

Measured 2026-12-07 on branch export (1 thread, shared 2-core machine at load ~5, 100 epochs):
before: fit 112.87 s, export 302.63 s, export / fit 2.681 (400 draws; arviz export 300.35 s);
draws: fit 16.74 s, export 27.23 s, 1.627; after: fit 17.73 s, export 1.69 s, 0.095 (1 draw;
arviz export 0.81 s, of which ~0.7 s the one posterior-predictive replicate; netCDF 0.24 s;
figures + summary 0.64 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path


def card(epochs: int) -> dict:
    return {
        "name": "hmm_music_map",
        "model": {"family": "hmm", "states": 16, "emission": "bernoulli", "sample_length": 100},
        "guide": {"kind": "map"},
        "objective": {"name": "enum"},
        "data": {
            "source": "synthetic_hmm",
            "n": 229,
            "min_length": 50,
            "max_length": 150,
            "states": 16,
            "dim": 88,
            "emission": "bernoulli",
            "valid_fraction": 0.0,
        },
        "training": {"epochs": epochs, "lr": 0.05, "seed": 0, "progress": False},
        "evaluation": {"draws": 100, "chains": 4},
    }


@contextlib.contextmanager
def side(name: str):
    """The code paths of one side (see the module docstring), restored afterwards."""
    import pyro.distributions as dist

    from pplvm.families.hmm import HiddenMarkovModel
    from pplvm.run import Run

    saved = Run._export_shape, HiddenMarkovModel.emission
    if name in ("before", "draws"):  # every draw of every chain, as before
        Run._export_shape = lambda run: (run.card.evaluation.chains, run.card.evaluation.draws)
    if name == "before":  # the elementwise emission

        def emission(self, params):
            return dist.Bernoulli(probs=params["emission_probs"]).to_event(1)

        HiddenMarkovModel.emission = emission
    try:
        yield
    finally:
        Run._export_shape, HiddenMarkovModel.emission = saved


def measure(name: str, epochs: int) -> dict[str, float]:
    import pplvm
    from pplvm.facade import artifacts, query

    parts = {"arviz export": 0.0, "netCDF": 0.0}

    def timed(fn, part):
        def wrapper(*args, **kwargs):
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[part] += time.process_time() - t

        return wrapper

    with side(name):
        t = time.process_time()
        run = pplvm.Run.from_card(card(epochs)).fit(None)
        fit = time.process_time() - t
        with tempfile.TemporaryDirectory() as d:
            run.run_dir = Path(d)
            saved = pplvm.Run.to_arviz, pplvm.Run.write_inference_data
            pplvm.Run.to_arviz = timed(query.to_arviz, "arviz export")
            pplvm.Run.write_inference_data = timed(artifacts.write_inference_data, "netCDF")
            try:
                t = time.process_time()
                run.write_artifacts()
                export = time.process_time() - t
            finally:
                pplvm.Run.to_arviz, pplvm.Run.write_inference_data = saved
            shape = run._export_shape()
    return {"fit": fit, "export": export, "draws": shape[0] * shape[1], **parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--sides", default="before,draws,after", help="comma-separated: before, draws, after")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from pplvm.evaluation.arviz import arviz

    arviz()  # imported once, before any side (a CLI fit pays it once too)
    print(f"16-state Bernoulli HMM, MAP guide, 229 sequences x 88 notes, {args.epochs} epochs; CPU seconds, 1 thread")
    for name in args.sides.split(","):
        r = measure(name, args.epochs)
        netcdf = r["netCDF"]
        rest = r["export"] - r["arviz export"] - netcdf
        print(
            f"{name:>6}: fit {r['fit']:8.2f} s  export {r['export']:8.2f} s  export / fit {r['export'] / r['fit']:6.3f}"
            f"  ({r['draws']} draws; arviz export {r['arviz export']:.2f} s, netCDF {netcdf:.2f} s, "
            f"figures + summary {rest:.2f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
