"""Helpers for the planner tests: fake machines, tiny models, plans from .okt text."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import okto
from okto.planner import Gpu, Machine, build_plan

CPU = Machine(cpu_memory_bytes=16 * 10**9, triton=True)
H100 = Machine(gpus=(Gpu("NVIDIA H100 80GB HBM3", (9, 0), 80 * 10**9),), triton=True)
T4 = Machine(gpus=(Gpu("Tesla T4", (7, 5), 16 * 10**9),), triton=True)
# Triton's interpreter on this CPU (OKTO_KERNELS=triton, TRITON_INTERPRET=1).
INTERPRETER = Machine(triton=True, kernel_mode="triton", interpreter=True)


def gpt2_config(dropout: float = 0.0, **overrides) -> GPT2Config:
    values = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=101, n_positions=64)
    values |= dict(attn_pdrop=dropout, resid_pdrop=dropout, embd_pdrop=dropout)
    return GPT2Config(**(values | overrides))


# Llama-shaped sizes, also used for other Llama-like families (Mistral).
LLAMA_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=101,
    max_position_embeddings=64,
)


def llama_config(**overrides) -> LlamaConfig:
    return LlamaConfig(**(LLAMA_SIZES | overrides))


def gpt2(**overrides) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(gpt2_config(**overrides))


def llama(**overrides) -> LlamaForCausalLM:
    return LlamaForCausalLM(llama_config(**overrides))


def count_calls(monkeypatch, owner, name: str) -> list:
    """Wrap `owner.name` (for the test's duration) so each call appends to the returned list."""
    calls = []
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def plan(text: str, machine: Machine = CPU, **kwargs):
    return build_plan(okto.parse(text, "t.okt"), machine=machine, **kwargs)
