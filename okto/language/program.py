"""A parsed and validated `.okt` file (`Program`), and the ways to get one:
`parse` (text), `load` (a path) and `apply_overrides` (`--set BLOCK.field=v`)."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any, Literal

from lark import UnexpectedInput
from pydantic import BaseModel

from okto.errors import MissingFileError, UsageError
from okto.language.collect import Collector, Location, Path
from okto.language.config import (
    BLOCK_KEYWORDS,
    HEADER_KEYWORDS,
    OktoConfig,
    spellings,
    training_refusals,
)
from okto.language.diagnostics import (
    Diagnostic,
    OktoSyntaxError,
    OktoValidationError,
    Source,
    Span,
    suggestion,
)
from okto.language.parser import parse_document, parse_value
from okto.language.resolve import dict_value, model_in, resolve, resolve_value
from okto.language.syntax import Str
from okto.language.validation import validate

COMMAND_LINE = "command line"


@dataclass(frozen=True)
class Origin:
    """Where a resolved value came from: a file position, a default, or the
    command line."""

    kind: Literal["file", "default", "command line"]
    file: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.kind == "file":
            return f"{self.file}:{self.line}:{self.column}"
        return self.kind


DEFAULT = Origin("default")


class Program:
    """A valid `.okt` file.

    `config` is the validated `OktoConfig`; `warnings` holds the warnings and
    notes (`Diagnostic`s, each with `.render()`); `source_map` maps each
    dotted config path (`"train.batch_size"`, `"control[0]"`) to its `Origin`.
    """

    def __init__(
        self,
        source: Source,
        config: OktoConfig,
        warnings: list[Diagnostic],
        inputs: dict[str, Any],
        locations: dict[Path, Location],
        resolution_warnings: list[Diagnostic],
    ):
        self.source = source
        self.config = config
        self.warnings = warnings
        self.source_map = _source_map(config, locations)
        self._inputs = inputs
        self._locations = locations
        self._resolution_warnings = resolution_warnings

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data, canonical names throughout;
        `OktoConfig.model_validate` turns it back into `config`.

        INFERENCE keeps only the fields the file or command line set: a trained
        model carries them as its own generation defaults, and okto's defaults
        must not override its base model's generation_config."""
        data = self.config.model_dump(mode="json")
        data["inference"] = self.config.inference.model_dump(mode="json", exclude_unset=True)
        return data

    def training_errors(self) -> list[Diagnostic]:
        """What `okto train` and `okto plan` would refuse in this file, at the fields'
        positions, for `okto check` to report as they word it."""
        errors = []
        for dotted, problem in training_refusals(self.config):
            path = tuple(dotted.split("."))
            block, *rest = path
            message = ".".join([block.upper(), *rest]) + f" {problem}"
            errors.append(self.diagnostic_at(dotted, "error", message))
        return errors

    def diagnostic_at(self, dotted: str, severity: str, message: str) -> Diagnostic:
        """A diagnostic at the value of field `dotted` (`model.config.n_layer`), or of the
        whole file where the file does not write it."""
        location = self._locations.get(tuple(dotted.split(".")))
        if location is None:
            return Diagnostic(severity, message, self.source, None)
        return Diagnostic(severity, message, location.source, location.span)

    def __repr__(self) -> str:
        return f"<Program {self.source.name}: {len(self.warnings)} warnings>"


def parse(text: str, filename: str | None = None) -> Program:
    """Parse and validate `.okt` text; raise `OktoSyntaxError` or
    `OktoValidationError` (both `okto.OktoError`) listing what is wrong."""
    if not isinstance(text, str):
        raise UsageError(
            f"okto.parse takes .okt text, not {type(text).__name__}; "
            "to read a file, use okto.load(path)"
        )
    source = Source(text.removeprefix("\ufeff"), filename)
    resolution = resolve(parse_document(source))
    try:
        config, warnings = validate(resolution.inputs, resolution.locations, source)
    except OktoValidationError as invalid:
        errors = resolution.errors + invalid.errors
        raise OktoValidationError(_in_order(errors), resolution.warnings) from None
    if resolution.errors:
        raise OktoValidationError(_in_order(resolution.errors), resolution.warnings)
    return Program(
        source,
        config,
        _in_order(resolution.warnings + warnings),
        resolution.inputs,
        resolution.locations,
        resolution.warnings,
    )


def load(path: str | os.PathLike[str]) -> Program:
    """Read and parse a `.okt` file (UTF-8, a byte-order mark is fine)."""
    if not os.fspath(path):  # Path("") is ".", which would be reported as a folder
        raise MissingFileError("no file named: give the path of a .okt file")
    looks_like_text = isinstance(path, str) and ("\n" in path or "{" in path)
    if looks_like_text and not os.path.lexists(path):
        raise MissingFileError(
            "okto.load takes the path of a .okt file; to parse .okt text, use okto.parse(text)"
        )
    path = FilePath(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MissingFileError(f"{path} is a folder, not a .okt file") from None
    except OSError as error:
        raise MissingFileError(f"cannot read {path}: {error.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        source = Source(data.decode("utf-8-sig", errors="replace"), str(path))
        message = f"this file is not UTF-8 text (byte 0x{data[error.start]:02x})"
        offset = len(data[: error.start].decode("utf-8-sig", errors="replace"))
        hint = None
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # what Windows PowerShell 5 writes
            hint = "it is UTF-16 text: save it as UTF-8"
        raise OktoSyntaxError(
            [Diagnostic("error", message, source, source.span_at(offset), hint)]
        ) from None
    return parse(text, str(path))


def with_overrides(
    source: Program | str | os.PathLike[str], overrides: str | Iterable[str] = ()
) -> Program:
    """A `.okt` file (a path, or a Program already loaded) with `overrides` applied: what
    `okto train`, `okto plan` and their library calls start from."""
    if not isinstance(source, Program | str | os.PathLike):
        raise UsageError(
            f"the .okt file to run: a path or an okto.Program, not {type(source).__name__}"
        )
    program = source if isinstance(source, Program) else load(source)
    return apply_overrides(program, overrides) if overrides else program


def apply_overrides(program: Program, overrides: str | Iterable[str]) -> Program:
    """`program` with `BLOCK.field=value` settings applied (as `okto train
    --set TRAIN.batch_size=32` gives them; `MODEL.config.KEY=value` sets one
    key of that dict) and validated again; their origin is "command line".
    One string is one override, not a sequence of one-letter ones."""
    if not isinstance(overrides, str | Iterable):
        raise UsageError(
            "overrides: a BLOCK.field=value string, like 'TRAIN.batch_size=32', or a list of "
            f"them, not {type(overrides).__name__}"
        )
    changes = []
    for text in [overrides] if isinstance(overrides, str) else overrides:
        if not isinstance(text, str):
            raise UsageError(
                f"overrides must be BLOCK.field=value strings, like 'TRAIN.batch_size=32'; "
                f"got {text!r} ({type(text).__name__})"
            )
        changes.append(_override(text))
    return _changed(program, changes)


def with_max_steps(program: Program, steps: int) -> Program:
    """`program` training for `steps` optimizer steps in place of its epochs or max_steps
    (`okto train --max-steps`), validated again, so that its warnings (a rule past the
    run's end, say) speak of this run."""
    return _changed(program, [_override(f"TRAIN.max_steps={steps}")], drop=("train", "epochs"))


def _changed(
    program: Program, changes: list[tuple[Path, Any, Location]], drop: Path | None = None
) -> Program:
    """`program` with each (path, value, location) set, and the field at `drop` removed."""
    inputs = copy.deepcopy(program._inputs)
    locations = dict(program._locations)
    if drop is not None:
        inputs.get(drop[0], {}).pop(drop[1], None)
        locations.pop(drop, None)
    for path, value, location in changes:
        target = inputs
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
        for known in [p for p in locations if p[: len(path)] == path]:
            del locations[known]
        locations[path] = location
        for end in range(1, len(path)):  # blocks and dicts the file lacked come from here too
            locations.setdefault(path[:end], location)
    config, warnings = validate(inputs, locations, program.source)
    return Program(
        program.source,
        config,
        _in_order(program._resolution_warnings + warnings),
        inputs,
        locations,
        program._resolution_warnings,
    )


def _override(text: str) -> tuple[Path, Any, Location]:
    """Read one `BLOCK.field=value`: its config path, value and location."""
    source = Source(text, override=True)
    collect = Collector(source)
    key, equals, value_text = text.partition("=")
    if not equals:
        _fail(
            collect,
            _text_span(0, len(text)),
            "expected BLOCK.field=value, like TRAIN.batch_size=32",
        )
    path, annotation = _override_path(key, collect)
    # Pad the value so that its spans point into the whole override.
    padded = " " * (len(key) + 1) + value_text
    try:
        node = parse_value(padded, source)
    except (UnexpectedInput, OktoSyntaxError):
        # Not an .okt value (say, data/train.jsonl): take the text as a string.
        stripped = value_text.strip()
        start = len(key) + 1 + value_text.find(stripped)
        node = Str(_text_span(start, start + len(stripped)), stripped)
    value = resolve_value(collect, node, annotation, path)
    if collect.errors:
        raise OktoValidationError(collect.errors)
    return path, value, collect.locations[path]


def _override_path(key: str, collect: Collector) -> tuple[Path, Any]:
    """`TRAIN.batch_size` -> (("train", "batch_size"), its annotation);
    `MODEL.config.n_layer` -> (("model", "config", "n_layer"), the dict's value type).
    An error's caret goes under the part of `key` at fault."""
    parts = key.strip().split(".")
    starts = [len(key) - len(key.lstrip())]
    for part in parts[:-1]:
        starts.append(starts[-1] + len(part) + 1)

    def at(index: int):
        return _text_span(starts[index], starts[index] + len(parts[index]))

    if len(parts) == 1 and parts[0].upper() in HEADER_KEYWORDS:
        return ("project", HEADER_KEYWORDS[parts[0].upper()]), str
    block = BLOCK_KEYWORDS.get(parts[0].upper())
    model = model_in(OktoConfig.model_fields[block].annotation) if block else None
    if model is None:
        known = [k for k in BLOCK_KEYWORDS if k not in ("METRICS", "CONTROL")]
        _fail(
            collect,
            at(0),
            f"cannot set '{key.strip()}'{suggestion(parts[0], known)}",
            "write BLOCK.field=value, e.g. TRAIN.batch_size=32; blocks: " + ", ".join(known),
        )
    if len(parts) < 2:
        _fail(collect, at(0), f"name a field of {parts[0].upper()}: {parts[0].upper()}.field=value")
    path: Path = (block,)
    annotation: Any = model
    for index, part in enumerate(parts[1:], start=1):
        where = ".".join([parts[0].upper(), *parts[1:index]])
        if model is not None:
            names = spellings(model)
            if part not in names:
                _fail(
                    collect,
                    at(index),
                    f"unknown field '{part}' in {where}{suggestion(part, names)}",
                )
            path = (*path, names[part])
            annotation = model.model_fields[names[part]].annotation
        elif (value := dict_value(annotation)) is None:
            _fail(collect, at(index), f"{where} has no fields")
        elif not part:
            _fail(collect, at(index), f"name a key of {where}: {where}.KEY=value")
        else:  # a free-form dict (MODEL.config): the key is set or added as written
            path, annotation = (*path, part), value
        model = model_in(annotation)
    return path, annotation


def _text_span(start: int, end: int) -> Span:
    """The span of an override's characters `start` to `end` (one line)."""
    return Span(1, start + 1, 1, max(end, start + 1) + 1, start, max(end, start + 1))


def _fail(collect: Collector, span, message: str, hint: str | None = None):
    collect.error(span, message, hint)
    raise OktoValidationError(collect.errors)


def _in_order(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=lambda d: (d.source.name, d.span.start if d.span else -1))


def _source_map(config: OktoConfig, locations: dict[Path, Location]) -> dict[str, Origin]:
    result: dict[str, Origin] = {}

    def origin(path: Path) -> Origin:
        location = locations.get(path)
        if location is None:
            return DEFAULT
        if location.source.override:
            return Origin(COMMAND_LINE)
        span = location.span
        return Origin("file", location.source.name, span.line, span.column)

    def walk(model: BaseModel, path: Path) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            result[_dotted((*path, name))] = origin((*path, name))
            if isinstance(value, BaseModel):
                walk(value, (*path, name))
            elif isinstance(value, dict):  # MODEL.config: each key has its own origin
                for key in value:
                    result[_dotted((*path, name, key))] = origin((*path, name, key))
            elif name == "control":
                for index in range(len(value)):
                    result[_dotted(("control", index))] = origin(("control", index))

    walk(config, ())
    return result


def _dotted(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
