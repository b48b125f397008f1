"""``pplvm fit`` and ``pplvm resume``: train a card into a run directory, or continue one."""

from __future__ import annotations

from pathlib import Path

from . import _emit, _interrupted


def cmd_fit(args) -> int:
    from ..config import load_card

    card = load_card(args.card, args.set)  # a missing file or bad TOML is reported before torch is imported
    from ..run import Run
    from ..training import distributed

    out = Path(args.out) if args.out else Path("runs") / card.name
    if args.quiet:
        from ..config import card_from_dict, card_to_dict

        card = card_from_dict(card_to_dict(card), {"training.progress": False})
    if args.logger:
        from ..facade.train import with_loggers

        card = with_loggers(card, args.logger)
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


def cmd_resume(args) -> int:
    from ..run import Run
    from ..training import distributed

    try:
        run = Run.resume(
            args.run_dir,
            epochs=args.epochs,
            max_steps=args.max_steps,
            max_minutes=args.max_minutes,
            loggers=args.logger,
        )
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
