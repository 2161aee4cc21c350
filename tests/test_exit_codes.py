"""Every exit code okto returns is listed where users and callers look for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from okto import cli, errors

README = Path(__file__).resolve().parents[1] / "README.md"
# The codes okto.errors names and those the command line returns on its own.
CODES = {
    value for module in (errors, cli) for name, value in vars(module).items() if name[:5] == "EXIT_"
}


def _listed(text: str) -> set[int]:
    """The codes an "Exit codes: 0 success, 1 ..., 4 ..." sentence names."""
    sentence = re.search(r"Exit\s+codes(?: \([^)]*\))?:(.*?)\.\n", text, re.DOTALL | re.I)
    assert sentence, "no exit-code sentence"
    return {int(code) for code in re.findall(r"(?:^|,)\s*(\d+)\s", sentence.group(1))}


@pytest.mark.parametrize(
    "text", [errors.__doc__, README.read_text()], ids=["okto.errors", "README.md"]
)
def test_every_exit_code_is_documented(text):
    """A closed stdout (`okto infer ... | head`) exits 141, which neither listed."""
    assert _listed(text) == CODES
