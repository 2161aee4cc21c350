"""okto as a notebook user imports it: light, every public name discoverable and reachable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _fresh(script: str) -> list[str]:
    """The lines a fresh interpreter prints running `script`."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def test_import_okto_is_light_and_dir_lists_the_lazy_names():
    """dir(okto) listed only 'annotations', 'lazy' and 'lazy_exports', so tab completion
    showed none of okto.load, okto.train, okto.kernels."""
    imported, listed = _fresh(
        """
        import sys
        import okto
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "okto")))
        print(sorted(set(okto.__all__) - set(dir(okto))))
        """
    )
    assert imported == "['okto', 'okto.lazy']"
    assert listed == "[]"


def test_okto_kernels_is_an_attribute_of_okto():
    """`import okto; okto.kernels.matmul(a, b)` was an AttributeError: only an explicit
    `import okto.kernels` made the attribute."""
    (line,) = _fresh(
        """
        import okto
        import numpy as np
        print(okto.kernels.matmul(np.eye(2, dtype=np.float32), np.ones((2, 2), np.float32)).sum())
        """
    )
    assert line == "4.0"
