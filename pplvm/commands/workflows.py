"""``pplvm compare``, ``pplvm sbc`` and ``pplvm sweep``: workflows over several runs, simulated fits or trials."""

from __future__ import annotations

import sys
from pathlib import Path

from .._progress import progress
from . import _emit, _interrupted, _png


def cmd_compare(args) -> int:
    plot = _png(args.plot, "--plot")
    from ..evaluation.plots import save_figure
    from ..workflows.compare import compare_runs, comparison_plot

    comparison = compare_runs(args.runs)
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
    from ..config import check_seed, load_card

    card = load_card(args.card, args.set)  # before torch, as in fit
    check_seed(args.seed, "--seed")
    _png(args.plot, "--plot")
    from ..evaluation.plots import save_figure
    from ..workflows.sbc import rank_histogram_plot, run_sbc

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


def cmd_sweep(args) -> int:
    from ..workflows.sweep import STUDY_DB, run_sweep

    shown = not args.quiet

    def say(line: str) -> None:
        print(f"pplvm: {line}", file=sys.stderr, flush=True)

    try:
        sweep = run_sweep(
            args.card,
            args.param,
            trials=args.trials,
            out=args.out,
            overrides=args.set,
            seed=args.seed,
            pruner=args.pruner,
            prune_startup=args.prune_startup,
            prune_warmup=args.prune_warmup,
            heartbeat=args.heartbeat,
            bars=shown and sys.stderr.isatty(),
            report=say if shown else None,
        )
    except KeyboardInterrupt as err:
        hint = f"the study is kept in {Path(args.out) / STUDY_DB}; the same command resumes it (this trial runs again)"
        return _interrupted(err, hint=hint)
    _emit(sweep.to_json(), args.json, sweep.text())
    return 0
