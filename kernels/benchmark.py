"""`okto.kernels.benchmark(op, size)`: one public op against the framework's own, timed here.

`okto bench` runs fixed suites with careful GPU timing; this is the quick question
from a notebook ("how does okto's matmul do at 4096 on this machine?"). It runs on
the GPU when there is one, otherwise on the CPU, where the ops run PyTorch's
reference unless OKTO_KERNELS says otherwise: the result's `backend` says which
ran, so a CPU ratio near 1 is not mistaken for a verdict on the kernels. On a
GPU the calls are timed as `okto bench` times them (`triton.testing.do_bench`);
on the CPU by wall clock. The median of the runs is reported.
"""

from __future__ import annotations

import operator
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from okto.kernels.errors import KernelError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEADS, HEAD_DIM = 8, 64  # attention: size is the sequence length
MIN_RUNS, MAX_RUNS, BUDGET_S = 3, 200, 0.2  # CPU runs per side: at least 3, else ~0.2 s' worth


@dataclass(frozen=True)
class Problem:
    """Bound calls of okto's op and the framework's, and the work one call does."""

    shape: str
    okto: Callable[[], object]
    baseline: str
    framework: Callable[[], object]
    flops: float | None = None
    bytes: float | None = None


def _gemm(op: str, n: int, dtype: torch.dtype, device: torch.device) -> Problem:
    from okto import kernels

    dtype = torch.float16 if op == "matmul_fp16" else dtype
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    if op == "linear":
        bias = torch.randn(n, dtype=dtype, device=device)
        return Problem(
            f"{n}x{n}x{n}",
            lambda: kernels.linear(a, b, bias),
            "F.linear",
            lambda: F.linear(a, b, bias),
            flops=2 * n**3,
        )
    okto_op = kernels.matmul_fp16 if op == "matmul_fp16" else kernels.matmul
    return Problem(
        f"{n}x{n}x{n}",
        lambda: okto_op(a, b),
        "torch.matmul",
        lambda: torch.matmul(a, b),
        flops=2 * n**3,
    )


def _attention(op: str, n: int, dtype: torch.dtype, device: torch.device) -> Problem:
    from okto import kernels

    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, dtype=dtype, device=device) for _ in range(3))
    return Problem(
        f"causal B1 H{HEADS} S{n} D{HEAD_DIM}",
        lambda: kernels.attention(q, k, v, causal=True),
        "F.scaled_dot_product_attention",
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        flops=2 * HEADS * n * n * HEAD_DIM,  # the two products, half of them masked
    )


def _rows(op: str, n: int, dtype: torch.dtype, device: torch.device) -> Problem:
    """The row-wise ops on an n x n input (n rows of n features, or of an n-word vocabulary)."""
    from okto import kernels

    x = torch.randn(n, n, dtype=dtype, device=device)
    w, b = torch.randn(n, dtype=dtype, device=device), torch.randn(n, dtype=dtype, device=device)
    target = torch.randint(0, n, (n,), device=device)
    calls = {
        "layer_norm": (
            lambda: kernels.layer_norm(x, w, b),
            "F.layer_norm",
            lambda: F.layer_norm(x, (n,), w, b),
        ),
        "rms_norm": (
            lambda: kernels.rms_norm(x, w),
            "F.rms_norm",
            lambda: F.rms_norm(x, (n,), w, eps=1e-6),
        ),
        "softmax": (lambda: kernels.softmax(x), "torch.softmax", lambda: torch.softmax(x, -1)),
        "gelu": (
            lambda: kernels.gelu(x),
            "F.gelu",
            lambda: F.gelu(x, approximate="tanh"),
        ),
        "cross_entropy": (
            lambda: kernels.cross_entropy(x, target),
            "F.cross_entropy",
            lambda: F.cross_entropy(x, target),
        ),
    }
    okto_call, baseline, framework = calls[op]
    moved = 1 if op == "cross_entropy" else 2  # read x (and write y)
    return Problem(
        f"{n}x{n}", okto_call, baseline, framework, bytes=moved * x.numel() * x.element_size()
    )


# op -> what `size` means, and how its problem is built
OPS: dict[str, tuple[str, Callable[[str, int, torch.dtype, torch.device], Problem]]] = {
    "matmul": ("an n x n x n product", _gemm),
    "matmul_fp16": ("an n x n x n product in fp16", _gemm),
    "linear": ("n x n inputs, an n x n weight and a bias", _gemm),
    "attention": (f"causal, sequence length n, {HEADS} heads of {HEAD_DIM}", _attention),
    "layer_norm": ("n rows of n features", _rows),
    "rms_norm": ("n rows of n features", _rows),
    "softmax": ("n rows of n", _rows),
    "gelu": ("an n x n input", _rows),
    "cross_entropy": ("n rows over a vocabulary of n", _rows),
}


@dataclass(frozen=True)
class Benchmark:
    """One op timed against the framework's: median milliseconds of each, and their ratio
    (framework time / okto time: above 1 means okto is faster)."""

    op: str
    shape: str
    dtype: str
    device: str
    backend: str
    ms: float
    baseline: str
    baseline_ms: float
    tflops: float | None
    gbps: float | None

    @property
    def ratio(self) -> float:
        return self.baseline_ms / self.ms

    def as_dict(self) -> dict:
        return asdict(self) | {"ratio": self.ratio}

    def __str__(self) -> str:
        rate = (
            f", {self.tflops:.3g} TFLOP/s"
            if self.tflops is not None
            else f", {self.gbps:.3g} GB/s"
            if self.gbps is not None
            else ""
        )
        return (
            f"{self.op} {self.shape} {self.dtype} on {self.device} ({self.backend}): "
            f"okto {self.ms:.3g} ms{rate}; {self.baseline} {self.baseline_ms:.3g} ms; "
            f"ratio {self.ratio:.2f}x"
        )


def _median_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds of `fn` after a warm-up call (compilation, autotuning).

    On a GPU the calls are enqueued back to back and timed by CUDA events
    (`triton.testing.do_bench`, as `okto bench` times them), so the figure is the
    throughput of repeated calls, not one call's launch-and-wait latency. On the CPU:
    wall time, at least MIN_RUNS runs, more while BUDGET_S lasts."""
    if device.type == "cuda":
        from okto.kernels.bench import time_ms

        return time_ms(fn)
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    while len(times) < MIN_RUNS or (len(times) < MAX_RUNS and time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def benchmark(op: str, size: int, dtype: str | torch.dtype | None = None) -> Benchmark:
    """Time okto's `op` and the framework's equivalent on inputs of `size` (see `OPS` for
    what n means per op), forward only, on the GPU when there is one.

    dtype: "fp16", "bf16", "fp32" or a torch dtype; fp16 on a GPU and fp32 on a CPU by
    default. `print()` the result for one line; `.as_dict()` for JSON.
    """
    from okto.kernels.info import running

    if op not in OPS:
        raise KernelError(f"benchmark op {op!r} is not one of {', '.join(OPS)}")
    # NumPy integers are ints here as everywhere in the API (`__index__`); floats are not
    if isinstance(size, bool) or not hasattr(size, "__index__") or operator.index(size) < 1:
        raise KernelError(f"benchmark size must be a positive int; got {size!r}")
    size = operator.index(size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise KernelError(f"benchmark dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    problem = OPS[op][1](op, size, dtype, device)
    ms = _median_ms(problem.okto, device)
    baseline_ms = _median_ms(problem.framework, device)
    return Benchmark(
        op=op,
        shape=problem.shape,
        dtype=str(torch.float16 if op == "matmul_fp16" else dtype).removeprefix("torch."),
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        backend=running(),
        ms=ms,
        baseline=problem.baseline,
        baseline_ms=baseline_ms,
        tflops=None if problem.flops is None else problem.flops / ms / 1e9,
        gbps=None if problem.bytes is None else problem.bytes / ms / 1e6,
    )
