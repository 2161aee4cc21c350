"""Resolution of the run-wide settings: values, the field that decided each, its origin."""

from __future__ import annotations

from dataclasses import replace

import pytest

import okto
from okto.errors import EXIT_INVALID, EXIT_MACHINE, MachineError, UsageError
from okto.language import apply_overrides
from okto.planner import build_plan
from tests.planner.util import CPU, H100, INTERPRETER, T4, plan


def at(text: str, needle: str) -> str:
    """The origin `t.okt:line:column` of the first `needle` in `text`."""
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    return f"t.okt:{line}:{offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


# (text, machine, setting, value, deciding field or None, needle locating the origin or None)
CASES = [
    ("", CPU, "device", "cpu", None, None),
    ("", H100, "device", "cuda:0", None, None),
    ("", CPU, "precision", "fp32", None, None),
    ("", H100, "precision", "bf16", None, None),
    ("", T4, "precision", "fp32", None, None),
    (
        'ENV { accelerator: "cuda" }\nTRAIN { device: "cpu" }',
        CPU,
        "device",
        "cpu",
        "TRAIN.device",
        '"cpu"',
    ),
    ('ENV { accelerator: "gpu" }', H100, "device", "cuda:0", "ENV.accelerator", '"gpu"'),
    (
        'MODEL { device: "cpu" }\nENV { accelerator: "cuda" }',
        H100,
        "device",
        "cpu",
        "MODEL.device",
        '"cpu"',
    ),
    (
        "ENV { precision: bf16 }\nTRAIN { precision: fp16 }",
        H100,
        "precision",
        "fp16",
        "TRAIN.precision",
        "fp16",
    ),
    ("ENV { precision: bf16 }", H100, "precision", "bf16", "ENV.precision", "bf16"),
    ("TRAIN { mixed_precision: true }", T4, "precision", "fp16", "TRAIN.mixed_precision", "true"),
    ("TRAIN { mixed_precision: true }", T4, "loss_scaling", True, "TRAIN.mixed_precision", "true"),
    ("TRAIN { mixed_precision: true }", H100, "precision", "bf16", "TRAIN.mixed_precision", "true"),
    ("TRAIN { mixed_precision: true }", CPU, "precision", "fp32", "TRAIN.mixed_precision", "true"),
    # false, as written: no autocast (it used to leave a GPU on its bf16 default)
    (
        "TRAIN { mixed_precision: false }",
        H100,
        "precision",
        "fp32",
        "TRAIN.mixed_precision",
        "false",
    ),
    (
        "ENV { precision: bf16 }\nTRAIN { mixed_precision: false }",
        H100,
        "precision",
        "fp32",
        "TRAIN.mixed_precision",
        "false",
    ),
    (
        "MODEL { precision: bf16 }\nTRAIN { mixed_precision: false }",
        H100,
        "precision",
        "bf16",
        "MODEL.precision",
        "bf16",
    ),
    (
        "ENV { precision: fp16 }\nTRAIN { mixed_precision: true }",
        H100,
        "precision",
        "fp16",
        "ENV.precision",
        "fp16",
    ),
    ("ENV { precision: bf16 }", CPU, "precision", "bf16", "ENV.precision", "bf16"),
    ('MODEL { dtype: "bfloat16" }', H100, "weights", "bf16", "MODEL.precision", '"bfloat16"'),
    ('MODEL { dtype: "bfloat16" }', H100, "precision", "bf16", "MODEL.precision", '"bfloat16"'),
    ("", H100, "weights", "fp32", None, None),
    ('BLAS { precision: "tf32" }', H100, "precision", "fp32", "BLAS.precision", '"tf32"'),
    ('BLAS { precision: "tf32" }', H100, "tf32", True, "BLAS.precision", '"tf32"'),
    (
        'TENSOR_CORES { enabled: false }\nBLAS { precision: "tf32" }',
        H100,
        "tf32",
        False,
        "TENSOR_CORES.enabled",
        "false",
    ),
    (
        "OPTIMIZE { tf32: true }\nTENSOR_CORES { enabled: false }",
        H100,
        "tf32",
        True,
        "OPTIMIZE.tf32",
        "true",
    ),
    ("OPTIMIZE { tf32: true }", CPU, "tf32", False, "OPTIMIZE.tf32", "true"),
    ("OPTIMIZE { tf32: true }", T4, "tf32", False, "OPTIMIZE.tf32", "true"),
    ("", H100, "tf32", False, None, None),
    ("OPTIMIZE { cuda_graphs: true }", H100, "cuda_graphs", True, "OPTIMIZE.cuda_graphs", "true"),
    ("OPTIMIZE { cuda_graphs: true }", CPU, "cuda_graphs", False, "OPTIMIZE.cuda_graphs", "true"),
    ("OPTIMIZE { compile: true }", CPU, "compile", True, "OPTIMIZE.compile", "true"),
    ("OPTIMIZE { cuda_graphs: true }", H100, "compile", True, "OPTIMIZE.cuda_graphs", "true"),
    ("OPTIMIZE { cuda_graphs: true }", CPU, "compile", False, "OPTIMIZE.compile", None),
    (
        "OPTIMIZE { memory_efficient: true }",
        CPU,
        "memory_efficient",
        True,
        "OPTIMIZE.memory_efficient",
        "true",
    ),
    ("BLAS { streams: 4 }", H100, "streams", 4, "BLAS.streams", "4"),
    ("BLAS { streams: 4 }", CPU, "streams", 1, "BLAS.streams", "4"),
    ("ENV { seed: 1 }\nTRAIN { seed: 2 }", CPU, "seed", 2, "TRAIN.seed", "2"),
    ("ENV { seed: 1 }", CPU, "seed", 1, "ENV.seed", "1"),
    ("", CPU, "seed", 0, None, None),  # unset: seeded all the same, as the trainer runs
    ("ACCELERATE { fused_ops: true }", CPU, "fused_ops", True, "ACCELERATE.fused_ops", "true"),
    ("ENV { min_memory: 16GB }", H100, "memory", "80.0 GB", "ENV.min_memory", "16GB"),
    ("", H100, "optimizer", "okto", "TRAIN.optimizer", None),
    ("", INTERPRETER, "optimizer", "okto", "TRAIN.optimizer", None),
    ("", CPU, "optimizer", "torch", "TRAIN.optimizer", None),
    ("TRAIN { optimizer: sgd }", H100, "optimizer", "torch", "TRAIN.optimizer", "sgd"),
    ("BLAS { backend: cublas }", H100, "optimizer", "torch", "BLAS.backend", "cublas"),
    ('MODEL { dtype: "bfloat16" }', H100, "optimizer", "torch", "MODEL.precision", '"bf'),
]


@pytest.mark.parametrize(
    ("text", "machine", "name", "value", "field", "needle"),
    CASES,
    ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)],
)
def test_resolution(text, machine, name, value, field, needle):
    setting = plan(text, machine).settings[name]
    assert setting.value == value
    assert setting.to_dict()["field"] == field
    assert setting.origin == (at(text, needle) if needle else "default")


# (text, machine, words the message must hold)
FAILURES = [
    ('ENV { accelerator: "cuda" }', CPU, ["ENV.accelerator", "t.okt:1:20", "no", "cpu"]),
    ('TRAIN { device: "cuda:1" }', H100, ["TRAIN.device", "cuda:1", "1 GPU"]),
    ("TRAIN { precision: fp16 }", CPU, ["TRAIN.precision", "fp16", "CUDA GPU", "fp32"]),
    ('MODEL { dtype: "float16"  ADAPTER { rank: 2 } }', CPU, ["MODEL.precision", "fp16"]),
    ("ENV { precision: bf16 }", T4, ["ENV.precision", "Tesla T4", "sm_75", "fp16"]),
    ("ENV { min_memory: 100GB }", H100, ["ENV.min_memory", "100GB", "80.0 GB"]),
]


@pytest.mark.parametrize(("text", "machine", "words"), FAILURES)
def test_machine_errors(text, machine, words):
    with pytest.raises(MachineError) as raised:
        plan(text, machine)
    assert raised.value.exit_code == EXIT_MACHINE
    for word in words:
        assert word in str(raised.value)


NOTES = [
    ("TRAIN { mixed_precision: true }", CPU, "TRAIN.mixed_precision (t.okt:1:26)"),
    ("OPTIMIZE { tf32: true }", CPU, "TF32"),
    ("OPTIMIZE { cuda_graphs: true }", CPU, "OPTIMIZE.cuda_graphs"),
    ("BLAS { streams: 2 }", CPU, "BLAS.streams"),
    ('ENV { precision: fp16 }\nBLAS { precision: "bf16" }', H100, "matmuls run in fp16"),
    ('TENSOR_CORES { precision: "fp8" }', H100, "fp8"),
    ('BLAS { kernel: "fast" }', H100, "named kernel"),
    ("TENSOR_CORES { min_matrix_size: 64 }", H100, "no effect"),
    (
        'ENV { platform: "windows" }',
        replace(CPU, platform="linux"),
        "expects windows; this machine",
    ),
    # the memory column of METRICS on a CPU run (it used to stay empty without a word)
    ("METRICS { loss gpu_memory }", CPU, "METRICS (t.okt:1:1): gpu_memory is read from a GPU"),
    ('OUTPUT { metrics: ["gpu_memory"] }', CPU, "OUTPUT.metrics (t.okt:1:19): gpu_memory"),
    # TF32 fields overruled by the one that decides (they used to say nothing)
    (
        "OPTIMIZE { tf32: true }\nTENSOR_CORES { enabled: false }",
        H100,
        "TENSOR_CORES.enabled (t.okt:2:25) is false, but OPTIMIZE.tf32 (t.okt:1:18) comes first: "
        "TF32 on",
    ),
    (
        'OPTIMIZE { tf32: false }\nTENSOR_CORES { precision: "tf32" }',
        H100,
        "TENSOR_CORES.precision (t.okt:2:27) is tf32, but OPTIMIZE.tf32 (t.okt:1:18) comes "
        "first: TF32 off",
    ),
    (
        'TENSOR_CORES { enabled: false }\nBLAS { precision: "tf32" }',
        H100,
        "BLAS.precision (t.okt:2:19) is tf32, but TENSOR_CORES.enabled (t.okt:1:25) comes first",
    ),
]


@pytest.mark.parametrize("text", ['ENV { platform: "linux" }', 'ENV { platform: "any" }', ""])
def test_no_platform_note_where_it_matches(text):
    notes = plan(text, replace(CPU, platform="linux")).notes
    assert not any("platform" in note for note in notes)


@pytest.mark.parametrize(("text", "machine", "words"), NOTES)
def test_notes(text, machine, words):
    assert any(words in note for note in plan(text, machine).notes)


@pytest.mark.parametrize(
    "text",
    [
        "OPTIMIZE { tf32: true }",  # CPU: the machine turns TF32 off, not TENSOR_CORES
        'OPTIMIZE { tf32: true }\nTENSOR_CORES { precision: "tf32" }',
        'TENSOR_CORES { precision: "tf32" }\nBLAS { precision: "tf32" }',
    ],
)
def test_tf32_fields_that_agree_have_no_overruled_note(text):
    for machine in (CPU, T4, H100):
        assert not any("comes first" in note for note in plan(text, machine).notes)


def test_tensor_cores_off_under_tf32_does_not_claim_tf32_is_off():
    """'bf16 matmuls use tensor cores regardless; only TF32 is turned off' beside a tf32 row
    that OPTIMIZE.tf32 had turned on."""
    result = plan("OPTIMIZE { tf32: true }\nTENSOR_CORES { enabled: false }", H100)
    assert result.settings["tf32"].value is True
    assert not any("only TF32 is turned off" in note for note in result.notes)
    assert any(
        "only TF32 is turned off" in note
        for note in plan("TENSOR_CORES { enabled: false }", H100).notes
    )


@pytest.mark.parametrize("machine", [CPU, H100, T4])
@pytest.mark.parametrize(
    "text", ['MODEL { dtype: "float16" }', "MODEL { precision: fp16 }\nTRAIN { precision: fp32 }"]
)
def test_fp16_weights_without_an_adapter_are_refused_on_any_machine(text, machine):
    """They planned, loss scaling on, and the first step ended in GradScaler's 'Attempting
    to unscale FP16 gradients' (or, without the scaler, fp16 gradients underflowed)."""
    with pytest.raises(UsageError) as raised:
        plan(text, machine)
    assert raised.value.exit_code == EXIT_INVALID
    assert "MODEL.precision (t.okt:1:" in str(raised.value)
    assert "TRAIN.precision: fp16" in str(raised.value)


def test_fp16_base_under_a_lora_adapter_still_plans():
    settings = plan("MODEL { precision: fp16  ADAPTER { rank: 2 } }", H100).settings
    assert (settings["weights"].value, settings["loss_scaling"].value) == ("fp16", True)


def test_command_line_beats_the_file():
    program = okto.parse("TRAIN { precision: fp32 }\nENV { seed: 3 }", "t.okt")
    program = apply_overrides(program, ["TRAIN.precision=bf16", "TRAIN.seed=9"])
    settings = build_plan(program, machine=H100).settings
    assert (settings["precision"].value, settings["precision"].origin) == ("bf16", "command line")
    assert (settings["seed"].value, settings["seed"].to_dict()["field"]) == (9, "TRAIN.seed")
    assert settings["seed"].origin == "command line"


def test_device_argument_overrides_the_file():
    setting = plan('ENV { accelerator: "cuda" }', CPU, device="cpu").settings["device"]
    assert (setting.value, setting.origin) == ("cpu", "caller")


def test_a_bare_config_has_no_positions():
    config = okto.parse("TRAIN { precision: bf16 }").config
    settings = build_plan(config, machine=H100).settings
    assert settings["precision"].origin == "set in the config"
    assert settings["device"].origin == "default"


@pytest.mark.parametrize(
    ("text", "machine", "words"),
    [
        ("", H100, ["one Triton launch"]),
        ("", CPU, ["torch's fused adamw", "no CUDA"]),
        ("TRAIN { optimizer: sgd }", H100, ["torch's sgd", "AdamW's"]),
        ('MODEL { dtype: "bfloat16" }', H100, ["bf16 weights", "fp32"]),
    ],
)
def test_optimizer_reasons(text, machine, words):
    reason = plan(text, machine).settings["optimizer"].reason
    for word in words:
        assert word in reason


def test_memory_read_off_the_machine_says_so():
    """Its origin read "default", as if okto had assumed 80 GB."""
    setting = plan("", H100).settings["memory"]
    assert (setting.value, setting.origin, setting.reason) == (
        "80.0 GB",
        "this machine",
        "NVIDIA H100 80GB HBM3",
    )


def test_fused_ops_off_says_what_runs_instead():
    """It read "off" beside "GELU in the MLP's first GEMM; LM head + loss as one op"."""
    setting = plan("ACCELERATE { fused_ops: false }", H100).settings["fused_ops"]
    assert setting.value is False
    assert setting.reason == "GELU after its GEMM; the logits materialised for the loss"


@pytest.mark.parametrize(
    ("text", "machine", "why"),
    [
        ("BLAS { precision: tf32 }", H100, "fp32 data, TF32 matmuls"),
        ("BLAS { precision: tf32 }", CPU, "fp32 data; TF32 off (the CPU has no TF32)"),
        (
            "BLAS { precision: tf32 }\nTENSOR_CORES { enabled: false }",
            H100,
            "fp32 data; TF32 off (tensor cores off)",
        ),
        (
            "BLAS { precision: tf32 }\nOPTIMIZE { tf32: false }",
            H100,
            "fp32 data; TF32 off (OPTIMIZE.tf32)",
        ),
    ],
)
def test_the_precision_row_says_tf32_only_where_tf32_runs(text, machine, why):
    """BLAS.precision: tf32 gave 'fp32 data, TF32 matmuls' beside a tf32 row that was off."""
    result = plan(text, machine)
    assert result.settings["precision"].value == "fp32"
    assert result.settings["precision"].reason == why
    assert result.settings["tf32"].value == (why == "fp32 data, TF32 matmuls")


@pytest.mark.parametrize(
    ("text", "machine", "decided"),
    [
        ("MODEL { precision: bf16 }\nTRAIN { precision: fp32 }", H100, "TRAIN.precision"),
        (
            "MODEL { precision: bf16 }\nTRAIN { mixed_precision: true }",
            CPU,
            "TRAIN.mixed_precision",
        ),
    ],
)
def test_fp32_math_over_half_weights_says_the_weights_compute(text, machine, decided):
    """The precision row read fp32 while the bf16 weights, with no autocast, did the math."""
    result = plan(text, machine)
    precision = result.settings["precision"]
    assert (precision.value, result.settings["weights"].value) == ("fp32", "bf16")
    assert precision.reason == "no autocast: the bf16 weights compute in bf16"
    assert any(
        note.startswith(f"the precision is fp32 ({decided} (t.okt:")
        and "without autocast their matmuls run in bf16" in note
        for note in result.notes
    )
