"""Attention benchmark cases: okto's flash attention against SDPA, forward, forward+backward
and decoding, on the shapes users quote.

Baselines are SDPA with PyTorch's own backend choice, and SDPA pinned to its flash
and its cuDNN backends (so the table shows which one the default picked; a backend
this build lacks is reported as failed). FLOPs count the two matmuls of the forward (4 B H Sq Skv D) and, for
forward+backward, the five more of the backward (14 B H S^2 D in all); causal
cases count half. The decode case reports bandwidth over the KV cache it reads.

The packed case is GPT-2 124M's training attention (B16 H12 S1024 D64, causal) as a
model computes it: from the fused QKV projection's output, forward and backward to
that output's gradient. okto's `packed_attention` takes the projection whole; SDPA
takes the q, k, v views a model splits off it, and autograd concatenates their
gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from okto.kernels import attention, decode_attention, packed_attention
from okto.kernels.bench import Case

# (batch, heads, seq, head dim, causal)
FORWARD = [
    (4, 1, 256, 64, False),
    (4, 1, 512, 64, False),
    (8, 1, 256, 64, False),
    (32, 8, 128, 64, False),
    (32, 8, 256, 64, False),
    (16, 8, 512, 64, False),
    (8, 16, 2048, 64, True),
    (8, 16, 2048, 128, True),
    (2, 16, 8192, 128, True),
]
# (batch, heads, seq, head dim): causal self-attention on a packed QKV projection
PACKED = [(16, 12, 1024, 64)]
# (batch, query heads, KV heads, new tokens, cache length, head dim)
DECODE = [(8, 12, 12, 1, 4096, 64)]


def _sdpa(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _pinned(backend):
    def sdpa(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return sdpa


_SDPA = {
    "SDPA": _sdpa,
    "SDPA (flash)": _pinned(SDPBackend.FLASH_ATTENTION),
    "SDPA (cuDNN)": _pinned(SDPBackend.CUDNN_ATTENTION),
}


def _name(b, h, s, d, causal) -> str:
    return f"{'causal ' if causal else ''}B{b} H{h} S{s} D{d}"


def _forward_case(b, h, s, d, causal, dtype) -> Case:
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=dtype) for _ in range(3))
    return Case(
        suite="attention",
        name=_name(b, h, s, d, causal) + " fwd",
        okto=lambda: attention(q, k, v, causal=causal),
        baselines={label: functools.partial(fn, q, k, v, causal) for label, fn in _SDPA.items()},
        flops=4 * b * h * s * s * d * (0.5 if causal else 1.0),
        per_item=("sequence", b),
    )


def _backward_case(b, h, s, d, causal, dtype) -> Case:
    q, k, v = (
        torch.randn(b, h, s, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)
    )
    do = torch.randn(b, h, s, d, device="cuda", dtype=dtype)

    def step(fn):
        return lambda: torch.autograd.grad(fn(), (q, k, v), do)

    return Case(
        suite="attention",
        name=_name(b, h, s, d, causal) + " fwd+bwd",
        okto=step(lambda: attention(q, k, v, causal=causal)),
        baselines={
            label: step(functools.partial(fn, q, k, v, causal)) for label, fn in _SDPA.items()
        },
        flops=14 * b * h * s * s * d * (0.5 if causal else 1.0),
        per_item=("sequence", b),
        backward=True,
    )


def _packed_case(b, h, s, d, dtype) -> Case:
    qkv = torch.randn(b, s, 3 * h * d, device="cuda", dtype=dtype, requires_grad=True)
    dout = torch.randn(b, s, h * d, device="cuda", dtype=dtype)

    def split(fn):
        def call():
            q, k, v = (t.transpose(1, 2) for t in qkv.view(b, s, 3, h, d).unbind(2))
            return fn(q, k, v, True).transpose(1, 2).reshape(b, s, h * d)

        return call

    def step(fn):
        return lambda: torch.autograd.grad(fn(), qkv, dout)

    return Case(
        suite="attention",
        name=f"packed QKV causal B{b} H{h} S{s} D{d} fwd+bwd",
        okto=step(lambda: packed_attention(qkv, h, causal=True)),
        baselines={label: step(split(fn)) for label, fn in _SDPA.items()},
        flops=14 * b * h * s * s * d * 0.5,
        per_item=("sequence", b),
        backward=True,
    )


def _decode_case(b, hq, hkv, sq, cache, d, dtype) -> Case:
    q = torch.randn(b, hq, sq, d, device="cuda", dtype=dtype)
    k_cache, v_cache = (torch.randn(b, hkv, cache, d, device="cuda", dtype=dtype) for _ in range(2))
    lens = torch.full((b,), cache, device="cuda", dtype=torch.int32)
    size = dtype.itemsize
    return Case(
        suite="attention",
        name=f"decode B{b} Hq{hq} Hkv{hkv} q{sq} cache{cache} D{d}",
        okto=lambda: decode_attention(q, k_cache, v_cache, lens),
        baselines={
            label: functools.partial(fn, q, k_cache, v_cache, False) for label, fn in _SDPA.items()
        },
        bytes=(k_cache.numel() + v_cache.numel() + 2 * q.numel()) * size,
        per_item=("sequence", b),
    )


def cases(dtype: torch.dtype) -> Iterator[Case]:
    for shape in FORWARD:
        yield _forward_case(*shape, dtype)
    for shape in FORWARD:
        if shape[-1]:  # causal shapes also run forward+backward
            yield _backward_case(*shape, dtype)
    for shape in PACKED:
        yield _packed_case(*shape, dtype)
    for shape in DECODE:
        yield _decode_case(*shape, dtype)
