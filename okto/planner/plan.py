"""The plan: every resolved setting and layer choice with its source, and `apply`.

plan = build_plan(program, model=model)   # raises MachineError (exit 4)
console.print(plan.table())
patches = plan.apply(model)               # instance patches; patches.undo()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from okto.language import OktoConfig, Program
from okto.planner import layers
from okto.planner.architecture import ModelFacts
from okto.planner.layers import OKTO, LayerChoice
from okto.planner.machine import Machine
from okto.planner.models import ARCHITECTURES, describe
from okto.planner.patches import Patches
from okto.planner.settings import Setting, resolve_settings
from okto.planner.sources import Sources, display


@dataclass(frozen=True)
class Plan:
    """Resolved settings and per-kind layer choices; `requests` are the choices
    before the model was known, so `apply` can meet any model."""

    settings: dict[str, Setting]
    layers: dict[str, LayerChoice]
    model: ModelFacts | None
    notes: list[str]
    requests: dict[str, LayerChoice]
    project: str | None = None

    def apply(self, model: Any) -> Patches:
        """Patch `model`'s instances (never classes) as planned for it; undo with `.undo()`."""
        choices = layers.choose(self.requests, self.settings["fused_ops"], describe(model))
        patches = Patches(model, choices)
        if all(c.impl != OKTO for c in choices.values()):
            return patches
        from torch import nn

        from okto.planner import forwards

        try:
            if choices["gemm"].impl == OKTO:
                forwards.patch_each(
                    model, nn.Linear, patches, forwards.gemm_forward, layout="out_in"
                )
            ARCHITECTURES[model.config.model_type].patch(model, choices, patches)
            if choices["attention"].impl == OKTO:
                forwards.use_okto_attention(model, patches)
            if choices["cross_entropy"].impl == OKTO:
                forwards.install_loss(model, patches, choices["cross_entropy"].fused)
        except BaseException:
            patches.undo()  # a half-patched model could be neither used nor patched again
            raise
        return patches

    def table(self):
        """The plan as a rich Table: settings, then layer kinds."""
        from rich.table import Table

        title = "okto plan" + (f": {self.project}" if self.project else "")
        caption = (
            f"model: {self.model.name}"
            if self.model
            else "model: not known yet; its architecture decides which layers okto runs"
        )
        table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
        for column in ("", "value", "why", "from"):
            table.add_column(column, overflow="fold")
        for name, s in self.settings.items():
            table.add_row(name, _shown(s.value), s.reason, _source(s.field, s.origin))
        table.add_section()
        for kind, c in self.layers.items():
            value = f"[green]{c.impl}[/]" if c.impl == OKTO else f"[yellow]{c.impl}[/]"
            why = f"{c.runs}\n[dim]{c.reason}[/]" if c.runs else c.reason
            table.add_row(kind, value, why, _source(c.field, c.origin))
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "model": self.model.to_dict() if self.model else None,
            "settings": {name: s.to_dict() for name, s in self.settings.items()},
            "layers": {kind: c.to_dict() for kind, c in self.layers.items()},
            "notes": list(self.notes),
        }


# Measured on an H100: a first GPT-2 124M run tuned for over 110 s before its first step.
TUNING_NOTE = (
    "the first steps compile and autotune okto's kernels for this GPU and these shapes: "
    "a minute or more on the first run, which Triton caches on disk, so later runs skip it"
)


def build_plan(
    program_or_config: Program | OktoConfig,
    *,
    device: str | None = None,
    model: Any = None,
    machine: Machine | None = None,
) -> Plan:
    """Resolve a program (or config) against this machine (or `machine`) and, when
    given, a model: an `nn.Module`, a transformers config or a config dict.

    `device` overrides the file's device choice. Raises `MachineError` for what
    the machine cannot do.
    """
    sources = Sources(program_or_config)
    machine = machine or Machine.detect()
    settings, notes = resolve_settings(sources, machine, device)
    settings = _after(
        settings, "fused_ops", "optimizer", layers.optimizer(sources, machine, settings)
    )
    asked = layers.requests(sources, machine, settings["device"], settings["compile"])
    facts = describe(model) if model is not None else None
    chosen = layers.choose(asked, settings["fused_ops"], facts)
    settings["fused_ops"] = layers.fused_effect(settings["fused_ops"], chosen)
    if settings["device"].value != "cpu" and any(c.impl == OKTO for c in chosen.values()):
        notes.append(TUNING_NOTE)
    return Plan(
        settings=settings,
        layers=chosen,
        model=facts,
        notes=notes,
        requests=asked,
        project=sources.config.project.name,
    )


def _after(settings: dict[str, Setting], anchor: str, name: str, setting: Setting) -> dict:
    """`settings` with `name` placed right after `anchor` (the table's order)."""
    out = {}
    for key, value in settings.items():
        out[key] = value
        if key == anchor:
            out[name] = setting
    return out


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "-" if value is None else str(value)


def _source(field: str | None, origin: str) -> str:
    return f"{display(field)}  {origin}" if field else origin
