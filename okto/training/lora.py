"""LoRA: train a low-rank update B·A on chosen linear layers while the base model stays frozen.

Each target `nn.Linear` or Hugging Face `Conv1D` (GPT-2's projections, whose
weight is stored transposed) gets a child module `lora` holding A (rank x in,
random) and B (out x rank, zero, so training starts from the base model) and
a forward hook that adds `dropout(x) @ Aᵀ @ Bᵀ · alpha/rank` to the layer's
output. The layer itself is untouched, so whatever runs it (the framework or
an okto kernel the planner put there) keeps running it, and its parameter
names stay those of the base model.

The adapter is saved on its own in the PEFT layout (`adapter_model.safetensors`
with `base_model.model.<layer>.lora_A.weight` keys, and `adapter_config.json`),
and merged into the weights for the final model: W + B·A·alpha/rank.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from okto.errors import UsageError
from okto.training.outputs import staged

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRA(nn.Module):
    """The low-rank update of one layer with `features_in` inputs and `features_out` outputs."""

    def __init__(
        self, features_in: int, features_out: int, rank: int, alpha: float, dropout: float
    ):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, features_in))
        self.B = nn.Parameter(torch.zeros(features_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear (and PEFT) initialise
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A LoRA run keeps the frozen base in the training precision (bf16, fp16) and the
        # adapter in fp32: the layer's input is brought to the adapter's dtype (autocast,
        # when on, still runs the matmuls in its own).
        return (self.dropout(x).to(self.A.dtype) @ self.A.t() @ self.B.t()) * self.scaling

    def delta(self) -> torch.Tensor:
        """The update as an (out x in) matrix."""
        return (self.B @ self.A) * self.scaling


def _add_update(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + layer.lora(inputs[0]).to(output.dtype)


def _shape(layer: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer okto can adapt, else None."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    return None


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def default_targets(model: nn.Module) -> list[str]:
    """The linear layers inside the model's attention modules (a class named `...Attention`), by
    full name: the attention projections of any architecture (GPT-2's `attn.c_attn` and
    `attn.c_proj`, Llama's `q/k/v/o_proj`, Bloom's and Falcon's `query_key_value` and `dense`),
    where a table by model type left most families without a default."""
    attention = [
        name
        for name, module in model.named_modules()
        if type(module).__name__.endswith("Attention")
    ]
    return [
        name
        for name, module in model.named_modules()
        if _shape(module) is not None and any(name.startswith(a + ".") for a in attention)
    ]


def apply_lora(model: nn.Module, adapter) -> list[str]:
    """Freeze `model`, add LoRA to the target layers; the adapted layers' names. Targets that
    match nothing are refused before the model is touched."""
    layers = target_layers(model, adapter)
    for param in model.parameters():
        param.requires_grad_(False)
    shared = _shared_parameters(model)
    for layer in layers.values():
        weight = layer.weight
        if weight in shared:  # a head tied to the input embeddings
            layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
            model.config.tie_word_embeddings = False
        lora = LoRA(*_shape(layer), adapter.rank, adapter.alpha, adapter.dropout)
        layer.lora = lora.to(weight.device)
        layer.register_forward_hook(_add_update)
    return list(layers)


def target_layers(model: nn.Module, adapter) -> dict[str, nn.Module]:
    """The layers `adapter` adapts in `model`, by name, or the UsageError okto train stops on;
    `okto plan` and `okto check` ask it of a model built on the meta device."""
    if adapter.target_modules == []:  # PEFT refuses it too: it would adapt nothing
        raise UsageError(
            "ADAPTER target_modules is empty: name the layers to adapt, e.g. "
            f"{_linear_names(model)}, or leave it out for the attention projections"
        )
    targets = adapter.target_modules or default_targets(model)
    if not targets:
        raise UsageError(
            f"ADAPTER: a {model.config.model_type!r} model has no attention module with linear "
            f"layers to adapt by default; set target_modules, e.g. {_linear_names(model)}"
        )
    layers = {
        name: layer
        for name, layer in model.named_modules()
        if _shape(layer) is not None and _matches(name, targets)
    }
    if not layers:
        raise UsageError(
            f"ADAPTER target_modules {targets} match no linear layer of this model; "
            f"its linear layers are named {_linear_names(model)}"
        )
    return layers


def _shared_parameters(model: nn.Module) -> set[nn.Parameter]:
    """Parameters that more than one module holds (a head tied to the embeddings). An adapted
    one gets a copy of its own, and the config says the head is untied: merged, the update
    belongs to the head alone, and a loader that ties the head to the embeddings (okto's
    engine, a config still saying tie_word_embeddings) would drop it."""
    seen: set[nn.Parameter] = set()
    shared: set[nn.Parameter] = set()
    for _, param in model.named_parameters(remove_duplicate=False):
        (shared if param in seen else seen).add(param)
    return shared


def _linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's adaptable layers (`q_proj`, `dense`, ...)."""
    names = (n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _shape(m) is not None)
    return list(dict.fromkeys(names))


def unmatched_targets(adapter, adapted: list[str]) -> list[str]:
    """ADAPTER.target_modules names that no adapted layer matches (a misspelling, or a layer
    this model lacks) while others did: LoRA would go on without them, unsaid."""
    return [t for t in adapter.target_modules or () if not any(_matches(n, [t]) for n in adapted)]


def unmatched_warning(adapter, adapted: list[str]) -> str | None:
    """What okto train, plan and check say of `unmatched_targets`, or None when all match."""
    missed = unmatched_targets(adapter, adapted)
    if not missed:
        return None
    return (
        f"ADAPTER target_modules {missed} match no linear layer of this model: LoRA adapts "
        f"the {len(adapted)} layers the other targets match"
    )


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m for name, m in model.named_modules() if isinstance(getattr(m, "lora", None), LoRA)
    }


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every update folded into its layer and the LoRA keys gone."""
    state = {k: v for k, v in model.state_dict().items() if ".lora." not in k}
    for name, layer in lora_layers(model).items():
        delta = layer.lora.delta().detach()
        if not isinstance(layer, nn.Linear):  # Conv1D stores (in x out)
            delta = delta.t()
        key = f"{name}.weight"
        state[key] = (state[key].float() + delta.float()).to(state[key].dtype)
    return state


def save_adapter(model: nn.Module, adapter, base: str | None, folder: Path) -> Path:
    """The adapter alone, in the PEFT layout, under `folder`; `base` is the model it adapts
    (a hub name or an absolute path: PEFT loads it from there). Written under a temporary
    name and renamed into place."""
    tensors = {}
    layers = lora_layers(model)
    for name, layer in layers.items():
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = layer.lora.A.detach().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = layer.lora.B.detach().contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": _peft_targets(model, list(layers)),
        "fan_in_fan_out": any(not isinstance(layer, nn.Linear) for layer in layers.values()),
        "bias": "none",
    }
    with staged(folder) as staging:
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _peft_targets(model: nn.Module, adapted: list[str]) -> list[str]:
    """target_modules for PEFT, which adapts every module whose name ends with one: the layers'
    last names where those pick exactly the adapted layers, else their full names (GPT-2's
    `c_proj` would pick the MLP's projection beside attention's)."""
    short = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    picked = [name for name, _ in model.named_modules() if _matches(name, short)]
    return short if sorted(picked) == sorted(adapted) else sorted(adapted)


@torch.no_grad()
def check_lora_reached(model: nn.Module) -> None:
    """Fail when an adapted layer never runs its update: a fused kernel (say GELU in the MLP's
    first GEMM) may compute a layer's output without calling the layer, and its hook."""
    reached: set[str] = set()
    handles = [
        layer.lora.register_forward_pre_hook(lambda module, args, name=name: reached.add(name))
        for name, layer in lora_layers(model).items()
    ]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        model(input_ids=torch.zeros((1, 4), dtype=torch.long, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    missed = sorted(set(lora_layers(model)) - reached)
    if missed:
        raise UsageError(
            f"ADAPTER: the layers {missed[:4]} run inside a fused kernel, which bypasses LoRA; "
            "set ACCELERATE { fused_ops: false } or choose other target_modules"
        )
