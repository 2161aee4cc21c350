"""Attention on a packed QKV projection against the float64 reference.

The op reads q, k and v as strided views of one `[B, S, 3 * H * D]` tensor and writes
their gradients into one tensor of that shape; these tests check both against
`attention_reference` on the split views in float64, at odd sizes that span
several tiles of the interpreter's configurations.
"""

import numpy as np
import pytest
import torch

from okto.kernels import KernelError, packed_attention
from okto.kernels.ops.packed_attention import (
    _packed_attention_backward_op,
    _packed_attention_op,
    packed_attention_reference,
)
from tests.kernels.numerics import DEVICE, TOL, assert_fake_matches, rel_error


def _qkv(b, s, heads, d, dtype, device=DEVICE):
    return torch.randn(b, s, 3 * heads * d, device=device).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("b", "s", "heads", "d", "causal"),
    [(2, 37, 3, 16, True), (1, 45, 2, 64, False), (2, 13, 1, 32, True)],
)
def test_matches_float64(b, s, heads, d, causal, dtype):
    _check(_qkv(b, s, heads, d, dtype), heads, causal=causal, scale=0.3)


def _check(qkv, heads, **kwargs):
    """Forward and backward against the float64 reference on the same inputs."""
    out = packed_attention(qkv, heads, **kwargs)
    dout = torch.randn_like(out)
    out.backward(dout)
    qkv64 = qkv.detach().double().requires_grad_()
    want = packed_attention_reference(qkv64, heads, **kwargs)
    want.backward(dout.double())
    b, s, width = qkv.shape
    assert out.shape == (b, s, width // 3) and out.dtype == qkv.dtype and out.is_contiguous()
    assert rel_error(out, want) < TOL[qkv.dtype]
    assert qkv.grad.shape == qkv.shape
    assert rel_error(qkv.grad, qkv64.grad) < TOL[qkv.dtype]


def test_agrees_with_attention_on_the_split_views():
    from okto.kernels import attention

    qkv = _qkv(2, 21, 2, 32, torch.float32)
    q, k, v = qkv.view(2, 21, 3, 2, 32).unbind(2)
    split = attention(*(t.transpose(1, 2) for t in (q, k, v)), causal=True)
    got = packed_attention(qkv, 2)
    assert rel_error(got, split.transpose(1, 2).reshape(2, 21, 64)) < 1e-6


def test_fake_implementations_and_opcheck():
    qkv = _qkv(2, 9, 2, 16, torch.float16).detach()
    assert_fake_matches(torch.ops.okto.packed_attention, qkv, 2, True, 0.25)
    out, lse = torch.ops.okto.packed_attention(qkv, 2, True, 0.25)
    dout = torch.randn_like(out)
    assert_fake_matches(
        torch.ops.okto.packed_attention_backward, dout, qkv, out, lse, 2, True, 0.25
    )
    torch.library.opcheck(_packed_attention_op, (qkv.float().requires_grad_(), 2, True, 0.25))
    args = (dout.float(), qkv.float(), out.float(), lse, 2, True, 0.25)
    torch.library.opcheck(_packed_attention_backward_op, args)


def test_torch_compile_fullgraph_forward_backward():
    qkv = _qkv(2, 11, 2, 16, torch.float32)
    dout = torch.randn(2, 11, 32, device=DEVICE)

    def loss(qkv):
        return (packed_attention(qkv, 2) * dout).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    (got,) = torch.autograd.grad(compiled(qkv), qkv)
    (want,) = torch.autograd.grad(loss(qkv), qkv)
    assert rel_error(got, want) < TOL[torch.float32]


def test_native_mode_matches(monkeypatch):
    qkv = _qkv(1, 7, 2, 8, torch.float32)
    monkeypatch.setenv("OKTO_KERNELS", "native")
    native = packed_attention(qkv, 2, causal=False)
    monkeypatch.setenv("OKTO_KERNELS", "triton")
    assert rel_error(packed_attention(qkv, 2, causal=False), native) < TOL[torch.float32]


def test_clear_errors():
    qkv = _qkv(1, 5, 2, 8, torch.float32)
    with pytest.raises(KernelError, match=r"3 \* heads \* D"):
        packed_attention(qkv, 5)
    with pytest.raises(KernelError, match="3 \\* heads"):
        packed_attention(qkv[0], 2)
    with pytest.raises(KernelError, match="head dim 256"):
        packed_attention(torch.randn(1, 2, 3 * 256, device=DEVICE), 1)
    with pytest.raises(KernelError, match="qkv has dtype int64"):
        packed_attention(torch.ones(1, 2, 6, dtype=torch.long, device=DEVICE), 1)
    with pytest.raises(KernelError, match=r"heads must be an int, got 2\.0"):  # was a TypeError
        packed_attention(qkv, 2.0)
    assert packed_attention(qkv, np.int64(2)).shape == (1, 5, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_gpt2_shape_matches_float64(dtype):
    _check(_qkv(4, 1024, 12, 64, dtype, device="cuda"), 12, causal=True)
