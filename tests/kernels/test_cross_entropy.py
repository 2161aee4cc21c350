"""Cross-entropy and fused linear + cross-entropy against float64 PyTorch.

On CPU the kernels run in Triton's interpreter with 1024-wide vocabulary
blocks, so V = 3001 streams three blocks through the online softmax (the last
one partial) and V = 37 one masked block. Targets mix real classes with
ignore_index rows; label smoothing, every reduction, the in-place backward and
an all-ignored batch are covered. The fused op runs with chunks of 5 tokens
over 19 (the last chunk short) so grad_weight accumulates across chunks.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import okto.kernels
from okto.kernels import KernelError, cross_entropy, fused_linear_cross_entropy
from okto.kernels.ops import cross_entropy as ce_module
from okto.kernels.ops import fused_linear_cross_entropy as flce_module
from tests.kernels.numerics import DEVICE, TOL, assert_fake_matches, rel_error

CPU_DTYPES = [torch.float32, torch.float16]


def _targets(n, vocab, ignored=0.3, ignore_index=-100, dtype=torch.int64, device=DEVICE):
    """Random classes with a fraction of ignore_index rows (always at least one of each)."""
    target = torch.randint(0, vocab, (n,), device=device)
    drop = torch.rand(n, device=device) < ignored
    drop[0], drop[-1] = True, False
    return target.masked_fill(drop, ignore_index).to(dtype)


def _ce_check(
    n,
    vocab,
    dtype,
    reduction,
    smoothing,
    inplace=False,
    ignore_index=-100,
    target=None,
    device=DEVICE,
):
    """Loss and d loss / d logits (through a random upstream gradient) against float64."""
    logits = (torch.randn(n, vocab, device=device) * 3).to(dtype)
    target = (
        _targets(n, vocab, ignore_index=ignore_index, device=device) if target is None else target
    )
    leaf = logits.clone().requires_grad_()
    # In place, the loss overwrites its input: feed it a temporary, as an lm_head would.
    loss = cross_entropy(
        leaf * 1 if inplace else leaf,
        target,
        ignore_index=ignore_index,
        label_smoothing=smoothing,
        reduction=reduction,
        inplace_backward=inplace,
    )
    upstream = torch.randn_like(loss)
    loss.backward(upstream)

    logits64 = logits.double().requires_grad_()
    loss64 = F.cross_entropy(
        logits64,
        target.long(),
        ignore_index=ignore_index,
        label_smoothing=smoothing,
        reduction=reduction,
    )
    loss64.backward(upstream.double())
    assert loss.dtype == dtype and loss.shape == loss64.shape
    assert rel_error(loss, loss64) < TOL[dtype]
    assert leaf.grad.dtype == dtype
    assert rel_error(leaf.grad, logits64.grad) < TOL[dtype]
    ignored = target == ignore_index
    assert torch.equal(leaf.grad[ignored], torch.zeros_like(leaf.grad[ignored]))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("vocab", [37, 3001])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_cross_entropy_matches_float64(dtype, vocab, reduction, smoothing):
    _ce_check(7, vocab, dtype, reduction, smoothing)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_inplace_backward_matches_float64(reduction):
    _ce_check(7, 3001, torch.float32, reduction, 0.1, inplace=True)
    _ce_check(5, 37, torch.float16, reduction, 0.0, inplace=True)


def test_inplace_backward_overwrites_the_logits_only():
    logits = torch.randn(5, 37, device=DEVICE, requires_grad=True)
    target = _targets(5, 37)
    (grad,) = torch.autograd.grad(cross_entropy(logits, target, inplace_backward=True), logits)
    assert grad.data_ptr() == logits.data_ptr()
    logits2 = torch.randn(5, 37, device=DEVICE, requires_grad=True)
    before = logits2.detach().clone()
    cross_entropy(logits2, target).backward()
    assert torch.equal(logits2.detach(), before)  # the default leaves its input alone


def test_custom_ignore_index_and_int32_targets():
    target = _targets(9, 37, ignore_index=5, dtype=torch.int32)
    _ce_check(9, 37, torch.float32, "mean", 0.1, ignore_index=5, target=target)


@pytest.mark.parametrize("inplace", [False, True])
def test_all_ignored_batch_matches_torch(inplace):
    """PyTorch's mean over zero tokens is 0 / 0 = NaN; the gradient is zero, not NaN."""
    logits = torch.randn(4, 37, device=DEVICE)
    target = torch.full((4,), -100, device=DEVICE)
    for reduction, expected in (("mean", float("nan")), ("sum", 0.0)):
        leaf = logits.clone().requires_grad_()
        loss = cross_entropy(leaf * 1, target, reduction=reduction, inplace_backward=inplace)
        want = F.cross_entropy(logits, target, reduction=reduction)
        assert torch.equal(loss.isnan(), want.isnan()) and (loss.isnan() or loss == expected)
        loss.backward()
        assert torch.equal(leaf.grad, torch.zeros_like(leaf))
    none = cross_entropy(logits, target, reduction="none")
    assert torch.equal(none, torch.zeros(4, device=DEVICE))


def test_no_grad_forward_writes_no_gradient():
    logits = torch.randn(6, 37, device=DEVICE, requires_grad=True)
    target = _targets(6, 37)
    with torch.no_grad():
        loss = cross_entropy(logits, target)
    assert rel_error(loss, F.cross_entropy(logits.double(), target)) < TOL[torch.float32]
    _, _, grad = ce_module._cross_entropy_op(logits.detach(), target, -100, 0.0, "mean", False)
    assert grad.numel() == 0


def test_non_contiguous_inputs():
    base = torch.randn(7, 80, device=DEVICE)
    logits = base[:, 3:40]  # row stride 80
    target = _targets(14, 37)[::2]
    loss = cross_entropy(logits, target, reduction="none")
    assert rel_error(loss, F.cross_entropy(logits.double(), target, reduction="none")) < 1e-5


def test_backward_allocates_no_zeros_for_the_gradient_outputs():
    """The gradients computed in the forward are non-differentiable outputs: autograd must
    not build logits- (or weight-) sized zeros as their gradients on every backward."""
    from torch.profiler import ProfilerActivity, profile

    target = _targets(9, 37)
    logits = torch.randn(9, 37, device=DEVICE, requires_grad=True)
    hidden = torch.randn(9, 8, device=DEVICE, requires_grad=True)
    weight = torch.randn(37, 8, device=DEVICE, requires_grad=True)
    losses = [cross_entropy(logits, target), fused_linear_cross_entropy(hidden, weight, target)]
    for loss in losses:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss.backward()
        assert not [e.name for e in prof.events() if e.name == "aten::zeros"]


@pytest.mark.gpu
def test_gpu_peak_memory_is_one_gradient_buffer():
    """Default cross-entropy forward+backward at GPT-2's size: the logits-sized gradient
    buffer is all it allocates (no second one of zeros in the backward).

    Measured on the second call: the first may autotune, and tuning keeps a copy of the
    buffer the kernel writes over so that every candidate starts from the same input."""
    logits = torch.randn(4096, 50304, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    target = _targets(4096, 50304)
    torch.autograd.grad(cross_entropy(logits, target), logits)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    torch.autograd.grad(cross_entropy(logits, target), logits)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 1.1 * logits.numel() * logits.element_size()


def test_cross_entropy_bad_inputs_raise():
    logits = torch.randn(4, 10, device=DEVICE)
    target = torch.zeros(4, dtype=torch.long, device=DEVICE)
    with pytest.raises(KernelError, match="reduction"):
        cross_entropy(logits, target, reduction="avg")
    with pytest.raises(KernelError, match="label_smoothing"):
        cross_entropy(logits, target, label_smoothing=1.5)
    with pytest.raises(KernelError, match=r"\[N, V\]"):
        cross_entropy(logits[None], target[None])
    with pytest.raises(KernelError, match="target has shape"):
        cross_entropy(logits, target[:3])
    with pytest.raises(KernelError, match="dtype"):
        cross_entropy(logits, target.float())
    with pytest.raises(KernelError, match="dtype"):
        cross_entropy(logits.double(), target)


def test_native_path_agrees(monkeypatch):
    """OKTO_KERNELS=native (the PyTorch reference) returns what the kernels return."""
    logits, hidden = torch.randn(7, 37, device=DEVICE), torch.randn(7, 8, device=DEVICE)
    weight, target = torch.randn(37, 8, device=DEVICE), _targets(7, 37)
    kw = {"label_smoothing": 0.1, "reduction": "sum"}
    triton_out = (
        cross_entropy(logits, target, **kw),
        fused_linear_cross_entropy(hidden, weight, target, **kw),
    )
    monkeypatch.setenv("OKTO_KERNELS", "native")
    native_out = (
        cross_entropy(logits, target, **kw),
        fused_linear_cross_entropy(hidden, weight, target, **kw),
    )
    for got, want in zip(triton_out, native_out, strict=True):
        assert rel_error(got, want) < TOL[torch.float32]


def test_numpy_in_numpy_out():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 37)).astype(np.float32)
    target = rng.integers(0, 37, 5)
    loss = okto.kernels.cross_entropy(logits, target, reduction="none")
    assert isinstance(loss, np.ndarray) and loss.shape == (5,)


# --- fused linear + cross-entropy ---------------------------------------------------------


def _flce_check(
    n,
    width,
    vocab,
    dtype,
    reduction,
    smoothing,
    bias,
    chunk_tokens,
    monkeypatch,
    frozen_weight=False,
    target=None,
    device=DEVICE,
):
    monkeypatch.setattr(flce_module, "CHUNK_ELEMENTS", chunk_tokens * vocab)
    hidden = torch.randn(n, width, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, width, device=device) / width**0.5).to(dtype)
    weight.requires_grad_(not frozen_weight)
    b = torch.randn(vocab, device=device).to(dtype).requires_grad_() if bias else None
    target = _targets(n, vocab, device=device) if target is None else target
    loss = fused_linear_cross_entropy(
        hidden, weight, target, b, label_smoothing=smoothing, reduction=reduction
    )
    (loss * 3).backward()  # an upstream gradient other than 1 exercises the rescale

    leaves = [t for t in (hidden, weight, b) if t is not None]
    leaves64 = [t.detach().double().requires_grad_(t.requires_grad) for t in leaves]
    loss64 = F.cross_entropy(
        F.linear(*leaves64), target, label_smoothing=smoothing, reduction=reduction
    )
    (loss64 * 3).backward()
    assert loss.dtype == dtype and loss.shape == ()
    if not loss64.isnan():
        assert rel_error(loss, loss64) < TOL[dtype]
    for got, want in zip(leaves, leaves64, strict=True):
        if not got.requires_grad:
            assert got.grad is None
            continue
        assert got.grad.dtype == dtype and got.grad.shape == got.shape
        if want.grad.abs().max() == 0:
            assert torch.equal(got.grad, torch.zeros_like(got.grad))
        else:
            assert rel_error(got.grad, want.grad) < TOL[dtype]


@pytest.mark.parametrize(
    ("reduction", "smoothing", "bias"),
    [("mean", 0.0, False), ("mean", 0.1, True), ("sum", 0.0, True), ("sum", 0.2, False)],
)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_fused_linear_cross_entropy_matches_float64(monkeypatch, dtype, reduction, smoothing, bias):
    _flce_check(19, 24, 37, dtype, reduction, smoothing, bias, 5, monkeypatch)


def test_fused_single_chunk_large_vocab(monkeypatch):
    _flce_check(7, 16, 3001, torch.float32, "mean", 0.1, True, 100, monkeypatch)


def test_fused_frozen_weight_skips_its_gradient(monkeypatch):
    _flce_check(19, 24, 37, torch.float32, "mean", 0.0, True, 5, monkeypatch, frozen_weight=True)


def test_fused_all_ignored_batch(monkeypatch):
    target = torch.full((11,), -100, device=DEVICE)
    _flce_check(11, 8, 37, torch.float32, "mean", 0.0, True, 4, monkeypatch, target=target)
    hidden, weight = torch.randn(11, 8, device=DEVICE), torch.randn(37, 8, device=DEVICE)
    loss = fused_linear_cross_entropy(hidden, weight, target)
    assert loss.isnan()  # as F.cross_entropy's mean over no tokens


def test_fused_bad_inputs_raise():
    hidden, weight = torch.randn(4, 8, device=DEVICE), torch.randn(10, 8, device=DEVICE)
    target = torch.zeros(4, dtype=torch.long, device=DEVICE)
    with pytest.raises(KernelError, match="reduction"):
        fused_linear_cross_entropy(hidden, weight, target, reduction="none")
    with pytest.raises(KernelError, match="weight"):
        fused_linear_cross_entropy(hidden, weight.t(), target)
    with pytest.raises(KernelError, match="one dtype"):
        fused_linear_cross_entropy(hidden, weight.half(), target)
    with pytest.raises(KernelError, match="bias"):
        fused_linear_cross_entropy(hidden, weight, target, torch.zeros(9, device=DEVICE))


@pytest.mark.parametrize("mode", ["native", "triton"])
def test_an_empty_vocabulary_is_refused(monkeypatch, mode):
    """[N, 0] logits: the kernel read each row's target logit from an empty row (the
    interpreter segfaulted); PyTorch gives NaN or raises depending on the targets."""
    monkeypatch.setenv("OKTO_KERNELS", mode)
    ignored = torch.full((3,), -100, device=DEVICE)
    with pytest.raises(KernelError, match="at least one class"):
        cross_entropy(torch.randn(3, 0, device=DEVICE), ignored)
    with pytest.raises(KernelError, match="at least one class"):
        fused_linear_cross_entropy(
            torch.randn(3, 8, device=DEVICE), torch.randn(0, 8, device=DEVICE), ignored
        )


# --- fake implementations and torch.compile -----------------------------------------------


def test_fused_fake_gradients_have_the_real_strides():
    """The real gradients are contiguous; the fake ones copied a transposed hidden's or
    weight's strides, which torch.compile would have planned the graph with."""
    hidden = torch.randn(8, 9, device=DEVICE).t()
    weight = torch.randn(8, 37, device=DEVICE).t()
    args = (hidden, weight, _targets(9, 37), torch.randn(37, device=DEVICE))
    assert_fake_matches(
        flce_module._fused_linear_cross_entropy_op, *args, -100, 0.1, "mean", True, True, True
    )



@pytest.mark.parametrize("compute_grad", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_cross_entropy_ops(reduction, compute_grad):
    """Schema, fake shapes and dtypes, autograd registration and AOT dispatch of every op."""
    logits, target = torch.randn(6, 37, device=DEVICE), _targets(6, 37)
    args = (logits, target, -100, 0.1, reduction, compute_grad)
    torch.library.opcheck(ce_module._cross_entropy_op, args)
    _, lse, grad = ce_module._cross_entropy_op(*args)
    upstream = torch.randn(6 if reduction == "none" else (), device=DEVICE)
    torch.library.opcheck(
        ce_module._cross_entropy_backward_inplace_op,
        (logits.clone(), target, lse, upstream, -100, 0.1, reduction),
    )
    if compute_grad:
        torch.library.opcheck(ce_module.scale_rows_, (grad, upstream))


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_fused_op(monkeypatch, bias):
    monkeypatch.setattr(flce_module, "CHUNK_ELEMENTS", 4 * 37)
    hidden, weight = torch.randn(9, 8, device=DEVICE), torch.randn(37, 8, device=DEVICE)
    b = torch.randn(37, device=DEVICE) if bias else None
    args = (hidden, weight, _targets(9, 37), b, -100, 0.0, "sum", True, True, bias)
    torch.library.opcheck(flce_module._fused_linear_cross_entropy_op, args)


def _losses(logits_in, hidden, weight, target):
    return (
        cross_entropy(logits_in, target, label_smoothing=0.1)
        + cross_entropy(logits_in * 2, target, reduction="none").sum()
        + cross_entropy(logits_in * 1, target, reduction="sum", inplace_backward=True)
        + fused_linear_cross_entropy(hidden, weight, target, label_smoothing=0.1)
    )


def test_torch_compile_fullgraph_forward_and_backward():
    target = _targets(6, 37)
    inputs = [
        torch.randn(6, 37, device=DEVICE, requires_grad=True),
        torch.randn(6, 8, device=DEVICE, requires_grad=True),
        torch.randn(37, 8, device=DEVICE, requires_grad=True),
    ]
    grads = torch.autograd.grad(_losses(*inputs, target), inputs)
    compiled = torch.compile(_losses, fullgraph=True, backend="aot_eager")
    grads_compiled = torch.autograd.grad(compiled(*inputs, target), inputs)
    for got, want in zip(grads_compiled, grads, strict=True):
        assert rel_error(got, want) < 1e-6


# --- GPU: real sizes, bf16, torch.compile with inductor -----------------------------------


@pytest.mark.parametrize("vocab", [37, 3001, 50304])
def test_autotune_blocks_fit_the_vocabulary(vocab):
    kept = ce_module._prune(ce_module._CONFIGS, {"V": vocab})
    assert kept and all(c.kwargs["BLOCK_V"] <= max(1024, 2 * vocab) for c in kept)


@pytest.mark.gpu
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_cross_entropy_gpt2_vocab(dtype, reduction, inplace):
    _ce_check(4096, 50304, dtype, reduction, 0.1, inplace=inplace)
    _ce_check(64, 128256, dtype, reduction, 0.0, inplace=inplace)  # Llama 3's vocabulary


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_linear_cross_entropy_gpt2(monkeypatch, dtype):
    """GPT-2's head: 8192 tokens in chunks of 3000 (the last short), width 768, V 50304."""
    _flce_check(8192, 768, 50304, dtype, "mean", 0.0, False, 3000, monkeypatch)
    _flce_check(1000, 768, 50304, dtype, "sum", 0.1, True, 3000, monkeypatch)


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    target = _targets(512, 50304)
    inputs = [
        torch.randn(512, 50304, device=DEVICE, dtype=torch.bfloat16, requires_grad=True),
        torch.randn(512, 768, device=DEVICE, dtype=torch.bfloat16, requires_grad=True),
        (torch.randn(50304, 768, device=DEVICE) / 768**0.5).to(torch.bfloat16).requires_grad_(),
    ]
    grads = torch.autograd.grad(_losses(*inputs, target), inputs)
    compiled = torch.compile(_losses, fullgraph=True)
    grads_compiled = torch.autograd.grad(compiled(*inputs, target), inputs)
    for got, want in zip(grads_compiled, grads, strict=True):
        assert rel_error(got, want) < TOL[torch.bfloat16]
