"""The processes and strategy settings: ENV.gpus (or --gpus) against the machine, an outside
torchrun's count, and what FSDP cannot do here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from okto.errors import MachineError, UsageError
from okto.planner import Gpu
from tests.planner.util import CPU, H100, plan

H200 = Gpu("NVIDIA H200", (9, 0), 140 * 10**9)
TWO = replace(H100, gpus=(H200, H200))


def settings(text: str, machine):
    resolved = plan(text, machine)
    return resolved.settings["processes"], resolved.settings["strategy"], resolved.notes


def test_one_process_by_default_and_strategy_has_no_effect_there():
    processes, strategy, notes = settings('TRAIN { strategy: "fsdp" }', TWO)
    assert (processes.value, processes.reason) == (1, "one process")
    assert strategy.value == "fsdp" and "no effect" in strategy.reason
    assert any("TRAIN.strategy" in note and "no effect" in note for note in notes)


def test_one_process_per_gpu():
    processes, strategy, _ = settings('ENV { gpus: 2 }\nTRAIN { strategy: "FSDP" }', TWO)
    assert processes.value == 2 and processes.to_dict()["field"] == "ENV.gpus"
    assert "cuda:0 to cuda:1" in processes.reason
    assert strategy.value == "fsdp" and "sharded" in strategy.reason


def test_cpu_processes_only_when_the_cpu_is_asked_for():
    with pytest.raises(MachineError, match=r"2 GPUs, but this machine has none.*TRAIN.device=cpu"):
        plan("ENV { gpus: 2 }", CPU)
    processes, strategy, _ = settings('ENV { gpus: 2 }\nTRAIN { device: "cpu" }', CPU)
    assert processes.value == 2 and "gloo" in processes.reason
    assert strategy.value == "ddp"


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("ENV { gpus: 3 }", MachineError, "3 processes, one per GPU, but this machine has 2"),
        ('ENV { gpus: 2 }\nTRAIN { device: "cuda:1" }', UsageError, "names one GPU"),
        (
            'ENV { gpus: 2 }\nTRAIN { strategy: "fsdp" precision: "fp16" }',
            UsageError,
            "fp16 needs loss scaling",
        ),
        (
            'ENV { gpus: 2 }\nTRAIN { strategy: "fsdp" }\nMODEL { ADAPTER { rank: 4 } }',
            UsageError,
            "LoRA",
        ),
    ],
    ids=["too-many", "one-gpu-named", "fsdp-fp16", "fsdp-lora"],
)
def test_what_cannot_run_is_an_error(text, error, words):
    with pytest.raises(error, match=words):
        plan(text, TWO)


def test_an_outside_torchrun_decides_the_count():
    launched = replace(TWO, world=4, local_world=2)
    processes, _, notes = settings("ENV { gpus: 8 }", launched)
    assert (processes.value, processes.origin) == (4, "torchrun")
    assert "2 on this node" in processes.reason
    assert any("torchrun started 2" in note for note in notes)
    with pytest.raises(MachineError, match="torchrun asks for 4 processes"):
        plan("", replace(TWO, world=4, local_world=4))
    on_cpu, _, _ = settings("", replace(CPU, world=2, local_world=2))  # its own choice: gloo
    assert on_cpu.value == 2 and "gloo" in on_cpu.reason


def test_cuda_graphs_stay_with_one_process():
    resolved = plan("ENV { gpus: 2 }\nOPTIMIZE { cuda_graphs: true }", TWO)
    assert resolved.settings["cuda_graphs"].value is False
    assert any("cuda_graphs" in note and "2 processes" in note for note in resolved.notes)
    assert plan("OPTIMIZE { cuda_graphs: true }", TWO).settings["cuda_graphs"].value is True
