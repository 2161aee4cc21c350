"""Test set-up: Triton's interpreter on machines without CUDA, poisoned kernel
outputs, a fresh random seed per run, and the `gpu` marker.

TRITON_INTERPRET must be set before any Triton kernel is decorated, so it is
set here, before tests import okto.kernels.
"""

import os
import random

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OKTO_POISON_OUTPUTS", "1")

# Fresh inputs every run; OKTO_TEST_SEED replays a failing one.
SEED = int(os.environ.get("OKTO_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"okto: seed {SEED} (replay with OKTO_TEST_SEED={SEED}), cuda={HAS_CUDA}"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)
    random.seed(SEED)


@pytest.fixture(autouse=True)
def _backend_switches():
    """Put back the process-wide switches a training run sets (`apply_switches`): a test
    after it in the same worker would otherwise run its fp32 matmuls in TF32."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    yield
    matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = before
