"""A run's mirrors in experiment trackers (:mod:`pplvm.tracking`): made from the card's
``[logging]`` section around a fit or a resume, fed by the trainer, closed once the run
directory is complete. What they show beside the records, at each held-out evaluation, is asked
of the family's declarations: a grid of samples where it makes images (``image_shape``, through
the same figures a fit writes), and the table of its likelihood's terms where it decomposes it
(``likelihood_terms``: a diffusion's bound).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pyro.util
import tomli_w
import torch

from .._modes import evaluating
from ..config import card_to_dict
from ..evaluation.plots import term_rows
from ..tracking import TRACKERS, Tracking
from ..training import distributed
from ..training.devices import to_device

if TYPE_CHECKING:
    from ..run import Run

#: held-out rows the table of likelihood terms is computed on at each evaluation
TERM_ROWS = 256


@contextlib.contextmanager
def mirrored(run: Run, run_dir: Path, history: Sequence[dict[str, Any]] = ()) -> Iterator[Tracking]:
    """The trackers ``run``'s card names, started on the run directory ``run_dir`` (whose files
    are now written to ``run.run_dir``; ``history``: a resume's records so far), for the block's
    fit and artifacts; closed after it, as finished, failed or killed. Empty on a process other
    than rank 0 (under torchrun) and when the card names none."""
    mirror = tracking(run, run_dir)
    mirror.start(run.run_dir, history)
    status = "FAILED"
    try:
        yield mirror
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mirror.finish(run.run_dir, status)


def tracking(run: Run, run_dir: Path) -> Tracking:
    """The (not yet started) trackers of ``run``'s ``logging.loggers``; a missing package is
    named in one line now, before anything trains."""
    section = run.card.logging
    if not section.loggers or not distributed.is_main():
        return Tracking()
    card = card_to_dict(run.card)
    return Tracking(
        [TRACKERS[name](getattr(section, name)) for name in dict.fromkeys(section.loggers)],
        run_dir=Path(run_dir),
        name=run.card.name,
        card=card,
        card_text=tomli_w.dumps(card),
        views=lambda: views(run),
    )


def views(run: Run) -> tuple[dict[str, Any], dict[str, str]]:
    """``(figures, texts)`` shown at a held-out evaluation: the family's figures where it makes
    images (its grid of samples), and its likelihood's terms on the first :data:`TERM_ROWS`
    held-out rows. Drawn with every RNG stream set back after, so the fit is the same with
    trackers as without."""
    state = pyro.util.get_rng_state()
    try:
        with torch.no_grad(), evaluating(run.model, run.guide):
            return _figures(run), _texts(run)
    finally:
        pyro.util.set_rng_state(state)


def _figures(run: Run) -> dict[str, Any]:
    if run.model.image_shape is None:
        return {}
    return run._host_model().plots(run._training_data(), run.params())


def _texts(run: Run) -> dict[str, str]:
    valid = run.dataset.valid
    if valid is None:
        return {}
    rows = valid[: min(TERM_ROWS, len(valid))]
    terms = run.model.likelihood_terms(to_device(rows, run.device), run._params())
    if terms is None:
        return {}
    means = {k: float(v.mean()) for k, v in terms.items()}
    lines = [
        f"Terms of -log p(x) on the first {len(rows)} held-out rows (total {sum(means.values()):.6g} nats / datum)",
        "",
        "| term | nats / datum | bits / dim |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {nats:.6g} | {bits:.6g} |" for name, nats, bits in term_rows(means, run.model.dim)),
    ]
    return {"likelihood_terms": "\n".join(lines)}
