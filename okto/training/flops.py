"""Model FLOPs per trained token and MFU, by the estimate of PaLM (appendix B) and nanoGPT.

Per trained token, a parameter that takes part in a matrix multiply costs 6
FLOPs when it is trained (2 forward, 2 for the input gradient, 2 for its own
gradient) and 4 when it is frozen (no weight gradient, as under LoRA). The
attention scores and their weighted sum add 12·L·d·T (L layers, d = heads x
head size, T the sequence length). Embedding lookups cost nothing, so the
input and position embeddings are left out, except that a tied LM head counts
once as the output matmul. These are model FLOPs: recomputation under
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
    trained: int  # matmul parameters with gradients
    frozen: int  # matmul parameters without
    layers: int
    width: int  # attention width: heads x head size

    def per_token(self, seq_len: int) -> float:
        return 6 * self.trained + 4 * self.frozen + 12 * self.layers * self.width * seq_len


def flops_model(model: nn.Module) -> FlopsModel:
    """The FLOPs formula's terms for a Hugging Face causal LM (embeddings excluded)."""
    config = model.config
    output = model.get_output_embeddings()
    head = output.weight if output is not None else None
    lookups = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, nn.Embedding) and module.weight is not head
    }
    trained = frozen = 0
    for param in model.parameters():  # shared (tied) parameters come once
        if id(param) in lookups:
            continue
        if param.requires_grad:
            trained += param.numel()
        else:
            frozen += param.numel()
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    head_size = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    return FlopsModel(trained, frozen, layers, heads * head_size)


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
