"""GEMM benchmark cases: okto's GEMM against cuBLAS, and the fused linear against eager
PyTorch and torch.compile, on the shapes users quote.

Plain GEMMs: square n = 1024 to 8192 and GPT-2's training shapes (16384 tokens,
width 768, outputs 768, 2304, 3072 and the 50304 vocabulary), B row-major as in
GPT-2's Conv1D. The fused case is GPT-2's MLP up-projection with bias and tanh
GELU, forward in both weight layouts and forward+backward; its baselines are
`torch.matmul` + bias + GELU in eager mode, the same through `addmm` (cuBLAS adds
the bias), and the same compiled. The whole MLP, forward+backward, is okto's
gelu_mlp (cuBLAS products, GELU in cuBLASLt's epilogues) against the same MLP
eager and compiled. FLOPs count the matmuls only: 2MNK forward, 6MNK
forward+backward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from okto.kernels import gelu_mlp, linear, matmul
from okto.kernels.bench import Case

SQUARE = (1024, 2048, 4096, 8192)
GPT2_TOKENS, GPT2_WIDTH = 16384, 768
GPT2_OUTPUTS = (768, 2304, 3072, 50304)
MLP_HIDDEN = 3072


def _gemm_case(m: int, k: int, n: int, name: str, dtype: torch.dtype) -> Case:
    a = torch.randn(m, k, device="cuda", dtype=dtype)
    b = torch.randn(k, n, device="cuda", dtype=dtype)
    return Case(
        suite="gemm",
        name=name,
        okto=lambda: matmul(a, b),
        baselines={"torch.matmul": lambda: torch.matmul(a, b)},
        flops=2 * m * n * k,
    )


def _mlp_up(x, w, bias):
    """GPT-2's MLP up-projection as eager PyTorch writes it."""
    return F.gelu(torch.matmul(x, w) + bias, approximate="tanh")


def _mlp_up_addmm(x, w, bias):
    return F.gelu(torch.addmm(bias, x, w), approximate="tanh")


def _linear_operands(layout: str, dtype: torch.dtype, requires_grad: bool):
    m, k, n = GPT2_TOKENS, GPT2_WIDTH, MLP_HIDDEN
    x = torch.randn(m, k, device="cuda", dtype=dtype, requires_grad=requires_grad)
    shape = (n, k) if layout == "out_in" else (k, n)
    weight = (torch.randn(shape, device="cuda") / k**0.5).to(dtype).requires_grad_(requires_grad)
    bias = torch.randn(n, device="cuda", dtype=dtype, requires_grad=requires_grad)
    return x, weight, bias


def _fused_forward_case(layout: str, dtype: torch.dtype) -> Case:
    x, weight, bias = _linear_operands(layout, dtype, requires_grad=False)
    w = weight.T if layout == "out_in" else weight  # a view: [in, out] for the baselines
    compiled = torch.compile(_mlp_up, dynamic=False)
    return Case(
        suite="gemm",
        name=f"linear+bias+gelu {GPT2_TOKENS}x{GPT2_WIDTH}x{MLP_HIDDEN} {layout} fwd",
        okto=lambda: linear(x, weight, bias, "gelu_tanh", weight_layout=layout),
        baselines={
            "eager": lambda: _mlp_up(x, w, bias),
            "eager addmm": lambda: _mlp_up_addmm(x, w, bias),
            "torch.compile": lambda: compiled(x, w, bias),
        },
        flops=2 * GPT2_TOKENS * GPT2_WIDTH * MLP_HIDDEN,
    )


def _fused_backward_case(dtype: torch.dtype) -> Case:
    x, w, bias = _linear_operands("in_out", dtype, requires_grad=True)
    dy = torch.randn(GPT2_TOKENS, MLP_HIDDEN, device="cuda", dtype=dtype)
    compiled = torch.compile(_mlp_up, dynamic=False)

    def step(fn):
        return lambda: torch.autograd.grad(fn(), (x, w, bias), dy)

    return Case(
        suite="gemm",
        name=f"linear+bias+gelu {GPT2_TOKENS}x{GPT2_WIDTH}x{MLP_HIDDEN} in_out fwd+bwd",
        okto=step(lambda: linear(x, w, bias, "gelu_tanh", weight_layout="in_out")),
        baselines={
            "eager": step(lambda: _mlp_up(x, w, bias)),
            "torch.compile": step(lambda: compiled(x, w, bias)),
        },
        flops=6 * GPT2_TOKENS * GPT2_WIDTH * MLP_HIDDEN,
        backward=True,
    )


def _mlp(x, w_fc, b_fc, w_proj, b_proj):
    return torch.addmm(b_proj, _mlp_up_addmm(x, w_fc, b_fc), w_proj)


def _mlp_case(dtype: torch.dtype) -> Case:
    x, w_fc, b_fc = _linear_operands("in_out", dtype, requires_grad=True)
    w_proj = (torch.randn(MLP_HIDDEN, GPT2_WIDTH, device="cuda") / MLP_HIDDEN**0.5).to(dtype)
    b_proj = torch.randn(GPT2_WIDTH, device="cuda", dtype=dtype)
    params = (x, w_fc, b_fc, w_proj.requires_grad_(), b_proj.requires_grad_())
    dy = torch.randn(GPT2_TOKENS, GPT2_WIDTH, device="cuda", dtype=dtype)
    compiled = torch.compile(_mlp, dynamic=False)

    def step(fn):
        return lambda: torch.autograd.grad(fn(*params), params, dy)

    return Case(
        suite="gemm",
        name=f"gpt2 mlp {GPT2_TOKENS}x{GPT2_WIDTH}x{MLP_HIDDEN} fwd+bwd",
        okto=step(gelu_mlp),
        baselines={"eager": step(_mlp), "torch.compile": step(compiled)},
        flops=2 * 6 * GPT2_TOKENS * GPT2_WIDTH * MLP_HIDDEN,
        backward=True,
    )


def cases(dtype: torch.dtype) -> Iterator[Case]:
    for n in SQUARE:
        yield _gemm_case(n, n, n, f"{n}x{n}x{n}", dtype)
    for n in GPT2_OUTPUTS:
        yield _gemm_case(GPT2_TOKENS, GPT2_WIDTH, n, f"gpt2 {GPT2_TOKENS}x{GPT2_WIDTH}x{n}", dtype)
    yield _fused_forward_case("in_out", dtype)
    yield _fused_forward_case("out_in", dtype)
    yield _fused_backward_case(dtype)
    if dtype != torch.float32:  # cuBLASLt's GELU epilogues take 16-bit operands
        yield _mlp_case(dtype)
