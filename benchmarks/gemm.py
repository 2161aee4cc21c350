"""GEMM benchmarks on the GPU: okto's GEMM against cuBLAS and the fused linear against
eager PyTorch and torch.compile, fp16 then bf16.

    python benchmarks/gemm.py [--json]

A thin front to the library: it runs the `gemm` suite (okto.kernels.bench.gemm)
through `okto bench gemm`, which times with okto.kernels.bench.run and prints a
line per case and the table.
"""

from __future__ import annotations

import sys

from okto.cli import main


def run(argv: list[str]) -> int:
    for dtype in ("fp16", "bf16"):
        status = main(["bench", "gemm", "--dtype", dtype, *argv])
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
