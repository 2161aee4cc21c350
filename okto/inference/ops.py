"""The one place where okto's Triton kernels replace PyTorch in the decoder.

`select(device, backend)` returns an `Ops` bundle: PyTorch everywhere, and on
CUDA each op for which `okto.kernels` has a kernel swapped for it, after a
probe on small inputs shows the kernel runs with these arguments and agrees
with PyTorch. An op whose kernel is missing or fails the probe keeps PyTorch,
and `Ops.notes` says why, so a kernel bug costs speed, never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from okto.inference.spec import Spec

BACKENDS = ("auto", "okto", "native", "hf")


_ACTIVATIONS = {"gelu_tanh": lambda y: F.gelu(y, approximate="tanh"), "gelu": F.gelu}
FUSED_ACTIVATIONS = tuple(_ACTIVATIONS)  # what `linear` takes as its epilogue


def linear(x, weight, bias, activation=None, residual=None):
    """`act(x @ weight.T + bias) + residual`: a kernel fuses the epilogue, PyTorch runs it after."""
    y = F.linear(x, weight, bias)
    if activation is not None:
        y = _ACTIVATIONS[activation](y)
    return y if residual is None else y + residual


def layer_norm(x, weight, bias, eps):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x, weight, eps):
    """RMSNorm computed in fp32 and cast back before the weight, exactly as Hugging Face's Llama does."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def prefill_attention(q, k, v, scale):
    """Causal attention over whole prompts: q [B, H, T, D], k and v [B, H_kv, T, D]."""
    gqa = k.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)


def decode_attention(q, k_cache, v_cache, lengths, scale):
    """One query per row over that row's first `lengths[b]` cached entries: q [B, H, D] -> [B, H, D]."""
    mask = torch.arange(k_cache.shape[2], device=q.device) < lengths[:, None]
    gqa = k_cache.shape[1] != q.shape[1]
    y = F.scaled_dot_product_attention(
        q[:, :, None], k_cache, v_cache, attn_mask=mask[:, None, None], scale=scale, enable_gqa=gqa
    )
    return y[:, :, 0]


@dataclass(frozen=True)
class Ops:
    linear: Callable = linear
    layer_norm: Callable = layer_norm
    rms_norm: Callable = rms_norm
    prefill_attention: Callable = prefill_attention
    decode_attention: Callable = decode_attention
    kernels: tuple[str, ...] = ()  # the ops running okto's kernels
    notes: tuple[str, ...] = field(default=(), compare=False)


def _kernel_adapters(kernels) -> dict[str, Callable]:
    """okto.kernels' calling conventions mapped onto the Ops signatures, for the kernels that exist."""
    adapters = {
        "linear": lambda f: (
            lambda x, w, b, activation=None, residual=None: f(
                x, w, b, activation=activation, residual=residual
            )
        ),
        "layer_norm": lambda f: lambda x, w, b, eps: f(x, w, b, eps=eps),
        "rms_norm": lambda f: lambda x, w, eps: f(x, w, eps=eps),
        "attention": lambda f: lambda q, k, v, scale: f(q, k, v, causal=True, scale=scale),
        "decode_attention": lambda f: lambda q, kc, vc, n, scale: f(q, kc, vc, n, scale=scale),
    }
    ours = {"attention": "prefill_attention"}
    return {
        ours.get(n, n): make(getattr(kernels, n))
        for n, make in adapters.items()
        if hasattr(kernels, n)
    }


def _probe_inputs(name: str, spec: Spec, dtype, device) -> list[tuple]:
    """Arguments shaped like the model's own calls (odd sizes included), one tuple per case."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    h, kv, d, dim = spec.n_head, spec.n_kv_head, spec.head_dim, spec.dim
    if name == "linear":
        qkv = (h + 2 * kv) * d
        return [
            (r(2, 7, dim), r(qkv, dim), r(qkv)),
            (r(3, 1, dim), r(spec.vocab_size, dim), None),
            (r(2, 7, dim), r(spec.hidden, dim), r(spec.hidden), "gelu_tanh"),
            (r(3, 1, spec.hidden), r(dim, spec.hidden), r(dim), None, r(3, 1, dim)),
        ]
    if name == "layer_norm":
        return [(r(2, 7, dim), r(dim), r(dim), spec.norm_eps)]
    if name == "rms_norm":
        return [(r(2, 7, dim), r(dim), spec.norm_eps)]
    if name == "prefill_attention":
        return [(r(2, h, 7, d), r(2, kv, 7, d), r(2, kv, 7, d), d**-0.5)]
    lengths = torch.tensor([3, 37], device=device, dtype=torch.int64)
    return [(r(2, h, d), r(2, kv, 40, d), r(2, kv, 40, d), lengths, d**-0.5)]


def _disagreement(fn, reference, cases) -> str | None:
    """Why `fn` cannot stand in for `reference` on these cases, or None when it can."""
    for args in cases:
        expected = reference(*args).float()
        try:
            error = (fn(*args).float() - expected).abs().max().item()
        except Exception as e:  # a kernel that cannot run here must not stop generation
            return f"{type(e).__name__}: {e}"
        if not error <= 5e-2 * max(1.0, expected.abs().max().item()):
            return f"differs from PyTorch by {error:.3g}"
    return None


def select(device: torch.device, dtype: torch.dtype, spec: Spec, backend: str = "auto") -> Ops:
    """PyTorch ops, with okto's kernels swapped in on CUDA unless `backend` is native."""
    ops = Ops()
    if device.type != "cuda" or backend == "native":
        return ops
    try:
        import okto.kernels
    except ImportError as e:  # no usable Triton here: PyTorch runs everything
        return replace(ops, notes=(f"okto kernels not used: {e}",))
    chosen, notes = {}, []
    for name, fn in _kernel_adapters(okto.kernels).items():
        problem = _disagreement(fn, getattr(ops, name), _probe_inputs(name, spec, dtype, device))
        if problem is None:
            chosen[name] = fn
        else:
            notes.append(f"kernel {name} not used: {problem}")
    return replace(ops, **chosen, kernels=tuple(chosen), notes=tuple(notes))
