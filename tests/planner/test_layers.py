"""Which implementation runs each layer kind, and the reason the plan gives."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import GPT2ForSequenceClassification, MistralConfig

from okto.errors import UsageError
from okto.planner import KINDS, Machine
from okto.planner.plan import TUNING_NOTE
from tests.planner.util import CPU, H100, INTERPRETER, gpt2, gpt2_config, llama_config, plan

GPT2 = gpt2_config()

# (text, machine, model, kind, impl, words the reason (or what runs) must hold)
CASES = [
    ("", H100, GPT2, "gemm", "okto", "Conv1D"),
    ("", H100, GPT2, "attention", "okto", "flash attention"),
    ("", H100, GPT2, "layernorm", "okto", "layer_norm"),
    ("", H100, GPT2, "softmax", "okto", "inside okto flash attention"),
    ("", H100, GPT2, "cross_entropy", "okto", "never materialised"),
    ("", H100, GPT2, "activation", "okto", "epilogue"),
    ("ACCELERATE { fused_ops: false }", H100, GPT2, "activation", "okto", "gelu (tanh) after"),
    (
        "ACCELERATE { fused_ops: false }",
        H100,
        GPT2,
        "cross_entropy",
        "okto",
        "ACCELERATE.fused_ops is false (t.okt",
    ),
    (
        "ACCELERATE { gemm: native\nfused_ops: true }",
        H100,
        GPT2,
        "gemm",
        "native",
        "ACCELERATE.gemm: native",
    ),
    (
        "ACCELERATE { gemm: native\nfused_ops: true }",
        H100,
        GPT2,
        "activation",
        "okto",
        "cuBLASLt GEMM epilogue",
    ),
    (
        "ACCELERATE { gemm: native\nfused_ops: true }",
        H100,
        gpt2_config(activation_function="gelu"),
        "activation",
        "okto",
        "gelu (erf) after mlp.c_fc auto: okto where its kernels run; cuBLASLt's GELU epilogue "
        "has the tanh form only",
    ),
    ('BLAS { backend: "cublas" }', H100, GPT2, "layernorm", "native", "BLAS.backend: cublas"),
    (
        'BLAS { backend: "cublas" }\nACCELERATE { attention: oktoblas }',
        H100,
        GPT2,
        "attention",
        "okto",
        "ACCELERATE.attention: oktoblas",
    ),
    ('BLAS { backend: "oktoblas" }', H100, GPT2, "gemm", "okto", "BLAS.backend: oktoblas"),
    ("ACCELERATE { softmax: native }", H100, GPT2, "softmax", "okto", "has no effect"),
    ("ACCELERATE { attention: native }", H100, GPT2, "softmax", "native", "attention is native"),
    ("", CPU, GPT2, "gemm", "native", "no CUDA"),
    (
        'TRAIN { device: "cpu" }',
        H100,
        GPT2,
        "gemm",
        "native",
        "the device is the CPU (TRAIN.device)",
    ),
    (
        "",
        Machine(triton=True, kernel_mode="triton", interpreter=True),
        GPT2,
        "gemm",
        "okto",
        "interpreter",
    ),
    (
        "",
        Machine(gpus=H100.gpus, triton=True, kernel_mode="native"),
        GPT2,
        "gemm",
        "native",
        "OKTO_KERNELS=native",
    ),
    ("", Machine(gpus=H100.gpus, triton=False), GPT2, "attention", "native", "Triton is not"),
    ("", H100, gpt2_config(dropout=0.1), "attention", "native", "attention dropout 0.1"),
    ("", H100, gpt2_config(dropout=0.1), "softmax", "native", "attention is native"),
    (  # the request went unmentioned
        "ACCELERATE { softmax: oktoblas }",
        H100,
        gpt2_config(dropout=0.1),
        "softmax",
        "native",
        "attention is native; ACCELERATE.softmax: oktoblas has no effect there",
    ),
    ("", H100, gpt2_config(activation_function="relu"), "activation", "native", "relu"),
    ("", H100, gpt2_config(activation_function="gelu"), "activation", "okto", "GELU (erf) fused"),
    ("", H100, llama_config(), "gemm", "okto", "gate/up/down_proj"),
    ("", H100, llama_config(), "layernorm", "okto", "rms_norm"),
    ("", H100, llama_config(), "attention", "okto", "rotary"),
    ("", H100, llama_config(), "activation", "native", "silu has no okto kernel in a gated"),
    # It read "gelu has no okto kernel (okto has GELU only)".
    (
        "",
        H100,
        llama_config(hidden_act="gelu"),
        "activation",
        "native",
        "gelu has no okto kernel in a gated MLP (okto fuses GELU into a plain MLP's GEMM only)",
    ),
    ("", H100, llama_config(head_dim=256), "attention", "native", "head dim 256 > 128"),
    (
        "",
        H100,
        {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 2},
        "gemm",
        "okto",
        "q/k/v/o_proj",
    ),
    (
        "",
        H100,
        MistralConfig(hidden_size=64, num_attention_heads=2),
        "gemm",
        "native",
        "architecture mistral: the planner patches GPT-2 and Llama",
    ),
    ("", H100, None, "gemm", "okto", "auto"),
    (  # it read "no CUDA" alone, though the user had forced Triton
        "",
        Machine(triton=True, kernel_mode="triton"),
        None,
        "gemm",
        "native",
        "no CUDA (OKTO_KERNELS=triton needs TRITON_INTERPRET=1 there)",
    ),
    ("OPTIMIZE { compile: true }", H100, GPT2, "gemm", "native", "auto under OPTIMIZE.compile"),
    ("OPTIMIZE { cuda_graphs: true }", H100, GPT2, "gemm", "native", "auto under OPTIMIZE.compile"),
    ("OPTIMIZE { compile: true }", H100, GPT2, "layernorm", "okto", "residual add"),
    (
        "OPTIMIZE { compile: true }",
        H100,
        llama_config(),
        "layernorm",
        "native",
        "auto under OPTIMIZE.compile: inductor fuses the norm with the residual adds",
    ),
    ("OPTIMIZE { compile: true }", CPU, GPT2, "layernorm", "native", "no CUDA"),
    ("OPTIMIZE { compile: true }", H100, GPT2, "activation", "okto", "cuBLASLt GEMM epilogue"),
    (
        "OPTIMIZE { compile: true }",
        H100,
        gpt2_config(activation_function="gelu"),
        "activation",
        "native",
        "auto under OPTIMIZE.compile: cuBLASLt's GELU epilogue has the tanh form only",
    ),
    ("OPTIMIZE { compile: true }", H100, GPT2, "attention", "okto", "flash attention"),
    ("OPTIMIZE { compile: true }", H100, GPT2, "cross_entropy", "okto", "never materialised"),
    (
        "OPTIMIZE { compile: true }\nACCELERATE { gemm: oktoblas }",
        H100,
        GPT2,
        "gemm",
        "okto",
        "ACCELERATE.gemm: oktoblas",
    ),
]


@pytest.mark.parametrize(
    ("text", "machine", "model", "kind", "impl", "words"),
    CASES,
    ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)],
)
def test_layer_choice(text, machine, model, kind, impl, words):
    choice = plan(text, machine, model=model).layers[kind]
    assert choice.impl == impl
    assert words in f"{choice.runs} {choice.reason}"


@pytest.mark.parametrize(
    ("text", "machine", "model", "kind", "impl", "reason"),
    [
        (
            "ACCELERATE { softmax: oktoblas }",
            INTERPRETER,
            llama_config(attention_dropout=0.1),
            "softmax",
            "native",
            "attention is native; ACCELERATE.softmax: oktoblas has no effect there",
        ),
        (
            "ACCELERATE { activation: oktoblas }",
            H100,
            llama_config(),
            "activation",
            "native",
            "silu has no okto kernel in a gated MLP (okto fuses GELU into a plain MLP's GEMM "
            "only), although ACCELERATE.activation: oktoblas",
        ),
        ("OPTIMIZE { compile: true }", CPU, GPT2, "layernorm", "native", "no CUDA"),
        (
            "ACCELERATE { softmax: native }",
            H100,
            None,
            "softmax",
            "okto",
            "part of the attention kernel; ACCELERATE.softmax: native has no effect there",
        ),
    ],
    ids=["interpreter-softmax", "model-refuses-a-request", "compile-on-cpu", "model-unknown"],
)
def test_reasons_say_what_decided(text, machine, model, kind, impl, reason):
    """The softmax row read 'ACCELERATE.softmax: oktoblas; Triton's interpreter (OKTO_KERNELS)
    has no effect there'; a kind the model kept native hid the field that asked for okto
    beside it (the table showed that field as the decider); a CPU plan said 'no CUDA,
    although auto under OPTIMIZE.compile: ...' of a request the file never made; and planned
    without a model, softmax read native beside okto attention, whose kernel it is part of."""
    choice = plan(text, machine, model=model).layers[kind]
    assert (choice.impl, choice.reason) == (impl, reason)


def test_the_deciding_field_and_its_origin():
    text = 'PROJECT "p"\nACCELERATE {\n  layernorm: native\n}'
    choice = plan(text, H100, model=GPT2).layers["layernorm"]
    assert (choice.to_dict()["field"], choice.origin) == ("ACCELERATE.layernorm", "t.okt:3:14")


def test_modules_of_other_classes_and_dtypes():
    model = gpt2().to(torch.float64)
    layers = plan("", H100, model=model).layers
    assert all(c.impl == "native" for c in layers.values())
    assert "parameters are float64" in layers["gemm"].reason
    assert plan("", H100, model=model.transformer).model.supported is False


def test_another_class_of_a_family_is_named():
    """GPT2ForSequenceClassification read 'architecture GPT2ForSequenceClassification (gpt2):
    the planner patches GPT-2 and Llama', as if GPT-2 were not one of them."""
    model = GPT2ForSequenceClassification(gpt2_config())
    assert plan("", H100, model=model).layers["gemm"].reason == (
        "class GPT2ForSequenceClassification: the planner patches gpt2's causal LM, "
        "GPT2LMHeadModel, only; layers run natively"
    )


def test_every_kind_is_planned():
    assert tuple(plan("", H100, model=GPT2).layers) == KINDS


def test_first_run_tuning_is_announced_only_where_okto_kernels_run_on_a_gpu():
    """A first GPU run spends minutes autotuning before step one; the plan says so."""
    assert TUNING_NOTE in plan("", H100, model=gpt2_config()).notes
    native = 'ACCELERATE { gemm: "native" attention: "native" layernorm: "native" '
    native += 'cross_entropy: "native" activation: "native" softmax: "native" }'
    assert TUNING_NOTE not in plan(native, H100, model=gpt2_config()).notes
    assert TUNING_NOTE not in plan("", CPU, model=gpt2_config()).notes


@pytest.mark.parametrize(
    ("text", "machine", "model", "reason"),
    [
        ("", CPU, GPT2, "no effect: the loss and GELU run natively (no CUDA)"),
        ("", CPU, None, "no effect: the loss and GELU run natively (no CUDA)"),
        ("", H100, GPT2, "GELU in the MLP's first GEMM; LM head + loss as one op"),
        ("", H100, None, "GELU in the MLP's first GEMM; LM head + loss as one op"),
        (
            "ACCELERATE { cross_entropy: native activation: native }",
            H100,
            GPT2,
            "no effect: the loss and GELU run natively (ACCELERATE.cross_entropy: native; "
            "ACCELERATE.activation: native)",
        ),
    ],
)
def test_fused_ops_says_when_nothing_fuses(text, machine, model, reason):
    """A CPU plan read "fused_ops on" beside a native loss and GELU."""
    setting = plan(text, machine, model=model).settings["fused_ops"]
    assert setting.value is True and setting.reason == reason


@pytest.mark.parametrize(
    ("text", "model", "why"),
    [
        ("", gpt2_config(), "GELU in the MLP's first GEMM; LM head + loss as one op"),
        ("", llama_config(), "LM head + loss as one op"),
        ("ACCELERATE { cross_entropy: native }", gpt2_config(), "GELU in the MLP's first GEMM"),
    ],
)
def test_fused_ops_says_what_it_fuses_in_this_model(text, model, why):
    """A Llama plan said 'GELU in the MLP's first GEMM', which Llama's gated MLP never has."""
    assert plan(text, H100, model=model).settings["fused_ops"].reason == why


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("gpt2", "of type str; pass an nn.Module, a transformers config or a config dict"),
        ({"hidden_size": 64}, "model_type None, which names no transformers model type"),
        ({"model_type": "gtp2"}, "model_type 'gtp2', which names no transformers model type"),
    ],
)
def test_a_model_that_is_none_of_the_three_is_refused(model, message):
    """A hub name planned as architecture "unknown", every layer native and no word why; a
    config dict without model_type was a KeyError."""
    with pytest.raises(UsageError, match=re.escape(message)):
        plan("", H100, model=model)
