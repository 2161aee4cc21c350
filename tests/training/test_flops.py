"""The FLOPs formula of docs/training.md, counted by hand for tiny models."""

from __future__ import annotations

from dataclasses import replace

import torch
import transformers

from okto.training.flops import flops_model
from okto.training.plan import RunSettings

VOCAB, WIDTH, LAYERS, T = 300, 64, 2, 32
# The Llama-style configs' common shape: MLP width 128.
SHAPE = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=LAYERS)


def _llama_layer(mlp: int) -> int:
    """q and o 64x64, k and v 64x32 (2 of 4 heads' width), two norms; `mlp` the MLP's."""
    return 2 * WIDTH * WIDTH + 2 * WIDTH * 32 + 2 * WIDTH + mlp


def test_gpt2_counts_the_tied_head_once_and_no_position_table():
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=WIDTH, n_layer=LAYERS, n_head=2, n_positions=T
        )
    )
    # ln_1, c_attn, attn c_proj, ln_2, c_fc, mlp c_proj (weights and biases)
    layer = 2 * WIDTH + (WIDTH * 3 * WIDTH + 3 * WIDTH) + (WIDTH * WIDTH + WIDTH)
    layer += 2 * WIDTH + (WIDTH * 4 * WIDTH + 4 * WIDTH) + (4 * WIDTH * WIDTH + WIDTH)
    trained = LAYERS * layer + 2 * WIDTH + VOCAB * WIDTH  # ln_f, the head (= wte)
    flops = flops_model(model)
    assert (flops.trained, flops.frozen) == (trained, 0)
    assert flops.per_token(T) == 6 * trained + 12 * LAYERS * WIDTH * T


def test_llama_untied_head_counts_and_embedding_does_not():
    config = transformers.LlamaConfig(
        **SHAPE,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    flops = flops_model(transformers.LlamaForCausalLM(config))
    trained = LAYERS * _llama_layer(3 * WIDTH * 128) + WIDTH + VOCAB * WIDTH
    assert flops.per_token(T) == 6 * trained + 12 * LAYERS * WIDTH * T


def test_a_frozen_base_costs_four_flops_a_parameter():
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=LAYERS, n_head=2)
    )
    everything = flops_model(model).trained
    model.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # the tied head (= wte) alone trains
    flops = flops_model(model)
    assert (flops.trained, flops.frozen) == (VOCAB * WIDTH, everything - VOCAB * WIDTH)


def test_a_mixture_of_experts_counts_the_experts_a_token_runs_through():
    """Mixtral routes each token through 2 of its 8 experts: counting all 8 made its
    TFLOP/s and MFU 3.4 times too high for this model."""
    config = transformers.MixtralConfig(
        **SHAPE,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
    )
    flops = flops_model(transformers.MixtralForCausalLM(config))
    expert = 3 * WIDTH * 128  # gate, up and down projections
    router = 8 * WIDTH
    trained = LAYERS * _llama_layer(2 * expert + router) + WIDTH + VOCAB * WIDTH
    assert flops.trained == trained


def test_mfu_peak_is_that_of_the_precision_the_matmuls_run_in():
    """bf16 weights without autocast (TRAIN.precision fp32, MODEL.precision bf16) compute in
    bf16; MFU was taken against the fp32 peak (15x lower on an H100), past 100%."""
    settings = RunSettings(
        device=torch.device("cpu"),
        processes=1,
        strategy="ddp",
        precision="fp32",
        weights="bf16",
        loss_scaling=False,
        optimizer_kernel=False,
        tf32=False,
        compile=False,
        cuda_graphs=False,
        memory_efficient=False,
        cudnn_benchmark=False,
        streams=1,
        seed=0,
    )
    assert settings.matmul_precision == "bf16"
    assert replace(settings, weights="fp32").matmul_precision == "fp32"
    assert replace(settings, precision="fp16", weights="fp32").matmul_precision == "fp16"


def test_layers_of_their_own_shapes_are_summed():
    """Gemma 4's config refuses a global num_attention_heads (its layers differ): the run
    stopped with transformers' AmbiguousGlobalPerLayerAttributeError before its first step."""
    config = transformers.AutoConfig.for_model(
        "gemma4_text",
        **SHAPE,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=64,
        layer_types=["sliding_attention", "full_attention"],
        hidden_size_per_layer_input=16,
        vocab_size_per_layer_input=VOCAB,
    )
    flops = flops_model(transformers.AutoModelForCausalLM.from_config(config))
    assert flops.attention == 2 * 32 + 2 * 64  # a sliding layer's heads, then a full one's
