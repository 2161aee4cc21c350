"""Norm benchmark cases: LayerNorm and RMSNorm, forward and forward+backward, against
torch.nn.functional in eager mode, torch.compile of it, and a plain device copy.

Shapes: 16384 tokens at GPT-2's width (768) and Llama-7B's (4096), plus the fused
residual add (`norm(x + r)`, returning the sum too) as pre-norm blocks use it.
`bytes` is the least traffic a call needs (forward: read x, write y; backward:
read x and dy, write dx; the residual adds a read of r and a write of the sum,
and their gradients' read), so GB/s is comparable to the "copy" baseline: a
`copy_` moving the same number of bytes. Its ratio (copy time / okto time) is
the fraction of measured copy bandwidth okto reaches; the target is 0.8.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from okto.kernels import layer_norm, rms_norm
from okto.kernels.bench import Case

SHAPES = ((16384, 768), (16384, 4096))


def _eager(kind: str):
    """The framework's norm with the same signature as okto's public function."""
    if kind == "layer_norm":

        def eager_layer_norm(x, weight, bias, residual=None):
            s = x if residual is None else x + residual
            y = F.layer_norm(s, (s.shape[-1],), weight, bias)
            return y if residual is None else (y, s)

        return eager_layer_norm

    def eager_rms_norm(x, weight, residual=None):
        s = x if residual is None else x + residual
        y = F.rms_norm(s, (s.shape[-1],), weight, eps=1e-6)
        return y if residual is None else (y, s)

    return eager_rms_norm


def _copy(nbytes: float):
    src = torch.empty(int(nbytes) // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _case(kind: str, m: int, n: int, dtype: torch.dtype, backward: bool, residual: bool) -> Case:
    x = torch.randn(m, n, device="cuda", dtype=dtype, requires_grad=backward)
    params = [torch.randn(n, device="cuda", dtype=dtype, requires_grad=backward)]
    if kind == "layer_norm":
        params.append(torch.randn(n, device="cuda", dtype=dtype, requires_grad=backward))
    extra = {}
    if residual:
        extra["residual"] = torch.randn(m, n, device="cuda", dtype=dtype, requires_grad=backward)
    okto_fn = layer_norm if kind == "layer_norm" else rms_norm
    eager_fn = _eager(kind)
    compiled_fn = torch.compile(eager_fn, dynamic=False)
    inputs = [x, *params, *extra.values()]
    cotangents = [torch.randn_like(x) for _ in range(1 + residual)]

    def call(fn):
        if not backward:
            return lambda: fn(x, *params, **extra)
        return lambda: torch.autograd.grad(fn(x, *params, **extra), inputs, cotangents)

    # Tensors of m x n moved: forward x -> y (+ r in, sum out); backward x, dy -> dx (+ dsum in).
    tensors = (4 if residual else 2) + (backward * (4 if residual else 3))
    nbytes = tensors * m * n * x.element_size()
    stage = "fwd+bwd" if backward else "fwd"
    return Case(
        suite="norm",
        name=f"{kind}{'+residual' if residual else ''} {m}x{n} {stage}",
        okto=call(okto_fn),
        baselines={
            "eager": call(eager_fn),
            "torch.compile": call(compiled_fn),
            "copy (same bytes)": _copy(nbytes),
        },
        bytes=nbytes,
        backward=backward,
    )


def cases(dtype: torch.dtype) -> Iterator[Case]:
    for m, n in SHAPES:
        for kind in ("layer_norm", "rms_norm"):
            yield _case(kind, m, n, dtype, backward=False, residual=False)
            yield _case(kind, m, n, dtype, backward=True, residual=False)
        yield _case("layer_norm" if n == 768 else "rms_norm", m, n, dtype, True, residual=True)
