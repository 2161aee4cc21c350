"""A record of every attribute `Plan.apply` set on a model's instances.

Only instance attributes change (a module's `forward`, its `config`), never a
class, so another model of the same class is untouched. `undo()` puts back the
very objects that were there, or removes the attribute when there was none,
in reverse order.
"""

from __future__ import annotations

from typing import Any

_ABSENT = object()


class Patches:
    """The changes made to `model`, and the layer choices they carry out.

    While patched, the model holds its own copy of its config (the attention
    hook is read from the config, which transformers shares between models built
    from one config object); changes made to `model.config` in that time go to
    the copy and leave with it on `undo()`. Usable as a context manager.
    """

    def __init__(self, model: Any, layers: dict):
        self.model = model
        self.layers = layers
        self._changes: list[tuple[Any, str, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        self._changes.append((obj, name, obj.__dict__.get(name, _ABSENT)))
        setattr(obj, name, value)

    def __len__(self) -> int:
        return len(self._changes)

    def describe(self) -> list[str]:
        """`transformer.h.0.attn.c_attn.forward` for each change, in order."""
        names = {id(m): n for n, m in self.model.named_modules()}
        return [f"{names.get(id(o), type(o).__name__) or 'model'}.{a}" for o, a, _ in self._changes]

    def undo(self) -> None:
        while self._changes:
            obj, name, old = self._changes.pop()
            if old is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, old)

    def __enter__(self) -> Patches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()
