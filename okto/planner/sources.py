"""Where a configuration value came from, so the plan can say why it holds.

A `Program` knows each field's position (`source_map`); a bare `OktoConfig`
only knows which fields were set. A value whose origin is "default" counts as
unset, which is what lets a more general block speak when a specific one is
silent.
"""

from __future__ import annotations

from typing import Any

from okto.language import OktoConfig, Program

DEFAULT = "default"
SET_IN_CONFIG = "set in the config"


def display(path: str) -> str:
    """`train.precision` -> `TRAIN.precision`, as the user wrote it."""
    block, _, rest = path.partition(".")
    return f"{block.upper()}.{rest}" if rest else block.upper()


class Sources:
    """Values and origins of a configuration's fields, by dotted path."""

    def __init__(self, program_or_config: Program | OktoConfig):
        if isinstance(program_or_config, Program):
            self.config = program_or_config.config
            self._origins = {k: str(v) for k, v in program_or_config.source_map.items()}
        else:
            self.config = program_or_config
            self._origins = None

    def value(self, path: str) -> Any:
        node: Any = self.config
        for part in path.split("."):
            node = getattr(node, part)
        return node

    def origin(self, path: str) -> str:
        """`file.okt:12:3`, `command line`, `default` (or `set in the config` without a source map)."""
        if self._origins is not None:
            return self._origins.get(path, DEFAULT)
        node: Any = self.config
        *blocks, field = path.split(".")
        for block in blocks:
            node = getattr(node, block)
        return SET_IN_CONFIG if field in node.model_fields_set else DEFAULT

    def is_set(self, path: str) -> bool:
        return self.origin(path) != DEFAULT

    def where(self, path: str) -> str:
        """`TRAIN.precision at file.okt:12:3`, for messages."""
        return f"{display(path)} ({self.origin(path)})"
