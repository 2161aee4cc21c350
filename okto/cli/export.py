"""`okto export`: a model to one `.okm` file, a Hugging Face directory or its weights alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a model as one .okm file, a Hugging Face directory or its weights alone",
        description="Export a model (.okm, Hugging Face directory or run directory) to an .okm file, "
        "a Hugging Face directory or one safetensors file of the weights alone. Without "
        "--format, an --out ending in .okm gives okm, one ending in .safetensors the weights "
        "file, anything else a Hugging Face directory.",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        type=_path,
        metavar="M",
        help=".okm, Hugging Face or run directory",
    )
    p.add_argument("--out", "-o", required=True, type=_path, help="where to write")
    p.add_argument(
        "--format",
        choices=("okm", "hf", "safetensors"),
        help="okm, hf (a directory) or safetensors (the weights alone)",
    )
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="cast the weights")
    p.set_defaults(run=run)


def _path(text: str) -> Path:
    """A path argument. An empty one (`--out "$DEST"` with DEST unset) was Path("."): the
    export wrote a model into the current folder, replacing the model files there."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a file or folder")
    return Path(text)


def run(args) -> int:
    from okto.package import Package, export_model
    from okto.package.sources import export_format
    from okto.training.signals import Terminated, terminate_at_once

    format = export_format(args.out, args.format)
    try:  # SIGTERM's default ends the process before the half-written file is removed
        with terminate_at_once():
            out = export_model(args.model, args.out, format=format, dtype=args.dtype)
    except Terminated:
        print(f"terminated (SIGTERM); {args.out} is left as it was", file=sys.stderr)
        return Terminated.exit_code
    if format == "hf":
        print(f"wrote {out}/ (Hugging Face format)")
    elif format == "okm":
        manifest = Package(out).manifest
        size = out.stat().st_size / 1e6
        print(
            f"wrote {out}: {manifest['architecture']}, {manifest['dtype']}, "
            f"{manifest['parameters']:,} parameters, {size:,.1f} MB"
        )
    else:
        print(f"wrote {out}: the weights alone, {out.stat().st_size / 1e6:,.1f} MB")
    return 0
