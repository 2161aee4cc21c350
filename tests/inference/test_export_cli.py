"""`okto export` stopped part-way leaves the destination as it was and no temporary file."""

import os
import signal

from okto.cli import main
from okto.package import format as okm


def test_sigterm_mid_export_leaves_the_old_package_and_no_temporary_file(
    hf_dirs, okm_files, tmp_path, monkeypatch, capsys
):
    """SIGTERM's default killed the process with the half-written `.x.okm.*.tmp` beside the
    destination, never removed: now it is removed and the command exits 143."""
    out = tmp_path / "x.okm"
    out.write_bytes(okm_files["llama"].read_bytes())
    before = out.read_bytes()
    stream = okm._stream

    def terminated_while_writing(file, data, digest=None):
        length = stream(file, data, digest)
        os.kill(os.getpid(), signal.SIGTERM)
        return length

    def ignored(number, frame):  # in place of the default, which would end pytest
        pass

    monkeypatch.setattr(okm, "_stream", terminated_while_writing)
    previous = signal.signal(signal.SIGTERM, ignored)
    try:
        code = main(["export", "-m", str(hf_dirs["gpt2"]), "-o", str(out)])
        assert signal.getsignal(signal.SIGTERM) is ignored  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["x.okm"]
    assert out.read_bytes() == before
