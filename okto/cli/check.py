"""`okto check`: validate a `.okt` file without running anything.

Exit 0 when the file is valid (warnings are printed), 2 when it is not. With
`--strict`, warnings count as errors (notes never do). `--json` prints one
JSON object for editors and scripts instead of text.
"""

from __future__ import annotations

import json
import sys

from okto.errors import EXIT_INVALID, EXIT_OK, OktoError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate a .okt file (no training)",
        description="Parse and validate a .okt file and report every problem with its position.",
    )
    p.add_argument("-f", "--file", required=True, help="the .okt file to check")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    from okto.language import InvalidProgram, load

    try:
        program = load(args.file)
    except InvalidProgram as invalid:
        return _report(args, invalid.errors, invalid.warnings, invalid.stopped_early)
    except OktoError as error:
        if not args.json:
            raise
        # The shape of every other answer: a diagnostic with no position, no warnings.
        diagnostic = {"severity": "error", "message": str(error), "file": args.file}
        diagnostic |= dict.fromkeys(("line", "column", "end_line", "end_column", "hint"))
        _print_json(args.file, [diagnostic], [], stopped_early=False)
        return error.exit_code
    refused = program.training_errors()
    if not refused:  # a file okto train refuses anyway need not have its model looked at
        found = _model_findings(program)
        refused = [d for d in found if d.severity == "error"]
        program.warnings.extend(d for d in found if d.severity == "warning")
    if args.strict:
        errors = [d.as_error() for d in program.warnings if d.severity == "warning"]
        notes = [d for d in program.warnings if d.severity != "warning"]
        return _report(args, [*refused, *errors], notes)
    return _report(args, refused, program.warnings)


def _model_findings(program) -> list:
    """What okto plan and okto train refuse (or warn of) in MODEL.config and ADAPTER
    target_modules, at their positions, where the model's config is known offline."""
    from pathlib import Path

    from okto.planner.model_config import check_findings

    name = program.source.name
    findings = check_findings(program.config.model, Path(name).parent if name else None)
    return [program.diagnostic_at(*finding) for finding in findings]


def _report(args, errors: list, warnings: list, stopped_early: bool = False) -> int:
    from okto.language.diagnostics import STOPPED_EARLY, counted

    valid = not errors
    if args.json:
        _print_json(
            args.file,
            [d.to_dict() for d in errors],
            [d.to_dict() for d in warnings],
            stopped_early,
        )
        return EXIT_OK if valid else EXIT_INVALID
    for diagnostic in [*errors, *warnings]:
        print(diagnostic.render(), end="\n\n", file=sys.stderr)
    if valid:
        count = sum(d.severity == "warning" for d in warnings)
        tail = f" ({counted(count, 'warning')})" if count else ""
        print(f"{args.file}: valid{tail}")
        return EXIT_OK
    tail = STOPPED_EARLY if stopped_early else ""
    print(f"{args.file}: {counted(len(errors), 'error')}{tail}", file=sys.stderr)
    return EXIT_INVALID


def _print_json(file: str, errors: list[dict], warnings: list[dict], stopped_early: bool) -> None:
    """`stopped_early`: the file holds more errors than `errors` (the parser gave up)."""
    answer = {"file": file, "valid": not errors, "errors": errors, "warnings": warnings}
    answer["stopped_early"] = stopped_early
    print(json.dumps(answer, indent=2))
