"""Package attributes that import their module on first use.

`import okto` and the CLI must not pay for torch; packages whose public names
live in heavy modules export them through `lazy_exports`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package` resolving each name from its module in `exports`,
    then caching it in the package so later lookups are plain attribute reads."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
