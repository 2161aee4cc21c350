"""The OKTO_* variables that steer the kernels: defaults, and refusals that name the fix."""

from __future__ import annotations

import pytest

from okto.cli import main
from okto.errors import EXIT_INVALID
from okto.kernels import KernelError, environment


@pytest.mark.parametrize("name", sorted(environment.VARIABLES))
def test_unset_or_empty_gives_the_default(name, monkeypatch):
    monkeypatch.delenv(name, raising=False)
    assert environment.setting(name) == environment.VARIABLES[name][0]
    monkeypatch.setenv(name, " ")
    assert environment.setting(name) == environment.VARIABLES[name][0]


@pytest.mark.parametrize("name", sorted(environment.VARIABLES))
def test_a_value_outside_the_list_is_refused(name, monkeypatch):
    """`off` is none of these: it must not quietly mean the default (on, for some)."""
    monkeypatch.setenv(name, "off")
    with pytest.raises(KernelError, match=f"{name}='off' is not one of"):
        environment.check()


def test_values_are_read_case_blind(monkeypatch):
    monkeypatch.setenv("OKTO_GEMM", " Simple ")
    assert environment.setting("OKTO_GEMM") == "simple"


def test_okto_plan_refuses_a_bad_value_before_planning(tmp_path, monkeypatch, capsys):
    path = tmp_path / "train.okt"
    path.write_text('PROJECT "x"\nMODEL { architecture: "gpt2" pretrained: false }\n')
    monkeypatch.setenv("OKTO_ATTENTION_TMA", "yes")
    assert main(["plan", "-f", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "OKTO_ATTENTION_TMA='yes' is not one of auto, 1, 0" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["OKTO_DIRECT_LAUNCH", "OKTO_POISON_OUTPUTS"])
def test_a_bad_value_read_at_import_is_exit_2_too(name, tmp_path):
    """These two are read when the library is imported, which raised past the command's
    own check (a traceback, exit 1). A fresh interpreter, as a user's shell starts one."""
    import os
    import subprocess
    import sys

    path = tmp_path / "train.okt"
    path.write_text('PROJECT "x"\nMODEL { architecture: "gpt2" pretrained: false }\n')
    done = subprocess.run(
        [sys.executable, "-m", "okto", "plan", "-f", str(path)],
        env={**os.environ, name: "2"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == EXIT_INVALID
    assert f"{name}='2' is not one of" in done.stderr and "Traceback" not in done.stderr
