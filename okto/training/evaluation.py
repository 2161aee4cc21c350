"""Validation loss and next-token accuracy, a chunk of tokens at a time.

Evaluation needs each token's loss and whether its most likely next token is
right, not the logits themselves; those are the largest tensor of the model
(GPT-2 124M, a batch of 16 x 1,024 tokens over 50k entries: 3.3 GB in fp32).
For the families the planner patches (GPT-2, Llama), whose LM head is a plain
linear map of the base model's last hidden state, the head runs over chunks of
tokens, so at most one chunk of fp32 logits exists at a time. Other models
may change their logits after the head (soft-capping, scaling), and a model
wrapped or sharded for several processes must be called whole (FSDP's root
forward gathers its parameters; its class is no longer the family's), so
theirs come whole from the model and only the fp32 loss and argmax go by chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from okto.planner.models import describe

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 2**26  # fp32 logits per chunk: 256 MiB


@torch.no_grad()
def batch_sums(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[summed loss, correct predictions, counted tokens] of one batch as one fp64 tensor
    on the batch's device (no synchronisation): next-token targets `labels[:, 1:]`, -100
    not counted."""
    targets = labels[:, 1:].reshape(-1)
    if describe(model).supported:
        hidden = model.base_model(input_ids=input_ids, use_cache=False)[0][:, :-1]
        rows, head = hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings()
        vocab = head.weight.shape[0]
    else:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]
        rows, head = logits.reshape(-1, logits.shape[-1]), None
        vocab = rows.shape[-1]
    sums = torch.zeros(3, device=targets.device, dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // vocab)
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step]
        logits = (chunk if head is None else head(chunk)).float()
        target = targets[start : start + step]
        sums[0] += F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        sums[1] += ((logits.argmax(-1) == target) & (target != IGNORE_INDEX)).sum()
    sums[2] += (targets != IGNORE_INDEX).sum()
    return sums
