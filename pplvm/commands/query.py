"""``pplvm evaluate``, ``pplvm sample`` and ``pplvm two-sample``: questions to a fitted run."""

from __future__ import annotations

from pathlib import Path

from ..errors import PplvmError
from . import _emit, _png


def _eval_data(run, args):
    from ..data import read_matrix
    from ..run import card_dataset

    if args.data:
        if Path(args.data).suffix.lower() == ".npz":
            from ..data import read_arrays, read_sequences
            from ..data.arrays import npz_keys

            if "train" not in npz_keys(args.data):  # named arrays: x beside its inputs (labels, covariates)
                return read_arrays(args.data, _data_key(run), "--data"), args.data
            splits = read_sequences(args.data, "--data")  # sequences: the file's test, else valid, else train
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


def _load(args):
    """The run ``args.run_dir`` with the weights ``--weights`` asks for (default: its EMA where it has one)."""
    from ..errors import ArgumentError
    from ..run import Run

    try:
        return Run.load(args.run_dir, weights=args.weights)
    except ArgumentError as err:  # said as the flag
        raise PplvmError(str(err).replace("weights = 'ema'", "--weights ema", 1)) from None


def _data_key(run) -> str:
    """The key a run's data came under in a file of named arrays (``data.key``, else ``x``)."""
    return getattr(run.card.data, "key", "x")


def cmd_evaluate(args) -> int:
    from ..config import check_count
    from ..run import LIKELIHOOD_WORDS

    if args.samples is not None:  # refused before anything loads
        check_count(args.samples, "--samples")
    plot = _png(args.plot, "--plot")
    run = _load(args)
    x, where = _eval_data(run, args)
    if args.extra:
        check_count(args.extra_rows, "--extra-rows")
    m = run.evaluate(x, samples=args.samples, extra=tuple(dict.fromkeys(args.extra)), extra_rows=args.extra_rows)
    result = {
        "schema": "pplvm.evaluate/1",
        "run_dir": str(args.run_dir),
        "family": run.card.model.family,
        "data": where,
        "weights": run.weights,
        **m,
    }
    kind = LIKELIHOOD_WORDS[m["likelihood"]]
    text = (
        f"{run.card.name} on {where}: n = {m['n']}, log-likelihood per datum = "
        f"{m['log_likelihood_mean']:.6g} ({kind}), total = {m['log_likelihood_sum']:.6g}"
        f"{', EMA weights' if run.weights == 'ema' else ''}"
    )
    if "steps" in m:  # sequences: per step (frame) too
        text += f", per step = {m['log_likelihood_per_step']:.6g} over {m['steps']} steps"
    if "terms" in m:  # the family decomposes its (bound on the) log-likelihood: table, plot if asked
        from ..evaluation.plots import likelihood_terms_plot, save_figure, term_rows

        rows = [
            f"  {name:<16} {nats:>12.5g} {bits:>12.5g}" for name, nats, bits in term_rows(m["terms"], run.model.dim)
        ]
        text += (
            f"\nbits/dim: {m['bits_per_dim']:.5g} ({kind} of the log-likelihood)\n"
            f"  {'term':<16} {'nats/datum':>12} {'bits/dim':>12}\n" + "\n".join(rows)
        )
        if plot is not None:
            save_figure(likelihood_terms_plot(m["terms"], run.model.dim), plot)
            result["plot"] = str(plot)
            text += f"\nwrote {plot}"
    if "extra" in m:
        text += "\n" + _beside(kind, m["extra"])
    _emit(result, args.json, text)
    return 0


def _beside(kind: str, extra: dict) -> str:
    """The table of the main likelihood beside each extra one, on the same rows, ± standard errors."""
    lines = [f"  {'':<10} {'rows':>6} {'nats/datum':>22} {'bits/dim':>20}  what"]
    for name, e in extra.items():
        cost = f"{e['description']}; {e['cpu_seconds']:.3g} CPU s"
        for label, p, what in (("main", "main_", kind), (name, "", cost)):
            lines.append(
                f"  {label:<10} {e['n']:>6} {e[p + 'log_likelihood_mean']:>12.5g} ± {e[p + 'stderr']:<7.2g}"
                f" {e[p + 'bits_per_dim']:>10.5g} ± {e[p + 'bits_per_dim_stderr']:<7.2g}  {what}"
            )
    return f"{kind} vs {', '.join(extra)}, on the same rows (± standard error over them):\n" + "\n".join(lines)


def cmd_sample(args) -> int:
    from ..config import check_seed
    from ..run import save_samples

    if args.n < 1:
        raise PplvmError(f"-n: expected a positive number of samples, got {args.n}")
    check_seed(args.seed, "--seed")
    grid = _png(args.grid, "--grid")
    run = _load(args)
    shape_hw = run.model.image_shape
    if grid is not None and shape_hw is None:  # before anything is drawn or written
        raise PplvmError(
            f"--grid: model.family = {run.card.model.family!r} on this data has no image shape (set model.image_shape)"
        )
    x = run.sample(args.n, seed=args.seed)
    save_samples(x, args.out)
    shape = " x ".join(map(str, x.shape[1:]))  # (D,) rows or (T, D) sequences
    text = f"wrote {args.n} samples of shape {shape} to {args.out}"
    if grid is not None:
        from ..evaluation.plots import image_grid, save_figure

        save_figure(image_grid(x[:256].clamp(0, 1), shape_hw, title=f"{run.card.name}: samples"), grid)
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
    from ..evaluation.two_sample import two_sample
    from ..run import Run

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
