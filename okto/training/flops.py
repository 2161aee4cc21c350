"""Model FLOPs per trained token and MFU, by the estimate of PaLM (appendix B) and nanoGPT.

Per trained token, a parameter that takes part in a matrix multiply costs 6
FLOPs when it is trained (2 forward, 2 for the input gradient, 2 for its own
gradient) and 4 when it is frozen (no weight gradient, as under LoRA). Embedding
lookups cost nothing, so the input and position embeddings are left out, except
that a tied LM head counts once as the output matmul. A mixture of experts runs
only `num_experts_per_tok` of its experts for a token, so the routed experts'
parameters count in that share (Mixtral's 2 of 8: a quarter).

Each layer's sequence mixing adds its own term (`Layer`): full attention
12·d·T (d = heads x head size, T the sequence length; multi-head latent attention
6·(d_qk + d_v)·T, its keys and values of different widths), sliding-window and
chunked attention that figure in the share of the causal mask's query-key
pairs their mask keeps, linear attention and Mamba2's scan a cost per token
that does not grow with T, DeepSeek's sparse attention its top-k keys and its
indexer's scores. These are model FLOPs: recomputation under activation
checkpointing is not counted and the causal mask's skipped half is not
subtracted, as in the published MFU figures this compares with.

MFU divides the achieved rate by the datasheet peak of the GPU for the
precision the matmuls run in (`okto.kernels.device`); there is no MFU on a CPU
or on a GPU whose peak okto does not know.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch
from torch import nn

from okto.language.diagnostics import counted

# Layer types (transformers' `layer_types`) that mix no tokens: their matmuls are parameters.
_NO_MIXING = {"dense", "sparse", "moe", "mlp", "conv"}


@dataclass(frozen=True)
class Layer:
    """One layer's sequence mixing. Softmax attention of `width` (heads x query-key head
    size; `value_width`, heads x value head size, where that differs) over every earlier
    position, or over the last `window` of them (sliding window: a query sees
    min(position + 1, window) keys), or over its own `chunk` (chunked: position p sees
    p mod chunk + 1 keys). Linear attention keeps a `state` of heads x
    key size x value size numbers instead; per token and head it adds k vᵀ to its
    state and reads it out with q, 2 + 2 FLOPs a state entry forward, three times
    that with the backward: 12 x state, independent of T (Katharopoulos et al. 2020,
    "Transformers are RNNs", section 3.2; the same count as softmax attention's
    12·d·T with T keys of width d replaced by the state). The delta rule's and the
    gates' elementwise work and a chunked kernel's intra-chunk products are left out.
    Mamba2's scan is counted alike: heads x head size x d_state, a head's state updated
    with x Bᵀ and read with C. A layer may hold both (Falcon-H1 runs attention and Mamba2
    side by side). DeepSeek's sparse attention (DSA) attends to the `window` = index_topk
    keys its indexer picks and adds the indexer's scoring, `index_width` = index heads x
    (index head size + 1): q·k for each of T keys and the heads' weighted sum, 2 FLOPs an
    entry, forward only (transformers runs the indexer under no_grad)."""

    width: int = 0
    value_width: int | None = None  # multi-head latent attention's values (None: `width`)
    window: int | None = None
    chunk: int | None = None
    state: int = 0
    index_width: int = 0

    def per_token(self, seq_len: int) -> float:
        # The full-attention figure counts T keys a query (the causal mask's skipped half
        # not subtracted); a window or chunk counts that in the share of the pairs it keeps.
        # 2 FLOPs a query-key pair and width entry for the scores, 2 a value entry for their
        # sum, three times that with the backward: 6 x (width + value width) a key.
        keys = 2 * _pairs(seq_len, self.window, self.chunk) / (seq_len + 1)
        values = self.width if self.value_width is None else self.value_width
        indexer = 2 * self.index_width * seq_len  # T keys, as full attention counts them
        return 6 * (self.width + values) * keys + 12 * self.state + indexer


def _pairs(seq_len: int, window: int | None, chunk: int | None) -> int:
    """The query-key pairs a causal mask keeps over `seq_len` positions, summed exactly."""
    if chunk:
        whole, rest = divmod(seq_len, chunk)
        return whole * chunk * (chunk + 1) // 2 + rest * (rest + 1) // 2
    if window and window < seq_len:
        return window * (window + 1) // 2 + (seq_len - window) * window
    return seq_len * (seq_len + 1) // 2


@dataclass(frozen=True)
class FlopsModel:
    trained: int  # matmul parameters with gradients (of a token's experts only)
    frozen: int  # matmul parameters without
    layers: tuple[Layer, ...]  # each layer's sequence mixing
    uncounted: tuple[tuple[str, int], ...] = ()  # (layer type, layers) of unknown cost
    forward_only: int = 0  # matmul parameters that run without a backward (the DSA indexer)

    def per_token(self, seq_len: int) -> float:
        mixing = sum(layer.per_token(seq_len) for layer in self.layers)
        return 6 * self.trained + 4 * self.frozen + 2 * self.forward_only + mixing

    @property
    def note(self) -> str | None:
        """What the figure leaves out, for the user: None when every layer is counted."""
        if not self.uncounted:
            return None
        kinds = ", ".join(counted(count, f"'{kind}' layer") for kind, count in self.uncounted)
        return (
            f"TFLOP/s and MFU leave out the sequence mixing of the model's {kinds}: "
            "okto does not know its cost, so they read low"
        )


def flops_model(model: nn.Module) -> FlopsModel:
    """The FLOPs formula's terms for a Hugging Face causal LM (embeddings excluded)."""
    config = model.config.get_text_config()  # a multimodal model's language model
    output = model.get_output_embeddings()
    head = output.weight if output is not None else None
    lookups = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, nn.Embedding) and module.weight is not head
    }
    share = _active_expert_share(config)
    layers, unknown = _layers(config)
    # DSA's indexer runs under no_grad whatever requires_grad says: its weights get no gradient.
    no_backward = ".indexer." if any(layer.index_width for layer in layers) else None
    trained = frozen = forward_only = 0.0
    for name, param in model.named_parameters():  # shared (tied) parameters come once
        if id(param) in lookups:
            continue
        count = param.numel() * (share if ".experts." in f".{name}" else 1)
        if no_backward and no_backward in f".{name}":
            forward_only += count
        elif param.requires_grad:
            trained += count
        else:
            frozen += count
    return FlopsModel(
        round(trained),
        round(frozen),
        layers,
        tuple(Counter(unknown).items()),
        round(forward_only),
    )


def _layers(config) -> tuple[tuple[Layer, ...], list[str]]:
    """Each layer's `Layer`, and the layer types among them whose cost okto does not know
    (counted as nothing). The kinds come from transformers' `layer_types` (Gemma 2-4,
    Qwen2/3 with use_sliding_window, Cohere2, gpt-oss, OLMo 3, Llama 4's chunked layers,
    Qwen3-Next's and MiniMax's linear ones, DeepSeek V3.2's indexed ones, Falcon-H1's
    hybrid ones: attention and Mamba2 side by side), GPT-Neo's `attention_layers` ("local": a
    `window_size` window), LFM2's `full_attn_idxs` (the other layers short convolutions,
    whose cost is their parameters'), or, without any, `sliding_window` for every layer (Mistral,
    Mixtral, Phi-3, Starcoder2, whose configs set it to None when unused)."""
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    kinds = getattr(config, "layer_types", None) or [
        {"global": "full_attention", "local": "sliding_attention"}.get(kind, kind)
        for kind in getattr(config, "attention_layers", None) or ()
    ]
    if not kinds and (attending := getattr(config, "full_attn_idxs", None)) is not None:
        kinds = ["full_attention" if index in attending else "conv" for index in range(count)]
    if not kinds:
        window = getattr(config, "sliding_window", None)
        kinds = ["sliding_attention" if window else "full_attention"] * count
    per_layer = getattr(config, "per_layer_config", None)  # Gemma 4: layers of their own shapes
    layers, unknown = [], []
    for index, kind in enumerate(kinds):
        own = per_layer[index] if per_layer else config
        if kind == "full_attention":
            layers.append(_attention(own))
        elif kind == "sliding_attention":
            window = getattr(own, "sliding_window", None) or getattr(config, "window_size", None)
            layers.append(_attention(own, window=window))
        elif kind == "chunked_attention":
            layers.append(_attention(own, chunk=config.attention_chunk_size))
        elif kind == "indexed_attention" and getattr(config, "index_topk", None):
            sparse = _attention(own, window=config.index_topk)
            index_width = config.index_n_heads * (config.index_head_dim + 1)
            layers.append(replace(sparse, index_width=index_width))
        elif kind == "hybrid" and (state := _mamba2_state(config)):
            layers.append(replace(_attention(own), state=state))
        elif kind == "linear_attention" and (state := _linear_state(config)):
            layers.append(Layer(state=state))
        else:
            layers.append(Layer())
            if kind not in _NO_MIXING:
                unknown.append(kind)
    return tuple(layers), unknown


def _mamba2_state(config) -> int | None:
    """Heads x head size x d_state of a Mamba2 mixer's state, in the spelling of Falcon-H1
    and Bamba's configs (None for other configs). Its in_proj, depthwise conv1d and out_proj
    are parameters (the conv's 2 FLOPs a weight a token, as a matmul's); the scan is this."""
    heads = getattr(config, "mamba_n_heads", None)
    if not (heads and isinstance(getattr(config, "mamba_d_head", None), int)):
        return None
    return heads * config.mamba_d_head * config.mamba_d_state


def _linear_state(config) -> int | None:
    """Heads x key size x value size of a linear-attention layer's state, for the kinds
    whose state okto knows (None for the rest, such as Mamba's selective scan): gated
    DeltaNet (Qwen3-Next, Qwen3.5, OLMo hybrid: one state a value head), Kimi's delta
    attention and MiniMax's lightning attention (a head_dim x head_dim state a head),
    Mamba2 (Bamba: heads x head size x d_state)."""
    if getattr(config, "linear_num_value_heads", None):
        heads = config.linear_num_value_heads
        return heads * config.linear_key_head_dim * config.linear_value_head_dim
    if getattr(config, "linear_num_heads", None):
        return config.linear_num_heads * config.linear_head_dim**2
    if state := _mamba2_state(config):
        return state
    if config.model_type == "minimax":
        heads = config.num_attention_heads
        size = getattr(config, "head_dim", None) or config.hidden_size // heads
        return heads * size * size
    return None


def _attention(config, window: int | None = None, chunk: int | None = None) -> Layer:
    """A softmax-attention layer of `config`'s heads. Multi-head latent attention (DeepSeek
    V2/V3, MiniCPM3, GLM-4.7-Flash, Kimi Linear's full layers) attends with queries and keys
    of qk_nope_head_dim + qk_rope_head_dim and values of v_head_dim a head; its `head_dim`
    is the rotary part alone, which put DeepSeek V3's attention at 2/5 of its cost."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    if getattr(config, "kv_lora_rank", None) and getattr(config, "v_head_dim", None):
        key_size = config.qk_nope_head_dim + config.qk_rope_head_dim
        return Layer(heads * key_size, heads * config.v_head_dim, window=window, chunk=chunk)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    head_size = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    return Layer(heads * head_size, window=window, chunk=chunk)


def _active_expert_share(config) -> float:
    """The share of a mixture of experts' routed experts one token runs through (1 without)."""
    experts = (
        getattr(config, "num_local_experts", None)  # Mixtral
        or getattr(config, "num_experts", None)  # Qwen-MoE, OLMoE
        or getattr(config, "n_routed_experts", None)  # DeepSeek
    )
    active = getattr(config, "num_experts_per_tok", None)
    return min(active / experts, 1.0) if experts and active else 1.0


def peak_tflops(device: torch.device, precision: str, tf32: bool) -> tuple[float | None, str]:
    """(datasheet peak TFLOP/s, what it is) for the matmul precision, or (None, why not)."""
    if device.type != "cuda":
        return None, "n/a (CPU)"
    from okto.kernels.device import get_device_info

    info = get_device_info(device)
    if info.peak is None:
        return None, f"n/a (no datasheet peak for {info.name})"
    kind = precision if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    return info.peak.tflops(kind), f"{info.name} dense {kind}"
