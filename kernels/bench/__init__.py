"""Benchmark runner behind `okto bench`: okto's kernels against the framework, in one process.

Each suite module (`okto.kernels.bench.<suite>`) yields `Case`s: a closure that
runs okto's kernel on bound inputs, closures for the framework baselines
(cuBLAS through torch.matmul, SDPA, torch.nn.functional, torch.compile of the
reference), and the work one call does (FLOPs or bytes). The runner times
every closure with `triton.testing.do_bench` medians and reports ratios as
baseline time / okto time, so a ratio above 1 means okto is faster.

Two diagnostics say where a time comes from: `host_us`, the Python/driver time
one call takes to enqueue its work (every closure), and `gpu_us`, the time with
the host taken out (a CUDA graph of several calls, replayed). A case whose
`do_bench` time is near `host_us` and well above `gpu_us` is host-bound. Where
both sides have a `gpu_us`, the GPU-time ratio compares the kernels alone.
Baselines are captured only in forward-only cases: capturing closures that run
the autograd engine failed in a probe on an H100 host and left the process's
CUDA generator unusable, so those cases capture okto's closure alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

SUITES = ("gemm", "attention", "norm", "loss")


@dataclass
class Case:
    suite: str
    name: str
    okto: Callable[[], object]
    baselines: dict[str, Callable[[], object]]
    flops: float | None = None  # floating-point operations one call does
    bytes: float | None = None  # fewest bytes one call must move through device memory
    per_item: tuple[str, int] | None = None  # e.g. ("sequence", 256): also report us per item
    measure_memory: bool = False  # report peak memory of each closure
    backward: bool = False  # the closures run autograd: no CUDA graphs of the baselines


@dataclass
class Timing:
    label: str
    ms: float
    peak_mib: float | None = None
    host_us: float | None = None  # enqueueing one call, GPU not waited for
    gpu_us: float | None = None  # one call replayed from a CUDA graph

    def rate(self, case: Case) -> str:
        if case.flops:
            return f"{case.flops / self.ms / 1e9:.0f} TFLOP/s"
        if case.bytes:
            return f"{case.bytes / self.ms / 1e6:.0f} GB/s"
        return ""


@dataclass
class Result:
    case: Case
    okto: Timing
    baselines: list[Timing] = field(default_factory=list)

    def ratio(self, baseline: Timing) -> float:
        return baseline.ms / self.okto.ms

    def gpu_ratio(self, baseline: Timing) -> float | None:
        """The ratio of GPU times alone, where both sides were replayed from CUDA graphs."""
        if baseline.gpu_us is None or self.okto.gpu_us is None:
            return None
        return baseline.gpu_us / self.okto.gpu_us

    def as_record(self) -> dict:
        def timing(t: Timing) -> dict:
            record = {"label": t.label, "ms": t.ms}
            if self.case.flops:
                record["tflops"] = self.case.flops / t.ms / 1e9
            if self.case.bytes:
                record["gbps"] = self.case.bytes / t.ms / 1e6
            if self.case.per_item:
                record[f"us_per_{self.case.per_item[0]}"] = t.ms * 1e3 / self.case.per_item[1]
            for name in ("peak_mib", "host_us", "gpu_us"):
                if getattr(t, name) is not None:
                    record[name] = getattr(t, name)
            return record

        return {
            "suite": self.case.suite,
            "case": self.case.name,
            "okto": timing(self.okto),
            "baselines": [
                timing(b) | {"ratio": self.ratio(b), "gpu_ratio": self.gpu_ratio(b)}
                for b in self.baselines
            ],
        }


def suite_cases(suite: str, dtype: torch.dtype) -> Iterator[Case]:
    if suite not in SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}; choose from {', '.join(SUITES)}")
    return importlib.import_module(f"okto.kernels.bench.{suite}").cases(dtype)


def time_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of `fn` on the GPU, after warm-up (compilation, autotuning)."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak device memory `fn` allocates above what was already allocated, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def host_us(fn: Callable[[], object], calls: int = 10, rounds: int = 5) -> float:
    """Microseconds of host time per call: `calls` calls enqueued back to back (few enough
    that the launch queue never fills), the least of `rounds` tries."""
    import time

    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    torch.cuda.synchronize()
    return best / calls * 1e6


def gpu_us(fn: Callable[[], object], calls: int = 10) -> float | None:
    """Microseconds of GPU time per call with no host in the loop: `calls` calls captured
    in a CUDA graph and replayed (None where the closure cannot be captured)."""
    import triton.testing

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        ms = triton.testing.do_bench(graph.replay, warmup=10, rep=50, return_mode="median")
    except Exception as error:  # reported, not fatal: some closures cannot be captured
        print(f"  CUDA graph capture failed: {type(error).__name__}: {error}")
        return None
    finally:
        torch.cuda.synchronize()
    return ms * 1e3 / calls


def measure(case: Case) -> Result:
    def one(label: str, fn: Callable[[], object]) -> Timing:
        try:
            ms = time_ms(fn)
        except (
            Exception
        ) as error:  # a baseline that cannot run (e.g. compile) is reported, not fatal
            print(f"  {case.name}: {label} failed: {type(error).__name__}: {error}")
            return Timing(label, float("nan"))
        timing = Timing(label, ms, peak_mib(fn) if case.measure_memory else None, host_us(fn))
        if label == "okto" or not case.backward:
            timing.gpu_us = gpu_us(fn)
        return timing

    result = Result(case, one("okto", case.okto))
    result.baselines = [one(label, fn) for label, fn in case.baselines.items()]
    return result


def run(suites: list[str], dtype: torch.dtype, on_result: Callable[[Result], None]) -> list[Result]:
    results = []
    for suite in suites:
        for case in suite_cases(suite, dtype):
            result = measure(case)
            on_result(result)
            results.append(result)
            torch.cuda.empty_cache()
    return results
