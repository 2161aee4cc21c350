"""LoRA under the planner's patches: the planner replaces forwards, LoRA adds forward hooks to
the layers; okto's Triton kernels (Triton's interpreter on a CPU) with the adapter on every
linear layer, the head included, give the loss, logits and gradients of the unpatched model."""

from __future__ import annotations

import pytest
import torch

import okto
from okto.language.config import AdapterConfig
from okto.planner import build_plan
from okto.training.lora import apply_lora, check_lora_reached, lora_layers
from tests.planner.test_patching import assert_same_step, step
from tests.planner.util import INTERPRETER, count_calls, gpt2, llama

EVERY_LINEAR = {
    gpt2: ["c_attn", "c_proj", "c_fc", "lm_head"],
    llama: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
}
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


@pytest.mark.parametrize("fused", ["true", "false"])
@pytest.mark.parametrize("family", [gpt2, llama])
def test_patched_and_unpatched_lora_models_agree(monkeypatch, family, fused):
    torch.manual_seed(0)
    model = family(n_layer=1) if family is gpt2 else family(num_hidden_layers=1)
    apply_lora(model, AdapterConfig(rank=2, alpha=4, target_modules=EVERY_LINEAR[family]))
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora.B, std=0.1)  # B starts at zero: no update to compare
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    expected = step(model, ids)
    linear = count_calls(monkeypatch, okto.kernels, "linear")
    program = okto.parse(f"ACCELERATE {{ fused_ops: {fused} }}", "t.okt")
    with build_plan(program, machine=INTERPRETER, model=model).apply(model):
        check_lora_reached(model)
        actual = step(model, ids)
    assert linear  # okto's GEMMs ran the hooked layers
    assert all(".lora." in name for name in actual[2])  # the frozen base has no gradient
    assert_same_step(expected, actual, TOLERANCE)
    torch.testing.assert_close(actual[1], expected[1], **TOLERANCE)  # the hooked head's logits
