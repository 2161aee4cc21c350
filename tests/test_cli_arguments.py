"""`okto train`'s own arguments, refused in words (exit 2) before the file is read."""

from __future__ import annotations

from okto.cli import main


def test_an_empty_resume_is_refused_not_a_fresh_run(tmp_path, monkeypatch, capsys):
    """`--resume ""` (an unset shell variable) passed the folder check, Path("") being the
    working folder, then counted as no --resume: a fresh run that set the checkpoints aside."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-f", "missing.okt", "--resume", ""]) == 2
    assert "--resume takes auto or a checkpoint folder" in capsys.readouterr().err


def test_a_resume_that_names_a_file_points_at_its_folder(tmp_path, monkeypatch, capsys):
    """`--resume .../step-0000004/trainer.json` said 'no such checkpoint folder', though the
    path was there."""
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "step-0000004" / "trainer.json"
    state.parent.mkdir()
    state.write_text("{}")
    assert main(["train", "-f", "missing.okt", "--resume", str(state)]) == 2
    err = capsys.readouterr().err
    assert "a file; --resume takes its checkpoint folder" in err and "step-0000004)" in err
