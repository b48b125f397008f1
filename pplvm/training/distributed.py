"""Data-parallel training on ``torch.distributed``: one process per device, as torchrun starts them.

::

    torchrun --nproc_per_node=2 -m pplvm fit models/gmm_synthetic.toml --out runs/g
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 -m pplvm fit CARD --out runs/g      # on each node

Every process holds the whole model and guide and trains on its shard of each minibatch: the
global batch of B rows (the same shuffle on every process) is split ``idx[rank::world_size]``.
The model's data plate keeps the *global* data-set size N, so a process's loss is its own
unbiased estimate of the full-data loss (data terms scaled by N / B_r, global terms once).
Gradients are combined by :class:`DataParallel` (DistributedDataParallel with a
communication hook) as the weighted sum ``Σ_r (B_r / B) ∇L_r`` — with equal shards DDP's own
average, and in every case exactly the single-process gradient of the global batch: the data
terms add up to ``(N / B) Σ_batch ∇ℓ_i`` and the global terms' weights sum to 1.

What this module offers the rest of pplvm (and any update rule):

* :func:`init_from_env` — join the process group torchrun describes in ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT`` (NCCL when the run's
  device is a GPU, one GPU per process by ``LOCAL_RANK``; gloo on the CPU); a single process
  when the environment names none.
* :func:`is_main`, :func:`rank`, :func:`world_size` — only the main process (rank 0) writes
  run directories, checkpoints, metrics, plots and takes the run-directory lock.
* :func:`agreed` — a block in which rank 0 prepares what all need (locks and writes the run
  directory); if it fails there, every process stops with one line.
* :func:`all_reduce_sum` — sum tensors over processes in place (an EM step's sufficient
  statistics, the epoch's loss); :func:`broadcast` — rank 0's values everywhere (held-out
  metrics, so that every process takes the same early-stopping decisions).
* :class:`DataParallel` — what an update rule's :meth:`~pplvm.training.rules.UpdateRule.distribute`
  receives: ``wrap(module)`` gives the DDP module to compute the loss through.

A collective that fails (another process died; a peer silent for longer than the timeout,
``PPLVM_DIST_TIMEOUT`` seconds, default 1800) raises :class:`CollectiveError`; the trainer turns
it into one line naming the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from ..errors import TrainingError
from .devices import resolve_device

#: environment variable: seconds a process waits on a silent peer before giving up
TIMEOUT_ENV = "PPLVM_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


class CollectiveError(TrainingError):
    """A collective operation failed: another process died, or stayed silent past the timeout."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its
    node, and the ``backend`` (``"nccl"``, ``"gloo"``, or ``""`` for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise TrainingError(f"environment variable {name} is not set: start several processes with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainingError(f"environment variable {name} = {value!r}: expected an integer") from None


def timeout() -> datetime.timedelta:
    """How long a collective waits for a silent peer (``PPLVM_DIST_TIMEOUT`` seconds)."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise TrainingError(f"environment variable {TIMEOUT_ENV} = {value!r}: expected a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def context() -> Context:
    """This process's place in the process group (a single process when none was started)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend())


def init_from_env(device: str = "auto") -> Context:
    """Join the process group torchrun's environment describes (idempotent), or return a
    single-process context when ``WORLD_SIZE`` is unset or 1.

    ``device``: the card's ``training.device``; a GPU (``auto`` on a machine with one, or
    ``cuda``) selects NCCL and this process's GPU ``LOCAL_RANK``, else gloo."""
    if dist.is_available() and dist.is_initialized():
        return context()
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Context()
    if not dist.is_available():
        raise TrainingError("this PyTorch build has no torch.distributed: data-parallel training is unavailable")
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
    where = resolve_device(device, local_rank=local_rank)
    gpu = where.type == "cuda"
    if gpu:
        torch.cuda.set_device(where)
    backend = "nccl" if gpu else "gloo"
    wait = timeout()  # (its own error, outside the process group's)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=wait)
    except (RuntimeError, ValueError) as err:
        raise TrainingError(
            f"could not join the process group of {world} processes as rank {rank} "
            f"({_first_line(err)}): check MASTER_ADDR / MASTER_PORT or torchrun's --rdzv_endpoint"
        ) from None
    return context()


def shutdown() -> None:
    """Leave the process group (at the end of a command; harmless when there is none). The
    command's objects go first: a fitted run is cyclic garbage (modules, its data-parallel
    wrapper) that may still hold the backend's finished work handles, and freeing those only
    at interpreter exit, after the group is gone, can abort the process (gloo: "terminate
    called without an active exception", seen once here on rank 1 after a torchrun fit)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this is the process that writes (rank 0, or the only process)."""
    return context().rank == 0


def rank() -> int:
    return context().rank


def world_size() -> int:
    return context().world_size


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s sampling (its own particles): ``seed`` itself on rank 0,
    so a single process draws what rank 0 of many does; a hash of both elsewhere."""
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"pplvm:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")  # numpy seeds (pyro.set_rng_seed) take 32 bits


def _comm_device(t: torch.Tensor) -> torch.device:
    """NCCL moves only GPU tensors: collectives run on this process's GPU under NCCL."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """Sum each tensor over all processes, in place (one collective per dtype); returns them.
    A single process leaves them as they are. E.g. an EM step's sufficient statistics::

        all_reduce_sum([counts, sums, squares])   # (K,), (K, D), (K, D)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group]).to(_comm_device(group[0]))
        _collective(dist.all_reduce, flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
    return tensors


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Process ``src``'s ``tensor`` on every process (in place; returned)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    buf = tensor.detach().to(_comm_device(tensor))
    _collective(dist.broadcast, buf, src)
    tensor.copy_(buf)
    return tensor


@contextlib.contextmanager
def agreed(what: str) -> Iterator[None]:
    """Every process runs the block, in which rank 0 alone takes locks and writes (e.g. prepares
    the run directory); at its end all learn whether rank 0's block succeeded, so that when it
    failed (a refused directory, say) the others stop with one line instead of waiting in a
    collective for a process that has gone. ``what``: rank 0's part, for that line."""
    if world_size() == 1:
        yield
        return
    failed: BaseException | None = None
    try:
        yield
    except BaseException as err:  # noqa: BLE001 — re-raised below, after telling the others
        failed = err
    try:
        main_ok = bool(broadcast(torch.tensor([float(failed is None)]))[0])
    except CollectiveError:
        if failed is None:
            raise
        main_ok = False
    if failed is not None:
        raise failed
    if not main_ok:
        raise TrainingError(
            f"process {rank()} of {world_size()} stops: process 0 could not {what} (its message says why)"
        )


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` (same shape everywhere), stacked ``(world_size, *shape)``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor[None].clone()
    buf = tensor.detach().to(_comm_device(tensor))
    out = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    _collective(dist.all_gather, out, buf)
    return torch.stack(out).to(tensor.device)


def _collective(fn, *args) -> None:
    try:
        fn(*args)
    except (RuntimeError, ValueError) as err:  # gloo / NCCL errors, DistBackendError, timeouts
        raise CollectiveError(describe_failure(err)) from err


def describe_failure(err: BaseException) -> str:
    """One line for a failed collective: which process saw it and why."""
    ctx = context()
    return (
        f"process {ctx.rank} of {ctx.world_size} lost contact with the others ({_reason(err)}): "
        "another process died or stayed silent longer than "
        f"{TIMEOUT_ENV} = {timeout().total_seconds():g} s"
    )


class DataParallel:
    """What an update rule needs to train data-parallel: :meth:`wrap` gives the
    ``DistributedDataParallel`` module to compute a loss through; :meth:`reduce_gradients`
    does the same combination for gradients a rule computed otherwise (a traced graph, a GAN's
    two networks); :attr:`rows` / :attr:`global_rows` say how much of the step's global batch
    this process holds (an EM step scales its all-reduced statistics by ``N / global_rows``).

    The trainer calls :meth:`share` before each step; gradients are then summed over processes
    weighted by :attr:`weight` = ``rows / global_rows`` (see the module docstring), which equals
    DDP's average whenever the shards are equal.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.rows, self.global_rows = 1, max(world_size(), 1)

    def share(self, rows: int, global_rows: int) -> None:
        """This process holds ``rows`` of the step's ``global_rows``."""
        self.rows, self.global_rows = rows, global_rows

    @property
    def weight(self) -> float:
        return self.rows / self.global_rows

    def reduce_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """``p.grad ← Σ_r weight_r · p.grad_r`` over processes, for every ``p`` with a gradient
        (one collective per dtype)."""
        grads = [p.grad for p in params if p.grad is not None]
        for g in grads:
            g.mul_(self.weight)
        all_reduce_sum(grads)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` (parameters already created: autoguides make theirs on a first call) in
        DDP: rank 0's parameters are copied to every process now, gradients all-reduced in
        backward."""
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(module, DistributedDataParallel):  # a rule trained again (a second fit)
            return module
        for p in module.parameters():  # DDP's gradient buckets copy each parameter's strides:
            if p.stride() != _dense_strides(p.shape):  # an expanded one (stride 0) gets its own storage
                p.data = p.data.clone(memory_format=torch.contiguous_format)
        # device_ids=None: the module lives on one device and the trainer has already put
        # each batch there (DDP would otherwise try to move Batch objects itself)
        ddp = DistributedDataParallel(module, device_ids=None)
        ddp.register_comm_hook(self, _weighted_allreduce)
        return ddp


def _dense_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _weighted_allreduce(state, bucket):
    """DDP communication hook ``(DataParallel, GradBucket) -> Future[Tensor]``:
    ``Σ_r weight_r · grad_r`` over processes. (No annotations: DDP checks them at run time,
    and this module's are strings.)"""
    buf = bucket.buffer()
    buf.mul_(state.weight)
    fut = dist.all_reduce(buf, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def _reason(err: BaseException) -> str:
    """The gist of a gloo / NCCL error: its first sentence, without source locations."""
    text = _first_line(err).replace("Got the following error when running the callback: ", "")
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\] ", "", text)
    return text.split(". This is typically")[0]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0].rstrip(":") if text else type(err).__name__
