"""A record of every attribute `Plan.apply` set on a model's instances.

Only instance attributes change (a module's `forward`, its `config`), never a
class, so another model of the same class is untouched. `undo()` puts back the
very objects that were there, or removes the attribute when there was none,
in reverse order.
"""

from __future__ import annotations

from typing import Any

from okto.errors import UsageError

_ABSENT = object()
# In a patched model's __dict__ until undo(): a second apply would stack on the first.
_MARKER = "_okto_patched"


class Patches:
    """The changes made to `model`, and the layer choices they carry out.

    While patched, the model holds its own copy of its config (the attention
    hook is read from the config, which transformers shares between models built
    from one config object); changes made to `model.config` in that time go to
    the copy and leave with it on `undo()`. Usable as a context manager.
    """

    def __init__(self, model: Any, layers: dict):
        if model.__dict__.get(_MARKER):
            # Patching again recorded the first patches' forwards as the originals, so
            # undoing the first set before the second left the model patched for good.
            raise UsageError(
                f"this {type(model).__name__} is already patched by okto; call undo() on the "
                "patches the earlier apply returned before applying a plan again"
            )
        self.model = model
        self.layers = layers
        self._changes: list[tuple[Any, str, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        self.model.__dict__[_MARKER] = True
        self._changes.append((obj, name, obj.__dict__.get(name, _ABSENT)))
        setattr(obj, name, value)

    def __len__(self) -> int:
        return len(self._changes)

    def describe(self) -> list[str]:
        """`transformer.h.0.attn.c_attn.forward` for each change, in order."""
        names = {id(m): n for n, m in self.model.named_modules()}
        return [f"{names.get(id(o), type(o).__name__) or 'model'}.{a}" for o, a, _ in self._changes]

    def undo(self) -> None:
        if not self._changes:  # undone already, or nothing was patched
            return
        while self._changes:
            obj, name, old = self._changes.pop()
            if old is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, old)
        self.model.__dict__.pop(_MARKER, None)

    def __enter__(self) -> Patches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()
