"""TensorBoard: a run's records as scalars, its figures as images, the card and tables as text.

Event files go into the run directory itself (or, with ``logging.tensorboard.dir``, into a folder
of that name per run), so ``tensorboard --logdir runs`` shows every run under ``runs/`` side by side. Each record of
``metrics.jsonl`` becomes one scalar per numeric field (``train_loss``, ``valid_loss``,
``valid_log_likelihood``, ``lr``, ``epoch``, ...) at the record's optimiser ``step``. A resume
appends to the same folder; the epochs it repeats (those after its checkpoint) are hidden by
TensorBoard's purge of a restarted session (``SummaryWriter(purge_step=...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ..schema import Section
from .base import RunInfo, Status, Tracker, require


class TensorBoard(Tracker):
    """A ``torch.utils.tensorboard.SummaryWriter`` on the run's event folder."""

    name = "tensorboard"
    needs = "tensorboard"

    class Config(Section):
        dir: str | None = Field(
            None,
            min_length=1,
            description="where the event files go: none = the run directory itself; else this folder, which holds "
            "one folder per run directory, named as it (tensorboard --logdir DIR shows them all)",
        )

    def __init__(self, config: Any):
        super().__init__(config)
        require(type(self))  # a missing package is named before anything trains
        self.writer = None

    def start(self, run: RunInfo) -> bool:
        from torch.utils.tensorboard import SummaryWriter

        where = run.run_dir if self.config.dir is None else Path(self.config.dir).expanduser() / run.run_dir.name
        earlier = where.is_dir() and any(where.glob("events.out.tfevents.*"))
        # a resume hides what the earlier session logged from its first repeated step on; a new
        # fit into a folder that holds events (an absolute dir), all of it
        purge = (run.resumed_from or 0) if earlier else None
        self.writer = SummaryWriter(str(where), purge_step=purge)
        return earlier and run.resumed_from is not None

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # each epoch shows as it ends

    def log_figure(self, name: str, figure: Any, step: int) -> None:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        self.writer.add_image(name, np.asarray(canvas.buffer_rgba())[..., :3], step, dataformats="HWC")

    def log_image(self, name: str, path: Path, step: int) -> None:
        from matplotlib.image import imread

        image = imread(path)  # float RGB(A) in [0, 1]
        self.writer.add_image(name, image[..., :3], step, dataformats="HWC")

    def log_text(self, name: str, text: str, step: int) -> None:
        self.writer.add_text(name, text, step)

    def finish(self, run_dir: Path, status: Status) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
