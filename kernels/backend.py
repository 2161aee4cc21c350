"""Which implementation runs an op: okto's Triton kernels or the PyTorch reference.

`OKTO_KERNELS=triton` forces the Triton path even on CPU tensors (run it with
`TRITON_INTERPRET=1` to use Triton's interpreter), `OKTO_KERNELS=native` forces
the reference, and the default (`auto`) picks Triton for CUDA tensors when
Triton is importable.
"""

from __future__ import annotations

import operator
import os

import torch
from torch._library.custom_ops import CustomOpDef

from okto.kernels import environment
from okto.kernels.errors import KernelError


def mode() -> str:
    """OKTO_KERNELS: auto, triton or native."""
    return environment.setting("OKTO_KERNELS")


_TRITON: list[bool] = []  # the answer, once known


def triton_available() -> bool:
    """Whether Triton imports. Cached by hand, not with functools.cache: every op asks
    this, also under torch.compile, where dynamo warns about (and traces through) an
    lru_cache wrapper."""
    if not _TRITON:
        try:
            import triton  # noqa: F401
        except Exception:
            _TRITON.append(False)
        else:
            _TRITON.append(True)
    return _TRITON[0]


def cdiv(a: int, b: int) -> int:
    """Ceiling division for host code (`triton.cdiv` is a constexpr function: ~3 us a call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (0 for 0), for host code, as `triton.next_power_of_2`."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def interpreting() -> bool:
    """True when Triton kernels run in the interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide, for these input tensors, whether the Triton path runs."""
    chosen = mode()
    if chosen == "native" or not triton_available():
        if chosen == "triton":
            raise KernelError("OKTO_KERNELS=triton but Triton is not installed")
        return False
    on_cuda = True
    for t in tensors:  # a loop, not all(generator): this runs on every op call
        on_cuda = on_cuda and t.is_cuda
    if chosen == "triton":
        if not on_cuda and not interpreting():
            raise KernelError(
                "OKTO_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)"
            )
        return True
    return on_cuda


def check_same_device(*tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise KernelError(f"inputs are on different devices ({names}); move them to one device")


def dtype_name(dtype: torch.dtype) -> str:
    """`float16`, not `torch.float16`, in messages."""
    return str(dtype).removeprefix("torch.")


def number(value, what: str) -> float:
    """`value` as a Python float, or KernelError. NumPy and 0-d tensor scalars count: a
    NumPy float32 reached Triton's launcher as a type it cannot pass to a kernel."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        raise KernelError(f"{what}={value!r}; expected a number") from None


def integer(value, what: str) -> int:
    """`value` as a Python int (NumPy integers count), or KernelError: a float reached
    tensor shape arithmetic as a TypeError."""
    try:
        return operator.index(value)
    except TypeError:
        raise KernelError(f"{what} must be an int, got {value!r}") from None


def check_tensor(t, what: str) -> None:
    """Refuse what is not a tensor: a Python number or None was an AttributeError, and a
    NumPy scalar's dtype "was not" float32."""
    if not isinstance(t, torch.Tensor):
        raise KernelError(f"{what} is a {type(t).__name__}; pass a torch tensor or a NumPy array")


def check_dtype(t: torch.Tensor, allowed: tuple[torch.dtype, ...], what: str) -> None:
    """Refuse a dtype the op lacks, on every backend alike (the reference would take more)."""
    check_tensor(t, what)
    if t.dtype not in allowed:
        names = ", ".join(dtype_name(d) for d in allowed)
        # float64 is NumPy's default, so the usual way to get here from a NumPy array.
        cast = (
            " (cast first: x.float(), or a.astype(numpy.float32) for a NumPy array)"
            if t.dtype == torch.float64 and torch.float32 in allowed
            else ""
        )
        raise KernelError(f"{what} has dtype {dtype_name(t.dtype)}; supported: {names}{cast}")


# Tests set OKTO_POISON_OUTPUTS=1 so that any output element a kernel fails to write is
# NaN. Read once, when okto.kernels is imported (tests/conftest.py sets it before that):
# every kernel output is allocated through `empty`, and an environment lookup per
# allocation was a measurable part of a small op's host time.
_POISON = environment.setting("OKTO_POISON_OUTPUTS") == "1"


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """Allocate a kernel's output; NaN-filled when poisoning is on."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _POISON and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return empty(*t.shape, dtype=dtype or t.dtype, device=t.device)


# ---------------------------------------------------------------------------
# Calling custom ops without the dispatcher in plain eager mode


def _modes_active() -> bool:
    """True when something must see the op's dispatch: compiling, or a mode or transform."""
    return (
        torch.compiler.is_compiling()
        or torch._C._is_torch_function_mode_enabled()
        or bool(torch._C._len_torch_dispatch_stack())
        or torch._C._are_functorch_transforms_active()
    )


_TENSOR, _PARAMETER = torch.Tensor, torch.nn.Parameter


class _EagerOp(CustomOpDef):
    """A custom op that, in plain eager mode, runs its Python function directly.

    A `torch.library.custom_op` call hops Python -> C++ dispatcher -> Python
    autograd wrapper -> dispatcher -> Python implementation, with alias checks,
    about 20-30 us a call on the Hopper hosts: more than a small kernel takes on
    the GPU. Eager calls on plain tensors with no modes active take the same
    implementation and the same setup_context/backward through an
    `autograd.Function` instead; anything else (torch.compile, fake or
    functional tensors, dispatch or function modes, vmap) goes through the
    dispatcher as before. Ops that mutate arguments (no autograd of their own)
    take the fast path only where autograd is not involved, and bump the mutated
    tensors' version counters as the dispatcher would. Ops without a backward
    (decode attention, the backward ops themselves under create_graph) go through the
    dispatcher when autograd records.
    """

    _okto_mutated: tuple[int, ...] = ()

    def __call__(self, *args, **kwargs):
        if kwargs or _modes_active():
            return self._opoverload(*args, **kwargs)
        grad = False
        for a in args:  # one loop for both questions: ~4 us less than all() + any() here
            kind = type(a)
            if kind is _TENSOR or kind is _PARAMETER:
                grad = grad or a.requires_grad
            elif isinstance(a, torch.Tensor):  # a subclass (fake, functional, ...): dispatch
                return self._opoverload(*args)
        if grad and torch.is_grad_enabled():
            # Without a backward of its own the dispatcher's output fails loudly in
            # backward; run directly, it was detached and the gradient silently lost.
            if self._okto_mutated or self._backward_fn is None:
                return self._opoverload(*args)
            return self._eager_function().apply(*args)
        output = self._init_fn(*args)
        for i in self._okto_mutated:
            torch.autograd.graph.increment_version(args[i])
        return output

    def _eager_function(self) -> type[torch.autograd.Function]:
        fn = self.__dict__.get("_eager_autograd")
        if fn is None:
            op = self

            class EagerAutograd(torch.autograd.Function):
                @staticmethod
                def forward(ctx, *args):
                    output = op._init_fn(*args)
                    if op._setup_context_fn is not None:
                        op._setup_context_fn(ctx=ctx, inputs=args, output=output)
                    return output

                @staticmethod
                def backward(ctx, *grads):
                    return op._backward_fn(ctx, *grads)

            fn = self.__dict__["_eager_autograd"] = EagerAutograd
        return fn


def eager_fast_path(op: CustomOpDef) -> CustomOpDef:
    """Decorate a `torch.library.custom_op` so eager calls skip the dispatcher.

    The op stays the same registered op (opcheck, register_fake and
    register_autograd work as before); only its `__call__` gains the fast path.
    """
    schema = op._opoverload._schema
    mutated = tuple(
        i
        for i, a in enumerate(schema.arguments)
        if a.alias_info is not None and a.alias_info.is_write
    )
    op.__class__ = _EagerOp
    op._okto_mutated = mutated
    return op
