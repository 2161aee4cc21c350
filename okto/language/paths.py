"""Where a file or folder a `.okt` file names (MODEL.base, INFERENCE.model) lies.

A relative name is looked for next to the `.okt` file first, then in the working
directory: a file written for its own folder works from anywhere, and a name given
from where okto runs still works. `okto train`, `okto plan` and `okto infer` all look
this way, so one file means one model whichever command reads it.
"""

from __future__ import annotations

from pathlib import Path


def local_path(name: str, base_dir: Path | None) -> Path | None:
    """The existing path `name` means (`~` expanded): an absolute one as it is, a relative
    one in `base_dir` (the `.okt` file's folder) and then the working directory; None when
    there is none (a hub name, or a mistake)."""
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() or base_dir is None else [base_dir / path, path]
    return next((candidate for candidate in candidates if candidate.exists()), None)
