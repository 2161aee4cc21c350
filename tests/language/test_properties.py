"""Property tests: mutated `.okt` files (tokens deleted, inserted, swapped,
characters and bytes replaced) raise nothing but `okto.OktoError`, and every
valid file round-trips through `to_dict()`."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import okto
from okto.language import InvalidProgram, OktoConfig
from tests.language.util import EXAMPLES

CORPUS = [path.read_text(encoding="utf-8") for path in EXAMPLES]
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\w[\w.%-]*|\s+|.', re.DOTALL)
VOCABULARY = [
    "{", "}", "[", "]", "(", ")", ":", ",", "=", ">", "<=", "==", "\n", "\t", " ", "#",
    '"', "“", "”", "'", "\\", "\ufeff", "\x00", "é", "TRAIN", "DATA", "CONTROL", "MONITOR",
    "IF", "WHEN", "EVERY", "SET", "DECREASE", "BY", "LOG", "SAVE", "STOP", "RETURN", "AND",
    "OR", "WITH", "on_nan", "epochs", "max_steps", "loss", "gpu_memory", "steps", "true",
    "false", "12", "-1", "0", "1e-4", "1e999", "12GB", "90%", "2s", "7B", "12G", '"x"',
    '"12GB"', '"\\q"', "params", "ADAPTER", "config", "mix_datasets", "weight",
]  # fmt: skip
CHECKS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


@st.composite
def mutated(draw) -> str:
    parts = tokens(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(parts) - 1))
        match draw(st.sampled_from(["delete", "insert", "swap", "replace", "char", "cut"])):
            case "delete":
                del parts[where]
            case "insert":
                parts.insert(where, draw(st.sampled_from(VOCABULARY)))
            case "swap":
                other = draw(st.integers(0, len(parts) - 1))
                parts[where], parts[other] = parts[other], parts[where]
            case "replace":
                parts[where] = draw(st.sampled_from(VOCABULARY))
            case "char":
                parts[where] = draw(st.text(min_size=1, max_size=3))
            case "cut":
                parts = parts[:where]
        if not parts:
            parts = [""]
    return "".join(parts)


def check(text: str) -> None:
    """Parse `text`: fine, or an OktoError whose diagnostics all render."""
    try:
        program = okto.parse(text, "m.okt")
    except InvalidProgram as invalid:
        assert invalid.errors
        for diagnostic in invalid.errors + invalid.warnings:
            assert diagnostic.line is None or diagnostic.line >= 1
            diagnostic.render()
        invalid.render()
        return
    except okto.OktoError:
        return
    data = program.to_dict()
    json.dumps(data)
    assert OktoConfig.model_validate(data) == program.config
    for warning in program.warnings:
        warning.render()


@CHECKS
@given(mutated())
def test_mutated_files_raise_only_okto_errors(text):
    check(text)


@CHECKS
@given(st.lists(st.sampled_from(VOCABULARY), max_size=40).map("".join))
def test_token_soup_raises_only_okto_errors(text):
    check(text)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_in_a_file_raise_only_okto_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "r.okt"
    path.write_bytes(data)
    try:
        okto.load(path)
    except okto.OktoError as error:
        error.render()


def test_every_example_round_trips():
    for text in CORPUS:
        check(text)
