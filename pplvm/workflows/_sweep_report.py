"""What a sweep (:mod:`.sweep`) gives back: its table of trials, the best card and the study's
figure. Works on plain rows (one dict per trial, :func:`trial_rows`), not on Optuna objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tomli_w
from matplotlib.figure import Figure

from ..config import card_from_dict, card_to_dict
from ._search_space import Param


@dataclass
class Sweep:
    """A sweep's outcome: every trial of its study (one row each, by number), the best complete
    one, and the files written."""

    name: str
    out: Path
    metric: str
    direction: str  #: "maximize" or "minimize"
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_card: Path | None
    plot: Path
    importances: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.trials:
            out[r["state"]] = out.get(r["state"], 0) + 1
        return out

    def text(self) -> str:
        keys = list(dict.fromkeys(k for r in self.trials for k in r["params"]))
        widths = [max(len(k), 10) for k in keys]
        head = f"{'trial':>5} {'state':<9} {self.metric:>22} {'epochs':>6} {'time':>7}  "
        head += " ".join(f"{k:>{w}}" for k, w in zip(keys, widths))
        lines = [f"sweep {self.name!r}: {len(self.trials)} trials ({self._counted()})", head]
        for r in self.trials:
            mark = "*" if self.best is not None and r["trial"] == self.best["trial"] else " "
            value = f"{r['value']:.4f}" if r["value"] is not None else "-"
            took = f"{r['seconds']:.1f}s" if r["seconds"] is not None else "-"
            params = " ".join(f"{_short(r['params'].get(k, '-')):>{w}}" for k, w in zip(keys, widths))
            lines.append(f"{r['trial']:>4}{mark} {r['state']:<9} {value:>22} {r['epochs']:>6} {took:>7}  {params}")
            if r.get("error"):
                lines.append(f"{'':>6} {r['error']}")
        if self.best is not None:
            best = ", ".join(f"{k}={_short(v)}" for k, v in self.best["params"].items())
            lines.append(f"best: trial {self.best['trial']} ({best}): {self.metric} = {self.best['value']:.4f}")
            lines.append(f"wrote {self.best_card} (pplvm fit takes it)")
        else:
            lines.append("no trial completed: no best card")
        if self.importances:
            lines.append("importance (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in self.importances.items()))
        lines.append(f"wrote {self.plot}")
        return "\n".join(lines)

    def _counted(self) -> str:
        return ", ".join(f"{n} {state}" for state, n in sorted(self.counts().items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "pplvm.sweep/1",
            "study": self.name,
            "out": str(self.out),
            "metric": self.metric,
            "direction": self.direction,
            "counts": self.counts(),
            "trials": [{k: v for k, v in r.items() if k != "curve"} for r in self.trials],
            "best": None if self.best is None else {k: v for k, v in self.best.items() if k != "curve"},
            "best_card": None if self.best_card is None else str(self.best_card),
            "importances": self.importances,
            "plot": str(self.plot),
        }


def trial_rows(trials) -> list[dict[str, Any]]:
    """One dict per Optuna trial: number, state (complete, pruned, failed, running, waiting),
    value, params, epochs reported, seconds, run directory, error, and the reported ``curve``."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        took = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "trial": t.number,
                "state": {"COMPLETE": "complete", "FAIL": "failed"}.get(t.state.name, t.state.name.lower()),
                "value": t.value,
                "params": dict(t.params),
                "epochs": max(t.intermediate_values, default=0),
                "seconds": took,
                "run_dir": t.user_attrs.get("run_dir"),
                "error": t.user_attrs.get("error"),
                "curve": dict(sorted(t.intermediate_values.items())),
            }
        )
    return rows


def best_card_text(card, best: dict[str, Any], metric: str, out: Path) -> str:
    """The card with the best trial's values, as TOML, under a comment that says where it came from."""
    tuned = card_from_dict(card_to_dict(card), best["params"])
    head = (
        f"# The best trial ({best['trial']}, {out / best['run_dir']}) of the sweep in {out}: "
        f"{metric} = {best['value']:.6g}\n"
        f"# swept: {', '.join(f'{k} = {_short(v)}' for k, v in best['params'].items())}\n"
    )
    return head + tomli_w.dumps(card_to_dict(tuned))


def study_plot(rows: Sequence[dict[str, Any]], space: Sequence[Param], metric: str, direction: str) -> Figure:
    """The study: each trial's value by number with the best so far (pruned trials at their last
    report, as crosses); every trial's held-out curve by epoch (pruned ones grey); and one slice
    per swept key, value against the key (a log axis for log kinds). The first two are scaled to
    the completed trials' values: a pruned trial far below them is left out of view."""
    fig = Figure(figsize=(4.2 * (2 + len(space)), 3.6), layout="constrained")
    axes = fig.subplots(1, 2 + len(space), squeeze=False)[0]
    better = max if direction == "maximize" else min
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["value"] is not None]
    ax = axes[0]
    if done:
        ax.plot([r["trial"] for r in done], [r["value"] for r in done], "o", color="C0", label="complete")
        best = np.array([r["value"] for r in done], dtype=float)
        best = (np.maximum if better is max else np.minimum).accumulate(best)
        last = max(r["trial"] for r in rows)
        ax.step([r["trial"] for r in done] + [last], [*best, best[-1]], where="post", color="C3", label="best so far")
    if pruned:
        ax.plot([r["trial"] for r in pruned], [r["value"] for r in pruned], "x", color="grey", label="pruned")
    ax.set(xlabel="trial", ylabel=metric, title="Optimisation history")
    if done or pruned:
        ax.legend(fontsize="small")
    ax = axes[1]
    for r in rows:
        if r["curve"]:
            style = {"color": "grey", "alpha": 0.6, "ls": "--"} if r["state"] == "pruned" else {"alpha": 0.9}
            ax.plot(list(r["curve"]), list(r["curve"].values()), marker=".", **style)
    ax.set(xlabel="epoch", ylabel=metric, title="Held-out evaluations (pruned: grey)")
    if len(done) >= 2:  # the completed trials' range: a diverging trial's value does not flatten the rest
        values = [v for r in done for v in [r["value"], *r["curve"].values()]]
        low, high = min(values), max(values)
        pad = 0.25 * (high - low) or 1.0
        for ax in axes[:2]:
            ax.set_ylim(low - pad, high + pad)
    for ax, p in zip(axes[2:], space):
        xs = [r["params"].get(p.key) for r in done]
        if p.kind == "choice":
            labels = [str(v) for v in p.values]
            ax.set_xticks(range(len(labels)), labels)
            xs = [labels.index(str(x)) for x in xs]
        ax.plot(xs, [r["value"] for r in done], "o", color="C0")
        if p.log:
            ax.set_xscale("log")
        ax.set(xlabel=p.key, ylabel=metric, title=f"Slice: {p.key}")
    return fig


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
