"""The public `okto.kernels` API as a user meets it: the same inputs are refused the same way
on either backend, NumPy arrays go in and come out, and bad input is a KernelError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from okto import kernels
from okto.kernels import KernelError
from okto.kernels.benchmark import OPS
from tests.kernels.numerics import DEVICE

BAD_DTYPES = (torch.int32, torch.int64, torch.bool, torch.float64)


@pytest.fixture(autouse=True)
def _tensors_on_the_test_device():
    """Tensors made here live where the kernels run: the GPU when there is one (CPU tensors
    under OKTO_KERNELS=triton would need the interpreter)."""
    with torch.device(DEVICE):
        yield


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


@pytest.mark.parametrize("mode", ["native", "triton"])
@pytest.mark.parametrize("bad", [8, -3])
def test_an_out_of_range_target_is_a_nan_loss_not_a_made_up_one(bad, mode, monkeypatch):
    """The kernel read column 0 for a target outside [0, V) and returned a finite, meaningless
    loss. Checking the targets on the host would cost a GPU sync per call; a NaN row (and
    so a NaN mean) is loud at no cost. The other rows still match float64. The reference
    raised IndexError instead (a device assert on CUDA): both backends now agree."""
    monkeypatch.setenv("OKTO_KERNELS", mode)
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


@pytest.mark.parametrize("op", sorted(OPS))
def test_benchmark_times_each_op_against_the_framework(op, monkeypatch):
    """`benchmark(op, size)`, promised by the API, did not exist."""
    monkeypatch.setenv("OKTO_KERNELS", "native")
    result = kernels.benchmark(op, 16)
    assert isinstance(result, kernels.Benchmark) and result.op == op
    assert result.ms > 0 and result.baseline_ms > 0 and result.ratio > 0
    assert (result.tflops is None) != (result.gbps is None)  # one rate, by the op's kind
    if not torch.cuda.is_available():
        assert result.device == "cpu" and result.dtype == ("float16" if "fp16" in op else "float32")
        assert result.backend == "native (PyTorch reference)"
    assert str(result).startswith(f"{op} ") and "ratio" in str(result)
    assert result.as_dict()["ratio"] == result.ratio


def test_benchmark_takes_a_numpy_integer_size(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "native")
    assert kernels.benchmark("gelu", np.int64(8)).op == "gelu"


@pytest.mark.parametrize(
    "call",
    [
        lambda x: kernels.matmul(None, x),
        lambda x: kernels.matmul(x, 2.0),
        lambda x: kernels.linear(x, None),
        lambda x: kernels.linear(x, x, bias=1.0),
        lambda x: kernels.attention(None, x, x),
    ],
    ids=["matmul a", "matmul b", "linear weight", "linear bias", "attention q"],
)
def test_a_missing_tensor_is_refused_with_what_to_pass(call):
    """matmul(None, x) and the like were AttributeErrors from reading .dim() or .shape."""
    with pytest.raises(KernelError, match="pass a torch tensor or a NumPy array"):
        call(torch.ones(2, 2, 2, 2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is a CPU-only path")
def test_benchmark_says_when_the_triton_interpreter_ran():
    result = kernels.benchmark("rms_norm", 8, dtype="fp32")
    assert result.backend == "triton (interpreter, CPU tensors)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("relu", 8), "op 'relu' is not one of matmul"),
        (("matmul", 0), "size must be a positive int"),
        (("matmul", 8.0), "size must be a positive int"),
        (("matmul", 8, "fp64"), "dtype 'fp64' is not one of fp16, bf16, fp32"),
        (("matmul", 8, torch.int8), "dtype torch.int8 is not one of"),
    ],
)
def test_benchmark_refuses_what_it_cannot_time(args, message):
    with pytest.raises(KernelError, match=message):
        kernels.benchmark(*args)


def test_numpy_arrays_go_to_the_device_of_the_tensors_beside_them():
    """They went to the GPU whenever there was one, so `matmul(array, cpu_tensor)` on a GPU
    machine was a mixed-device error. (A meta tensor stands in for the other device.)"""
    from okto.kernels.interop import accepts_numpy

    devices = accepts_numpy(lambda a, b: (a.device.type, b.device.type))
    assert devices(np.ones(2, np.float32), torch.ones(2, device="meta")) == ("meta", "meta")
    alone = "cuda" if torch.cuda.is_available() else "cpu"
    assert devices(np.ones(2, np.float32), np.ones(2, np.float32)) == (alone, alone)


@pytest.mark.parametrize("mode", ["native", "triton"])
def test_a_0d_numpy_array_comes_back_0d(mode, monkeypatch):
    """np.ascontiguousarray made a 0-d array 1-d, so softmax of a NumPy scalar array came
    back with shape (1,) where torch.softmax of a 0-d tensor gives a 0-d one."""
    monkeypatch.setenv("OKTO_KERNELS", mode)
    out = kernels.softmax(np.array(3.0, np.float32))
    assert isinstance(out, np.ndarray) and out.shape == () and out == 1.0
    assert kernels.gelu(np.array(0.0, np.float32)).shape == ()


@pytest.mark.parametrize("value", [1.5, np.float32(1.5)], ids=["float", "numpy scalar"])
def test_a_number_for_a_tensor_is_refused_with_what_to_pass(value):
    """gelu(1.5) was an AttributeError; softmax(np.float32(1.5)) said 'has dtype float32;
    supported: float32, ...'."""
    for call in (kernels.gelu, kernels.softmax, lambda x: kernels.cross_entropy(x, x)):
        with pytest.raises(KernelError, match="pass a torch tensor or a NumPy array"):
            call(value)


def test_a_read_only_numpy_array_is_taken_without_a_warning(recwarn):
    """A read-only array (a memory map opened "r", a frozen one) drew PyTorch's warning about
    non-writable tensors on the user's screen."""
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)
    x.flags.writeable = False
    out = kernels.rms_norm(x, np.ones(8, np.float32))
    assert isinstance(out, np.ndarray) and out.shape == (4, 8) and np.isfinite(out).all()
    assert not [w for w in recwarn if "not writable" in str(w.message)]


@pytest.mark.parametrize("mode", ["native", "triton"])
def test_attention_over_no_keys_gives_zeros_on_either_backend(mode, monkeypatch):
    """Rows that see no key give zeros (the kernels' rule); the reference raised IndexError
    from amax() over an empty dimension when the sequence had no keys at all."""
    monkeypatch.setenv("OKTO_KERNELS", mode)
    q = torch.randn(1, 2, 3, 8, requires_grad=True)
    empty = torch.randn(1, 2, 0, 8)
    out = kernels.attention(q, empty, empty)
    assert out.shape == (1, 2, 3, 8) and torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))
    assert kernels.attention(empty, empty, empty, causal=True).shape == (1, 2, 0, 8)


@pytest.mark.parametrize("op", sorted(_calls(torch.float32)))
def test_nested_lists_are_refused_with_what_to_pass(op):
    """A list where a tensor goes (`matmul([[1.0]], [[2.0]])`) raised AttributeError from
    deep inside the op."""
    with pytest.raises(KernelError, match=rf"{op} takes torch tensors or NumPy arrays, not a list"):
        getattr(kernels, op)([[1.0, 2.0], [3.0, 4.0]])  # refused before the op looks at it


@pytest.mark.parametrize("mode", ["native", "triton"])
@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan"), float("inf"), "big"])
def test_a_scale_that_is_not_positive_and_finite_is_refused_on_either_backend(
    scale, mode, monkeypatch
):
    """The kernels set masked scores to -inf before scaling them: a scale of 0 or below gave
    NaN outputs where the reference gave numbers."""
    monkeypatch.setenv("OKTO_KERNELS", mode)
    q = torch.randn(1, 2, 4, 8)
    calls = [
        lambda: kernels.attention(q, q, q, scale=scale),
        lambda: kernels.decode_attention(q, q, q, torch.tensor([4]), scale=scale),
        lambda: kernels.packed_attention(torch.randn(1, 4, 48), 2, scale=scale),
    ]
    for call in calls:
        with pytest.raises(KernelError, match="scale="):
            call()


@pytest.mark.parametrize("mode", ["native", "triton"])
def test_numpy_scalars_are_taken_as_options(mode, monkeypatch):
    """NumPy in, NumPy out covers the options too: a NumPy float32 eps stopped the Triton
    norms inside the launcher, and a NumPy int64 ignore_index was refused as not an int."""
    monkeypatch.setenv("OKTO_KERNELS", mode)
    x, weight = torch.randn(4, 8), torch.randn(8)
    target = torch.tensor([1, 3, 0, 3])
    pairs = [
        (lambda e: kernels.layer_norm(x, weight, eps=e), np.float32(2**-10), 2**-10),
        (lambda e: kernels.rms_norm(x, weight, eps=e), np.float32(2**-10), 2**-10),
        (
            lambda s: kernels.attention(x[None, None], x[None, None], x[None, None], scale=s),
            np.float32(0.25),
            0.25,
        ),
        (lambda i: kernels.cross_entropy(x, target, ignore_index=i), np.int64(3), 3),
        (lambda s: kernels.cross_entropy(x, target, label_smoothing=s), np.float32(0.125), 0.125),
        (
            lambda i: kernels.fused_linear_cross_entropy(
                x, weight[None].expand(5, 8), target[:4], ignore_index=i
            ),
            np.int32(3),
            3,
        ),
    ]
    for call, numpy_value, python_value in pairs:
        torch.testing.assert_close(call(numpy_value), call(python_value), rtol=0, atol=0)
    with pytest.raises(KernelError, match="eps='small'; expected a number"):
        kernels.layer_norm(x, eps="small")
    with pytest.raises(KernelError, match="ignore_index must be an int"):
        kernels.cross_entropy(x, target, ignore_index=3.0)
