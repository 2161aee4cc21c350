"""`okto schema`: the JSON Schema of the `.okt` language, for editors."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of the .okt language",
        description="Print the JSON Schema of the configuration a .okt file describes "
        "(blocks, fields, aliases, types, defaults), for editors and linters.",
    )
    p.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write to this file instead of stdout"
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from okto.language.schema import json_schema
    from okto.package.format import write_file

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output is None:
        print(text, end="")
    else:
        # temp + rename: an editor reading the schema never sees half of it
        write_file(args.output, text.encode("utf-8"))
    return 0
