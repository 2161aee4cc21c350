"""`okto plan -f FILE`: how `okto train` would run a file, without training.

Prints the resolved device, precision and switches, and which implementation
runs each layer kind, each with where its value came from. The model is read
from its config alone (MODEL.architecture, a local checkpoint or the hub
cache): nothing is built or downloaded. `--json` prints the same for programs.
Exit 4 when the machine lacks what the file asks for.
"""

from __future__ import annotations

import json
import sys

from okto.errors import EXIT_OK, OktoError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="show how a .okt file would train: kernels, precision, sources (no training)",
        description="Resolve a .okt file against this machine and print the plan.",
    )
    p.add_argument("-f", "--file", required=True, help="the .okt file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="BLOCK.field=value",
        help="override a field as okto train does (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    from okto.data.cache import size_limit
    from okto.language import with_overrides
    from okto.planner.file_plan import plan_program

    try:
        program = with_overrides(args.file, args.set)
        plan = plan_program(program)  # checks the OKTO_* kernel variables, as okto train does
        size_limit()  # and OKTO_DATA_CACHE_SIZE, which okto train checks before the data
    except OktoError as error:
        if not args.json:
            raise
        # render(), not str(): an invalid file's message is every error, not the first one
        record = {"file": args.file, "error": error.render(), "exit_code": error.exit_code}
        print(json.dumps(record))
        return error.exit_code
    if args.json:
        record = {"file": args.file, **plan.to_dict()}
        record["warnings"] = [d.to_dict() for d in program.warnings]
        print(json.dumps(record, indent=2))
        return EXIT_OK
    from rich.console import Console

    for diagnostic in program.warnings:  # the file's, as okto check and okto train print them
        print(diagnostic.render(), end="\n\n", file=sys.stderr)
    Console().print(plan.table())
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK
