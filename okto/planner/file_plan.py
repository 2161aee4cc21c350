"""`okto.plan`: the plan `okto plan -f FILE` shows, for Python.

The model is read from its config alone (MODEL.architecture, a local checkpoint or the
hub cache), so nothing is built or downloaded; where that config came from, or why
there is none, is the plan's first note.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from okto.language import Program, with_overrides
from okto.planner.model_config import check_adapter, check_new_model, model_config
from okto.planner.plan import Plan, build_plan


def plan(source: Program | str | os.PathLike[str], overrides: str | Iterable[str] = ()) -> Plan:
    """How `okto train` would run a `.okt` file (a path or an `okto.Program`) on this
    machine, with `overrides` (`BLOCK.field=value`, one string or a list) applied.
    Raises `MachineError` (exit 4) when the machine lacks what the file asks for."""
    return plan_program(with_overrides(source, overrides))


def plan_program(program: Program) -> Plan:
    """The plan of a loaded program; a relative MODEL.base is looked for next to its file."""
    name = program.source.name
    base_dir = Path(name).parent if name else None
    config, source = model_config(program.config.model, base_dir)
    result = build_plan(program, model=config)  # the machine's checks first: they are quick
    if config is None and program.config.env.network == "offline":
        _check_offline_base(program.config.model.base, base_dir)
    check_new_model(program.config.model, config)
    unmatched = check_adapter(program.config.model, config)
    found = f"model config from {source}" if config is not None else f"model unknown: {source}"
    result.notes.insert(0, found)
    if unmatched:
        result.notes.append(unmatched)
    return result


def _check_offline_base(base: str | None, base_dir: Path | None) -> None:
    """Offline, a hub MODEL.base that is not cached is refused as okto train refuses it,
    not noted as something train would download."""
    from okto.language.paths import local_path
    from okto.training.hub import hub_snapshot, missing_path

    if base and local_path(base, base_dir) is None and missing_path(base, base_dir) is None:
        hub_snapshot(base, offline=True)  # raises HubUnavailable, train's words
