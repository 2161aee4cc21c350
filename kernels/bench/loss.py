"""Loss benchmark cases at GPT-2's sizes (16384 tokens, vocabulary 50304, width 768),
forward+backward, with peak memory.

- Cross-entropy on materialised logits, against eager `F.cross_entropy` and its
  torch.compile: okto's default (the gradient computed in the forward into one
  logits-sized buffer) and `inplace_backward=True` (the gradient written over the
  logits, no logits-sized buffer). `bytes` is one read of the logits plus one
  write of their gradient.
- Fused linear + cross-entropy against `lm_head` (hidden @ weight.T) + eager CE
  and its torch.compile. FLOPs are the three GEMMs, 6 N H V.

Peak memory is what a call allocates above the inputs it is given; about 1 in 16
targets is ignore_index, as padding would be.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from okto.kernels import cross_entropy, fused_linear_cross_entropy
from okto.kernels.bench import Case

TOKENS, VOCAB, WIDTH = 16384, 50304, 768


def _targets() -> torch.Tensor:
    target = torch.randint(0, VOCAB, (TOKENS,), device="cuda")
    return target.masked_fill(torch.rand(TOKENS, device="cuda") < 1 / 16, -100)


def _cross_entropy_case(dtype: torch.dtype, inplace: bool) -> Case:
    logits = torch.randn(TOKENS, VOCAB, device="cuda", dtype=dtype, requires_grad=True)
    target = _targets()
    compiled = torch.compile(F.cross_entropy, dynamic=False)

    def step(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(logits, target), logits)

    return Case(
        suite="loss",
        name=f"cross_entropy{' inplace' if inplace else ''} {TOKENS}x{VOCAB} fwd+bwd",
        okto=step(lambda x, t: cross_entropy(x, t, inplace_backward=inplace)),
        baselines={"eager": step(F.cross_entropy), "torch.compile": step(compiled)},
        bytes=2 * TOKENS * VOCAB * logits.element_size(),
        measure_memory=True,
        backward=True,
    )


def _lm_head_loss(hidden, weight, target):
    return F.cross_entropy(hidden @ weight.t(), target)


def _fused_case(dtype: torch.dtype) -> Case:
    hidden = torch.randn(TOKENS, WIDTH, device="cuda", dtype=dtype, requires_grad=True)
    weight = (torch.randn(VOCAB, WIDTH, device="cuda") / WIDTH**0.5).to(dtype).requires_grad_()
    target = _targets()
    compiled = torch.compile(_lm_head_loss, dynamic=False)

    def step(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(hidden, weight, target), (hidden, weight))

    return Case(
        suite="loss",
        name=f"fused linear+cross_entropy {TOKENS}x{WIDTH}x{VOCAB} fwd+bwd",
        okto=step(fused_linear_cross_entropy),
        baselines={"lm_head + eager CE": step(_lm_head_loss), "torch.compile": step(compiled)},
        flops=6 * TOKENS * WIDTH * VOCAB,
        measure_memory=True,
        backward=True,
    )


def cases(dtype: torch.dtype) -> Iterator[Case]:
    yield _cross_entropy_case(dtype, inplace=False)
    yield _cross_entropy_case(dtype, inplace=True)
    yield _fused_case(dtype)
