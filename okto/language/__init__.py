"""The `.okt` language front end: text in, a validated `OktoConfig` (or
positioned diagnostics) out.

    program = okto.load("train.okt")      # or okto.parse(text, filename)
    program.config.train.batch_size       # typed, validated, with defaults
    program.source_map["train.batch_size"]  # where the value came from
"""

from okto.language.config import OktoConfig
from okto.language.diagnostics import (
    Diagnostic,
    InvalidProgram,
    OktoSyntaxError,
    OktoValidationError,
)
from okto.language.program import Origin, Program, apply_overrides, load, parse, with_overrides

__all__ = [
    "Diagnostic",
    "InvalidProgram",
    "OktoConfig",
    "OktoSyntaxError",
    "OktoValidationError",
    "Origin",
    "Program",
    "apply_overrides",
    "load",
    "parse",
    "with_overrides",
]
