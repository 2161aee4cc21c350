"""Where a file or folder a `.okt` file names (MODEL.base, INFERENCE.model) lies.

A relative name is looked for next to the `.okt` file first, then in the working
directory: a file written for its own folder works from anywhere, and a name given
from where okto runs still works. `okto train`, `okto plan` and `okto infer` all look
this way, so one file means one model whichever command reads it; when none is there,
`looked_in` names every place, so the user sees which folder okto took for which.
"""

from __future__ import annotations

from pathlib import Path


def candidates(name: str, base_dir: Path | None) -> list[Path]:
    """The places `name` (`~` expanded) may mean, in the order they are tried: an absolute
    path alone; a relative one in `base_dir` (the `.okt` file's folder), then in the working
    directory (once, when that is the same folder)."""
    path = Path(name).expanduser()
    if path.is_absolute() or base_dir is None:
        return [path]
    places = [base_dir / path, path]
    return places[1:] if places[0].resolve() == places[1].resolve() else places


def local_path(name: str, base_dir: Path | None) -> Path | None:
    """The first of `candidates` that exists; None when there is none (a hub name, or a
    mistake: `looked_in` says where it was looked for)."""
    return next((c for c in candidates(name, base_dir) if c.exists()), None)


def looked_in(name: str, base_dir: Path | None) -> str:
    """The places `local_path` tried, as absolute paths for a message: "/a/runs/m (next to
    the .okt file), /b/runs/m (the working directory)"."""
    places = candidates(name, base_dir)
    if len(places) == 1:
        return str(places[0].absolute())
    near, here = places
    return f"{near.absolute()} (next to the .okt file), {here.absolute()} (the working directory)"
