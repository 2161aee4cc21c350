"""`autotune.launch`: the direct compiled-kernel launch path.

On CPU, Triton's JIT is stubbed: a JITFunction whose `run` records its arguments
and returns a fake compiled kernel whose launcher records what it is given, and a
fake driver. That checks what the direct path hands the launcher (the runtime
arguments, then the constexpr ones in signature order, the grid evaluated on the
meta-parameters) and when it must go back through Triton (a new argument
specialisation, new constexpr values, a pinned configuration list). On the GPU the
direct path runs real kernels and must give what Triton's own path gives.
"""

import types

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from okto.kernels import autotune, backend, gelu
from okto.kernels.ops.gelu import _gelu_fwd_kernel
from tests.kernels.numerics import DEVICE


def _kernel_body(x_ptr, y_ptr, n, scale, FLAG: tl.constexpr, BLOCK: tl.constexpr):
    pass  # never compiled: the tests stub Triton's JIT


class _Compiled:
    """Stands for a CompiledKernel: records each launch."""

    function = "function-handle"
    packed_metadata = "packed"

    def __init__(self):
        self.launches = []

    def launch_metadata(self, grid, stream, *params):
        return None

    def run(self, *args):
        self.launches.append(args)


@pytest.fixture
def stub(monkeypatch):
    """A fresh JITFunction with Triton's run stubbed, on a fake compiled-kernel driver."""
    monkeypatch.setattr(backend, "interpreting", lambda: False)
    fake_driver = types.SimpleNamespace(
        active=types.SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda d: 7)
    )
    monkeypatch.setattr(autotune, "driver", fake_driver)
    jit = JITFunction(_kernel_body)
    compiled = _Compiled()
    slow = []

    def run(*args, grid, warmup, **kwargs):
        slow.append((args, kwargs))
        return compiled

    jit.run = run
    return types.SimpleNamespace(jit=jit, compiled=compiled, slow=slow)


def _tensors(offset=0):
    x = torch.zeros(64, dtype=torch.float16)[offset:]
    return x, torch.zeros(64, dtype=torch.float32)


def test_second_call_launches_the_compiled_kernel_directly(stub):
    grids = []

    def grid(meta):
        grids.append(dict(meta))
        return (triton.cdiv(64, meta["BLOCK"]),)

    x, y = _tensors()
    autotune.launch(stub.jit, grid, ("k",), x, y, 64, 0.5, FLAG=True, BLOCK=16)
    assert len(stub.slow) == 1 and stub.compiled.launches == []
    x2, y2 = _tensors()  # new tensors, same specialisation
    autotune.launch(stub.jit, grid, ("k",), x2, y2, 64, 0.25, FLAG=True, BLOCK=16)
    assert len(stub.slow) == 1
    (launched,) = stub.compiled.launches
    assert launched[:6] == (4, 1, 1, 7, "function-handle", "packed")
    assert launched[6:9] == (None, None, None)  # no profiler hooks: no metadata built
    assert launched[9:] == (x2, y2, 64, 0.25, True, 16)  # runtime args, then constexprs in order
    assert grids[-1]["BLOCK"] == 16 and grids[-1]["FLAG"] is True


def test_registered_launch_hooks_get_their_metadata(stub, monkeypatch):
    """A profiler's hook (Triton's knobs) is passed on, with the metadata it reads."""
    hook = types.SimpleNamespace(calls=[print])  # a non-empty HookChain
    empty = types.SimpleNamespace(calls=[])
    monkeypatch.setattr(autotune, "knobs", types.SimpleNamespace(
        runtime=types.SimpleNamespace(launch_enter_hook=hook, launch_exit_hook=empty)
    ))  # fmt: skip
    stub.compiled.launch_metadata = lambda grid, stream, *params: ("metadata", grid)
    x, y = _tensors()
    for _ in range(2):
        autotune.launch(stub.jit, (3,), (), x, y, 64, 0.5, FLAG=True, BLOCK=16)
    (launched,) = stub.compiled.launches
    assert launched[6:9] == (("metadata", (3,)), hook, None)


@pytest.mark.parametrize(
    "change",
    ["misaligned pointer", "dtype", "n == 1", "n divisible by 16", "n past int32", "constexpr"],
)
def test_a_new_specialisation_goes_back_through_triton(stub, change):
    x, y = _tensors()
    args, kwargs = [x, y, 48, 0.5], {"FLAG": True, "BLOCK": 16}
    autotune.launch(stub.jit, (1,), (), *args, **kwargs)
    if change == "misaligned pointer":
        args[0] = _tensors(offset=1)[0]  # 2 bytes past a 16-byte boundary
    elif change == "dtype":
        args[0] = x.float()
    elif change == "n == 1":
        args[2] = 1
    elif change == "n divisible by 16":
        args[2] = 49
    elif change == "n past int32":
        args[2] = 2**31 + 48
    else:
        kwargs["FLAG"] = False
    autotune.launch(stub.jit, (1,), (), *args, **kwargs)
    assert len(stub.slow) == 2 and stub.compiled.launches == []
    autotune.launch(stub.jit, (1,), (), *args, **kwargs)  # and that one is remembered too
    assert len(stub.slow) == 2 and len(stub.compiled.launches) == 1


def test_autotuned_kernel_replays_the_chosen_configuration(stub, monkeypatch):
    tuned = autotune.autotune([triton.Config({"BLOCK": 32}, num_warps=2)], key=["n"])(stub.jit)
    x, y = _tensors()
    grid = lambda meta: (triton.cdiv(64, meta["BLOCK"]),)  # noqa: E731
    autotune.launch(tuned, grid, (64,), x, y, 64, 1.0, FLAG=False)
    assert stub.slow[0][1] | {"BLOCK": 32, "num_warps": 2} == stub.slow[0][1]
    autotune.launch(tuned, grid, (64,), x, y, 64, 1.0, FLAG=False)
    (launched,) = stub.compiled.launches
    assert launched[0] == 2 and launched[9:] == (x, y, 64, 1.0, False, 32)
    # A test pinning the configuration list gets a fresh lookup.
    monkeypatch.setattr(tuned, "configs", [triton.Config({"BLOCK": 16}, num_warps=4)])
    autotune.launch(tuned, grid, (64,), x, y, 64, 1.0, FLAG=False)
    assert len(stub.slow) == 2 and stub.slow[1][1]["BLOCK"] == 16


def test_keyword_runtime_arguments_keep_tritons_path(stub):
    x, y = _tensors()
    for _ in range(2):
        autotune.launch(stub.jit, (1,), (), x, y, 64, scale=0.5, FLAG=True, BLOCK=16)
    assert len(stub.slow) == 2 and stub.compiled.launches == []


def test_specialization_is_at_least_as_fine_as_tritons():
    """Arguments that okto's key cannot tell apart get the same compiled kernel from Triton."""
    native = pytest.importorskip("triton._C.libtriton").__dict__.get("native_specialize_impl")
    if native is None:
        pytest.skip("this Triton has no native_specialize_impl")
    from triton.backends.compiler import BaseBackend

    def tritons(a):
        try:
            return native(BaseBackend, a, False, True, True)
        except TypeError:  # another signature in this Triton version
            pytest.skip("native_specialize_impl takes other arguments in this Triton")

    base = torch.zeros(64, dtype=torch.float16)
    values = [0, 1, 2, 15, 16, 17, 48, -1, -16, 2**31 - 16, 2**31, 2**31 + 16, -(2**31)]
    values += [-(2**31) - 16, 2**40, 2**63, 2**63 + 16, 0.5, 1.0, True, False, None]
    values += [base, base[1:], base[8:], base.float(), base.float()[4:], base[2:]]
    for a in values:
        for b in values:
            if autotune.specialization((a,)) == autotune.specialization((b,)):
                assert tritons(a) == tritons(b), (a, b)


def test_without_direct_launches_the_tuned_configuration_goes_through_triton(stub, monkeypatch):
    """OKTO_DIRECT_LAUNCH=0: every call takes Triton's JIT path, with the autotuner's
    choice applied directly (its per-call key building skipped)."""
    monkeypatch.setattr(autotune, "_DIRECT", False)
    tuned = autotune.autotune([triton.Config({"BLOCK": 32}, num_warps=2)], key=["n"])(stub.jit)
    x, y = _tensors()
    for _ in range(3):
        autotune.launch(tuned, (1,), (64,), x, y, 64, 1.0, FLAG=False)
    assert len(stub.slow) == 3 and stub.compiled.launches == []
    assert all(kwargs["BLOCK"] == 32 and kwargs["num_warps"] == 2 for _, kwargs in stub.slow)


def test_mutating_ops_skip_the_dispatcher_and_bump_versions(monkeypatch):
    """scale_rows_ in eager mode: run directly, and x's version counter moves as it would
    through the dispatcher (autograd relies on it to catch in-place changes)."""
    from okto.kernels.ops.cross_entropy import scale_rows_

    dispatched = []
    monkeypatch.setattr(scale_rows_, "_opoverload", lambda *args: dispatched.append(args))
    x = torch.randn(4, 8, device=DEVICE)
    want = x * 2
    before = x._version
    scale_rows_(x, torch.full((4,), 2.0, device=DEVICE))
    assert x._version > before and torch.equal(x, want) and not dispatched
    # With autograd recording, the dispatcher keeps the call (and its checks).
    scale_rows_(torch.randn(4, 8, device=DEVICE, requires_grad=True), torch.ones(4, device=DEVICE))
    assert len(dispatched) == 1


def test_an_op_without_a_backward_keeps_autograd_from_losing_the_gradient():
    """decode_attention has no backward: run directly its output was detached, so a loss
    through it silently left q without a gradient (the native path gives one). Through the
    dispatcher, as now, backward names the op instead."""
    from okto.kernels import decode_attention

    q = torch.randn(1, 2, 1, 8, device=DEVICE, requires_grad=True)
    cache = torch.randn(1, 1, 4, 8, device=DEVICE)
    out = decode_attention(q, cache, cache, torch.tensor([3], device=DEVICE))
    assert out.requires_grad
    with pytest.raises(RuntimeError, match="decode_attention"):
        (out.sum() + q.sum()).backward()


@pytest.mark.gpu
def test_gpu_direct_launch_matches_tritons_path():
    x = torch.randn(3, 1000, device="cuda", dtype=torch.float16)
    first = gelu(x)  # through Triton: compiles, then remembered
    again = gelu(x.clone())  # the direct path
    assert torch.equal(first, again)
    entries = _gelu_fwd_kernel.__dict__["_okto_launches"].values()
    assert any(isinstance(e, autotune._Direct) for e in entries)
    odd = torch.randn(3 * 1000 + 1, device="cuda", dtype=torch.float16)[1:].view(3, 1000)
    assert odd.data_ptr() % 16  # a misaligned view: another specialisation
    assert torch.equal(gelu(odd), gelu(odd.clone()))
