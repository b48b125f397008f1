"""``pplvm`` command line: parses arguments into a card or run directory and calls the library
(the subcommands themselves are in :mod:`pplvm.commands`).

Every error pplvm raises on purpose is printed as one line (``pplvm: error: ...``) with exit
status 2; ``--json`` output is a single JSON object with a ``schema`` key.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from . import __version__, _signals
from ._progress import log_lines, reporting
from .commands import _interrupted
from .commands.describe import cmd_list, cmd_render, cmd_summary
from .commands.export import cmd_export
from .commands.query import cmd_evaluate, cmd_sample, cmd_two_sample
from .commands.train import cmd_fit, cmd_resume
from .commands.workflows import cmd_compare, cmd_sbc, cmd_sweep
from .errors import PplvmError

EXIT_USAGE = 2


def add_logger(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--logger",
        action="append",
        default=[],
        metavar="NAME",
        help="mirror the run to an experiment tracker: tensorboard | mlflow (repeatable; added to the card's "
        "logging.loggers; pip install 'pplvm[tracking]')",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pplvm", description="Latent-variable generative models on Pyro.")
    p.add_argument("--version", action="version", version=f"pplvm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true", help="print one machine-readable JSON object")
        return sp

    sp = add("fit", cmd_fit, "fit a model card and write a run directory")
    sp.add_argument("card", help="model card (TOML)")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a card value, e.g. --set training.lr=0.01 (repeatable)",
    )
    sp.add_argument("--out", help="run directory (default: runs/<card name>)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    sp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (once the new fit's first epoch is done; a failed fit leaves it)",
    )
    add_logger(sp)

    sp = add("evaluate", cmd_evaluate, "log-likelihood of a fitted run on data")
    sp.add_argument("run_dir", help="a run directory written by pplvm fit")
    sp.add_argument(
        "--data",
        help=".npy or .csv file (N, D), an .npz of named arrays (x, y, inputs) or of sequences (train, ...); "
        "default: the card's test, else valid split",
    )
    sp.add_argument("--split", choices=["train", "valid", "test"], help="which split of the card's data")
    sp.add_argument(
        "--samples",
        type=int,
        help="importance samples per datum of an estimated log-likelihood (default: the card's evaluation.samples)",
    )
    sp.add_argument(
        "--plot",
        metavar="PNG",
        help="also plot the per-term decomposition, for families that have one (e.g. a diffusion's bound)",
    )
    sp.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="KIND",
        help="also a further likelihood the family declares, shown beside the main one on the same rows "
        "(diffusion: ode, the probability-flow ODE: many network calls and a backward pass per datum)",
    )
    sp.add_argument(
        "--extra-rows",
        type=int,
        default=100,
        metavar="N",
        help="rows (the first N) the --extra likelihoods are computed on (default 100)",
    )
    sp.add_argument("--quiet", action="store_true", help="no progress bar or lines")
    _weights(sp)

    sp = add("sample", cmd_sample, "draw new data from a fitted run")
    sp.add_argument("run_dir", help="a run directory written by pplvm fit")
    sp.add_argument("-n", type=int, required=True, help="number of samples")
    sp.add_argument("--out", required=True, help="output file, .npy or .csv")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.add_argument("--grid", metavar="PNG", help="also draw (up to 256 of) the samples as an image grid")
    sp.add_argument("--quiet", action="store_true", help="no progress bar or lines")
    _weights(sp)

    sp = add(
        "two-sample",
        cmd_two_sample,
        "two-sample tests (MMD, classifier) of a run's samples against data; any family, likelihood or not",
    )
    sp.add_argument("run_dir", help="a run directory written by pplvm fit")
    sp.add_argument(
        "--data", help=".npy or .csv file (N, D), or an .npz of named arrays; default: the card's test, else valid"
    )
    sp.add_argument("--split", choices=["train", "valid", "test"], help="which split of the card's data")
    sp.add_argument("-n", type=int, help="samples to draw (default: as many as data rows)")
    sp.add_argument("--permutations", type=int, default=500, help="MMD permutations (default 500)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    sp = add("summary", cmd_summary, "print a run's posterior summary")
    sp.add_argument("run_dir", help="a run directory written by pplvm fit")

    sp = add(
        "export",
        cmd_export,
        "write a run's inference_data.nc from its checkpoint (after a fit with evaluation.export = false)",
    )
    sp.add_argument("run_dir", help="a run directory written by pplvm fit")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("resume", cmd_resume, "continue an interrupted run from its last checkpoint")
    sp.add_argument("run_dir", help="a run directory written by pplvm fit")
    sp.add_argument("--epochs", type=int, help="new total epoch budget")
    sp.add_argument("--max-steps", type=int, help="new total step budget (training.max_steps; steps done count)")
    sp.add_argument("--max-minutes", type=float, help="wall-time budget of this resume (training.max_minutes)")
    add_logger(sp)

    sp = add("compare", cmd_compare, "rank fitted runs by PSIS-LOO (arviz) on the same data")
    sp.add_argument("runs", nargs="+", metavar="RUN", help="run directories (at least two)")
    sp.add_argument("--plot", default="compare.png", help="comparison plot file (default: ./compare.png)")

    sp = add("sbc", cmd_sbc, "simulation-based calibration of a card's posterior (Talts et al. 2018)")
    sp.add_argument("card", help="model card (TOML); model.dim must be set")
    sp.add_argument("--sims", type=int, required=True, help="number of simulated data sets")
    sp.add_argument("--rows", type=int, default=100, help="rows per simulated data set")
    sp.add_argument("--draws", type=int, default=99, help="posterior draws per fit (ranks are 0..draws)")
    sp.add_argument("--bins", type=int, help="rank bins of the chi-square test (default: >= 5 sims per bin)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.add_argument(
        "--statistic",
        action="append",
        metavar="NAME",
        help="test only this statistic (repeatable), e.g. locs; default: all",
    )
    sp.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a card value (repeatable)"
    )
    sp.add_argument("--plot", help="rank histogram file (default: ./sbc_<card name>.png)")

    _sweep(
        add(
            "sweep",
            cmd_sweep,
            "tune a card's hyperparameters with Optuna: a run directory per trial, pruned, resumable",
        )
    )

    sp = add("render", cmd_render, "draw a card's model as a graph: sites, plates, observed vs latent, dependencies")
    sp.add_argument("card", help="model card (TOML)")
    sp.add_argument("--out", default="model.png", help="image file (default: ./model.png)")
    sp.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a card value (repeatable)"
    )

    add("list", cmd_list, "list families, guides, objectives and datasets")
    return p


def _sweep(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("card", help="model card (TOML); the study is named after its name")
    sp.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY.PATH=KIND(ARGS)",
        help="a card key to tune and its range (repeatable): uniform(a,b), loguniform(a,b), int(a,b), logint(a,b) "
        "or choice(v1,v2,...), e.g. --param training.lr=loguniform(1e-4,1e-2)",
    )
    sp.add_argument(
        "--trials", type=int, required=True, help="trials to end (completed, pruned or failed), resumed ones included"
    )
    sp.add_argument(
        "--out",
        required=True,
        help="the sweep's folder: study.db, trial-NNNN/ run directories, best.toml, study.png; "
        "the same --out resumes the sweep, and processes started with it share the study",
    )
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="fix a card value in every trial, e.g. --set training.epochs=50 (repeatable)",
    )
    sp.add_argument(
        "--seed", type=int, default=0, help="the sampler's (TPE) seed; a resume draws from seed + the starts before it"
    )
    sp.add_argument(
        "--pruner",
        default="median",
        help="median (Optuna's MedianPruner: stop a trial whose held-out value is worse than the median of "
        "earlier trials' at the same epoch; default) or none",
    )
    sp.add_argument(
        "--prune-startup", type=int, default=2, metavar="N", help="trials that end before any is pruned (default 2)"
    )
    sp.add_argument(
        "--prune-warmup", type=int, default=0, metavar="E", help="epochs of each trial never pruned (default 0)"
    )
    sp.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="SECONDS",
        help="how often a running trial says it is alive; one silent for twice this (its sweep was killed) "
        "is run again (default 30)",
    )
    sp.add_argument("--quiet", action="store_true", help="no line per trial, no progress bars")


def _weights(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--weights",
        choices=["raw", "ema"],
        help="the parameters themselves, or their moving average (training.ema); default: ema where the run has it",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Ctrl-C and SIGTERM stop the command with one line (see pplvm._signals)
        shown = not getattr(args, "quiet", False)
        with _signals.handling(), reporting(shown), log_lines(shown and os.environ.get("RANK", "0") == "0"):
            return args.fn(args)  # progress and log lines on stderr
    except PplvmError as err:  # one line, whatever the message holds
        _error("; ".join(s.strip() for s in str(err).splitlines() if s.strip()))
        return EXIT_USAGE
    except OSError as err:  # a disk or file fault no check caught: still one line
        where = f"{err.filename}: " if err.filename else ""
        _error(f"{where}{err.strerror or err}")
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        return _interrupted(err)
    finally:
        _leave_process_group()


def _error(message: str) -> None:
    """``pplvm: error: message`` on stderr; under torchrun, from rank 0 alone (every process
    meets the same bad input; the line is said once)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"pplvm: error: {message}", file=sys.stderr)


def _leave_process_group() -> None:
    """Under torchrun, leave the process group fit / resume joined (nothing otherwise: a command
    that never imported :mod:`pplvm.training.distributed` joined none, and imports no torch here)."""
    distributed = sys.modules.get("pplvm.training.distributed")
    if distributed is not None:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
