"""GELU as a standalone op: an elementwise Triton kernel for forward and backward.

Both GELU forms are supported: `approximate="tanh"` (GPT-2's) and `"none"` (erf).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from okto.kernels import backend
from okto.kernels.autotune import launch
from okto.kernels.ops.activations import gelu as _gelu
from okto.kernels.ops.activations import gelu_grad as _gelu_grad

APPROXIMATIONS = ("none", "tanh")
BLOCK = 1024


@triton.jit
def _gelu_fwd_kernel(x_ptr, y_ptr, n, APPROXIMATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, _gelu(x, APPROXIMATE).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd_kernel(dy_ptr, x_ptr, dx_ptr, n, APPROXIMATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dx = dy * _gelu_grad(x, APPROXIMATE)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@backend.eager_fast_path
@torch.library.custom_op("okto::gelu", mutates_args=())
def _gelu_op(x: torch.Tensor, approximate: str) -> torch.Tensor:
    x = x.contiguous()
    y = backend.empty_like(x)
    n = x.numel()
    if n:
        launch(
            _gelu_fwd_kernel, (backend.cdiv(n, BLOCK),), (),
            x, y, n, APPROXIMATE=approximate == "tanh", BLOCK=BLOCK,
        )  # fmt: skip
    return y


@_gelu_op.register_fake
def _(x, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@backend.eager_fast_path
@torch.library.custom_op("okto::gelu_backward", mutates_args=())
def _gelu_backward_op(dy: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    x, dy = x.contiguous(), dy.contiguous()
    dx = backend.empty_like(x)
    n = x.numel()
    if n:
        launch(
            _gelu_bwd_kernel, (backend.cdiv(n, BLOCK),), (),
            dy, x, dx, n, APPROXIMATE=approximate == "tanh", BLOCK=BLOCK,
        )  # fmt: skip
    return dx


@_gelu_backward_op.register_fake
def _(dy, x, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, approximate = inputs
    ctx.save_for_backward(x)
    ctx.approximate = approximate


def _backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return _gelu_backward_op(dy, x, ctx.approximate), None


_gelu_op.register_autograd(_backward, setup_context=_setup_context)


def gelu_reference(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate=approximate)


def gelu(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """GELU of `x` (fp32, fp16 or bf16), `approximate` in {"none", "tanh"}."""
    if approximate not in APPROXIMATIONS:
        raise backend.KernelError(f"approximate={approximate!r}; use one of {APPROXIMATIONS}")
    backend.check_dtype(x, (torch.float32, torch.float16, torch.bfloat16), "gelu input")
    if not backend.use_triton(x):
        return gelu_reference(x, approximate)
    return _gelu_op(x, approximate)
