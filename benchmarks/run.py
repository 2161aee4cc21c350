"""Run kernel benchmark suites against the framework in one process, on the GPU.

    python benchmarks/run.py [--suites gemm attention norm loss] [--dtypes fp16 bf16]
                             [--out results.jsonl] [--markdown results.md]

Prints one line per case as it finishes and appends it to --out as a JSON
line; with --markdown, a table ready for docs/benchmarks.md (the device,
the versions and this command line in its header).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton

from okto.kernels import bench
from okto.kernels.device import get_device_info

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def markdown(records: list[dict], command: str) -> str:
    info = get_device_info()
    lines = [
        f"Device: {info.name}; torch {torch.__version__}, triton {triton.__version__}.",
        f"Command: `{command}`. Ratio = framework time / okto time (above 1: okto faster);",
        "GPU ratio: the same with both replayed from CUDA graphs (no host time; forward cases).",
        "",
        "| suite | dtype | case | okto | baseline | baseline rate | ratio | GPU ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        okto = r["okto"]
        for b in r["baselines"]:
            lines.append(
                f"| {r['suite']} | {r['dtype']} | {r['case']} | {_rate(okto)} | {b['label']} "
                f"| {_rate(b)} | {b['ratio']:.2f}x | {_gpu(b)} |"
            )
    return "\n".join(lines) + "\n"


def _gpu(baseline: dict) -> str:
    ratio = baseline.get("gpu_ratio")
    return "" if ratio is None else f"{ratio:.2f}x"


def _rate(timing: dict) -> str:
    parts = [f"{timing['ms'] * 1e3:.1f} us"]
    if "tflops" in timing:
        parts.append(f"{timing['tflops']:.0f} TFLOP/s")
    if "gbps" in timing:
        parts.append(f"{timing['gbps']:.0f} GB/s")
    parts += [f"{v:.2f} {k.replace('_', ' ')}" for k, v in timing.items() if k.startswith("us_per")]
    if "peak_mib" in timing:
        parts.append(f"{timing['peak_mib']:.0f} MiB peak")
    return ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", nargs="+", choices=bench.SUITES, default=list(bench.SUITES))
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["fp16", "bf16"])
    parser.add_argument("--out", help="write JSON lines here")
    parser.add_argument("--markdown", help="write a markdown table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks need a CUDA device", file=sys.stderr)
        return 4

    records = []
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - closed below, written per record
    for dtype_name in args.dtypes:

        def report(result, dtype_name=dtype_name):
            record = result.as_record() | {"dtype": dtype_name}
            records.append(record)
            if out:  # written as they come, so a run cut short keeps what it measured
                out.write(json.dumps(record) + "\n")
                out.flush()
            ratios = "  ".join(
                f"{b['label']} x{b['ratio']:.2f}" + (f" (GPU {_gpu(b)})" if _gpu(b) else "")
                for b in record["baselines"]
            )
            print(
                f"{record['suite']:9} {dtype_name} {record['case']:36} {_rate(record['okto'])}  {ratios}",
                flush=True,
            )

        bench.run(args.suites, DTYPES[dtype_name], report)

    if out:
        out.close()
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(records, "python " + " ".join(sys.argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
