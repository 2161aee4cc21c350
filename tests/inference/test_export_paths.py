"""`okto export`'s paths: an empty one is refused, and an export over a file keeps its mode."""

import os
import stat

import pytest

from okto.cli import main


@pytest.mark.parametrize("flag", ["--out", "--model"])
def test_an_empty_path_is_exit_2_and_writes_nothing(flag, okm_files, tmp_path, monkeypatch, capsys):
    """`--out "$DEST"` with DEST unset was Path("."): a Hugging Face export into the current
    folder, over any model there; an empty --model loaded the current folder as the model."""
    monkeypatch.chdir(tmp_path)
    paths = {"--model": str(okm_files["gpt2"]), "--out": "x.okm"}
    paths[flag] = ""
    assert main(["export", "--model", paths["--model"], "--out", paths["--out"]]) == 2
    assert f"argument {flag}/-{flag[2]}: an empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("empty", ["source", "out"])
def test_export_model_refuses_an_empty_path(empty, okm_files, tmp_path, monkeypatch):
    """The Python API took "" as the current folder, as the CLI did."""
    from okto.errors import UsageError
    from okto.package.sources import export_model

    monkeypatch.chdir(tmp_path)
    paths = {"source": str(okm_files["gpt2"]), "out": "x.okm", empty: " "}
    with pytest.raises(UsageError, match=f"{empty} is an empty path"):
        export_model(paths["source"], paths["out"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".okm", ".safetensors"])
def test_an_export_over_a_private_file_keeps_it_private(suffix, okm_files, tmp_path):
    """The file written in its place had the umask's mode (0644): a package kept private with
    chmod 600 became readable by everyone when it was exported again."""
    out = tmp_path / f"model{suffix}"
    out.write_bytes(b"an older export")
    out.chmod(0o600)
    mask = os.umask(0o022)
    try:
        assert main(["export", "--model", str(okm_files["gpt2"]), "--out", str(out)]) == 0
    finally:
        os.umask(mask)
    assert out.read_bytes() != b"an older export"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
