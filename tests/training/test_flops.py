"""The FLOPs formula of docs/training.md, counted by hand for tiny models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers

from okto.training.flops import _layers, flops_model
from okto.training.plan import RunSettings

VOCAB, WIDTH, LAYERS, T = 300, 64, 2, 32
# The Llama-style configs' common shape: MLP width 128.
SHAPE = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=LAYERS)

MLA = dict(  # DeepSeek V3's latent attention, small: 4 heads scoring with 12 + 8, values of 20
    moe_intermediate_size=32,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=12,
    qk_rope_head_dim=8,
    v_head_dim=20,
    first_k_dense_replace=LAYERS,
)


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


def _mixing(flops, seq_len: int = T) -> float:
    """The per-token FLOPs of the layers' attention: the formula less its parameters' part."""
    return flops.per_token(seq_len) - 6 * flops.trained - 4 * flops.frozen


def _keys(keys_seen, seq_len: int = T) -> float:
    """Keys a query by the formula's convention: T for causal full attention (the mask's
    skipped half not subtracted), a window or chunk in the share of the causal pairs it
    keeps, counted position by position from `keys_seen(position)`."""
    causal = sum(position + 1 for position in range(seq_len))
    return seq_len * sum(keys_seen(position) for position in range(seq_len)) / causal


def _window(size: int):
    return lambda position: min(position + 1, size)


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
        sliding_window=8,
        hidden_size_per_layer_input=16,
        vocab_size_per_layer_input=VOCAB,
    )
    flops = flops_model(transformers.AutoModelForCausalLM.from_config(config))
    # a sliding layer's 2 heads of 32 over 8 keys, then a full one's 2 heads of 64
    assert _mixing(flops) == pytest.approx(12 * (2 * 32 * _keys(_window(8)) + 2 * 64 * T))


def test_a_sliding_window_counts_the_keys_a_query_sees():
    """Mistral attends to the last `sliding_window` positions: its layers were counted at
    full attention over T keys."""
    config = transformers.MistralConfig(
        **SHAPE, num_attention_heads=4, num_key_value_heads=2, sliding_window=8
    )
    flops = flops_model(transformers.MistralForCausalLM(config))
    trained = LAYERS * _llama_layer(3 * WIDTH * 128) + WIDTH + VOCAB * WIDTH
    assert flops.trained == trained
    assert _mixing(flops) == pytest.approx(12 * LAYERS * WIDTH * _keys(_window(8)))
    assert _keys(_window(8)) < T / 2  # counted at T keys before
    # a window no shorter than the rows is full attention
    assert _mixing(flops, seq_len=8) == pytest.approx(12 * LAYERS * WIDTH * 8)


def test_qwen2_slides_its_window_above_max_window_layers():
    config = transformers.Qwen2Config(
        **SHAPE,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=1,
    )
    flops = flops_model(transformers.Qwen2ForCausalLM(config))
    assert _mixing(flops) == pytest.approx(12 * WIDTH * (T + _keys(_window(8))))


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_gemma_sliding_layers_count_their_window(model_type):
    config = transformers.AutoConfig.for_model(
        model_type,
        **SHAPE,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=8,
    )
    flops = flops_model(transformers.AutoModelForCausalLM.from_config(config))
    assert _mixing(flops) == pytest.approx(12 * 64 * (_keys(_window(8)) + T))


def test_gpt_neo_local_layers_count_the_keys_their_mask_keeps():
    model = transformers.GPTNeoForCausalLM(
        transformers.GPTNeoConfig(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            num_layers=2,
            num_heads=2,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            max_position_embeddings=T,
        )
    )
    # each layer's own causal mask (local: the last window_size positions), counted
    masks = [block.attn.attention.bias[0, 0] for block in model.transformer.h]
    keys = sum(_keys(lambda position, mask=mask: int(mask[position].sum())) for mask in masks)
    assert keys == pytest.approx(T + _keys(_window(8)))
    assert _mixing(flops_model(model)) == pytest.approx(12 * WIDTH * keys)


def test_llama4_chunked_layers_attend_within_their_chunk():
    config = transformers.AutoConfig.for_model(
        "llama4_text",
        **SHAPE,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        intermediate_size_mlp=128,
        num_local_experts=2,
        layer_types=["chunked_attention", "full_attention"],
        attention_chunk_size=8,
    )
    flops = flops_model(transformers.AutoModelForCausalLM.from_config(config))
    rows = 30  # three whole chunks and a part
    chunked = _keys(lambda position: position % 8 + 1, seq_len=rows)
    assert _mixing(flops, seq_len=rows) == pytest.approx(12 * 64 * (chunked + rows))


def test_linear_attention_costs_its_state_whatever_the_length():
    """Qwen3-Next's gated DeltaNet layers keep a key x value state a value head: 12 FLOPs a
    state entry per token (update and readout, forward and backward), not 12·d·T."""
    config = transformers.AutoConfig.for_model(
        "qwen3_next",
        **SHAPE,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=8,
        num_experts=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    )
    flops = flops_model(transformers.AutoModelForCausalLM.from_config(config))
    state = 4 * 16 * 8
    for rows in (T, 4 * T):
        assert _mixing(flops, seq_len=rows) == pytest.approx(12 * (state + 64 * rows))
    assert flops.note is None


def test_a_layer_of_unknown_cost_is_left_out_and_said():
    """Jamba's Mamba layers (transformers' 'linear_attention'): okto does not know a
    selective scan's cost, so it counts none and says so rather than full attention."""
    config = transformers.JambaConfig(
        **SHAPE,
        num_attention_heads=2,
        num_key_value_heads=1,
        attn_layer_period=2,
        attn_layer_offset=1,
        num_experts=2,
        mamba_d_state=4,
        mamba_dt_rank=4,
        use_mamba_kernels=False,
    )
    flops = flops_model(transformers.JambaForCausalLM(config))
    assert _mixing(flops) == 12 * WIDTH * T  # the attention layer alone
    assert "1 'linear_attention' layer:" in flops.note


def _attention_matmuls(model, seq_len: int = T) -> int:
    """FLOPs of the batched matmuls (scores and their weighted sum) of one eager forward
    over `seq_len` positions, by torch's FLOP counter: the attention the formula counts."""
    from torch.utils.flop_counter import FlopCounterMode

    model.config._attn_implementation = "eager"  # one bmm each, the whole T x T
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=torch.randint(VOCAB, (1, seq_len)), use_cache=False)
    return counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0)


def test_multi_head_latent_attention_counts_its_query_key_and_value_widths():
    """DeepSeek V3's config sets head_dim to the rotary part of a head (qk_rope_head_dim):
    its attention was counted at 4 heads x 8 a layer where it scores with 4 x (12 + 8) and
    sums values of 4 x 20 (DeepSeek V3 itself: 2/5 of the cost)."""
    config = transformers.DeepseekV3Config(
        **SHAPE,
        **MLA,
    )
    model = transformers.DeepseekV3ForCausalLM(config)
    flops = flops_model(model)
    assert _mixing(flops) == pytest.approx(6 * LAYERS * 4 * (12 + 8 + 20) * T)
    # the forward's attention matmuls, three times over with the backward, a token
    assert _mixing(flops) == pytest.approx(3 * _attention_matmuls(model) / T)


def test_lfm2_short_convolutions_add_no_attention():
    """LFM2's layers outside `full_attn_idxs` are 3-tap convolutions, costed by their
    parameters; a config naming them by `full_attn_idxs` alone (no `layer_types`, as
    transformers' Lfm2MoeConfig keeps it) counted them as attention layers."""
    config = transformers.Lfm2Config(
        **SHAPE | {"num_hidden_layers": 4},
        num_attention_heads=4,
        num_key_value_heads=2,
        full_attn_idxs=[1, 3],
    )
    model = transformers.Lfm2ForCausalLM(config)
    flops = flops_model(model)
    assert _mixing(flops) == pytest.approx(12 * 2 * WIDTH * T) == 3 * _attention_matmuls(model) / T
    assert flops.note is None
    moe = transformers.Lfm2MoeConfig(
        **SHAPE | {"num_hidden_layers": 4},
        num_attention_heads=4,
        num_key_value_heads=2,
        full_attn_idxs=[1, 3],
    )
    assert moe.layer_types is None
    assert _layers(moe)[0] == flops.layers


def test_deepseek_sparse_attention_counts_its_top_k_keys_and_its_indexer():
    """DeepSeek V3.2's 'indexed_attention' layers were left out with a note: each attends,
    as multi-head latent attention, to the index_topk keys its indexer picks (a window's
    count of pairs), and the indexer scores every key forward only (run under no_grad)."""
    config = transformers.AutoConfig.for_model(
        "deepseek_v32",
        **SHAPE,
        **MLA,
        index_topk=8,
        index_n_heads=2,
        index_head_dim=16,
    )
    flops = flops_model(transformers.AutoModelForCausalLM.from_config(config))
    # wq_b (q_lora_rank to 2 heads of 16), wk (hidden to 16), k_norm, weights_proj (to 2 heads)
    indexer = 24 * 2 * 16 + WIDTH * 16 + 2 * 16 + WIDTH * 2
    assert flops.forward_only == LAYERS * indexer
    attention = 6 * 4 * (12 + 8 + 20) * _keys(_window(8))
    scores = 2 * 2 * (16 + 1) * T  # q·k over T keys and the heads' weighted sum, a head
    assert flops.per_token(T) == pytest.approx(
        6 * flops.trained + 2 * LAYERS * indexer + LAYERS * (attention + scores)
    )
    assert flops.note is None


def test_falcon_h1_counts_attention_and_mamba2_side_by_side():
    """Falcon-H1's 'hybrid' layers (attention and a Mamba2 mixer in parallel) were left out
    with a note, attention included. The mixer's in_proj, depthwise conv1d and out_proj are
    parameters; its scan adds 12 x heads x head size x d_state a token, whatever T."""
    config = transformers.FalconH1Config(
        **SHAPE,
        num_attention_heads=4,
        num_key_value_heads=2,
        mamba_d_ssm=64,
        mamba_n_heads=4,
        mamba_d_state=8,
        mamba_n_groups=1,
        mamba_d_conv=4,
    )
    flops = flops_model(transformers.FalconH1ForCausalLM(config))
    conv = WIDTH + 2 * 8  # x, B and C (one group of d_state 8) go through the convolution
    mamba = WIDTH * (WIDTH + conv + 4) + conv * 4 + conv + 3 * 4 + WIDTH * WIDTH
    trained = LAYERS * _llama_layer(3 * WIDTH * 128 + mamba) + WIDTH + VOCAB * WIDTH
    assert flops.trained == trained
    for rows in (T, 4 * T):
        assert _mixing(flops, seq_len=rows) == LAYERS * (12 * WIDTH * rows + 12 * 4 * 16 * 8)
    assert flops.note is None


def test_bamba_mamba2_layers_count_their_state():
    config = transformers.BambaConfig(
        **SHAPE,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_indices=[1],
        mamba_n_heads=4,
        mamba_d_state=8,
        mamba_n_groups=1,
    )
    flops = flops_model(transformers.BambaForCausalLM(config))
    state = 4 * (2 * WIDTH // 4) * 8  # mamba_expand 2: 4 heads of 32
    assert _mixing(flops) == 12 * state + 12 * WIDTH * T
    assert flops.note is None
