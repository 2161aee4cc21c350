"""Norm and loss benchmarks: LayerNorm/RMSNorm, cross-entropy and fused linear +
cross-entropy against eager PyTorch and torch.compile on this GPU.

    python benchmarks/norms_losses.py [bf16|fp16|fp32 ...]   (default: bf16)

Runs the `norm` and `loss` suites (okto.kernels.bench.norm, .loss) through
okto.kernels.bench.run, printing each case as it finishes, then the markdown
table of benchmarks/run.py (GB/s for the norms and cross-entropy, TFLOP/s for
the fused loss, peak MiB for the losses). For the norms, the "copy (same
bytes)" ratio is the fraction of measured copy bandwidth reached.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from okto.kernels import bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # benchmarks/run.py, beside this file: dtype names and the markdown table

SUITES = ["norm", "loss"]


def main(dtype_names: list[str]) -> int:
    unknown = [n for n in dtype_names if n not in run.DTYPES]
    if unknown or not torch.cuda.is_available():
        choices = "|".join(run.DTYPES)
        print(f"usage: norms_losses.py [{choices} ...], on a CUDA device", file=sys.stderr)
        return 4
    records = []
    for name in dtype_names:
        for result in bench.run(SUITES, run.DTYPES[name], on_result=_progress):
            records.append(result.as_record() | {"dtype": name})
    print()
    print(run.markdown(records, "python " + " ".join(sys.argv)))
    return 0


def _progress(result) -> None:
    ratios = "  ".join(f"{b.label} x{result.ratio(b):.2f}" for b in result.baselines)
    print(f"{result.case.suite:5} {result.case.name:48} {ratios}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["bf16"]))
