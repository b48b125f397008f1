"""Run directories: never lose a run, never mix two, never let two processes write one.

- :func:`new_run` makes ``out`` ready for a new fit: it refuses a directory that already holds
  anything unless asked to overwrite (and refuses to delete files pplvm did not write). The new
  run is written into a hidden folder inside ``out`` until the fit commits it (after its first
  epoch), which then replaces the old run's files: a directory never mixes two runs, and a fit
  that fails before its first epoch leaves the disk as it found it (no new directory, an old
  run untouched).
- :func:`locked` holds an exclusive ``fcntl`` lock on ``<run>/.pplvm.lock`` for as long as a
  fit or resume writes the directory; a second writer gets a :class:`RunDirError` at once. The
  operating system drops the lock when the process ends, however it ends.
- :func:`check_writable` tries a write and checks free space before training starts, so a
  read-only or full disk is one line up front, not a traceback after an hour of training.
- :func:`write_atomic`, pplvm's one writer of files: every artifact goes through a temporary
  file in the same folder, ``fsync`` and one ``os.replace``, so a crash leaves the last good
  file; the temporary file is removed on any failure, and ``OSError`` (read-only, disk full)
  becomes a one-line :class:`StorageError`.
- :func:`card_fingerprint` / :func:`check_fingerprint`: the card sections that define a
  checkpoint's tensors, stored in the checkpoint and compared on load, so an edited
  ``card.toml`` or a checkpoint from another run is named instead of a ``state_dict`` traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel

from .errors import RunDirError, StorageError

LOCK = ".pplvm.lock"
#: the folder inside a run directory where a new run is written until it is committed
STAGING = ".pplvm-new"
#: what a run directory holds (see :mod:`pplvm.run`); only these are deleted on overwrite
#: (mlflow.json and TensorBoard's event files: the trackers', pplvm.tracking)
RUN_FILES = ("card.toml", "checkpoint.pt", "metrics.jsonl", "inference_data.nc", "summary.txt", LOCK, "mlflow.json")
RUN_PATTERNS = ("*.png", ".*.tmp", "events.out.tfevents.*")
#: free space any write needs beyond what the caller asks for (the card, metrics, summary)
MIN_FREE_BYTES = 2**20
#: errors of the disk or the path (not of pplvm), reported as one line by :func:`storage`
STORAGE_ERRNOS = (
    errno.ENOSPC,
    errno.EROFS,
    errno.EACCES,
    errno.EDQUOT,
    errno.EPERM,
    errno.EFBIG,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
)


def _what(path: Path, purpose: str) -> str:
    return f"{purpose} {str(path)!r}"


def storage_error(err: OSError, what: str) -> StorageError:
    """A one-line :class:`StorageError` for an ``OSError`` met while writing ``what``."""
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EEXIST: "a part of the path is a file, not a directory",
        errno.EISDIR: "it is a directory",
    }.get(err.errno, err.strerror or str(err))
    return StorageError(f"{what}: cannot write ({reason})")


def _is_run_file(p: Path) -> bool:
    return p.is_file() and (p.name in RUN_FILES or any(p.match(pattern) for pattern in RUN_PATTERNS))


def _refuse_existing(out: Path, what: str, overwrite: bool) -> list[str]:
    """The run files to delete in ``out`` (with ``overwrite``), or a RunDirError refusing it."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{what}: is a file; expected a run directory")
    if not out.exists():
        return []
    present = sorted(p.name for p in out.iterdir() if p.name not in (LOCK, STAGING))  # STAGING: a failed fit's
    foreign = [name for name in present if not _is_run_file(out / name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunDirError(f"{what}: holds files that are not a pplvm run's ({shown}); choose an empty or new directory")
    if present and not overwrite:
        raise RunDirError(
            f"{what}: already holds a run ({', '.join(present)}); pass --overwrite "
            "(Python: overwrite=True) to replace it, or choose another directory"
        )
    return present


class NewRun:
    """A new run being written (:func:`new_run`): into :attr:`path` (hidden inside ``out``) until
    :meth:`commit` puts it in place of ``out``'s old run."""

    def __init__(self, out: Path, what: str):
        self.out, self.what, self.path = out, what, out / STAGING
        self.committed = False

    def commit(self) -> Path:
        """Delete the old run's files, move the new run's files into ``out`` (one rename each)
        and remove the hidden folder: ``out`` from now on holds the new run alone."""
        with storage(self.what):
            for name in _refuse_existing(self.out, self.what, overwrite=True):
                (self.out / name).unlink()
            for p in sorted(self.path.iterdir()):
                os.replace(p, self.out / p.name)
            self.path.rmdir()
            _sync_folder(self.out)
        self.committed = True
        return self.out


@contextlib.contextmanager
def new_run(
    out: str | Path, *, overwrite: bool = False, need_bytes: int = 0, purpose: str = "--out"
) -> Iterator[NewRun]:
    """Make ``out`` a locked directory for a new run while the block runs, the new run written
    into :attr:`NewRun.path` until :meth:`NewRun.commit`.

    An existing directory that holds anything is refused unless ``overwrite``; a directory
    holding files pplvm did not write is refused either way: pplvm never deletes what it did not
    write. Nothing on disk changes when it refuses. Leaving the block without a commit (the fit
    failed, or was stopped, before its first epoch) removes what it made: the hidden folder, the
    lock file where there was none, ``out`` itself where it was new; an old run stays as it was."""
    out = Path(out)
    what = _what(out, purpose)
    _refuse_existing(out, what, overwrite)  # before creating anything, even the lock file
    created, had_lock = not out.exists(), (out / LOCK).exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(err, what) from None
    new = NewRun(out, what)
    with locked(out, purpose):  # refused: another process writes out, and nothing here is this call's
        try:
            _refuse_existing(out, what, overwrite)  # again: another process may have written it
            with storage(what):
                shutil.rmtree(new.path, ignore_errors=True)  # left by a fit that was killed
                new.path.mkdir()
            check_writable(new.path, need_bytes, purpose)
            yield new
        finally:
            if not new.committed:  # (still under the lock: no other process is writing out)
                shutil.rmtree(new.path, ignore_errors=True)
                with contextlib.suppress(OSError):
                    if not had_lock:
                        (out / LOCK).unlink()
                    if created:
                        out.rmdir()


@contextlib.contextmanager
def storage(what: str) -> Iterator[None]:
    """Turn an ``OSError`` of the disk (full, read-only, quota, permissions) raised in the block
    into a one-line :class:`StorageError` naming ``what``."""
    try:
        yield
    except OSError as err:
        if isinstance(err, StorageError) or err.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(err, what) from None


@contextlib.contextmanager
def locked(run_dir: str | Path, purpose: str = "run directory") -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (which must exist) while the block runs."""
    run_dir = Path(run_dir)
    what = _what(run_dir, purpose)
    try:
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise storage_error(err, what) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"{what}: another pplvm process is writing this run (it holds {LOCK}); "
                "wait for it to finish, or choose another directory"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_writable(run_dir: str | Path, need_bytes: int = 0, purpose: str = "run directory") -> None:
    """Refuse, in one line, a directory that cannot be written or lacks ``need_bytes`` (plus
    :data:`MIN_FREE_BYTES`) of free space."""
    run_dir = Path(run_dir)
    what = _what(run_dir, purpose)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pplvm-probe.", suffix=".tmp", dir=run_dir)
        os.close(fd)
        os.unlink(tmp)
        free = shutil.disk_usage(run_dir).free
    except OSError as err:
        raise storage_error(err, what) from None
    need = need_bytes + MIN_FREE_BYTES
    if free < need:
        raise StorageError(
            f"{what}: only {free / 2**20:.0f} MiB free on its disk; this run needs about {need / 2**20:.0f} MiB"
        )


def write_atomic(path: str | Path, data: bytes | str | Callable[[Path], Any], what: str | None = None) -> None:
    """Write ``path`` so that a reader, or a crash at any moment, finds the old file or the new
    one whole, never a part: pplvm's one writer of files (checkpoints, cards, figures, exports).

    ``data``: the bytes (text: UTF-8) to write, or ``write(tmp)``, a function that writes the
    temporary path it is given (``savefig``, ``to_netcdf``). The temporary file lies in
    ``path``'s folder (so the rename is atomic), is flushed to disk (``fsync``), then replaces
    ``path`` in one ``os.replace``; the folder is synced too, so the rename survives a power cut.
    On any failure (an exception, Ctrl-C) the temporary file is removed and ``path`` is as it
    was; an ``OSError`` (disk full, read-only) is raised as a one-line :class:`StorageError`
    naming ``what`` (default: the path)."""
    path = Path(path)
    what = what or str(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:  # created as open() would (mode 0o666 less the umask), and only by this call
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with open(fd, "wb", closefd=False) as f:
                f.write(data.encode() if isinstance(data, str) else data)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        raise storage_error(err, what) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    _sync_folder(path.parent)  # make the rename itself durable


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ---------------------------------------------------------------- fingerprints
def card_fingerprint(card: BaseModel) -> dict[str, Any]:
    """Flat ``{"model.components": 3, ..., "guide.kind": "meanfield"}`` of the card values a
    checkpoint's tensors depend on — the whole model section and the guide kind — as strings,
    numbers, booleans and lists (safe for ``weights_only``)."""
    raw = card.model_dump(mode="json", exclude_none=True)  # as config.card_to_dict writes card.toml
    flat = {f"model.{k}": v for k, v in _flatten(raw["model"])}
    flat["guide.kind"] = raw["guide"]["kind"]
    return flat


def _flatten(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


#: keys that fingerprints once held and no longer do: they moved to ``[evaluation]``, which
#: acts on how a run is evaluated, not on its tensors (see pplvm.config.MOVED_KEYS)
RETIRED = ("model.likelihood_samples",)


def check_fingerprint(stored: dict[str, Any] | None, card: BaseModel, run_dir: Path) -> None:
    """Refuse a checkpoint whose card values (``stored``) differ from ``card``'s, naming each
    difference; ``stored`` None (a checkpoint written before fingerprints) passes, and keys
    fingerprints no longer hold (:data:`RETIRED`) are not compared."""
    if stored is None:
        return
    stored = {k: v for k, v in stored.items() if k not in RETIRED}
    now = card_fingerprint(card)
    keys = [k for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]
    if not keys:
        return
    family = [k for k in keys if k == "model.family"]
    shown = family or keys  # another family differs in everything: name the family only
    diffs = "; ".join(
        f"{k} = {_show(now.get(k))} in card.toml, {_show(stored.get(k))} in the checkpoint" for k in shown[:6]
    ) + ("; ..." if len(shown) > 6 else "")
    raise RunDirError(
        f"{str(run_dir)!r}: card.toml does not match checkpoint.pt ({diffs}); restore the card "
        "the run was trained with, or fit a new run"
    )


def _show(v: Any) -> str:
    return "(unset)" if v is None else repr(v)


#: card values a resume may change: how long and where it trains, how often it checkpoints and
#: reports, the run's name, how it is evaluated and where it is mirrored — not what training computes
RESUMABLE = (
    "name",
    "training.epochs",
    "training.max_steps",
    "training.max_minutes",
    "training.progress",
    "training.device",
    "training.compile",
)
RESUMABLE_PREFIXES = ("training.checkpoint_", "evaluation.", "logging.")


def training_fingerprint(card: BaseModel) -> dict[str, Any]:
    """``{"training.lr": 0.05, "data.path": ..., "model.options": {...}, ...}``: every value of
    the card's sections (unset ones as None) that a resume must keep — all but :data:`RESUMABLE`
    — so that it continues the run as it was trained."""
    raw = card.model_dump(mode="json")
    flat = {f"{s}.{k}": v for s, section in raw.items() if isinstance(section, dict) for k, v in section.items()}
    return {k: v for k, v in flat.items() if k not in RESUMABLE and not k.startswith(RESUMABLE_PREFIXES)}


def check_training_fingerprint(stored: dict[str, Any] | None, card: BaseModel, run_dir: Path) -> None:
    """Refuse to resume from a card.toml whose values differ from those the checkpoint was
    trained with (``stored``; None, a checkpoint written before they were kept, passes), naming
    each. Keys one side lacks (fields pplvm added or retired since) are not compared."""
    if stored is None:
        return
    now = training_fingerprint(card)
    keys = [k for k in sorted(set(stored) & set(now)) if stored[k] != now[k]]
    if not keys:
        return
    diffs = "; ".join(f"{k} = {_show(now[k])} in card.toml, {_show(stored[k])} in the checkpoint" for k in keys[:6])
    raise RunDirError(
        f"{str(run_dir)!r}: card.toml differs from the card checkpoint.pt was trained with ({diffs}"
        f"{'; ...' if len(keys) > 6 else ''}); a resume continues the run as it was trained: restore "
        "card.toml's values, or fit a new run with them"
    )
