"""Which implementation runs each of the decoder's ops, prefill and decode apart: the one place
where okto's Triton kernels replace PyTorch.

`plan(device, dtype, spec, backend)` returns a `Plan`: one `Ops` bundle for
prefill and one for the decode step, with a line per choice saying why. On
CUDA each op for which `okto.kernels` has a kernel is first probed on inputs
shaped like the model's calls; a kernel that fails keeps PyTorch, and
`Plan.notes` says why, so a kernel bug costs speed, never a wrong answer. A
kernel that passes runs in prefill; in the decode step it runs too, except the
matmuls (`DECODE_LINEAR`), and except everything when the step is compiled
(`DECODE_COMPILED`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from okto.inference.spec import Spec

BACKENDS = ("auto", "okto", "native", "hf")
DECODE_LINEAR = (
    "cuBLAS: a decode step multiplies a few rows by each weight, where cuBLAS's GEMV-style "
    "kernels read the weights faster than okto's tiled Triton GEMM (GPT-2 124M fp16 on an "
    "H200: 1,340 tokens/s at batch 1 with cuBLAS, 1,100 with okto's GEMM)"
)
DECODE_COMPILED = (
    "PyTorch: torch.compile fuses the step's norms, residual adds, biases and mask into a few "
    "kernels, and okto's kernels are calls it cannot fuse across"
)


_ACTIVATIONS = {"gelu_tanh": lambda y: F.gelu(y, approximate="tanh"), "gelu": F.gelu}
FUSED_ACTIVATIONS = tuple(_ACTIVATIONS)  # what `linear` takes as its epilogue


def linear(x, weight, bias, activation=None):
    """`act(x @ weight.T + bias)`: a kernel fuses the activation, PyTorch runs it after."""
    y = F.linear(x, weight, bias)
    return y if activation is None else _ACTIVATIONS[activation](y)


def layer_norm(x, weight, bias, eps, residual=None):
    """LayerNorm of `x`, or `(LayerNorm(x + residual), x + residual)` as okto's kernel returns it."""
    s = x if residual is None else x + residual
    y = F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
    return y if residual is None else (y, s)


def rms_norm(x, weight, eps, residual=None):
    """RMSNorm computed in fp32 and cast back before the weight, exactly as Hugging Face's Llama
    does; with `residual`, `(RMSNorm(x + residual), x + residual)`."""
    s = x if residual is None else x + residual
    y = s.float()
    y = weight * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(s.dtype)
    return y if residual is None else (y, s)


def prefill_attention(q, k, v, scale):
    """Causal attention over whole prompts: q [B, H, T, D], k and v [B, H_kv, T, D]."""
    gqa = k.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)


def decode_mask(lengths, cache_len, dtype):
    """What `decode_attention` needs to know of each row's visible keys, made once per step for
    every layer: an additive mask [B, 1, 1, S], 0 over a row's first `lengths[b]` entries."""
    visible = torch.arange(cache_len, device=lengths.device) < lengths[:, None]
    mask = torch.full(visible.shape, float("-inf"), dtype=dtype, device=lengths.device)
    return mask.masked_fill_(visible, 0.0)[:, None, None]


def decode_attention(q, k_cache, v_cache, mask, scale):
    """One query per row over the cache, `mask` from `decode_mask`: q [B, H, D] -> [B, H, D]."""
    gqa = k_cache.shape[1] != q.shape[1]
    y = F.scaled_dot_product_attention(
        q[:, :, None], k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=gqa
    )
    return y[:, :, 0]


def cache_lengths(lengths, cache_len, dtype):
    """okto's decode-attention kernel takes the rows' cache lengths as they are."""
    return lengths


@dataclass(frozen=True)
class Ops:
    linear: Callable = linear
    layer_norm: Callable = layer_norm
    rms_norm: Callable = rms_norm
    prefill_attention: Callable = prefill_attention
    decode_attention: Callable = decode_attention
    decode_mask: Callable = decode_mask
    kernels: tuple[str, ...] = ()  # the ops running okto's kernels


@dataclass(frozen=True)
class Plan:
    """The ops of each phase, why each runs where it does, and what a user should know."""

    prefill: Ops = Ops()
    decode: Ops = Ops()
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """Which ops run okto's kernels, per phase, for the engine's one-line description."""
        return "; ".join(
            f"{phase}: okto kernels for {', '.join(ops.kernels)}"
            if ops.kernels
            else f"{phase}: PyTorch"
            for phase, ops in (("prefill", self.prefill), ("decode", self.decode))
        )


def _kernel_adapters(kernels) -> dict[str, Callable]:
    """okto.kernels' calling conventions mapped onto the Ops signatures."""
    adapters = {
        "linear": lambda f: lambda x, w, b, activation=None: f(x, w, b, activation=activation),
        "layer_norm": lambda f: (
            lambda x, w, b, eps, residual=None: f(x, w, b, eps=eps, residual=residual)
        ),
        "rms_norm": lambda f: lambda x, w, eps, residual=None: f(x, w, eps=eps, residual=residual),
        "attention": lambda f: lambda q, k, v, scale: f(q, k, v, causal=True, scale=scale),
        "decode_attention": lambda f: lambda q, kc, vc, n, scale: f(q, kc, vc, n, scale=scale),
    }
    ours = {"attention": "prefill_attention"}
    return {ours.get(n, n): make(getattr(kernels, n)) for n, make in adapters.items()}


# What else changes with a kernel: okto's decode attention reads the lengths, not a mask.
_COMPANIONS = {"decode_attention": {"decode_mask": cache_lengths}}


def kernel_ops(kernels, names) -> dict[str, Callable]:
    """The Ops fields that put okto's kernels for `names` in place (companions included)."""
    adapters = _kernel_adapters(kernels)
    fields = {}
    for name in names:
        fields[name] = adapters[name]
        fields.update(_COMPANIONS.get(name, {}))
    return fields


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
            (r(3, 1, spec.hidden), r(dim, spec.hidden), r(dim)),
        ]
    if name == "layer_norm":
        return [
            (r(2, 7, dim), r(dim), r(dim), spec.norm_eps),
            (r(3, 1, dim), r(dim), r(dim), spec.norm_eps, r(3, 1, dim)),
        ]
    if name == "rms_norm":
        return [
            (r(2, 7, dim), r(dim), spec.norm_eps),
            (r(3, 1, dim), r(dim), spec.norm_eps, r(3, 1, dim)),
        ]
    if name == "prefill_attention":
        return [(r(2, h, 7, d), r(2, kv, 7, d), r(2, kv, 7, d), d**-0.5)]
    cache = r(2, 2, kv, 40, d)  # the decoder's layout: keys and values of a layer in one tensor
    lengths = torch.tensor([3, 37], device=device, dtype=torch.int64)
    return [(r(2, h, d), cache[:, 0], cache[:, 1], lengths, d**-0.5)]


def _with_mask(attend, mask) -> Callable:
    """A decode attention called with lengths, as the probe calls it, building its own mask."""
    return lambda q, kc, vc, lengths, scale: attend(
        q, kc, vc, mask(lengths, kc.shape[2], q.dtype), scale
    )


def _disagreement(fn, reference, cases) -> str | None:
    """Why `fn` cannot stand in for `reference` on these cases, or None when it can."""
    for args in cases:
        expected = torch.cat([t.float().flatten() for t in _tensors(reference(*args))])
        try:
            got = torch.cat([t.float().flatten() for t in _tensors(fn(*args))])
            error = (got - expected).abs().max().item()
        except Exception as e:  # a kernel that cannot run here must not stop generation
            return f"{type(e).__name__}: {e}"
        if not error <= 5e-2 * max(1.0, expected.abs().max().item()):
            return f"differs from PyTorch by {error:.3g}"
    return None


def _tensors(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def probe(kernels, names, spec: Spec, dtype, device) -> tuple[list[str], list[str], list[str]]:
    """The ops among `names` whose okto kernel agrees with PyTorch on inputs shaped like the
    model's calls; a note for each that does not; a reason line for each op."""
    torch_ops, adapters = Ops(), _kernel_adapters(kernels)
    passed, notes, reasons = [], [], []
    for name in names:
        fn, reference = adapters[name], getattr(torch_ops, name)
        if name == "decode_attention":
            fn = _with_mask(fn, cache_lengths)
            reference = _with_mask(reference, torch_ops.decode_mask)
        problem = _disagreement(fn, reference, _probe_inputs(name, spec, dtype, device))
        if problem is None:
            passed.append(name)
            reasons.append(f"{name}: okto's kernel (it agrees with PyTorch on the model's shapes)")
        else:
            notes.append(f"kernel {name} not used: {problem}")
            reasons.append(f"{name}: PyTorch (okto's kernel failed its probe)")
    return passed, notes, reasons


def phases(passed: list[str], compile: bool) -> tuple[list[str], list[str], list[str]]:
    """The ops whose kernels passed their probe that run them in prefill and in the decode step,
    and why the decode step leaves some out."""
    prefill = [n for n in passed if n != "decode_attention"]
    if compile:
        return prefill, [], [f"every op of the decode step: {DECODE_COMPILED}"]
    decode = [n for n in passed if n not in ("linear", "prefill_attention")]
    why = [f"linear in the decode step: {DECODE_LINEAR}"] if "linear" in passed else []
    return prefill, decode, why


def plan(
    device: torch.device,
    dtype: torch.dtype,
    spec: Spec,
    backend: str = "auto",
    compile: bool = False,
) -> Plan:
    """PyTorch ops, with okto's kernels swapped in on CUDA (per phase) unless `backend` is native.

    `compile`: the decode step will run through torch.compile, so it keeps PyTorch's ops.
    """
    if device.type != "cuda":
        return Plan(reasons=("every op: PyTorch (okto's kernels are for CUDA devices)",))
    if backend == "native":
        return Plan(reasons=("every op: PyTorch (the native backend was asked for)",))
    try:
        import okto.kernels
    except ImportError as e:  # no usable Triton here: PyTorch runs everything
        return Plan(notes=(f"okto kernels not used: {e}",))
    norm = "rms_norm" if spec.family == "llama" else "layer_norm"
    names = ("linear", norm, "prefill_attention", *(() if compile else ("decode_attention",)))
    passed, notes, reasons = probe(okto.kernels, names, spec, dtype, device)
    prefill, decode, why = phases(passed, compile)
    torch_ops = Ops()
    return Plan(
        prefill=replace(torch_ops, **kernel_ops(okto.kernels, prefill), kernels=tuple(prefill)),
        decode=replace(torch_ops, **kernel_ops(okto.kernels, decode), kernels=tuple(decode)),
        reasons=tuple(reasons + why),
        notes=tuple(notes),
    )
