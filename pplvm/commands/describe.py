"""``pplvm summary``, ``pplvm render`` and ``pplvm list``: what a run found, what a card
draws, and what pplvm offers."""

from __future__ import annotations

import json
from pathlib import Path

from . import _emit, _png


def cmd_summary(args) -> int:
    path = Path(args.run_dir) / "summary.txt"
    if path.is_file() and not args.json:
        from ..training.checkpoint import load_checkpoint

        load_checkpoint(Path(args.run_dir) / "checkpoint.pt")  # the run the text describes is whole
        print(path.read_text(), end="")
        return 0
    from ..run import Run

    run = Run.load(args.run_dir)
    if args.json:
        stored = Path(args.run_dir) / "inference_data.nc"
        if stored.is_file():  # the draws the run wrote, not a recomputation from its data
            from ..evaluation.arviz import read_inference_data

            run.idata = read_inference_data(stored)
        print(json.dumps({"schema": "pplvm.summary/1", "run_dir": str(args.run_dir), **run.summary()}, sort_keys=True))
        return 0
    print(run.summary_text(), end="")
    return 0


def cmd_render(args) -> int:
    from ..config import load_card

    card = load_card(args.card, args.set)  # before torch, as in fit
    out = _png(args.out, "--out")
    from ..evaluation.plots import save_figure
    from ..run import Run

    save_figure(Run.from_card(card).model_graph(), out)
    _emit({"schema": "pplvm.render/1", "card": str(args.card), "plot": str(out)}, args.json, f"wrote {out}")
    return 0


def cmd_list(args) -> int:
    from ..data import SOURCES
    from ..families import FAMILIES
    from ..guides import GUIDES
    from ..objectives import OBJECTIVES, admissions

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
