"""The CUDA-extension decoder example (examples/cuda_decoder): its kernel's forward and
backward equal PyTorch's, and its card trains a VAE on the GPU. Built only where CUDA is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import pplvm
from pplvm.errors import CardError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cuda_decoder"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (and nvcc) to build")


def test_a_card_naming_an_unregistered_network_is_refused_by_name():
    card = {"model": {"family": "vae", "network": "no_such_net"}, "data": {"source": "digits", "binarize": "static"}}
    with pytest.raises(CardError, match="model.network = 'no_such_net' is not a registered decoder network"):
        pplvm.Run.from_card(card)


@cuda
def test_the_extension_equals_torch_and_its_card_trains(tmp_path):
    sys.path.insert(0, str(EXAMPLE))
    import cuda_decoder

    x = torch.randn(3, 17, 40, device="cuda", requires_grad=True)
    b = torch.randn(40, device="cuda", requires_grad=True)
    y = cuda_decoder.BiasTanh.apply(x, b)
    ref = torch.tanh(x + b)
    torch.testing.assert_close(y, ref)  # tanhf vs torch's tanh: float32 rounding
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, [x, b], g), torch.autograd.grad(ref, [x, b], g))
    run = pplvm.fit(
        EXAMPLE / "vae_cuda.toml", tmp_path / "r", overrides={"training.epochs": 3, "training.progress": False}
    )
    assert isinstance(run.model.decoder.network, cuda_decoder.CudaTanhMLP)
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    on_cpu = pplvm.Run.load(tmp_path / "r", device="cpu")  # the host path of the same network
    x = run._training_data()[:32]
    z = torch.randn(5, 8)
    torch.testing.assert_close(on_cpu.model.decode(z).mean, run.model.decode(z.cuda()).mean.cpu(), rtol=1e-4, atol=1e-5)
    assert torch.isfinite(on_cpu.log_likelihood(x)).all()
