"""A user's own CUDA code as a pplvm decoder: a fused bias + tanh kernel, compiled at import by
``torch.utils.cpp_extension.load_inline``, inside an MLP decoder network registered as
``model.network = "cuda_bias_tanh"`` (see ``vae_cuda.toml`` beside this file)::

    import pplvm, cuda_decoder          # builds the extension (needs CUDA and nvcc) and registers it
    run = pplvm.fit("examples/cuda_decoder/vae_cuda.toml", "runs/vae_cuda")

The pattern for any extension: a ``torch.autograd.Function`` whose ``forward`` and ``backward``
call the compiled functions, a ``torch.nn.Module`` (here a PyroModule) holding the parameters,
and :func:`pplvm.decoders.register_network` so a card can name it. The decoder's likelihood
head, the guide, objectives, training, evaluation and export are pplvm's as for any decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pplvm.decoders import register_network

CPP = """
torch::Tensor bias_tanh_forward(torch::Tensor x, torch::Tensor bias);
torch::Tensor bias_tanh_backward(torch::Tensor grad, torch::Tensor y);
"""

CUDA = r"""
#include <torch/extension.h>

__global__ void bias_tanh_fwd(const float* __restrict__ x, const float* __restrict__ bias,
                              float* __restrict__ y, int64_t n, int64_t cols) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) y[i] = tanhf(x[i] + bias[i % cols]);
}

__global__ void bias_tanh_bwd(const float* __restrict__ grad, const float* __restrict__ y,
                              float* __restrict__ out, int64_t n) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) out[i] = grad[i] * (1.f - y[i] * y[i]);
}

torch::Tensor bias_tanh_forward(torch::Tensor x, torch::Tensor bias) {
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32, "bias_tanh: float32 CUDA tensors");
  x = x.contiguous();
  auto y = torch::empty_like(x);
  int64_t n = x.numel(), cols = bias.numel();
  int threads = 256;
  bias_tanh_fwd<<<(n + threads - 1) / threads, threads>>>(x.data_ptr<float>(), bias.contiguous().data_ptr<float>(),
                                                          y.data_ptr<float>(), n, cols);
  return y;
}

torch::Tensor bias_tanh_backward(torch::Tensor grad, torch::Tensor y) {
  grad = grad.contiguous();
  auto out = torch::empty_like(y);
  int64_t n = y.numel();
  int threads = 256;
  bias_tanh_bwd<<<(n + threads - 1) / threads, threads>>>(grad.data_ptr<float>(), y.data_ptr<float>(),
                                                          out.data_ptr<float>(), n);
  return out;
}
"""

_EXTENSION = None


def extension():
    """The compiled extension (built once per process; needs CUDA and nvcc)."""
    global _EXTENSION
    if _EXTENSION is None:
        from torch.utils.cpp_extension import load_inline

        _EXTENSION = load_inline(
            name="pplvm_bias_tanh",
            cpp_sources=CPP,
            cuda_sources=CUDA,
            functions=["bias_tanh_forward", "bias_tanh_backward"],
            extra_cuda_cflags=["-O2"],
        )
    return _EXTENSION


class BiasTanh(torch.autograd.Function):
    """``tanh(x + bias)`` by the extension; the backward reads only the output."""

    @staticmethod
    def forward(ctx, x, bias):
        y = extension().bias_tanh_forward(x, bias)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        g = extension().bias_tanh_backward(grad, y)
        return g, g.reshape(-1, g.shape[-1]).sum(0)


class CudaTanhMLP(PyroModule):
    """``(*S, B, K) -> (*S, B, N)``: ``tanh(h Wᵀ + b)`` per hidden layer by the extension (by
    PyTorch on the host), then a final ``Linear``."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int):
        super().__init__()
        widths = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], out_features)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            if h.is_cuda:
                h = BiasTanh.apply(F.linear(h, layer.weight), layer.bias)
            else:  # the same function on the host (plots, a GPU-trained run loaded on a CPU)
                h = torch.tanh(F.linear(h, layer.weight, layer.bias))
        return self.out(h)


@register_network("cuda_bias_tanh")
def cuda_bias_tanh(in_features: int, hidden: list[int], out_features: int, activation: str) -> CudaTanhMLP:
    if activation != "tanh":
        raise ValueError(f"model.activation = {activation!r}: the cuda_bias_tanh network is tanh only")
    return CudaTanhMLP(in_features, hidden, out_features)


__all__ = ["BiasTanh", "CudaTanhMLP", "cuda_bias_tanh", "extension"]
