"""Kernel tests run the Triton path: on CUDA natively, elsewhere in the interpreter."""

import pytest


@pytest.fixture(autouse=True)
def _force_triton(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "triton")
