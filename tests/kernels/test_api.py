"""The public `okto.kernels` API as a user meets it: the same inputs are refused the same way
on either backend, NumPy arrays go in and come out, and bad input is a KernelError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from okto import kernels
from okto.kernels import KernelError

BAD_DTYPES = (torch.int32, torch.int64, torch.bool, torch.float64)


def _calls(dtype: torch.dtype) -> dict:
    """One call per public op, every float input of `dtype`."""
    x = torch.ones(4, 8, dtype=dtype)
    q = torch.ones(1, 2, 4, 8, dtype=dtype)
    return {
        "matmul": lambda: kernels.matmul(x, x.t()),
        "linear": lambda: kernels.linear(x, torch.ones(3, 8, dtype=dtype)),
        "attention": lambda: kernels.attention(q, q, q, causal=True),
        "decode_attention": lambda: kernels.decode_attention(
            q, q, q, torch.full((1,), 4, dtype=torch.int32)
        ),
        "packed_attention": lambda: kernels.packed_attention(torch.ones(1, 4, 48, dtype=dtype), 2),
        "softmax": lambda: kernels.softmax(x),
        "gelu": lambda: kernels.gelu(x),
        "layer_norm": lambda: kernels.layer_norm(x, torch.ones(8, dtype=dtype)),
        "rms_norm": lambda: kernels.rms_norm(x, torch.ones(8, dtype=dtype)),
        "cross_entropy": lambda: kernels.cross_entropy(x, torch.zeros(4, dtype=torch.long)),
    }


@pytest.mark.parametrize("mode", ["native", "triton"])
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
@pytest.mark.parametrize("op", sorted(_calls(torch.float32)))
def test_an_unsupported_dtype_is_refused_on_either_backend(op, dtype, mode, monkeypatch):
    """The reference path used to take int and float64 (or fail inside torch with
    NotImplementedError for bool), so code written on a laptop broke on the GPU."""
    monkeypatch.setenv("OKTO_KERNELS", mode)
    with pytest.raises(KernelError, match="dtype"):
        _calls(dtype)[op]()


def test_float64_refusal_says_how_to_cast(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "native")
    with pytest.raises(KernelError, match=r"astype\(numpy.float32\)"):
        kernels.matmul(np.ones((4, 8)), np.ones((8, 4)))


@pytest.mark.parametrize("mode", ["native", "triton"])
def test_attention_inputs_of_mixed_dtypes_are_refused_on_either_backend(mode, monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", mode)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(KernelError, match="share one dtype"):
        kernels.attention(q, q.half(), q)


@pytest.mark.parametrize("bad", [8, -3])
def test_an_out_of_range_target_is_a_nan_loss_not_a_made_up_one(bad):
    """The kernel read column 0 for a target outside [0, V) and returned a finite, meaningless
    loss. Checking the targets on the host would cost a GPU sync per call; a NaN row (and
    so a NaN mean) is loud at no cost. The other rows still match float64."""
    logits = torch.randn(4, 8)
    target = torch.tensor([1, bad, -100, 3])
    rows = kernels.cross_entropy(logits, target, reduction="none")
    assert torch.isnan(rows[1]) and rows[2] == 0
    valid = [0, 3]
    want = torch.nn.functional.cross_entropy(
        logits[valid].double(), target[valid], reduction="none"
    )
    torch.testing.assert_close(rows[valid].double(), want, rtol=1e-5, atol=1e-5)
    assert torch.isnan(kernels.cross_entropy(logits, target))
    weight = torch.randn(8, 6)
    assert torch.isnan(kernels.fused_linear_cross_entropy(logits[:, :6], weight, target))
