"""Flash attention and decoding against a float64 materialised-softmax reference.

On CPU the kernels run in Triton's interpreter at small odd sizes, with tiles of
16-32 rows, so sequences of 37-65 span several blocks and the causal diagonal,
boundary and fully-masked-row paths all run. The oracle takes the same low-
precision inputs in float64; fp32 results (fp32 products, fp32 accumulation) and
fp16 results (fp16 probabilities into the P V product) are held to numerics.TOL.
"""

import numpy as np
import pytest
import torch

import okto.kernels
from okto.kernels import KernelError, attention, decode_attention
from okto.kernels.ops import attention as attention_module
from okto.kernels.ops.attention import attention_reference, decode_attention_reference
from tests.kernels.numerics import DEVICE, TOL, assert_fake_matches, rel_error

CPU_DTYPES = [torch.float32, torch.float16]


def _qkv(b, hq, hkv, sq, skv, d, dtype, device=DEVICE, bshd=False):
    """Random q, k, v; with `bshd` they are [B, S, H, D] buffers seen as [B, H, S, D]."""

    def make(h, s):
        if bshd:
            return torch.randn(b, s, h, d, device=device).to(dtype).transpose(1, 2)
        return torch.randn(b, h, s, d, device=device).to(dtype)

    return make(hq, sq), make(hkv, skv), make(hkv, skv)


def _check(q, k, v, tol, grad_tol=None, **kwargs):
    """Forward and backward of okto attention against the float64 reference."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, **kwargs)
    dout = torch.randn_like(out)
    out.backward(dout)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    out64 = attention_reference(*leaves64, **kwargs)
    out64.backward(dout.double())
    assert out.dtype == q.dtype and out.shape == q.shape
    assert rel_error(out, out64) < tol
    for got, want in zip(leaves, leaves64, strict=True):
        assert got.grad.shape == got.shape
        assert rel_error(got.grad, want.grad) < (grad_tol or tol)
    return out, leaves


# (B, Hq, Hkv, Sq, Skv, D, causal)
SHAPES = [
    pytest.param(2, 2, 2, 37, 37, 64, False, id="mha-37-d64"),
    pytest.param(1, 4, 2, 37, 37, 80, True, id="gqa2-causal-37-d80"),
    pytest.param(1, 2, 1, 65, 65, 32, True, id="mqa-causal-65-d32"),
    pytest.param(1, 2, 2, 20, 45, 64, True, id="causal-queries-end-cache"),
    pytest.param(1, 2, 1, 45, 20, 32, True, id="causal-more-queries-than-keys"),
    pytest.param(1, 2, 2, 23, 41, 32, False, id="cross-23x41"),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize(("b", "hq", "hkv", "sq", "skv", "d", "causal"), SHAPES)
def test_attention_matches_float64(b, hq, hkv, sq, skv, d, causal, dtype):
    _check(*_qkv(b, hq, hkv, sq, skv, d, dtype), TOL[dtype], causal=causal)


@pytest.mark.parametrize(
    ("masks", "dtype"),
    [
        ("padding", torch.float32),
        ("lens", torch.float32),
        ("both", torch.float32),
        ("both", torch.float16),
    ],
)
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_and_seq_lens(masks, causal, dtype):
    b, skv = 2, 37
    kpm = torch.rand(b, skv, device=DEVICE) > 0.3
    lens = torch.tensor([skv, 19], device=DEVICE)
    kwargs = {
        "key_padding_mask": kpm if masks != "lens" else None,
        "seq_lens": lens if masks != "padding" else None,
    }
    _check(*_qkv(b, 2, 1, 29, skv, 32, dtype), TOL[dtype], causal=causal, **kwargs)


def test_lengths_of_any_stride():
    """seq_lens and cache_lens sliced from a larger tensor (stride 2) were read as if
    contiguous: other batches' lengths."""
    q, k, v = _qkv(2, 2, 1, 9, 13, 16, torch.float32)
    lens = torch.tensor([13, 0, 4, 0], device=DEVICE)[::2]
    _check(q, k, v, TOL[torch.float32], causal=True, seq_lens=lens)
    out = decode_attention(q[:, :, -2:], k, k, lens, num_splits=2)
    ref = decode_attention_reference(q[:, :, -2:].double(), k.double(), k.double(), lens)
    assert rel_error(out, ref) < TOL[torch.float32]


def test_rows_that_see_no_key_give_zeros():
    q, k, v = _qkv(2, 2, 2, 19, 23, 32, torch.float32)
    kpm = torch.ones(2, 23, dtype=torch.bool, device=DEVICE)
    kpm[1] = False  # batch 1 sees nothing
    out, leaves = _check(q, k, v, TOL[torch.float32], key_padding_mask=kpm)
    assert (out[1] == 0).all()
    assert all((t.grad[1] == 0).all() for t in leaves)
    # seq_lens of 0 drops every key as well
    out = attention(q, k, v, seq_lens=torch.tensor([23, 0], device=DEVICE))
    assert (out[1] == 0).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_strided_bshd_inputs_and_output_layout(dtype):
    q, k, v = _qkv(1, 4, 2, 29, 29, 32, dtype, bshd=True)
    assert not q.is_contiguous()
    out, leaves = _check(q, k, v, TOL[dtype], causal=True)
    # Output and gradients keep the [B, S, H, D] memory order of their inputs.
    assert out.transpose(1, 2).is_contiguous()
    assert all(t.grad.transpose(1, 2).is_contiguous() for t in leaves)
    contiguous = attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert contiguous.is_contiguous()
    assert rel_error(contiguous, out) < TOL[dtype]


@pytest.mark.parametrize(
    ("hq", "hkv", "sq", "skv", "d", "causal", "bshd", "masks"),
    [
        pytest.param(4, 2, 37, 37, 32, True, False, False, id="gqa-causal-37"),
        pytest.param(2, 2, 20, 45, 64, True, True, False, id="bshd-queries-end-cache"),
        pytest.param(2, 2, 33, 33, 128, True, False, False, id="d128-forward-too"),
        pytest.param(2, 1, 29, 41, 16, False, False, True, id="masks-29x41"),
    ],
)
def test_tma_reads_match_float64(monkeypatch, hq, hkv, sq, skv, d, causal, bshd, masks):
    """The kernels' TMA-descriptor loads (Hopper's path, forced here under the
    interpreter): rows past the ends come back as zeros instead of masked loads."""
    monkeypatch.setenv("OKTO_ATTENTION_TMA", "1")
    q, k, v = _qkv(2, hq, hkv, sq, skv, d, torch.float16, bshd=bshd)
    if DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9:
        assert attention_module._tma_reads(q, k, v)
    kwargs = {}
    if masks:
        kwargs = {
            "key_padding_mask": torch.rand(2, skv, device=DEVICE) > 0.3,
            "seq_lens": torch.tensor([skv, skv - 9], device=DEVICE),
        }
    _check(q, k, v, TOL[torch.float16], causal=causal, **kwargs)


def test_tma_reads_only_where_rows_are_aligned(monkeypatch):
    monkeypatch.setenv("OKTO_ATTENTION_TMA", "1")
    q, k, v = _qkv(1, 2, 2, 8, 8, 32, torch.float16)
    assert attention_module._tma_reads(q, k, v)
    odd = torch.randn(1, 2, 8, 36, device=DEVICE).half()[..., :32]  # rows of 72 bytes
    assert not attention_module._tma_reads(odd, k, v)
    assert not attention_module._tma_reads(*_qkv(1, 2, 2, 8, 8, 80, torch.float16))
    assert not attention_module._tma_reads(q.float(), k.float(), v.float())
    monkeypatch.setenv("OKTO_ATTENTION_TMA", "0")
    assert not attention_module._tma_reads(q, k, v)


def test_scale_and_defaults():
    q, k, v = _qkv(1, 2, 2, 17, 17, 64, torch.float32)
    _check(q, k, v, TOL[torch.float32], causal=True, scale=0.3)
    default = attention(q, k, v)
    assert rel_error(default, attention(q, k, v, scale=64**-0.5)) == 0


# (B, Hq, Hkv, new tokens, cache, D)
DECODE_SHAPES = [
    pytest.param(3, 4, 2, 1, 45, 64, id="gqa2-one-token"),
    pytest.param(2, 4, 1, 3, 53, 80, id="mqa-three-tokens-d80"),
    pytest.param(2, 2, 2, 2, 40, 32, id="mha-two-tokens"),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize(("b", "hq", "hkv", "sq", "cache", "d"), DECODE_SHAPES)
def test_decode_matches_float64(b, hq, hkv, sq, cache, d, num_splits, dtype):
    q = torch.randn(b, hq, sq, d, device=DEVICE).to(dtype)
    # The cache is preallocated [B, S, H, D], as an engine holds it, and read transposed.
    k_cache, v_cache = (
        torch.randn(b, cache, hkv, d, device=DEVICE).to(dtype).transpose(1, 2) for _ in range(2)
    )
    lens = torch.randint(sq, cache + 1, (b,), device=DEVICE)
    lens[0] = cache
    out = decode_attention(q, k_cache, v_cache, lens, num_splits=num_splits)
    ref = decode_attention_reference(q.double(), k_cache.double(), v_cache.double(), lens)
    assert out.shape == q.shape and out.dtype == dtype
    assert rel_error(out, ref) < TOL[dtype]


def test_decode_agrees_with_causal_attention_and_takes_one_token():
    """The last Sq tokens of a full cache are causal attention's last rows."""
    q, k, v = _qkv(2, 4, 2, 3, 30, 32, torch.float32)
    lens = torch.tensor([30, 30], device=DEVICE)
    full = attention(q, k, v, causal=True)
    assert rel_error(decode_attention(q, k, v, lens, num_splits=2), full) < TOL[torch.float32]
    one = decode_attention(q[:, :, -1], k, v, lens)
    assert one.shape == (2, 4, 32)
    assert rel_error(one, full[:, :, -1]) < TOL[torch.float32]


@pytest.mark.parametrize("bshd", [False, True])
def test_fake_implementations_match(bshd):
    q, k, v = _qkv(2, 2, 1, 9, 11, 16, torch.float16, bshd=bshd)
    kpm = torch.rand(2, 11, device=DEVICE) > 0.2
    lens = torch.tensor([11, 5], device=DEVICE)
    ops = torch.ops.okto
    assert_fake_matches(ops.attention, q, k, v, kpm, lens, True, 0.2)
    out, lse = ops.attention(q, k, v, kpm, lens, True, 0.2)
    dout = torch.randn_like(out)
    assert_fake_matches(ops.attention_backward, dout, q, k, v, out, lse, kpm, lens, True, 0.2)
    assert_fake_matches(ops.decode_attention, q[:, :, :2], k, v, lens, 0.2, 2)


def test_opcheck():
    q, k, v = _qkv(1, 2, 1, 9, 9, 16, torch.float32)
    kpm = torch.rand(1, 9, device=DEVICE) > 0.2
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), kpm, None, True, 0.25)
    torch.library.opcheck(torch.ops.okto.attention, args)


def test_torch_compile_fullgraph_forward_backward():
    q, k, v = (t.requires_grad_() for t in _qkv(2, 2, 1, 11, 11, 16, torch.float32))
    kpm = torch.rand(2, 11, device=DEVICE) > 0.2
    lens = torch.tensor([11, 7], device=DEVICE)
    dout = torch.randn(2, 2, 11, 16, device=DEVICE)

    def loss(q, k, v):
        out = attention(q, k, v, causal=True, key_padding_mask=kpm, seq_lens=lens)
        return (out * dout).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    for got, want in zip(grads, eager, strict=True):
        assert rel_error(got, want) < TOL[torch.float32]

    q, k, v = (t.detach() for t in (q, k, v))
    decode = torch.compile(decode_attention, fullgraph=True, backend="aot_eager")
    got = decode(q[:, :, -2:], k, v, lens, num_splits=2)
    assert rel_error(got, decode_attention(q[:, :, -2:], k, v, lens, num_splits=2)) < 1e-6


def test_numpy_in_numpy_out():
    q, k, v = (t.numpy() for t in _qkv(1, 2, 2, 9, 9, 16, torch.float32, device="cpu"))
    out = okto.kernels.attention(q, k, v, causal=True)
    assert isinstance(out, np.ndarray) and out.shape == q.shape
    want = attention_reference(*(torch.from_numpy(t) for t in (q, k, v)), causal=True)
    assert np.allclose(out, want.numpy(), atol=1e-5)


def test_native_mode_uses_the_reference(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "native")
    q, k, v = _qkv(1, 2, 1, 9, 12, 16, torch.float32)
    lens = torch.tensor([12], device=DEVICE)
    assert torch.equal(attention(q, k, v, causal=True), attention_reference(q, k, v, causal=True))
    assert torch.equal(decode_attention(q, k, v, lens), decode_attention_reference(q, k, v, lens))


def test_clear_errors():
    q, k, v = _qkv(1, 4, 2, 8, 8, 32, torch.float32)
    with pytest.raises(KernelError, match="4-D"):
        attention(q[0], k[0], v[0])
    with pytest.raises(KernelError, match="multiple of key/value heads"):
        attention(q[:, :3], k, v)
    with pytest.raises(KernelError, match="head dim"):
        attention(*_qkv(1, 2, 2, 8, 8, 160, torch.float32))
    with pytest.raises(KernelError, match="differ in shape"):
        attention(q, k, v[:, :, :5])
    with pytest.raises(KernelError, match="dtype"):
        attention(q.to(torch.float64), k.double(), v.double())
    with pytest.raises(KernelError, match="share one dtype"):
        attention(q, k.half(), v)
    with pytest.raises(KernelError, match="key_padding_mask"):
        attention(q, k, v, key_padding_mask=torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(KernelError, match="seq_lens"):
        attention(q, k, v, seq_lens=torch.ones(1))
    with pytest.raises(KernelError, match="different devices"):
        attention(q, k.to("meta"), v)
    with pytest.raises(KernelError, match="cache_lens"):
        decode_attention(q, k, v, torch.tensor([[8]]))
    with pytest.raises(KernelError, match="query rows per KV head"):
        decode_attention(torch.randn(1, 4, 65, 32), k, v, torch.tensor([8]))
    with pytest.raises(KernelError, match="num_splits"):
        decode_attention(q, k, v, torch.tensor([8]), num_splits=0)
    with pytest.raises(KernelError, match=r"num_splits must be an int, got 2\.5"):
        decode_attention(q, k, v, torch.tensor([8]), num_splits=2.5)  # was a TypeError
    split = decode_attention(q, k, v, torch.tensor([8]), num_splits=np.int64(2))  # AttributeError
    assert rel_error(split, decode_attention(q, k, v, torch.tensor([8]))) < TOL[torch.float32]


# --- Hugging Face adapter ---------------------------------------------------------------------


@pytest.fixture
def gpt2(monkeypatch):
    """A tiny random GPT-2 and a counter of okto kernel and SDPA fallback calls."""
    transformers = pytest.importorskip("transformers")
    from okto.kernels import hf_attention

    hf_attention.register()
    calls = {"okto": 0, "sdpa": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(hf_attention, "attention", counting("okto", hf_attention.attention))
    monkeypatch.setattr(
        hf_attention,
        "sdpa_attention_forward",
        counting("sdpa", hf_attention.sdpa_attention_forward),
    )
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=64, vocab_size=97, bos_token_id=1, eos_token_id=2
    )
    model = transformers.GPT2LMHeadModel(config).eval().to(DEVICE)
    return model, calls


def _logits(model, implementation, ids, mask=None):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_hf_adapter_matches_eager_gpt2(gpt2, padding):
    model, calls = gpt2
    ids = torch.randint(0, 97, (2, 13), device=DEVICE)
    mask = None if padding == "none" else torch.ones(2, 13, dtype=torch.long, device=DEVICE)
    if padding == "right":
        mask[1, 9:] = 0
    if padding == "left":
        mask[1, :4] = 0
    want = _logits(model, "eager", ids, mask)
    got = _logits(model, "okto", ids, mask)
    keep = torch.ones(2, 13, dtype=torch.bool) if mask is None else mask.bool().cpu()
    assert rel_error(got.cpu()[keep], want.cpu()[keep]) < 1e-5
    assert calls == {"okto": 2, "sdpa": 0}


def test_hf_adapter_falls_back_to_sdpa(gpt2):
    from okto.kernels import hf_attention

    model, calls = gpt2
    q, k, v = _qkv(1, 2, 2, 7, 7, 32, torch.float32)
    module = model.transformer.h[0].attn
    additive = torch.zeros(1, 1, 7, 7, device=DEVICE)
    additive[..., 3] = float("-inf")  # a float mask: SDPA's business
    out, weights = hf_attention.attention_forward(module, q, k, v, additive, scaling=0.2)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, additive, scale=0.2)
    assert weights is None and rel_error(out, want.transpose(1, 2)) < 1e-6
    sliding = torch.ones(7, 7, dtype=torch.bool, device=DEVICE).tril().triu(-2)[None, None]
    hf_attention.attention_forward(module, q, k, v, sliding, scaling=0.2)
    assert calls == {"okto": 0, "sdpa": 2}


def test_hf_adapter_runs_okto_under_torch_compile(gpt2):
    """Compiled, transformers builds the causal mask while tracing; okto's mask builder
    must still give None for plain causal attention, or every call goes to SDPA."""
    model, calls = gpt2
    model.set_attn_implementation("okto")
    ids = torch.randint(0, 97, (2, 13), device=DEVICE)
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        got = compiled(ids).logits
    assert calls == {"okto": 2, "sdpa": 0}
    assert rel_error(got, _logits(model, "eager", ids)) < 1e-5


def test_hf_mask_builder_keeps_masks_it_cannot_skip():
    """Outside the plain causal case okto's mask builder gives exactly SDPA's mask."""
    from transformers.masking_utils import and_masks, causal_mask_function, sdpa_mask

    from okto.kernels import hf_attention

    plain = {
        "batch_size": 2, "q_length": 5, "kv_length": 5, "q_offset": 0, "kv_offset": 0,
        "mask_function": causal_mask_function, "attention_mask": None, "device": "cpu",
    }  # fmt: skip
    assert hf_attention.attention_mask(**plain) is None
    padding = torch.ones(2, 5, dtype=torch.bool)
    padding[1, 3:] = False
    window = and_masks(causal_mask_function, lambda b, h, q, kv: q - kv < 2)
    for change in (
        {"attention_mask": padding},
        {"mask_function": window, "allow_is_causal_skip": False},
        {"kv_length": 8, "q_offset": 3},
        {"q_offset": torch.tensor(0)},
        {"allow_is_causal_skip": False},
    ):
        got = hf_attention.attention_mask(**(plain | change))
        want = sdpa_mask(**(plain | change))
        assert (got is None) == (want is None), change
        assert got is None or torch.equal(got, want), change


# --- GPU: real sizes, bf16, D128 -------------------------------------------------------------

GPU_DTYPES = [torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("b", "hq", "hkv", "sq", "skv", "d", "causal"),
    [
        (2, 8, 8, 1024, 1024, 64, True),
        (2, 8, 2, 1000, 1000, 128, True),
        (1, 4, 4, 777, 1333, 96, False),
        (2, 6, 3, 513, 2049, 80, True),
        (4, 4, 1, 2048, 2048, 128, False),
        (1, 8, 8, 256, 3000, 32, True),
    ],
)
def test_gpu_attention_matches_float64(b, hq, hkv, sq, skv, d, causal, dtype):
    _check(*_qkv(b, hq, hkv, sq, skv, d, dtype, bshd=d == 80), TOL[dtype], causal=causal)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_masks_and_fp32(dtype):
    b, skv = 4, 1500
    kpm = torch.rand(b, skv, device=DEVICE) > 0.1
    kpm[:, -1] = True
    lens = torch.tensor([1500, 1200, 999, 1], device=DEVICE)
    args = _qkv(b, 8, 2, 1500, skv, 128, dtype)
    _check(*args, TOL[dtype], causal=True, key_padding_mask=kpm, seq_lens=lens)
    _check(*_qkv(2, 4, 4, 300, 300, 64, torch.float32), TOL[torch.float32], causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_pointer_loads_match_float64(monkeypatch, d):
    """The pointer-load path that GPUs before Hopper (and unaligned rows) take."""
    monkeypatch.setenv("OKTO_ATTENTION_TMA", "0")
    _check(*_qkv(2, 8, 2, 1000, 1000, d, torch.bfloat16), TOL[torch.bfloat16], causal=True)


@pytest.mark.gpu
def test_gpu_long_causal_against_sdpa():
    """B2 H16 S8192 D128, the benchmark's largest case: too big for the materialised
    oracle, so SDPA's flash kernel (fp32 accumulation) is the reference."""
    q, k, v = (t.requires_grad_() for t in _qkv(2, 16, 16, 8192, 8192, 128, torch.bfloat16))
    out = attention(q, k, v, causal=True)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    want_grads = torch.autograd.grad(want, (q, k, v), dout)
    assert rel_error(out, want) < TOL[torch.bfloat16]
    for got, ref in zip(grads, want_grads, strict=True):
        assert rel_error(got, ref) < TOL[torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    ("hq", "hkv", "sq", "d"), [(12, 12, 1, 64), (32, 8, 1, 128), (8, 2, 4, 96)]
)
def test_gpu_decode_long_cache(hq, hkv, sq, d, dtype):
    b, cache = 8, 8192
    q = torch.randn(b, hq, sq, d, device=DEVICE).to(dtype)
    k_cache, v_cache = (torch.randn(b, hkv, cache, d, device=DEVICE).to(dtype) for _ in range(2))
    lens = torch.randint(sq, cache + 1, (b,), device=DEVICE)
    lens[0] = cache
    assert attention_module.decode_splits(b, hkv, cache, q.device) > 1
    out = decode_attention(q, k_cache, v_cache, lens)
    ref = decode_attention_reference(q.double(), k_cache.double(), v_cache.double(), lens)
    assert rel_error(out, ref) < TOL[dtype]


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    q, k, v = (t.requires_grad_() for t in _qkv(2, 8, 4, 1024, 1024, 64, torch.bfloat16))
    kpm = torch.rand(2, 1024, device=DEVICE) > 0.1

    def loss(q, k, v):
        return attention(q, k, v, causal=True, key_padding_mask=kpm).float().square().sum()

    compiled = torch.compile(loss, fullgraph=True)
    grads = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    for got, want in zip(grads, eager, strict=True):
        assert rel_error(got, want) < TOL[torch.bfloat16]
