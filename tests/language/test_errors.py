"""Each class of error (spec section 6), with its exact line, column and
message, and how diagnostics are rendered."""

from __future__ import annotations

import pytest

import okto
from okto.errors import EXIT_INVALID, MissingFileError
from okto.language import InvalidProgram, OktoSyntaxError, OktoValidationError
from tests.language.util import error, errors, program

# ---- syntax --------------------------------------------------------------------

SYNTAX = [
    (
        "TRAIN {\n  epochs 3\n}",
        (2, 10, "missing ':' between 'epochs' and its value"),
    ),
    (
        "TRAIN {\n  epochs = 3\n}",
        (2, 10, "use ':' between a field name and its value, not '='"),
    ),
    (
        'ENV {\n  accelerator: "gpu"\nTRAIN {\n  epochs: 3\n}\n',
        (5, 2, "the file ends inside a block: expected '}'"),
    ),
    ("}\nTRAIN { }", (1, 1, "'}' has no matching '{'")),
    ("PROJECT “demo”", (1, 9, "typographic quote “ is not a string quote")),
    ("PROJECT ‘demo’", (1, 9, "typographic quote ‘ is not a string quote")),
    ("PROJECT 'demo'", (1, 9, "strings are written between double quotes, not single quotes")),
    ('PROJECT "demo\nTRAIN { }', (1, 9, "this string is not closed before the end of the line")),
    ("ENV { min_memory: 12G }", (1, 21, "unknown unit 'G'")),
    ("TRAIN { batch_size: 8x }", (1, 22, "unknown unit 'x'")),
    ("epochs: 3", (1, 7, "'epochs:' is a field, and fields go inside a block")),
    ("TRAIN { batch_size: : 4 }", (1, 21, "unexpected ':': expected a value or '{'")),
    ("PROJECT\nTRAIN { }", (2, 1, "'PROJECT' needs a value before 'TRAIN'")),
    ("PROJECT my-bot\nTRAIN { }", (1, 9, "PROJECT takes a string in double quotes")),
    ("TRAIN\nENV { }", (2, 1, "'TRAIN' needs a body in braces before 'ENV'")),
    ("FOO\nENV { }", (2, 1, "'FOO' needs a value or a body in braces before 'ENV'")),
    (
        'PROJECT "x"\ufeff\nTRAIN { }',
        (1, 12, "unexpected invisible character U+FEFF (ZERO WIDTH NO-BREAK SPACE)"),
    ),
    ("TRAIN {\u200b}", (1, 8, "unexpected invisible character U+200B (ZERO WIDTH SPACE)")),
    (
        'DATASET { train: "d\\u0000.jsonl" }',
        (1, 18, "a string cannot hold the NUL character (U+0000)"),
    ),
    ('PROJECT "a\0b"', (1, 9, "a string cannot hold the NUL character (U+0000)")),
    ("TRAIN { epochs: é }", (1, 17, "unexpected character 'é'")),
    ("TRAIN { epochs: @ }", (1, 17, "unexpected character '@': expected a value or '{'")),
    (
        "CONTROL { IF loss = 2 { STOP } }",
        (1, 19, "unexpected '=': expected a comparison (>, <, >=, <=, ==, !=)"),
    ),
    (
        "CONTROL { IF loss > 2 STOP }",
        (1, 23, "unexpected keyword STOP: expected '{', AND or OR"),
    ),
    ("DATASET { mix: [1, 2 }", (1, 22, "unexpected '}': expected a value, ']', '{' or ','")),
    ("TRAIN { SET: 1 }", (1, 12, "unexpected ':': expected a name")),
    ("TRAIN { epochs: 3 } }", (1, 21, "'}' has no matching '{'")),
    ('PROJECT "x"\n}', (2, 1, "'}' has no matching '{'")),
    # a '}' that closes the rule, where a statement lacks its name, is not unmatched
    ("CONTROL { IF loss > 2 { DECREASE } }", (1, 34, "unexpected '}': expected a name")),
]


@pytest.mark.parametrize(("text", "expected"), SYNTAX)
def test_syntax_errors(text, expected):
    with pytest.raises(OktoSyntaxError) as caught:
        okto.parse(text, "t.okt")
    (diagnostic,) = caught.value.errors
    assert (diagnostic.line, diagnostic.column, diagnostic.message) == expected
    assert caught.value.exit_code == EXIT_INVALID
    assert (caught.value.line, caught.value.column) == expected[:2]


def test_several_syntax_errors_at_once():
    found = errors(
        """
        PROJECT "x"
        TRAIN {
          epochs 3
        }
        ENV { accelerator = "cpu" }
        MODEL {
          ADAPTER { rank: 8 alpha 16 }
        }
        OPTIMIZE { tf32: true }
        """
    )
    assert found == [
        (4, 10, "missing ':' between 'epochs' and its value"),
        (6, 19, "use ':' between a field name and its value, not '='"),
        (8, 27, "missing ':' between 'alpha' and its value"),
    ]


def test_nesting_is_bounded():
    text = "MONITOR { a: " + "[" * 100 + "]" * 100 + " }"
    (line, column, message) = error(text)
    assert (line, column, message) == (1, 77, "brackets nested more than 64 deep")


# ---- blocks and fields ---------------------------------------------------------

VALIDATION = [
    ("TRIAN { epochs: 1 }", (1, 1, "unknown block 'TRIAN' (did you mean 'TRAIN'?)")),
    ("train { epochs: 1 }", (1, 1, "unknown keyword 'train'")),
    ('LICENCE "MIT"', (1, 1, "unknown statement 'LICENCE'")),
    ('TRAIN "x"', (1, 1, "TRAIN needs a body in braces: TRAIN { ... }")),
    ('PROJECT { name: "x" }', (1, 1, 'PROJECT takes a value, not a block: PROJECT "..."')),
    (
        "TRAIN { epochs: 1 }\nTRAIN { epochs: 2 }",
        (2, 1, "TRAIN appears twice; the first is at line 1"),
    ),
    (
        'PROJECT "a"\nPROJECT "b"',
        (2, 1, "PROJECT appears twice; the first is at line 1"),
    ),
    ("TRAIN {\n  epoch: 3\n}", (2, 3, "unknown field 'epoch' in TRAIN (did you mean 'epochs'?)")),
    (
        "TRAIN { epochs: 1\n  epochs: 2 }",
        (2, 3, "epochs is set twice in TRAIN; the first is at line 1"),
    ),
    (
        "MODEL { ADAPTER { rnk: 4 } }",
        (1, 19, "unknown field 'rnk' in ADAPTER (did you mean 'rank'?)"),
    ),
    ("TRAIN { epochs }", (1, 9, "'epochs' has no value")),
    ("ENV { seed: 12 GB }", (1, 16, "unexpected 'GB' in ENV")),
    ("TRAIN { fast }", (1, 9, "unexpected 'fast' in TRAIN: expected fields written name: value")),
    ('TRAIN { "x" }', (1, 9, "TRAIN holds fields written name: value")),
    ("METRICS { loss: 1 }", (1, 11, "METRICS lists names, like: METRICS { loss perplexity }")),
    (
        'TRAIN { optimizer: "adamx" }',
        (1, 20, "optimizer: 'adamx' is not allowed here (did you mean 'adam'?)"),
    ),
    ('TRAIN { epochs: "three" }', (1, 17, "epochs: expected a whole number, got 'three'")),
    ("TRAIN { epochs: 2.5 }", (1, 17, "epochs: expected a whole number, got 2.5")),
    ("TRAIN { batch_size: 0 }", (1, 21, "batch_size: must be at least 1, got 0")),
    ("TRAIN { learning_rate: 0 }", (1, 24, "learning_rate: must be above 0, got 0")),
    ("INFERENCE { top_p: 2 }", (1, 20, "top_p: must be at most 1, got 2")),
    ("MODEL { base: 12 }", (1, 15, "base: expected a string, got 12")),
    (
        'DATASET { context_fields: "menu" }',
        (1, 27, "context_fields: expected a list [ ... ], got 'menu'"),
    ),
    (
        'DATASET { mix_datasets: [{ path: "a" }] }',
        (1, 26, "mix_datasets[0].weight: this field is required"),
    ),
    ('MODEL { device: "tpu" }', (1, 17, "expected auto, cpu, gpu, cuda or cuda:N (a GPU index)")),
    ("DATASET { max_length: [1] }", (1, 23, "max_length: expected a whole number, got a list")),
    ("DATASET { shuffle: { a: 1 } }", (1, 20, "shuffle: expected true or false, got a block")),
]


@pytest.mark.parametrize(("text", "expected"), VALIDATION)
def test_validation_errors(text, expected):
    with pytest.raises(OktoValidationError) as caught:
        okto.parse(text, "t.okt")
    (diagnostic,) = caught.value.errors
    assert (diagnostic.line, diagnostic.column, diagnostic.message) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ENV { seed: -1 }", "seed: must be at least 0, got -1"),
        ("TRAIN { seed: 4294967296 }", "seed: must be at most 4294967295, got 4294967296"),
        ("TRAIN { batch_size: 3e40 }", "batch_size: 3e+40 is too large for a whole number"),
        ('PROJECT " "', "PROJECT is empty: it names the run folder, runs/<PROJECT>/"),
        ('DATASET { train: "" }', "train is empty: name something, or leave the field out"),
        ('DATASET { mix_datasets: [{ path: "", weight: 1 }] }', "path is empty: name something"),
        ('MODEL { base: " " }', "base is empty: name something, or leave the field out"),
        ('OUTPUT { dir: "" }', "dir is empty: name something, or leave the field out"),
        ('TRAIN { resume_from_checkpoint: "" }', "resume_from_checkpoint is empty: name something"),
        ("DATASET { mix_datasets: [] }", "mix_datasets is empty: list { path, weight } entries"),
        ('DATASET { train: "C:\\new\\t.jsonl" }', "train holds a line break (\\n); in a Windows"),
        ('MODEL { base: "D:\\tiny" }', "base holds a tab (\\t); in a Windows path write"),
    ],
)
def test_numbers_the_run_cannot_take(text, message):
    """A seed numpy refuses (below 0, above 2**32 - 1) passed check and stopped okto train
    with numpy's ValueError traceback; a huge integer got pydantic's own words; an empty
    PROJECT passed and the run went to runs/model/; `train: ""` trained on every file in the
    .okt file's folder, the run's own outputs included; a Windows path's \\n and \\t became
    a line break and a tab, and the file was not found at train time."""
    (only,) = errors(text)
    assert only[2].startswith(message)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("train { }", "keywords are upper case: did you mean TRAIN?"),
        ('TRAIN { optimizer: "adamx" }', "choose one of: adamw, adam, sgd, rmsprop, adafactor"),
        ('ENV { blas_backend: "oktoblas" }', "set backend in the BLAS block"),
        ("MODEL { learning_rate: 1 }", "learning_rate is a field of TRAIN"),
        ("ENV { seed: 12 GB }", "write the unit right after the number, as in 12GB"),
        ("TRAIN { SET: 1 }", "SET is a keyword: it cannot name a field or a block"),
        ("TRAIN {\n  epochs 3\n}", "write epochs: 3"),
        ("PROJECT “demo”", 'write strings between straight double quotes: "like this"'),
        ("PROJECT\nTRAIN { }", 'for example: PROJECT "a value"'),
        ("TRAIN\nENV { }", "for example: TRAIN { ... }"),
        ("DATASET { shuffle: True }", "booleans are lower case: true"),
        ("PROJECT my cool bot # c\nTRAIN { }", 'write PROJECT "my cool bot"'),
        ("VERSION 1.10", 'write VERSION "1.10"'),
        ("DATASET { train: d/a.jsonl }", 'paths and hub names go in double quotes: "d/a.jsonl"'),
        ("MODEL { base: Qwen/Qwen2 }", 'paths and hub names go in double quotes: "Qwen/Qwen2"'),
        ("MODEL { base: ./models/x }", 'paths and hub names go in double quotes: "./models/x"'),
        (
            'DATASET { train: "C:\\data\\" }',
            '\\" is a quote inside the string: end a Windows path with \\\\ or /',
        ),
    ],
)
def test_hints(text, hint):
    with pytest.raises(InvalidProgram) as caught:
        okto.parse(text)
    assert caught.value.errors[0].hint == hint


def test_rendering_shows_file_line_column_source_and_caret():
    with pytest.raises(InvalidProgram) as caught:
        okto.parse("TRAIN {\n\tepoch: 3\n}\n", "train.okt")
    assert caught.value.render() == (
        "train.okt:2:2: error: unknown field 'epoch' in TRAIN (did you mean 'epochs'?)\n"
        "  \tepoch: 3\n"
        "  \t^^^^^\n"
        "\n"
        "1 error in train.okt"
    )


def test_the_caret_lines_up_under_wide_characters():
    """A CJK character takes two terminal cells: the caret moves two per character (it
    moved one, landing left of the culprit), and under one it is two carets wide."""
    with pytest.raises(InvalidProgram) as caught:
        okto.parse('PROJECT "日本"  TRAIN { epochs: "三" }', "t.okt")
    (diagnostic,) = caught.value.errors
    assert diagnostic.column == 31
    assert diagnostic.render().splitlines()[1:3] == [
        '  PROJECT "日本"  TRAIN { epochs: "三" }',
        "  " + " " * 32 + "^^^^",
    ]
    with pytest.raises(InvalidProgram) as caught:
        okto.parse('PROJECT "a\u200bb" TRAIN { epochs: x }', "t.okt")  # a zero-width space
    assert caught.value.errors[0].render().splitlines()[2] == "  " + " " * 29 + "^"


def test_control_characters_in_the_shown_line_are_replaced():
    """Old Mac line ends (a lone \\r) moved the terminal's cursor back mid-line and the
    source line printed over itself."""
    with pytest.raises(InvalidProgram) as caught:
        okto.parse('PROJECT "x"\rTRAIN {\r epochs 3 }', "t.okt")
    shown, marks = caught.value.errors[0].render().splitlines()[1:3]
    assert shown == '  PROJECT "x"\ufffdTRAIN {\ufffd epochs 3 }'
    assert marks.index("^") == shown.index("3")


def test_a_long_line_is_shown_around_the_caret():
    """A minified or generated file's 100 000-character line is shown as 120 characters
    around the culprit, not printed whole twice (the line and its caret's indentation)."""
    text = 'DESCRIPTION "' + "a" * 100_000 + '" TRAIN { epochs: zz }'
    with pytest.raises(InvalidProgram) as caught:
        okto.parse(text, "t.okt")
    (diagnostic,) = caught.value.errors
    assert diagnostic.column == text.index("zz") + 1
    head, shown, marks = diagnostic.render().splitlines()
    assert head == f"t.okt:1:{diagnostic.column}: error: epochs: expected a whole number, got 'zz'"
    assert shown.startswith("  ...aaa") and shown.endswith('" TRAIN { epochs: zz }')
    assert len(shown) == 2 + 3 + 120
    assert marks == " " * shown.index("zz") + "^^"


def test_diagnostic_as_json():
    with pytest.raises(InvalidProgram) as caught:
        okto.parse("TRAIN { epoch: 3 }", "t.okt")
    assert caught.value.errors[0].to_dict() == {
        "severity": "error",
        "message": "unknown field 'epoch' in TRAIN (did you mean 'epochs'?)",
        "file": "t.okt",
        "line": 1,
        "column": 9,
        "end_line": 1,
        "end_column": 14,
        "hint": None,
    }


# ---- files ---------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError) as caught:
        okto.load(tmp_path / "nope.okt")
    assert str(caught.value) == f"{tmp_path / 'nope.okt'}: no such file"
    assert caught.value.exit_code == EXIT_INVALID


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(MissingFileError, match="is a folder"):
        okto.load(tmp_path)


def test_an_empty_file_name_is_not_the_working_folder():
    """okto check -f "" said '. is a folder, not a .okt file'."""
    with pytest.raises(MissingFileError, match="no file named"):
        okto.load("")


def test_a_utf16_file_is_told_to_be_saved_as_utf8(tmp_path):
    """Windows PowerShell 5 writes UTF-16 with `>`: the hint says what to do about it."""
    path = tmp_path / "ps.okt"
    path.write_bytes('PROJECT "x"\n'.encode("utf-16"))
    with pytest.raises(OktoSyntaxError) as caught:
        okto.load(path)
    assert caught.value.errors[0].hint == "it is UTF-16 text: save it as UTF-8"


def test_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.okt"
    path.write_bytes('PROJECT "café"\nTRAIN { }\n'.encode("latin-1"))
    with pytest.raises(OktoSyntaxError) as caught:
        okto.load(path)
    (diagnostic,) = caught.value.errors
    assert (diagnostic.line, diagnostic.column) == (1, 13)
    assert diagnostic.message == "this file is not UTF-8 text (byte 0xe9)"


def test_errors_are_okto_errors_carrying_line_and_column():
    with pytest.raises(okto.OktoError) as caught:
        program("TRAIN {\n  epochs: -1\n}")
    assert (caught.value.line, caught.value.column) == (2, 11)
