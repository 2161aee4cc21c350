"""GPT-2 and Llama configurations beyond the defaults, patched as planned for an H100 (okto's ops
taking their PyTorch references on CPU tensors): one training step equals the unpatched model's,
and a layer the kernels lack stays native and says why."""

from __future__ import annotations

import pytest
import torch

from okto.planner import build_plan
from tests.planner.test_patching import FUSED, assert_same_step, batch, step
from tests.planner.util import H100, gpt2, llama

VARIANTS = {
    "gpt2-relu": (gpt2, {"activation_function": "relu"}),
    "gpt2-untied": (gpt2, {"tie_word_embeddings": False}),
    "llama-tied-gqa": (llama, {"tie_word_embeddings": True, "num_attention_heads": 4}),
    "llama-biases": (llama, {"attention_bias": True, "mlp_bias": True}),
    "llama-head-dim": (llama, {"head_dim": 48, "num_attention_heads": 4, "num_key_value_heads": 2}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_train_as_the_framework(monkeypatch, variant):
    """A relu GPT-2 raised KeyError: 'relu' (its patch looked the activation up among the
    GELUs); it now keeps the activation native and says so."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    build, overrides = VARIANTS[variant]
    torch.manual_seed(0)
    model = build(**overrides)
    ids = batch()
    expected = step(model, ids)
    plan = build_plan(FUSED, machine=H100, model=model)
    assert plan.layers["attention"].impl == "okto"
    if "relu" in variant:
        assert plan.layers["activation"].reason == "relu has no okto kernel (okto has GELU only)"
    with plan.apply(model) as patches:
        assert len(patches) > 0
        actual = step(model, ids)
    assert_same_step(expected, actual)
