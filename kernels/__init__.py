"""okto.kernels: the project's Triton kernels for transformer training and inference.

Every op dispatches between a Triton kernel (CUDA tensors, or CPU tensors under
`OKTO_KERNELS=triton` with `TRITON_INTERPRET=1`) and a PyTorch reference; see
`okto.kernels.backend`. NumPy arrays are accepted and returned as NumPy. Bad input
raises `KernelError` on either path; `benchmark(op, size)` times an op against the
framework's own on this machine.
"""

from okto.kernels.backend import KernelError
from okto.kernels.benchmark import Benchmark, benchmark
from okto.kernels.device import get_device_info, is_cuda_available
from okto.kernels.info import info
from okto.kernels.interop import accepts_numpy
from okto.kernels.ops.attention import attention as _attention
from okto.kernels.ops.attention import decode_attention as _decode_attention
from okto.kernels.ops.cross_entropy import cross_entropy as _cross_entropy
from okto.kernels.ops.fused_linear_cross_entropy import (
    fused_linear_cross_entropy as _fused_linear_cross_entropy,
)
from okto.kernels.ops.gelu import gelu as _gelu
from okto.kernels.ops.gelu_mlp import gelu_mlp as _gelu_mlp
from okto.kernels.ops.gemm import linear as _linear
from okto.kernels.ops.gemm import matmul as _matmul
from okto.kernels.ops.gemm import matmul_fp16 as _matmul_fp16
from okto.kernels.ops.layer_norm import layer_norm as _layer_norm
from okto.kernels.ops.packed_attention import packed_attention as _packed_attention
from okto.kernels.ops.rms_norm import rms_norm as _rms_norm
from okto.kernels.ops.softmax import softmax as _softmax

attention = accepts_numpy(_attention)
cross_entropy = accepts_numpy(_cross_entropy)
decode_attention = accepts_numpy(_decode_attention)
fused_linear_cross_entropy = accepts_numpy(_fused_linear_cross_entropy)
gelu = accepts_numpy(_gelu)
gelu_mlp = accepts_numpy(_gelu_mlp)
layer_norm = accepts_numpy(_layer_norm)
linear = accepts_numpy(_linear)
matmul = accepts_numpy(_matmul)
matmul_fp16 = accepts_numpy(_matmul_fp16)
packed_attention = accepts_numpy(_packed_attention)
rms_norm = accepts_numpy(_rms_norm)
softmax = accepts_numpy(_softmax)

__all__ = [
    "Benchmark",
    "KernelError",
    "attention",
    "benchmark",
    "cross_entropy",
    "decode_attention",
    "fused_linear_cross_entropy",
    "gelu",
    "gelu_mlp",
    "get_device_info",
    "info",
    "is_cuda_available",
    "layer_norm",
    "linear",
    "matmul",
    "matmul_fp16",
    "packed_attention",
    "rms_norm",
    "softmax",
]
