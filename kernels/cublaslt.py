"""cuBLASLt's GELU epilogues, reached through ctypes.

In a GPT-2 MLP the GELU and its backward are whole passes over an [M, 4C] tensor
between two GEMMs: forward, the pre-activation Z is written, read back and
gelu(Z) written; backward, the input gradient dH of the second GEMM is written,
read back with Z, dZ written and read again for the bias gradient. cuBLASLt can
do both in a GEMM's epilogue, as NVIDIA's Transformer Engine uses it:

- `gelu_linear`: G = gelu_tanh(A @ B + bias), also writing Z = A @ B + bias
  (`CUBLASLT_EPILOGUE_GELU_AUX_BIAS`);
- `gelu_grad_matmul`: dZ = (A @ B) * gelu_tanh'(Z) (`CUBLASLT_EPILOGUE_DGELU`);
- `weight_grad`: a weight gradient and the bias gradient summed from the same
  operand (`CUBLASLT_EPILOGUE_BGRADA`), written in fp32 for fp32 parameters.

PyTorch exposes none of these (`torch._addmm_activation` applies the GELU but
does not save Z), so the library PyTorch already loaded is called directly.
cuBLASLt's GELU is the tanh approximation. The operands are CUDA tensors of fp16
or bf16; `supports` says whether a call can run, and callers fall back to
PyTorch ops when it cannot.

cuBLASLt is column-major: a row-major [R, C] tensor is its transpose, so the
row-major D = A @ B is computed as D^T = B^T A^T.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading

import torch

_SONAMES = ("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11")
DTYPES = (torch.float16, torch.bfloat16)
# cublasLtEpilogue_t (cublasLt.h). DGELU_BGRAD (208), the GELU gradient and its bias
# gradient in one epilogue, ran at 470 us where DGELU took 155 us on an H100 at GPT-2's
# shapes (every algorithm the heuristic offered): the bias gradient comes from the
# weight-gradient GEMM's BGRADA instead.
DEFAULT = 1
GELU_AUX = 160
GELU_AUX_BIAS = 164
DGELU = 192
BGRADA = 256
_BIAS_EPILOGUES = 4 | 256  # epilogues that read (BIAS) or write (BGRADA) the bias vector
WORKSPACE_BYTES = 32 << 20  # what cuBLAS recommends for Hopper

_COMPUTE_32F = 68  # cublasComputeType_t
_SCALE_32F = 0  # cudaDataType_t
_DATA_TYPE = {torch.float32: 0, torch.float16: 2, torch.bfloat16: 14}
_OP_N, _OP_T = 0, 1
# cublasLtMatmulDescAttributes_t
_TRANSA, _TRANSB, _EPILOGUE, _BIAS_POINTER = 3, 4, 7, 8
_AUX_POINTER, _AUX_LD, _BIAS_DATA_TYPE = 11, 12, 26
# cublasLtMatmulPreferenceAttributes_t
_PREF_MAX_WORKSPACE = 1
_PREF_MIN_ALIGNMENT = (5, 6, 7, 8)  # A, B, C, D


class CublasLtError(RuntimeError):
    """cuBLASLt refused a call (a status other than CUBLAS_STATUS_SUCCESS)."""


class _Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class _Heuristic(ctypes.Structure):
    _fields_ = [
        ("algo", _Algo),
        ("workspace_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves_count", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


def _loaded_paths() -> list[str]:
    """Paths of cuBLASLt libraries this process has mapped (PyTorch loads one)."""
    try:
        with open("/proc/self/maps") as maps:
            found = {line.split()[-1] for line in maps if "libcublasLt.so" in line}
    except OSError:
        return []
    return sorted(found)


def _wheel_paths() -> list[str]:
    """cuBLASLt from the nvidia-cublas wheels beside torch, if it is not loaded yet."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libcublasLt.so*")))


_LIB: list[ctypes.CDLL | None] = []  # the library, once looked for


def _library() -> ctypes.CDLL | None:
    if not _LIB:
        _LIB.append(_open_library())
    return _LIB[0]


def _open_library() -> ctypes.CDLL | None:
    if not torch.cuda.is_available():
        return None
    for name in (*_SONAMES, *_loaded_paths(), *_wheel_paths()):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        for fn in (
            lib.cublasLtCreate,
            lib.cublasLtMatmulDescCreate,
            lib.cublasLtMatmulDescSetAttribute,
            lib.cublasLtMatrixLayoutCreate,
            lib.cublasLtMatmulPreferenceCreate,
            lib.cublasLtMatmulPreferenceSetAttribute,
            lib.cublasLtMatmulPreferenceDestroy,
            lib.cublasLtMatmulAlgoGetHeuristic,
            lib.cublasLtMatmul,
        ):
            fn.restype = ctypes.c_int
        lib.cublasLtMatrixLayoutCreate.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64,
        ]  # fmt: skip
        return lib
    return None


def available() -> bool:
    """Whether cuBLASLt can be called (a CUDA build of PyTorch on a machine with a GPU)."""
    return _library() is not None


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasLtError(f"cuBLASLt {what} returned status {status}")


def _set(setter, obj: ctypes.c_void_p, attribute: int, value) -> None:
    _check(setter(obj, attribute, ctypes.byref(value), ctypes.sizeof(value)), "set attribute")


_handles: dict[int, ctypes.c_void_p] = {}
_plans: dict[tuple, _Plan] = {}
_lock = threading.Lock()


def _handle(device: torch.device) -> ctypes.c_void_p:
    index = device.index if device.index is not None else torch.cuda.current_device()
    handle = _handles.get(index)
    if handle is None:
        handle = ctypes.c_void_p()
        with torch.cuda.device(index):
            _check(_library().cublasLtCreate(ctypes.byref(handle)), "create")
        _handles[index] = handle
    return handle


def _operand(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(op, rows, cols, ld) of a row-major 2-D tensor as cuBLASLt's column-major operand
    for its transpose: a row-major view needs no transpose, a column-major one does."""
    rows, cols = t.shape
    if t.stride(1) == 1 and (t.stride(0) >= cols or rows == 1):
        return _OP_N, cols, rows, max(t.stride(0), cols)
    return _OP_T, rows, cols, max(t.stride(1), rows)


def _alignment(t: torch.Tensor) -> int:
    address = t.data_ptr()
    return min(256, address & -address) if address else 256


class _Plan:
    """One GEMM's cuBLASLt descriptors and algorithm, made once per shape, layout and
    epilogue (the heuristic query costs far more than the GEMM's launch)."""

    def __init__(self, handle, epilogue, a, b, out, aux, bias):
        lib = _library()
        self.desc = ctypes.c_void_p()
        _check(
            lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), _COMPUTE_32F, _SCALE_32F), "desc"
        )
        # D^T = B^T A^T: cuBLASLt's A is our b, its B our a.
        op_a, rows_a, cols_a, ld_a = _operand(b)
        op_b, rows_b, cols_b, ld_b = _operand(a)
        set_desc = lib.cublasLtMatmulDescSetAttribute
        _set(set_desc, self.desc, _TRANSA, ctypes.c_int32(op_a))
        _set(set_desc, self.desc, _TRANSB, ctypes.c_int32(op_b))
        _set(set_desc, self.desc, _EPILOGUE, ctypes.c_uint32(epilogue))
        self.uses_bias = bool(epilogue & _BIAS_EPILOGUES)
        if self.uses_bias:
            _set(set_desc, self.desc, _BIAS_DATA_TYPE, ctypes.c_int32(_DATA_TYPE[bias.dtype]))
        if aux is not None:
            _set(set_desc, self.desc, _AUX_LD, ctypes.c_int64(aux.stride(0)))
        self.layouts = []
        for dtype, rows, cols, ld in (
            (b.dtype, rows_a, cols_a, ld_a),
            (a.dtype, rows_b, cols_b, ld_b),
            (out.dtype, out.shape[1], out.shape[0], out.stride(0)),
        ):
            layout = ctypes.c_void_p()
            data_type = _DATA_TYPE[dtype]
            status = lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), data_type, rows, cols, ld)
            _check(status, "matrix layout")
            self.layouts.append(layout)
        self._point(aux, bias)
        preference = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)), "preference")
        set_pref = lib.cublasLtMatmulPreferenceSetAttribute
        _set(set_pref, preference, _PREF_MAX_WORKSPACE, ctypes.c_uint64(WORKSPACE_BYTES))
        for attribute, t in zip(_PREF_MIN_ALIGNMENT, (b, a, out, out), strict=True):
            _set(set_pref, preference, attribute, ctypes.c_uint32(_alignment(t)))
        found = _Heuristic()
        count = ctypes.c_int(0)
        layout_a, layout_b, layout_d = self.layouts
        status = lib.cublasLtMatmulAlgoGetHeuristic(
            handle, self.desc, layout_a, layout_b, layout_d, layout_d, preference,
            1, ctypes.byref(found), ctypes.byref(count),
        )  # fmt: skip
        lib.cublasLtMatmulPreferenceDestroy(preference)
        self.algo = found.algo if status == 0 and count.value > 0 else None

    def _point(self, aux: torch.Tensor, bias: torch.Tensor) -> None:
        set_desc = _library().cublasLtMatmulDescSetAttribute
        if aux is not None:
            _set(set_desc, self.desc, _AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
        if self.uses_bias:
            _set(set_desc, self.desc, _BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))

    def run(self, handle, a, b, out, aux, bias) -> None:
        self._point(aux, bias)
        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=out.device)
        one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
        layout_a, layout_b, layout_d = self.layouts
        stream = torch.cuda.current_stream(out.device).cuda_stream
        status = _library().cublasLtMatmul(
            handle, self.desc, ctypes.byref(one),
            ctypes.c_void_p(b.data_ptr()), layout_a,
            ctypes.c_void_p(a.data_ptr()), layout_b,
            ctypes.byref(zero),
            ctypes.c_void_p(out.data_ptr()), layout_d,
            ctypes.c_void_p(out.data_ptr()), layout_d,
            ctypes.byref(self.algo), ctypes.c_void_p(workspace.data_ptr()),
            ctypes.c_size_t(WORKSPACE_BYTES), ctypes.c_void_p(stream),
        )  # fmt: skip
        _check(status, "matmul")


def _usable(t: torch.Tensor) -> torch.Tensor:
    """t itself when cuBLASLt can read it in place (one unit stride, 16-byte aligned
    leading dimension), else a contiguous copy."""
    rows, cols = t.shape
    if t.stride(1) == 1 and t.stride(0) >= cols and t.stride(0) % 8 == 0:
        return t
    if t.stride(0) == 1 and t.stride(1) >= rows and t.stride(1) % 8 == 0:
        return t
    return t.contiguous()


def supports(a: torch.Tensor, b: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the epilogue GEMMs take `a @ b` (and the other operands): CUDA tensors of one
    16-bit dtype, a and b 2-D, the output width a multiple of 8 (cuBLASLt's rule for the
    leading dimension of the saved Z)."""
    return (
        a.dtype in DTYPES
        and a.dim() == 2
        and b.dim() == 2
        and b.shape[1] % 8 == 0
        and all(t.is_cuda and t.dtype == a.dtype for t in (a, b, *others))
        and available()
    )


def _gemm(epilogue: int, a, b, out, aux, bias) -> bool:
    """out = a @ b with the epilogue; False (nothing written) if cuBLASLt has no algorithm
    for this combination, which callers then compute another way."""
    a, b = _usable(a), _usable(b)
    handle = _handle(out.device)
    key = (
        out.device, epilogue, a.dtype, out.dtype, tuple(a.shape), a.stride(), tuple(b.shape),
        b.stride(), _alignment(a), _alignment(b), _alignment(out),
    )  # fmt: skip
    with _lock:
        plan = _plans.get(key)
        if plan is None:
            plan = _plans[key] = _Plan(handle, epilogue, a, b, out, aux, bias)
        if plan.algo is None:
            return False
        plan.run(handle, a, b, out, aux, bias)
    return True


def _unsupported(epilogue: int) -> CublasLtError:
    return CublasLtError(f"cuBLASLt has no algorithm for epilogue {epilogue} at this shape")


def gelu_linear(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None):
    """(gelu_tanh(z), z) where z = a @ b + bias, for a [M, K], b [K, N], bias [N] or None."""
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype, device=a.device)
    z = torch.empty_like(out)
    epilogue = GELU_AUX if bias is None else GELU_AUX_BIAS
    if not _gemm(epilogue, a, b, out, z, None if bias is None else bias.contiguous()):
        raise _unsupported(epilogue)
    return out, z


def gelu_grad_matmul(a: torch.Tensor, b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(a @ b) * gelu_tanh'(z) for a [M, K], b [K, N], z [M, N] contiguous."""
    dz = torch.empty_like(z)
    if not _gemm(DGELU, a, b, dz, z, None):
        raise _unsupported(DGELU)
    return dz


def weight_grad(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, bias: bool):
    """(a @ b, b.sum(0) or None) in `dtype` (fp32 for master weights: no cast pass after),
    for a [M, K], b [K, N]: a weight gradient and, from the same reads of b, the bias
    gradient that goes with it (the BGRADA epilogue)."""
    out = torch.empty(a.shape[0], b.shape[1], dtype=dtype, device=a.device)
    sums = torch.empty(b.shape[1], dtype=dtype, device=a.device) if bias else None
    if _gemm(BGRADA if bias else DEFAULT, a, b, out, None, sums):
        return out, sums
    return (a @ b).to(dtype), b.sum(0, dtype=dtype) if bias else None
