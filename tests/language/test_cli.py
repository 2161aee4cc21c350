"""`okto check`, `okto schema`, `okto init`, and that none of them (nor
`okto --help`) imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from okto.cli import main
from okto.language import InvalidProgram, load
from okto.language.diagnostics import STOPPED_EARLY
from okto.language.schema import json_schema
from tests.language.util import ROOT


@pytest.fixture
def okt(tmp_path):
    def write(text: str, name: str = "t.okt"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return str(path)

    return write


def test_check_a_valid_file(okt, capsys):
    path = okt('PROJECT "x"\nTRAIN { epochs: 1 }\n')
    assert main(["check", "-f", path]) == 0
    assert capsys.readouterr().out == f"{path}: valid\n"


def test_check_an_invalid_file(okt, capsys):
    path = okt("TRAIN {\n  epoch: 1\n  batch_size: big\n}\n")
    assert main(["check", "-f", path]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:3: error: unknown field 'epoch' in TRAIN (did you mean 'epochs'?)" in err
    assert "    epoch: 1\n    ^^^^^\n" in err
    assert f"{path}:3:15: error: batch_size: expected a whole number, got 'big'" in err
    assert err.endswith(f"{path}: 2 errors\n")


def test_check_a_syntax_error(okt, capsys):
    path = okt("PROJECT “x”\n")
    assert main(["check", "-f", path]) == 2
    assert (
        f"{path}:1:9: error: typographic quote “ is not a string quote" in capsys.readouterr().err
    )


def test_warnings_pass_unless_strict(okt, capsys):
    path = okt("MONITOR { }\nCONTROL { WHEN gpu_usage > 90% { STOP } }\n")
    assert main(["check", "-f", path]) == 0
    captured = capsys.readouterr()
    assert "warning: MONITOR is recognised" in captured.err
    assert "note: gpu_usage is read from the GPU" in captured.err
    assert captured.out == f"{path}: valid (1 warning)\n"
    assert main(["check", "-f", path, "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1:1: error: MONITOR is recognised" in err
    assert "note: gpu_usage" in err  # notes stay notes


def test_strict_passes_with_notes_only(okt):
    path = okt("CONTROL { WHEN gpu_usage > 90% { STOP } }\n")
    assert main(["check", "-f", path, "--strict"]) == 0


def test_check_json(okt, capsys):
    path = okt("TRAIN { epoch: 1 }\nMONITOR { }\n")
    assert main(["check", "-f", path, "--json"]) == 2
    result = json.loads(capsys.readouterr().out)
    assert result["file"] == path and result["valid"] is False
    assert [(e["line"], e["column"]) for e in result["errors"]] == [(1, 9)]
    assert result["warnings"][0]["message"].startswith("MONITOR is recognised")
    good = okt('PROJECT "x"', "good.okt")
    assert main(["check", "-f", good, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "file": good,
        "valid": True,
        "errors": [],
        "warnings": [],
        "stopped_early": False,
    }


def test_check_a_missing_file(tmp_path, capsys):
    missing = str(tmp_path / "none.okt")
    assert main(["check", "-f", missing]) == 2
    assert capsys.readouterr().err == f"{missing}: no such file\n"
    assert main(["check", "-f", missing, "--json"]) == 2
    # The shape of an invalid file's answer: editors read errors[i]["line"] and "warnings".
    # Laid out as that one is too (it was one line, its keys in another order).
    out = capsys.readouterr().out
    assert out.startswith('{\n  "file": ') and '"severity": "error",\n' in out
    assert json.loads(out) == {
        "file": missing,
        "valid": False,
        "errors": [
            {
                "severity": "error",
                "message": f"{missing}: no such file",
                "file": missing,
                "line": None,
                "column": None,
                "end_line": None,
                "end_column": None,
                "hint": None,
            }
        ],
        "warnings": [],
        "stopped_early": False,
    }


def test_check_says_when_it_stopped_before_the_end(okt, capsys):
    """Past 20 syntax errors the parser gives up: the count must not read as the whole."""
    many = okt("".join(f"B{i} {{ a: }}\n" for i in range(25)))
    assert main(["check", "-f", many]) == 2
    assert capsys.readouterr().err.endswith(
        f"{many}: 20 errors, and more after them: checking stops at that many syntax errors\n"
    )
    assert main(["check", "-f", many, "--json"]) == 2
    result = json.loads(capsys.readouterr().out)
    assert len(result["errors"]) == 20 and result["stopped_early"] is True
    with pytest.raises(InvalidProgram) as raised:
        load(many)
    assert raised.value.render().endswith("20 errors in " + many + STOPPED_EARLY)
    exactly = okt("".join(f"B{i} {{ a: }}\n" for i in range(20)), "twenty.okt")
    assert main(["check", "-f", exactly]) == 2
    assert capsys.readouterr().err.endswith(f"{exactly}: 20 errors\n")


def test_check_needs_a_file(capsys):
    assert main(["check"]) == 2


def test_schema(tmp_path, capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    out = tmp_path / "okt.schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["title"] == "OktoScript (.okt)"


def test_schema_and_init_report_a_place_they_cannot_write(tmp_path, capsys):
    """A folder named as the schema file, or a project under a file, is a message with exit 2
    (it was an OSError traceback); the schema replaces an old file whole, leaving no temp."""
    assert main(["schema", "-o", str(tmp_path)]) == 2
    assert "it is a folder" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    assert main(["init", str(tmp_path / "a-file" / "proj")]) == 2
    assert "cannot make the folder" in capsys.readouterr().err
    out = tmp_path / "okt.schema.json"
    out.write_text("old")
    assert main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == json_schema()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "okt.schema.json"]


def test_init_creates_a_valid_project(tmp_path, capsys):
    target = tmp_path / "my-project"
    assert main(["init", str(target)]) == 0
    program = load(target / "train.okt")
    assert program.config.project.name == "my-project"
    assert program.warnings == []
    train = (target / "data" / "train.jsonl").read_text().splitlines()
    val = (target / "data" / "val.jsonl").read_text().splitlines()
    assert len(train) > 100 and len(val) > 10
    assert not set(train) & set(val)
    assert all(json.loads(line)["text"] for line in train)
    assert "next: cd" in capsys.readouterr().out


def test_init_quotes_what_a_shell_and_the_file_need(tmp_path, capsys):
    """A name with a space gets a hint a shell can run, and `Ünï` stays itself in the file
    (it was written as "\\u00dcn\\u00ef"); an empty name is refused as such."""
    target = tmp_path / "my proj Ünï"
    assert main(["init", str(target)]) == 0
    assert f"next: cd '{target}' && okto check" in capsys.readouterr().out
    assert 'PROJECT "my proj Ünï"' in (target / "train.okt").read_text(encoding="utf-8")
    assert load(target / "train.okt").config.project.name == "my proj Ünï"
    assert main(["init", ""]) == 2
    assert "name the project's folder" in capsys.readouterr().err


def test_init_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["init", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_help_and_check_do_not_import_torch():
    example = ROOT / "examples" / "control-rules.okt"
    scratch = ROOT / "examples" / "tiny-from-scratch.okt"
    script = textwrap.dedent(
        f"""
        import sys
        from okto.cli import main
        main(["--help"])
        assert main(["check", "-f", {str(example)!r}]) == 0
        assert main(["check", "-f", {str(scratch)!r}]) == 0  # reads transformers' model types
        heavy = ("torch", "transformers", "datasets", "numpy", "triton")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[-1] == "[]"


def test_a_terminal_without_the_characters_gets_escapes(tmp_path):
    """stdout in ASCII (PYTHONIOENCODING=ascii, an old Windows console) printing a name it
    cannot encode was a UnicodeEncodeError traceback (for okto infer, after generating)."""
    path = tmp_path / "café.okt"
    path.write_text('PROJECT "café"\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "okto", "check", "-f", str(path)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("ascii").endswith("caf\\xe9.okt: valid\n")


@pytest.mark.parametrize("strict", [[], ["--strict"]])
def test_check_refuses_fp16_weights_as_training_does(okt, capsys, strict):
    """`MODEL.precision: fp16` without an ADAPTER passed okto check, then okto plan and
    okto train refused it (exit 2); check now says the planner's words at the value."""
    from okto.errors import UsageError
    from okto.planner.plan import build_plan

    path = okt('PROJECT "x"\nMODEL { base: "gpt2" precision: "fp16" }\n')
    assert main(["check", "-f", path, *strict]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:33: error: MODEL.precision makes the trained weights fp16" in err
    assert err.endswith(f"{path}: 1 error\n")
    (refused,) = load(path).training_errors()
    with pytest.raises(UsageError) as planned:
        build_plan(load(path))
    assert str(planned.value) == refused.message.replace(
        "MODEL.precision", f"MODEL.precision ({path}:2:33)", 1
    )
    adapter = okt('MODEL { base: "gpt2" dtype: "fp16" ADAPTER { type: "lora" } }\n', "a.okt")
    assert main(["check", "-f", adapter]) == 0
