"""Where a data file stops being UTF-8, so its error names the place.

okto reads text formats as UTF-8 (a byte-order mark is allowed). The readers
decode in different ways (line by line, in blocks, through `datasets`), so the
position in their own exceptions means different things; the error is built
here from the file itself instead: the line and the byte offset of the first
byte that is not UTF-8, or the encoding a byte-order mark names.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from okto.data.errors import DataError

_FIX = "save it as UTF-8"
# Longest first: a UTF-32-LE mark begins with the UTF-16-LE one.
_OTHER_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def refuse_other_encodings(path: Path) -> None:
    """Stop at once on a file whose byte-order mark says UTF-16 or UTF-32."""
    with open(path, "rb") as f:
        head = f.read(4)
    for mark, name in _OTHER_MARKS:
        if head.startswith(mark):
            raise DataError(
                f"{path} is {name} text (it starts with a {name} byte-order mark); {_FIX}"
            )


def not_utf8(path: Path) -> DataError:
    """The error for a file that failed to decode: the first bad byte's line and offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                # error.object starts with the bytes of a character the last
                # block left unfinished; error.start counts from there.
                start = error.start - (len(error.object) - len(block))
                bad = error.object[error.start]
                line += block.count(b"\n", 0, max(start, 0))
                return DataError(
                    f"{path} is not UTF-8 text: line {line} has byte 0x{bad:02X} "
                    f"at offset {offset + start:,}; {_FIX}"
                )
            offset += len(block)
            line += block.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return DataError(f"{path} is not UTF-8 text: it ends inside a character; {_FIX}")
    return DataError(f"{path} is not UTF-8 text; {_FIX}")
