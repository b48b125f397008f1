"""``pplvm`` command line: parses arguments into a card or run directory and calls the library.

Every error pplvm raises on purpose is printed as one line (``pplvm: error: ...``) with exit
status 2; ``--json`` output is a single JSON object with a ``schema`` key.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__, _signals
from ._progress import progress, reporting
from .errors import PplvmError

EXIT_USAGE = 2


def _emit(obj: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(obj, sort_keys=True) if as_json else text)


def cmd_fit(args) -> int:
    from .config import load_card
    from .run import Run
    from .training import distributed

    card = load_card(args.card, args.set)
    out = Path(args.out) if args.out else Path("runs") / card.name
    if args.quiet:
        from .config import card_from_dict, card_to_dict

        card = card_from_dict(card_to_dict(card), {"training.progress": False})
    run = Run.from_card(card)
    try:
        run.fit(out, overwrite=args.overwrite)
    except KeyboardInterrupt as err:
        return _interrupted(err, out)
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return 0
    last = run.history[-1]
    result = {
        "schema": "pplvm.fit/1",
        "run_dir": str(out),
        "epochs": last["epoch"],
        "train_loss": last["train_loss"],
        "stopped": run.trainer.state.stopped or None,
        "valid_log_likelihood": last.get("valid_log_likelihood"),
    }
    _emit(result, args.json, run.summary_text(max_size=32) if not args.quiet else f"wrote {out}")
    return 0


def _interrupted(err: KeyboardInterrupt, run_dir: Path | None = None) -> int:
    """One line on stderr for an interrupted command; the exit status is 128 + the signal."""
    signum = getattr(err, "signum", signal.SIGINT)
    what = "terminated" if signum == signal.SIGTERM else "interrupted"
    if run_dir is not None and (run_dir / "checkpoint.pt").is_file():
        hint = f"; the last checkpoint is kept in {run_dir} — continue with: pplvm resume {run_dir}"
    elif run_dir is not None:
        hint = f"; no checkpoint was written to {run_dir} yet"
    else:
        hint = ""
    from .training import distributed

    if distributed.is_main():  # under torchrun (where the launcher stops the others with SIGTERM), rank 0 reports
        print(f"pplvm: {what}{hint}", file=sys.stderr)
    return 128 + int(signum)


def _eval_data(run, args):
    from .data import read_matrix
    from .run import card_dataset

    if args.data:
        if Path(args.data).suffix.lower() == ".npz":  # sequences: the file's test, else valid, else train
            from .data import read_sequences

            splits = read_sequences(args.data, "--data")
            part = next(s for s in ("test", "valid", "train") if s in splits)
            return splits[part], f"{args.data} ({part})"
        x, _ = read_matrix(args.data, name="--data")
        return x, args.data
    dataset = card_dataset(run.card)
    for split in [args.split] if args.split else ["test", "valid", "train"]:
        x = getattr(dataset, split)
        if x is not None:
            return dataset.transform.inverse(x), split
    raise PplvmError(f"--split {args.split}: the card's data has no such split (fraction 0)")


def cmd_evaluate(args) -> int:
    from .run import LIKELIHOOD_WORDS, Run

    run = Run.load(args.run_dir)
    x, where = _eval_data(run, args)
    m = run.evaluate(x)
    result = {
        "schema": "pplvm.evaluate/1",
        "run_dir": str(args.run_dir),
        "family": run.card.model.family,
        "data": where,
        **m,
    }
    kind = LIKELIHOOD_WORDS[m["likelihood"]]
    text = (
        f"{run.card.name} on {where}: n = {m['n']}, log-likelihood per datum = "
        f"{m['log_likelihood_mean']:.6g} ({kind}), total = {m['log_likelihood_sum']:.6g}"
    )
    if "terms" in m:  # the family decomposes its (bound on the) log-likelihood: table and plot
        from .evaluation.plots import likelihood_terms_plot, save_figure, term_rows

        plot = Path(args.plot)
        save_figure(likelihood_terms_plot(m["terms"], run.model.dim), plot)
        result["plot"] = str(plot)
        rows = [
            f"  {name:<16} {nats:>12.5g} {bits:>12.5g}" for name, nats, bits in term_rows(m["terms"], run.model.dim)
        ]
        text += (
            f"\nbits/dim: {m['bits_per_dim']:.5g} ({kind} of the log-likelihood)\n"
            f"  {'term':<16} {'nats/datum':>12} {'bits/dim':>12}\n" + "\n".join(rows) + f"\nwrote {plot}"
        )
    _emit(result, args.json, text)
    return 0


def cmd_sample(args) -> int:
    from .config import check_seed
    from .run import Run, save_samples

    if args.n < 1:
        raise PplvmError(f"-n: expected a positive number of samples, got {args.n}")
    check_seed(args.seed, "--seed")
    run = Run.load(args.run_dir)
    x = run.sample(args.n, seed=args.seed)
    save_samples(x, args.out)
    shape = " x ".join(map(str, x.shape[1:]))  # (D,) rows or (T, D) sequences
    text = f"wrote {args.n} samples of shape {shape} to {args.out}"
    if args.grid:
        from .evaluation.plots import image_grid, save_figure

        shape_hw = run.model.image_shape
        if shape_hw is None:
            raise PplvmError(
                f"--grid: model.family = {run.card.model.family!r} on this data has no image shape "
                "(set model.image_shape)"
            )
        save_figure(image_grid(x[:256].clamp(0, 1), shape_hw, title=f"{run.card.name}: samples"), args.grid)
        text += f"; grid of {min(args.n, 256)} in {args.grid}"
    _emit(
        {
            "schema": "pplvm.sample/1",
            "out": str(args.out),
            "n": args.n,
            "dim": x.shape[-1],
            "shape": list(x.shape),
            "grid": args.grid,
        },
        args.json,
        text,
    )
    return 0


def cmd_two_sample(args) -> int:
    from .evaluation.two_sample import two_sample
    from .run import Run

    if args.permutations < 1:
        raise PplvmError(f"--permutations: expected a positive number, got {args.permutations}")
    if args.n is not None and args.n < 2:
        raise PplvmError(f"-n: expected at least 2 samples, got {args.n}")
    run = Run.load(args.run_dir)
    x, where = _eval_data(run, args)
    results = two_sample(run, x, n=args.n, permutations=args.permutations, seed=args.seed)
    result = {
        "schema": "pplvm.two_sample/1",
        "run_dir": str(args.run_dir),
        "family": run.card.model.family,
        "data": where,
        **{k: r.to_dict() for k, r in results.items()},
    }
    mmd, c2st = results["mmd"], results["classifier"]
    text = (
        f"{run.card.name} samples vs {where} ({mmd.n_y} rows, {mmd.n_x} samples):\n"
        f"  MMD² = {mmd.statistic:.4g} (bandwidth {mmd.detail['bandwidth']:.3g}), permutation p = {mmd.p_value:.3g}\n"
        f"  classifier two-sample test: held-out accuracy = {c2st.statistic:.3f} (chance 0.5), p = {c2st.p_value:.3g}"
    )
    _emit(result, args.json, text)
    return 0


def cmd_summary(args) -> int:
    path = Path(args.run_dir) / "summary.txt"
    if path.is_file() and not args.json:
        print(path.read_text(), end="")
        return 0
    from .run import Run

    run = Run.load(args.run_dir)
    if args.json:
        stored = Path(args.run_dir) / "inference_data.nc"
        if stored.is_file():  # the draws the run wrote, not a recomputation from its data
            from .evaluation.arviz import read_inference_data

            run.idata = read_inference_data(stored)
        print(json.dumps({"schema": "pplvm.summary/1", "run_dir": str(args.run_dir), **run.summary()}, sort_keys=True))
        return 0
    print(run.summary_text(), end="")
    return 0


def cmd_resume(args) -> int:
    from .run import Run
    from .training import distributed

    try:
        run = Run.resume(args.run_dir, epochs=args.epochs)
    except KeyboardInterrupt as err:
        return _interrupted(err, Path(args.run_dir))
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return 0
    last = run.history[-1]
    _emit(
        {
            "schema": "pplvm.fit/1",
            "run_dir": str(args.run_dir),
            "epochs": last["epoch"],
            "train_loss": last["train_loss"],
            "stopped": run.trainer.state.stopped or None,
            "valid_log_likelihood": last.get("valid_log_likelihood"),
        },
        args.json,
        run.summary_text(max_size=32),
    )
    return 0


def cmd_compare(args) -> int:
    from .evaluation.plots import save_figure
    from .workflows.compare import compare_runs, comparison_plot

    comparison = compare_runs(args.runs)
    plot = Path(args.plot)
    save_figure(comparison_plot(comparison), plot)
    result = {
        "schema": "pplvm.compare/1",
        "criterion": "psis-loo",
        "n": comparison.n,
        "runs": comparison.rows(),
        "warnings": comparison.warnings,
        "plot": str(plot),
    }
    _emit(result, args.json, comparison.text() + f"\nwrote {plot}")
    return 0


def cmd_sbc(args) -> int:
    from .config import check_seed, load_card
    from .evaluation.plots import save_figure
    from .workflows.sbc import rank_histogram_plot, run_sbc

    card = load_card(args.card, args.set)
    check_seed(args.seed, "--seed")
    names = args.statistic or None

    with progress(args.sims, "sbc", unit="simulation") as bar:
        result = run_sbc(
            card,
            args.sims,
            rows=args.rows,
            num_draws=args.draws,
            seed=args.seed,
            callback=lambda done, total: bar.update(1),
        )
    test = result.uniformity(names, bins=args.bins, seed=args.seed)
    plot = Path(args.plot) if args.plot else Path(f"sbc_{card.name}.png")
    save_figure(rank_histogram_plot(result, names, bins=test["bins"]), plot)
    out = {
        "schema": "pplvm.sbc/1",
        "family": result.family,
        "sims": args.sims,
        "rows": args.rows,
        "draws": result.num_draws,
        "statistics": result.statistics,
        "bins": test["bins"],
        "p_value": test["p_value"],
        "tests": test["tests"],
        "plot": str(plot),
    }
    lines = [
        f"SBC of {card.name} ({result.family}, guide {card.guide.kind}): {args.sims} simulations of "
        f"{args.rows} rows, {result.num_draws} posterior draws each; ranks of the {result.statistics} statistics",
        f"{'statistic':<24} {'chi2 p':>8} {'KS p':>8}",
    ]
    lines += [
        f"{t['statistic'] + '[' + str(t['index']) + ']':<24} {t['chi2_p']:>8.3f} {t['ks_p']:>8.3f}"
        for t in test["tests"]
    ]
    verdict = "no evidence of miscalibration" if test["p_value"] > 0.01 else "MISCALIBRATED"
    lines += [
        f"uniformity p-value (Bonferroni over {2 * len(test['tests'])} tests): {test['p_value']:.3g} — {verdict}",
        f"wrote {plot}",
    ]
    _emit(out, args.json, "\n".join(lines))
    return 0


def cmd_render(args) -> int:
    from .config import load_card
    from .evaluation.plots import save_figure
    from .run import Run

    card = load_card(args.card, args.set)
    out = Path(args.out)
    save_figure(Run.from_card(card).model_graph(), out)
    _emit({"schema": "pplvm.render/1", "card": str(args.card), "plot": str(out)}, args.json, f"wrote {out}")
    return 0


def cmd_list(args) -> int:
    from .data import SOURCES
    from .families import FAMILIES
    from .guides import GUIDES
    from .objectives import OBJECTIVES, admissions

    families = {}
    for name, cls in FAMILIES.items():
        guides, objectives = admissions(name, cls)
        families[name] = {
            "guides": guides,
            "objectives": objectives,
            "likelihood": cls.likelihood,
            "doc": (cls.__doc__ or "").strip().split("\n")[0],
        }
    out = {
        "schema": "pplvm.list/1",
        "families": families,
        "guides": {name: cls.summary() for name, cls in GUIDES.in_order()},
        "objectives": {name: cls.summary() for name, cls in OBJECTIVES.in_order()},
        "datasets": {name: src.doc for name, src in SOURCES.items()},
    }
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    w = max(len(n) for section in ("families", "guides", "objectives", "datasets") for n in out[section]) + 2
    lines = ["families:"]
    lines += [
        f"  {n:{w}s}guides: {', '.join(f['guides']) or 'as its card declares'}; "
        f"objectives: {', '.join(f['objectives']) or 'as its card declares'}"
        for n, f in families.items()
    ]
    for section in ("guides", "objectives", "datasets"):
        lines.append(f"{section}:")
        lines += [f"  {n:{w}s}{d}" for n, d in out[section].items()]
    print("\n".join(lines))
    return 0


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
        "--overwrite", action="store_true", help="replace the run already in --out (its files are deleted first)"
    )

    sp = add("evaluate", cmd_evaluate, "log-likelihood of a fitted run on data")
    sp.add_argument("run_dir")
    sp.add_argument(
        "--data", help=".npy or .csv file (N, D), or an .npz of sequences; default: the card's test, else valid split"
    )
    sp.add_argument("--split", choices=["train", "valid", "test"], help="which split of the card's data")
    sp.add_argument(
        "--plot",
        default="likelihood_terms.png",
        help="plot of the per-term decomposition, for families that have one (default: ./likelihood_terms.png)",
    )

    sp = add("sample", cmd_sample, "draw new data from a fitted run")
    sp.add_argument("run_dir")
    sp.add_argument("-n", type=int, required=True, help="number of samples")
    sp.add_argument("--out", required=True, help="output file, .npy or .csv")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--grid", metavar="PNG", help="also draw (up to 256 of) the samples as an image grid")

    sp = add(
        "two-sample",
        cmd_two_sample,
        "two-sample tests (MMD, classifier) of a run's samples against data; any family, likelihood or not",
    )
    sp.add_argument("run_dir")
    sp.add_argument("--data", help=".npy or .csv file (N, D); default: the card's test, else valid split")
    sp.add_argument("--split", choices=["train", "valid", "test"], help="which split of the card's data")
    sp.add_argument("-n", type=int, help="samples to draw (default: as many as data rows)")
    sp.add_argument("--permutations", type=int, default=500, help="MMD permutations (default 500)")
    sp.add_argument("--seed", type=int, default=0)

    sp = add("summary", cmd_summary, "print a run's posterior summary")
    sp.add_argument("run_dir")

    sp = add("resume", cmd_resume, "continue an interrupted run from its last checkpoint")
    sp.add_argument("run_dir")
    sp.add_argument("--epochs", type=int, help="new total epoch budget")

    sp = add("compare", cmd_compare, "rank fitted runs by PSIS-LOO (arviz) on the same data")
    sp.add_argument("runs", nargs="+", metavar="RUN", help="run directories (at least two)")
    sp.add_argument("--plot", default="compare.png", help="comparison plot file (default: ./compare.png)")

    sp = add("sbc", cmd_sbc, "simulation-based calibration of a card's posterior (Talts et al. 2018)")
    sp.add_argument("card", help="model card (TOML); model.dim must be set")
    sp.add_argument("--sims", type=int, required=True, help="number of simulated data sets")
    sp.add_argument("--rows", type=int, default=100, help="rows per simulated data set")
    sp.add_argument("--draws", type=int, default=99, help="posterior draws per fit (ranks are 0..draws)")
    sp.add_argument("--bins", type=int, help="rank bins of the chi-square test (default: >= 5 sims per bin)")
    sp.add_argument("--seed", type=int, default=0)
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

    sp = add("render", cmd_render, "draw a card's model as a graph: sites, plates, observed vs latent, dependencies")
    sp.add_argument("card", help="model card (TOML)")
    sp.add_argument("--out", default="model.png", help="image file (default: ./model.png)")
    sp.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a card value (repeatable)"
    )

    add("list", cmd_list, "list families, guides, objectives and datasets")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Ctrl-C and SIGTERM stop the command with one line (see pplvm._signals)
        with _signals.handling(), reporting(not getattr(args, "quiet", False)):  # progress on stderr
            return args.fn(args)
    except PplvmError as err:  # one line, whatever the message holds
        print(f"pplvm: error: {'; '.join(s.strip() for s in str(err).splitlines() if s.strip())}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a disk or file fault no check caught: still one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"pplvm: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        return _interrupted(err)
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group fit / resume joined (nothing otherwise)."""
    from .training import distributed

    distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
