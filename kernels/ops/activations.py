"""Triton device functions for activations, shared by the GELU op and the GEMM epilogue."""

import triton
import triton.language as tl

# Globals read inside @triton.jit functions must be constexpr: the interpreter
# accepts plain floats, the GPU compiler does not.
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
INV_SQRT_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def tanh(x):
    # tl has no tanh on every backend; 2*sigmoid(2x) - 1 is exact and stable.
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def gelu(x, APPROXIMATE: tl.constexpr):
    """GELU of fp32 `x`; APPROXIMATE selects the tanh form over the erf form."""
    if APPROXIMATE:
        inner = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + tanh(inner))
    else:
        return 0.5 * x * (1.0 + tl.math.erf(x * INV_SQRT_2))


@triton.jit
def gelu_grad(x, APPROXIMATE: tl.constexpr):
    """d gelu(x) / dx for fp32 `x`."""
    if APPROXIMATE:
        inner = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        t = tanh(inner)
        d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * INV_SQRT_2))
        pdf = tl.exp(-0.5 * x * x) * INV_SQRT_2PI
        return cdf + x * pdf
