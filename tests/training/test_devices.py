"""``training.device`` read in one place, :func:`pplvm.training.devices.resolve_device`, by
training, by torchrun's process-group setup and by loading a run: here on this machine, and
on a pretend machine with (or without) GPUs for the rules that need one."""

from __future__ import annotations

import pytest
import torch

import pplvm
from pplvm.facade import build
from pplvm.training import devices, distributed, trainer
from pplvm.training.devices import resolve_device


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has ``n`` GPUs (0: none)."""

    def have(n: int) -> None:
        monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: n)

    return have


def test_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(pplvm.TrainingError, match=r"training.device = 'cuda:0': this machine has no CUDA"):
            resolve_device("cuda:0")


def test_without_a_gpu(gpus):
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(pplvm.TrainingError, match=f"training.device = '{spec}': this machine has no CUDA"):
            resolve_device(spec)
        # a run trained on a GPU loads here
        assert resolve_device(spec, cpu_fallback=True) == torch.device("cpu")
    assert resolve_device("auto", local_rank=1) == torch.device("cpu")  # several CPU processes (gloo)


def test_with_two_gpus(gpus):
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1", cpu_fallback=True) == torch.device("cuda", 1)
    with pytest.raises(pplvm.TrainingError, match=r"'cuda:2': only 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    # several processes: each its LOCAL_RANK's GPU
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(pplvm.TrainingError, match="each uses the GPU its LOCAL_RANK names"):
        resolve_device("cuda:0", local_rank=0)
    with pytest.raises(pplvm.TrainingError, match="LOCAL_RANK = 2 but this node has 2 GPU"):
        resolve_device("auto", local_rank=2)
    assert resolve_device("cpu", local_rank=5) == torch.device("cpu")


def test_every_reader_asks_the_one_function():
    assert trainer.resolve_device is resolve_device
    assert distributed.resolve_device is resolve_device
    assert build.resolve_device is resolve_device  # from_card and load
