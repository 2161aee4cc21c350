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
    then caching it in the package so later lookups are plain attribute reads.

    A name mapped to the package's own submodule of that name (`"kernels": "okto.kernels"`)
    is the submodule itself. The package also gets a `__dir__` that lists the names not yet
    imported, so `dir()` and a notebook's tab completion show them.
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> object:
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = importlib.import_module(source)
        value = imported if source == f"{package}.{name}" else getattr(imported, name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *exports})

    module.__dir__ = __dir__
    return __getattr__
