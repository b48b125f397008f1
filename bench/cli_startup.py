"""Start-up of the command line against ``python -c "import torch"``, each in a fresh process,
alternating the sides.

    PYTHONPATH=. python bench/cli_startup.py [--repeats 5]

Commands: ``pplvm --version``, ``pplvm --help``, each subcommand's ``--help`` (these import
neither torch nor Pyro) and ``pplvm list`` (which imports the registries, so torch and Pyro).
Each runs as ``python -m pplvm.cli ARGS`` (what the ``pplvm`` console script runs), its output
discarded. For every command and repetition, the command and ``import torch`` run back to back,
in turn first and second, so that a change in the machine's load falls on both sides alike.
Prints the median wall time of each over ``--repeats`` and the ratio command / ``import torch``
(below 1: the command answers before torch could even be imported); the goal for everything but
``list`` is under 0.5 s on an idle machine. ``python -c pass`` is printed as the floor.
OMP_WAIT_POLICY=PASSIVE, as in the other benchmarks.

Measured 2026-12-07 on branch cli-lazy (a shared 2-core machine at load ~2.6, 5 repeats,
``python -c pass`` 46 ms): ``--version`` 96 ms (ratio 0.04), ``--help`` 58 ms (0.02), each
subcommand's ``--help`` 45-69 ms (0.03), against ``import torch`` 1.4-2.7 s; ``list`` 2.0 s
(1.27). Before, on main (3 runs by hand, same load): ``--version`` ~3.8 s, ``--help`` ~3.1 s,
``list`` ~3.4 s, ``import torch`` ~2.1 s.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def wall(argv: list[str]) -> float:
    """Seconds from start to exit of ``argv``, which must succeed."""
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def commands() -> list[list[str]]:
    """The argument lists timed: --version, --help, every subcommand's --help, list."""
    from pplvm.cli import build_parser  # imports no torch

    subcommands = re.search(r"\{([^}]*)\}", build_parser().format_usage()).group(1).split(",")
    return [["--version"], ["--help"], *([name, "--help"] for name in subcommands), ["list"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch_argv = [sys.executable, "-c", "import torch"]
    floor = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(args.repeats))
    print(f"python -c pass: {floor * 1e3:.0f} ms (median of {args.repeats})", flush=True)
    width = max(len(" ".join(c)) for c in commands()) + len("pplvm ")
    for argv in commands():
        cli_argv = [sys.executable, "-m", "pplvm.cli", *argv]
        cli, torch = [], []
        for r in range(args.repeats):
            pair = [(cli, cli_argv), (torch, torch_argv)]
            for times, run in pair if r % 2 == 0 else pair[::-1]:
                times.append(wall(run))
        c, t = statistics.median(cli), statistics.median(torch)
        print(
            f"{'pplvm ' + ' '.join(argv):{width}s}  {c * 1e3:6.0f} ms  import torch {t * 1e3:6.0f} ms  "
            f"ratio {c / t:5.2f}{'' if c < 0.5 or argv == ['list'] else '  (over 0.5 s)'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
