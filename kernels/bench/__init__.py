"""Benchmark runner behind `okto bench`: okto's kernels against the framework, in one process.

Each suite module (`okto.kernels.bench.<suite>`) yields `Case`s: a closure that
runs okto's kernel on bound inputs, closures for the framework baselines
(cuBLAS through torch.matmul, SDPA, torch.nn.functional, torch.compile of the
reference), and the work one call does (FLOPs or bytes). The runner times
every closure with `triton.testing.do_bench` medians and reports ratios as
baseline time / okto time, so a ratio above 1 means okto is faster.
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


@dataclass
class Timing:
    label: str
    ms: float
    peak_mib: float | None = None

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

    def as_record(self) -> dict:
        def timing(t: Timing) -> dict:
            record = {"label": t.label, "ms": t.ms}
            if self.case.flops:
                record["tflops"] = self.case.flops / t.ms / 1e9
            if self.case.bytes:
                record["gbps"] = self.case.bytes / t.ms / 1e6
            if self.case.per_item:
                record[f"us_per_{self.case.per_item[0]}"] = t.ms * 1e3 / self.case.per_item[1]
            if t.peak_mib is not None:
                record["peak_mib"] = t.peak_mib
            return record

        return {
            "suite": self.case.suite,
            "case": self.case.name,
            "okto": timing(self.okto),
            "baselines": [timing(b) | {"ratio": self.ratio(b)} for b in self.baselines],
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


def measure(case: Case) -> Result:
    def one(label: str, fn: Callable[[], object]) -> Timing:
        try:
            ms = time_ms(fn)
        except (
            Exception
        ) as error:  # a baseline that cannot run (e.g. compile) is reported, not fatal
            print(f"  {case.name}: {label} failed: {type(error).__name__}: {error}")
            return Timing(label, float("nan"))
        return Timing(label, ms, peak_mib(fn) if case.measure_memory else None)

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
