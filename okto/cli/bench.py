"""`okto bench`: okto's kernels against the framework on this machine's GPU."""

from __future__ import annotations

import json
import math
import sys

from okto.errors import EXIT_FAILURE, EXIT_OK, MachineError, OktoError, UsageError

SUITE_CHOICES = ("gemm", "attention", "norm", "loss", "all")
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure okto's kernels against cuBLAS, SDPA and torch (needs a GPU)",
        description="Time okto's kernels and the framework's in one process and print the ratios "
        "(baseline time / okto time: above 1 means okto is faster).",
    )
    p.add_argument("suite", choices=SUITE_CHOICES, help="which kernels to measure")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp16", help="input precision")
    p.add_argument("--json", action="store_true", help="one JSON record per case on stdout")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from okto.kernels import backend, bench, environment

    try:
        # A bad OKTO_* value would otherwise fail okto's side of every case, one by one; like
        # OKTO_KERNELS=native it is the user's setting, reported before the machine's lacks.
        environment.check()
        if backend.mode() == "native":  # every okto side would time the PyTorch reference
            raise UsageError(
                "OKTO_KERNELS=native runs PyTorch's reference in place of okto's kernels, so "
                "okto bench would time the framework against itself; unset it (or set auto)"
            )
        if not torch.cuda.is_available():
            raise MachineError("okto bench times GPU kernels, and this machine has no CUDA device")
        if backend.interpreting():  # hours for the large cases, and ratios of nothing
            raise UsageError(
                "TRITON_INTERPRET=1 runs okto's kernels in Triton's interpreter on the CPU; "
                "unset it to time them on the GPU"
            )
        if args.dtype == "bf16" and torch.cuda.get_device_capability() < (8, 0):
            major, minor = torch.cuda.get_device_capability()  # the planner refuses bf16 too
            raise MachineError(
                f"--dtype bf16, but {torch.cuda.get_device_name()} (sm_{major}{minor}) has no "
                "bf16; use --dtype fp16"
            )
    except OktoError as error:
        if not args.json:
            raise
        print(json.dumps({"error": str(error), "exit_code": error.exit_code}))  # as okto plan
        return error.exit_code
    suites = list(bench.SUITES) if args.suite == "all" else [args.suite]
    dtype = getattr(torch, DTYPES[args.dtype])
    if args.json:
        results = bench.run(suites, dtype, lambda r: print(json.dumps(r.as_record()), flush=True))
        return _exit_code(results)
    from rich.console import Console

    console = Console()
    console.print(
        f"[bold]okto bench[/] {', '.join(suites)} {args.dtype} on {torch.cuda.get_device_name()}"
    )
    results = bench.run(suites, dtype, lambda r: console.print(_line(r)))
    console.print(_table(results))
    return _exit_code(results)


def _exit_code(results) -> int:
    """1 when okto's own kernel failed in a case (its error was printed there), else 0: a
    baseline that cannot run is the framework's problem, a failing okto kernel is ours."""
    failed = [r.case.name for r in results if math.isnan(r.okto.ms)]
    if failed:
        print(
            f"okto's kernel failed in {len(failed)} case(s): {', '.join(failed)}", file=sys.stderr
        )
        return EXIT_FAILURE
    return EXIT_OK


def _line(result) -> str:
    parts = [f"{result.case.suite:9} {result.case.name:32} okto {result.okto.ms * 1e3:9.1f} us"]
    parts += [f"{b.label} x{result.ratio(b):.2f}{_gpu(result, b)}" for b in result.baselines]
    return "  ".join(parts)


def _gpu(result, baseline) -> str:
    ratio = result.gpu_ratio(baseline)
    return "" if ratio is None else f" (GPU x{ratio:.2f})"


def _table(results):
    from rich.table import Table

    table = Table(
        title="okto vs framework (ratio = framework time / okto time; "
        "GPU: both replayed from CUDA graphs, no host time)"
    )
    columns = ("suite", "case", "okto", "okto rate", "baseline", "baseline rate", "ratio", "GPU")
    for column in columns:
        table.add_column(
            column, justify="right" if column not in ("suite", "case", "baseline") else "left"
        )
    for r in results:
        for i, b in enumerate(r.baselines):
            table.add_row(
                r.case.suite if i == 0 else "",
                r.case.name if i == 0 else "",
                f"{r.okto.ms * 1e3:.1f} us" if i == 0 else "",
                r.okto.rate(r.case) if i == 0 else "",
                b.label,
                b.rate(r.case),
                f"{r.ratio(b):.2f}x",
                "" if r.gpu_ratio(b) is None else f"{r.gpu_ratio(b):.2f}x",
            )
    return table
