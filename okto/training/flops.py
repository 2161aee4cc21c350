"""Model FLOPs per trained token and MFU, by the estimate of PaLM (appendix B) and nanoGPT.

Per trained token, a parameter that takes part in a matrix multiply costs 6
FLOPs when it is trained (2 forward, 2 for the input gradient, 2 for its own
gradient) and 4 when it is frozen (no weight gradient, as under LoRA). The
attention scores and their weighted sum add 12·L·d·T (L layers, d = heads x
head size, summed layer by layer where layers differ; T the sequence length). Embedding lookups cost nothing, so the
input and position embeddings are left out, except that a tied LM head counts
once as the output matmul. A mixture of experts runs only `num_experts_per_tok`
of its experts for a token, so the routed experts' parameters count in that
share (Mixtral's 2 of 8: a quarter). These are model FLOPs: recomputation under
activation checkpointing is not counted and the causal mask's skipped half is
not subtracted, as in the published MFU figures this compares with.

MFU divides the achieved rate by the datasheet peak of the GPU for the
precision the matmuls run in (`okto.kernels.device`); there is no MFU on a CPU
or on a GPU whose peak okto does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FlopsModel:
    trained: int  # matmul parameters with gradients (of a token's experts only)
    frozen: int  # matmul parameters without
    attention: int  # the layers' attention widths (heads x head size) summed: L·d

    def per_token(self, seq_len: int) -> float:
        return 6 * self.trained + 4 * self.frozen + 12 * self.attention * seq_len


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
    trained = frozen = 0.0
    for name, param in model.named_parameters():  # shared (tied) parameters come once
        if id(param) in lookups:
            continue
        count = param.numel() * (share if ".experts." in f".{name}" else 1)
        if param.requires_grad:
            trained += count
        else:
            frozen += count
    return FlopsModel(round(trained), round(frozen), _attention(config))


def _attention(config) -> int:
    """L·d: the attention width (heads x head size) of every layer, summed. Layers of
    their own shapes (Gemma 4) are read one by one: such a config refuses a global value."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    try:
        return layers * _width(config)
    except RuntimeError:  # transformers' AmbiguousGlobalPerLayerAttributeError
        return sum(_width(layer) for layer in config.per_layer_config)


def _width(config) -> int:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    head_size = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    return heads * head_size


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
