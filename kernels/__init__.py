"""okto.kernels: the project's Triton kernels for transformer training and inference.

Every op dispatches between a Triton kernel (CUDA tensors, or CPU tensors under
`OKTO_KERNELS=triton` with `TRITON_INTERPRET=1`) and a PyTorch reference; see
`okto.kernels.backend`. NumPy arrays are accepted and returned as NumPy.
"""

from okto.kernels.backend import KernelError
from okto.kernels.device import get_device_info, is_cuda_available
from okto.kernels.info import info
from okto.kernels.interop import accepts_numpy
from okto.kernels.ops.attention import attention as _attention
from okto.kernels.ops.attention import decode_attention as _decode_attention
from okto.kernels.ops.gelu import gelu as _gelu
from okto.kernels.ops.gemm import linear as _linear
from okto.kernels.ops.gemm import matmul as _matmul
from okto.kernels.ops.gemm import matmul_fp16 as _matmul_fp16
from okto.kernels.ops.softmax import softmax as _softmax

attention = accepts_numpy(_attention)
decode_attention = accepts_numpy(_decode_attention)
gelu = accepts_numpy(_gelu)
linear = accepts_numpy(_linear)
matmul = accepts_numpy(_matmul)
matmul_fp16 = accepts_numpy(_matmul_fp16)
softmax = accepts_numpy(_softmax)

__all__ = [
    "KernelError",
    "attention",
    "decode_attention",
    "gelu",
    "get_device_info",
    "info",
    "is_cuda_available",
    "linear",
    "matmul",
    "matmul_fp16",
    "softmax",
]
