"""Safetensors blobs: parse and check the header, build tensors in place, write with a new dtype.

The header is parsed here rather than by the safetensors library so that the
tensors can be built directly over the memory-mapped package (no copy, no
pickle) and so that every inconsistency becomes a message, not a traceback.
"""

from __future__ import annotations

import json
import math
import struct

from okto.errors import UsageError

DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_CODES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
_TORCH_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_MAX_HEADER = 100 << 20


class WeightsError(ValueError):
    """The safetensors blob is malformed; the message says how."""


def read_index(blob: memoryview | bytes, size: int | None = None) -> tuple[int, dict[str, dict]]:
    """Parse and check a safetensors header: (data start, {name: {dtype, shape, offsets}}).

    `blob` holds at least the header; `size` is the whole blob's length (default
    `len(blob)`). Checks that every tensor's byte range matches its dtype and
    shape, lies in the blob, and that the ranges tile the data without gaps or overlaps.
    """
    size = len(blob) if size is None else size
    if len(blob) < 8:
        raise WeightsError("shorter than a safetensors header")
    (n,) = struct.unpack_from("<Q", blob)
    if n > _MAX_HEADER or 8 + n > min(size, len(blob)):
        raise WeightsError(f"header length {n} does not fit in {size} bytes")
    try:
        header = json.loads(bytes(blob[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise WeightsError("header is not a JSON object")
    header.pop("__metadata__", None)
    start, size = 8 + n, size - 8 - n
    index, ranges = {}, []
    for name, info in header.items():
        try:
            dtype, shape, (lo, hi) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"tensor {name!r} has a malformed entry") from None
        if dtype not in DTYPE_SIZES:
            raise WeightsError(f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise WeightsError(f"tensor {name!r} has an invalid shape {shape}")
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= size):
            raise WeightsError(f"tensor {name!r} lies outside the data ({lo}..{hi} of {size})")
        if hi - lo != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise WeightsError(f"tensor {name!r}: {hi - lo} bytes for {dtype} {shape}")
        index[name] = {"dtype": dtype, "shape": shape, "offsets": [lo, hi]}
        ranges.append((lo, hi))
    ranges.sort()
    covered = 0
    for lo, hi in ranges:
        if lo != covered:
            raise WeightsError("tensor data ranges overlap or leave gaps")
        covered = hi
    if covered != size:
        raise WeightsError(f"{size - covered} bytes of data belong to no tensor")
    return start, index


def tensors_in_place(buffer, data_offset: int, index: dict[str, dict]) -> dict:
    """Tensors over a safetensors data section starting at `buffer[data_offset]`, without copying."""
    import torch

    out = {}
    for name, info in index.items():
        dtype = getattr(torch, _TORCH_NAMES[info["dtype"]])
        lo = info["offsets"][0]
        count = math.prod(info["shape"])
        if count == 0:
            out[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=data_offset + lo)
        out[name] = flat.view(info["shape"])
    return out


def dtype_summary(index: dict[str, dict]) -> str:
    """The one floating dtype of the weights ('float16', ...), or 'mixed'."""
    floats = {
        info["dtype"] for info in index.values() if info["dtype"] in ("F64", "F32", "F16", "BF16")
    }
    if len(floats) != 1:
        return "mixed" if floats else "none"
    return _TORCH_NAMES[floats.pop()]


def torch_dtype(name: str):
    """'fp16' / 'float16' / 'F16' -> torch.float16."""
    import torch

    code = FLOAT_CODES.get(name, name)
    return getattr(torch, _TORCH_NAMES.get(code, code))


def serialize(tensors: dict, dtype=None) -> bytes:
    """A safetensors blob of `tensors`, floating ones cast to `dtype` when given."""
    from safetensors.torch import save

    if dtype is not None:
        check_range(tensors, dtype, "export in bf16 or fp32")
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return save(_unshared(tensors), metadata={"format": "pt"})


def _unshared(tensors: dict) -> dict:
    """Contiguous tensors, each with memory of its own: safetensors refuses tensors that share
    memory (a `pytorch_model.bin` saved with tied weights, views of one storage), so a tensor
    whose storage an earlier one uses is stored as a copy of its own."""
    seen, out = set(), {}
    for name, tensor in tensors.items():
        tensor = tensor.contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(storage)
        out[name] = tensor
    return out


def check_range(tensors: dict, dtype, advice: str) -> None:
    """A UsageError naming the first tensor with values beyond `dtype`'s range (fp16 ends at
    65504): cast, they would be infinite and the model would generate NaNs without a word.
    `advice` says what to do instead ("export in bf16 or fp32")."""
    for name, tensor in tensors.items():
        largest = _beyond_range(tensor, dtype)
        if largest is not None:
            raise UsageError(
                f"tensor {name!r} holds values up to {largest:.4g}, beyond the range of "
                f"{str(dtype).removeprefix('torch.')}: cast, they would be infinite; {advice}"
            )


def _beyond_range(tensor, dtype) -> float | None:
    """The largest magnitude in `tensor` when a cast to `dtype` would make a finite value
    infinite, else None. One read of the tensor: rounding is monotonic, so no value becomes
    infinite unless its minimum or maximum does (a fifth of the time of casting it all and
    counting infinities). Values already infinite or NaN are not the cast's doing."""
    import torch

    if not tensor.is_floating_point() or not tensor.numel():
        return None
    if torch.finfo(dtype).max >= torch.finfo(tensor.dtype).max:
        return None  # a cast to as wide a range or wider
    ends = torch.stack(torch.aminmax(tensor))
    if not ends.isfinite().all():  # rare: a tensor already holding inf or NaN
        finite = tensor[tensor.isfinite()]
        if not finite.numel():
            return None
        ends = torch.stack(torch.aminmax(finite))
    return ends.abs().max().item() if ends.to(dtype).isinf().any() else None
