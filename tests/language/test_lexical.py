"""Lexical rules (spec section 1): encoding, comments, the version header,
strings, numbers, quantities, booleans, names."""

from __future__ import annotations

import pytest

from okto.language import InvalidProgram
from okto.language.quantities import UNITS, Quantity
from tests.language.util import error, program, warnings


def test_byte_order_mark_and_crlf_are_accepted():
    p = program('\ufeffPROJECT "bom"\r\nTRAIN {\r\n  epochs: 2\r\n}\r\n')
    assert p.config.project.name == "bom"
    assert p.config.train.epochs == 2
    assert p.source_map["train.epochs"].line == 3


def test_tabs_and_spaces_do_not_matter():
    tabs = program("TRAIN {\n\tepochs:\t2\n\t\tbatch_size: 4\n}\n")
    spaces = program("TRAIN {\n  epochs: 2\n    batch_size: 4\n}\n")
    assert tabs.to_dict() == spaces.to_dict()
    assert tabs.source_map["train.epochs"].column == 10


def test_unicode_spaces_separate_like_spaces():
    """No-break, em and ideographic spaces come in with pasted text; they were 'unexpected
    character' errors that showed nothing visible."""
    spaced = program("TRAIN {\u3000epochs:\u00a02\u2003batch_size: 4\u202f}\n")
    assert spaced.to_dict() == program("TRAIN { epochs: 2 batch_size: 4 }\n").to_dict()


def test_full_line_and_trailing_comments():
    p = program(
        """
        # a comment on its own line
        TRAIN {          # after the brace
          epochs: 2      # after a value
          # inside a block
        }                # after the closing brace
        """
    )
    assert p.config.train.epochs == 2


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2", "1.3"])
def test_known_version_headers(version):
    p = program(f'# a first comment\n# okto_version: "{version}"\nPROJECT "x"\n')
    assert p.config.language_version == version
    assert p.warnings == []


def test_missing_version_header_reads_as_1_0():
    assert program('PROJECT "x"').config.language_version == "1.0"


def test_unknown_version_is_a_warning_at_the_header():
    (found,) = warnings('\n# okto_version: "9.9"\nPROJECT "x"\n')
    assert found[:2] == (2, 1)
    assert "unknown okto_version '9.9'" in found[2]


def test_version_comment_after_the_first_statement_is_just_a_comment():
    p = program('PROJECT "x"\n# okto_version: "9.9"\n')
    assert p.config.language_version == "1.0"
    assert p.warnings == []


def test_string_escapes_and_placeholders():
    p = program(r'INFERENCE { format: "User: {input}\n\t\"quoted\" \\ \u00e9" }')
    assert p.config.inference.format == 'User: {input}\n\t"quoted" \\ é'


def test_a_tab_typed_in_a_string_is_a_tab():
    """It was reported as 'an invalid escape sequence', which the string did not have."""
    assert program('INFERENCE { format: "Q:\t{input}" }').config.inference.format == "Q:\t{input}"


def test_invalid_escape_is_an_error_with_a_hint():
    assert error('OUTPUT { dir: "C:\\data" }') == (
        1,
        15,
        "this string has an invalid escape sequence",
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("0.5", 0.5), (".5", 0.5), ("1e-4", 1e-4), ("5E-5", 5e-5), ("2.", 2.0)],
)
def test_numbers(text, value):
    assert (
        program(f"STABILITY {{ min_improvement: {text} }}").config.stability.min_improvement
        == value
    )


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("1_000", "'_' cannot group digits", "write 1000"),
        ("0x10", "numbers are written in decimal", "write 16"),
        ("0b101", "numbers are written in decimal", "write 5"),
    ],
)
def test_numbers_in_other_notations_are_named(text, message, hint):
    """They were "unknown unit '_000'" and "unknown unit 'x10'": no unit was meant."""
    with pytest.raises(InvalidProgram) as caught:
        program(f"TRAIN {{ max_steps: {text} }}")
    (diagnostic,) = caught.value.errors
    assert (diagnostic.column, diagnostic.span.end_column) == (20, 20 + len(text))
    assert (diagnostic.message, diagnostic.hint) == (message, hint)


def test_negative_numbers():
    assert program("MODEL { config { shift: -1 } }").config.model.config["shift"] == -1


@pytest.mark.parametrize("text", ["1e400", "-1e400", "1e999GB"])
def test_a_number_beyond_floating_point_is_an_error(text):
    """1e400 read as infinity, and learning_rate: 1e400 was a valid file."""
    assert error(f"TRAIN {{ learning_rate: {text} }}") == (1, 24, f"{text} is out of range")


@pytest.mark.parametrize("text", ['"1e999"', '"nan"', '"-inf"'])
def test_a_quoted_number_must_be_finite(text):
    message = error(f"TRAIN {{ learning_rate: {text} }}")[2]
    assert message == f"learning_rate: expected a finite number, got '{text[1:-1]}'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ENV { min_memory: -1GB }", "a size cannot be negative, got -1GB"),
        ('MODEL { parameters: "-124M" }', "a count cannot be negative, got -124M"),
    ],
)
def test_sizes_and_counts_are_not_negative(text, message):
    """ENV.min_memory: -1GB and MODEL.parameters: -124M were accepted."""
    assert error(text)[2] == message


@pytest.mark.parametrize("unit", [u for u in UNITS if u])
def test_every_unit_lexes_unquoted_and_quoted(unit):
    text = f'MONITOR {{ a: 12{unit}  b: "12{unit}" }}'
    program(text)  # parses; the block is not executed
    assert Quantity.parse(f"12{unit}") == Quantity(12, unit)


@pytest.mark.parametrize("spelling", ["12GB", '"12GB"', '"12 GB"'])
def test_quoted_and_unquoted_quantities_are_the_same_value(spelling):
    memory = program(f"ENV {{ min_memory: {spelling} }}").config.env.min_memory
    assert memory == Quantity(12, "GB")
    assert memory.kind == "size"
    assert memory.base == 12e9


def test_quantity_kinds_and_base_units():
    assert Quantity.parse("120M").base == 120e6
    assert Quantity.parse("7B").kind == "count"
    assert Quantity.parse("4GiB").base == 4 * 2**30
    assert Quantity.parse("500ms").base == pytest.approx(0.5)
    assert Quantity.parse("2min").base == 120
    assert Quantity.parse("90%").fraction == pytest.approx(0.9)
    assert str(Quantity.parse("1.5B")) == "1.5B"


def test_a_size_field_needs_a_unit():
    assert error("ENV { min_memory: 12 }") == (
        1,
        19,
        "a size needs a unit, like 12GB",
    )


def test_a_quantity_of_the_wrong_kind_is_an_error():
    line, column, message = error("ENV { min_memory: 12M }")
    assert (line, column) == (1, 19)
    assert message == "expected a size, like 12GB; 12M is a count"


def test_count_and_percent_fields_take_plain_numbers():
    p = program("MODEL { parameters: 124000000 }\nDATASET { dataset_percent: 50 }")
    assert p.config.model.parameters.base == 124e6
    assert p.config.dataset.dataset_percent == Quantity(50, "%")


def test_integer_fields_take_counts():
    p = program("TRAIN { max_steps: 10K  warmup_steps: 1.5K }\nDATASET { vocab_size: 32K }")
    assert (p.config.train.max_steps, p.config.train.warmup_steps) == (10_000, 1_500)
    assert p.config.dataset.vocab_size == 32_000
    assert error("TRAIN { max_steps: 2GB }") == (
        1,
        20,
        "max_steps: expected a whole number, got 2GB",
    )


def test_integer_fields_take_quoted_counts():
    """Public files quote quantities; `max_steps: "10K"` was refused."""
    p = program('TRAIN { max_steps: "10K"  batch_size: "8" }\nDATASET { vocab_size: "32K" }')
    assert (p.config.train.max_steps, p.config.train.batch_size) == (10_000, 8)
    assert p.config.dataset.vocab_size == 32_000
    assert error('TRAIN { max_steps: "ten" }') == (
        1,
        20,
        "max_steps: expected a whole number, got 'ten'",
    )


def test_booleans_are_lower_case_only():
    assert program("DATASET { shuffle: false }").config.dataset.shuffle is False
    line, column, message = error("DATASET { shuffle: False }")
    assert (line, column) == (1, 20)
    assert message == "shuffle: expected true or false, got 'False'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TRAIN { learning_rate: true }", "learning_rate: expected a number, got true"),
        ("TRAIN { batch_size: true }", "batch_size: expected a whole number, got true"),
        ("INFERENCE { temperature: false }", "temperature: expected a number, got false"),
        (
            "CONTROL { IF loss > 1 { SET learning_rate = true } }",
            "SET learning_rate: expected a number, got true",
        ),
    ],
)
def test_number_fields_take_no_booleans(text, message):
    """pydantic read true as 1: `learning_rate: true` trained at a rate of 1, and `SET
    batch_size = true` set it to 1, without a word."""
    assert error(text)[2] == message


def test_bare_names_are_strings_and_choices_ignore_case():
    p = program("TRAIN { optimizer: AdamW  scheduler: COSINE }\nDATASET { format: jsonl }")
    assert p.config.train.optimizer == "adamw"
    assert p.config.train.scheduler == "cosine"
    assert p.config.dataset.format == "jsonl"


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [("float16", "fp16"), ("half", "fp16"), ("bfloat16", "bf16"), ("float32", "fp32")],
)
def test_precision_spellings(spelling, canonical):
    assert program(f'MODEL {{ dtype: "{spelling}" }}').config.model.precision == canonical


def test_names_may_hold_digits_dashes_and_underscores():
    p = program("METRICS { loss tokens_per_second }\nMONITOR { rouge-l: 1 }")
    assert p.config.metrics == ["loss", "tokens_per_second"]
