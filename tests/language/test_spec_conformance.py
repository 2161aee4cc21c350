"""The spec's constructs as users write them: what the audit against
shared/spec/oktoscript.md found okto doing differently."""

from __future__ import annotations

import pytest

from tests.language.util import program, warnings


@pytest.mark.parametrize("written", ["0.5", "1", "0.25"])
def test_dataset_percent_as_a_fraction_warns(written):
    """`dataset_percent: 0.5` is 0.5% (documented), though a half was likely meant."""
    (found,) = program(f"DATASET {{ dataset_percent: {written} }}").warnings
    assert (found.severity, found.line, found.column) == ("warning", 1, 28)
    assert found.message.startswith(f"dataset_percent: {written} keeps {written}% of the")
    assert found.hint.startswith("for a half write 50")


@pytest.mark.parametrize("written", ["0.5%", "50", "1.5", "100%"])
def test_dataset_percent_meant_as_percent_is_quiet(written):
    assert warnings(f"DATASET {{ dataset_percent: {written} }}") == []
