"""The spec's constructs as users write them: what the audit against
shared/spec/oktoscript.md found okto doing differently."""

from __future__ import annotations

import pytest

from okto.language import InvalidProgram
from tests.language.util import error, program, warnings


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


def test_statement_fields_on_the_verbs_line_belong_to_it():
    """The spec's `REPLACE with_message: "..."`: in CONTROL the field is the verb's, not a
    misplaced item; the verb's own warning covers it."""
    found = program(
        """\
        CONTROL {
          on_nan { REPLACE with_message: "retrying", level: 2  LOG "nan" }
          REPLACE with_message: "top"
        }
        """
    )
    assert [(w.line, w.column, w.message) for w in found.warnings] == [
        (2, 12, "REPLACE has no effect in training: it is an inference-time action"),
        (3, 3, "REPLACE has no effect in training: it is an inference-time action"),
    ]
    assert [a.kind for a in found.config.control[0].actions] == ["log"]


def test_a_field_after_stop_warns_and_one_on_the_next_line_is_an_error():
    assert warnings('CONTROL { IF loss > 9 { STOP reason: "x" } }') == [
        (1, 30, "'reason' has no effect: STOP takes no fields")
    ]
    assert error('CONTROL { IF loss > 9 { STOP\n reason: "x" } }')[:2] == (2, 2)


def _hints(text: str) -> list[str | None]:
    try:
        program(text)
    except InvalidProgram as invalid:
        return [d.hint for d in invalid.errors]
    raise AssertionError("the text is valid")


def test_twice_under_two_spellings_names_both():
    """`lr` then `learning_rate`, `DATA` then `DATASET`: the message names the canonical
    field, so the hint says the two spellings are one."""
    assert _hints("TRAIN { lr: 1e-3  learning_rate: 2e-3 }\nDATA { }\nDATASET { }") == [
        "lr and learning_rate are two spellings of learning_rate",
        "DATA and DATASET are two spellings of one block: merge the two into one",
    ]
    assert _hints("ENV { seed: 1  seed: 2 }\nTRAIN { }\nTRAIN { }") == [
        None,
        "merge the two into one",
    ]


def test_half_a_surrogate_pair_is_an_error():
    """json reads `\\ud83d` alone; a run folder or a log line named with it cannot be
    written, so the file says so at the string."""
    assert error('PROJECT "run\\ud83d"')[:2] == (1, 9)
    assert "surrogate" in error('DESCRIPTION "\\udc00"')[2]
    assert program('PROJECT "run\\ud83d\\ude00"').config.project.name == "run\U0001f600"


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("ADAPTER { rank: 8 }", "ADAPTER is a field of MODEL: it goes inside that block"),
        ("config { n_layer: 2 }", "config is a field of MODEL: it goes inside that block"),
        ("params { top_k: 2 }", "params is a field of INFERENCE: it goes inside that block"),
    ],
)
def test_a_sub_block_written_at_the_top_level_names_its_block(text, hint):
    assert _hints(text) == [hint]


def test_inference_verbs_take_an_argument():
    """Statements are "an upper-case action word with its arguments": `ALERT "hot"` and
    `RETRY 3` parse, and warn as the bare verbs do."""
    found = program('CONTROL { on_nan { ALERT "nan!"  LOG "x" }  IF loss > 5 { RETRY 3 } }')
    assert [(w.column, w.message.split(" has")[0]) for w in found.warnings] == [
        (20, "ALERT"),
        (59, "RETRY"),
    ]
    assert [a.kind for a in found.config.control[0].actions] == ["log"]


@pytest.mark.parametrize(
    ("op", "hint"),
    [
        ("=", "'=' is for SET; to compare, write =="),
        ("=>", "write >= (the '=' comes second)"),
        ("=<", "write <= (the '=' comes second)"),
    ],
)
def test_a_comparison_miswritten_with_equals_says_which_to_write(op, hint):
    assert _hints(f"CONTROL {{ IF loss {op} 3 {{ STOP }} }}") == [hint]


def test_a_unit_in_the_wrong_case_is_named():
    """Units are case-sensitive (`M` million, `min` minutes); `12gb` and `7b` get the
    unit they spell, quoted or not; `5m` stays ambiguous."""
    assert _hints("ENV { min_memory: 12gb }") == ["units are case-sensitive: write 12GB"]
    assert _hints("MODEL { parameters: 7b }") == ["units are case-sensitive: write 7B"]
    assert "units are case-sensitive, write 7B" in error('MODEL { parameters: "7b" }')[2]
    assert _hints("TRAIN { max_steps: 5m }")[0].startswith("a quantity is a number followed")


def test_a_quoted_quantity_beyond_floating_point_is_an_error_as_unquoted():
    """`min_memory: 1e400GB` is out of range; quoted, it was infinite bytes, and plan then
    refused the machine (exit 4) instead of the file (exit 2)."""
    unquoted = error("ENV { min_memory: 1e400GB }")
    quoted = error('ENV { min_memory: "1e400GB" }')
    assert unquoted[2] == "1e400GB is out of range"
    assert quoted == (1, 19, "1e400GB is out of range: numbers go up to about 1.8e308")
