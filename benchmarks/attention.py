"""Attention benchmark: okto's flash attention against SDPA on this GPU, fp16 and bf16.

    python benchmarks/attention.py

Runs the `attention` suite (okto.kernels.bench.attention) through
okto.kernels.bench.run, printing a line per case as it finishes and a markdown
table at the end (the same table as benchmarks/run.py --markdown).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from okto.kernels import bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # benchmarks/run.py, beside this file: dtype names and the markdown table


def main() -> int:
    if not torch.cuda.is_available():
        print("benchmarks need a CUDA device", file=sys.stderr)
        return 4
    records = []
    for dtype_name in ("fp16", "bf16"):

        def report(result, dtype_name=dtype_name):
            record = result.as_record() | {"dtype": dtype_name}
            records.append(record)
            ratios = "  ".join(f"{b['label']} x{b['ratio']:.2f}" for b in record["baselines"])
            print(f"{dtype_name} {record['case']:44} {ratios}", flush=True)

        bench.run(["attention"], run.DTYPES[dtype_name], report)
    print()
    print(run.markdown(records, "python " + " ".join(sys.argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
