"""Kernel tests run the Triton path: on CUDA natively, elsewhere in the interpreter."""

import pytest


@pytest.fixture(autouse=True)
def _force_triton(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "triton")
    # Untimed first configuration: one compile per shape class, not one per configuration
    # (tests that must see every configuration pin the kernel's list).
    monkeypatch.setenv("OKTO_AUTOTUNE", "first")
