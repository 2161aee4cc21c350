"""local_path: the one rule for files a `.okt` file names, shared by train, plan and infer."""

from __future__ import annotations

from okto.language.paths import local_path


def test_next_to_the_file_first_then_the_working_directory(tmp_path, monkeypatch):
    folder, here = tmp_path / "folder", tmp_path / "here"
    for root in (folder, here):
        (root / "both").mkdir(parents=True)
    (here / "here-only").mkdir()
    monkeypatch.chdir(here)
    assert local_path("both", folder) == folder / "both"
    assert local_path("here-only", folder).resolve() == here / "here-only"
    assert local_path("both", None).resolve() == here / "both"
    assert local_path(str(folder / "both"), here) == folder / "both"  # absolute: as it is
    assert local_path("nobody/no-such-model", folder) is None  # a hub name
