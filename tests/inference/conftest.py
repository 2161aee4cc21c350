"""Tiny models saved once per session: Hugging Face directories and their `.okm` packages."""

import pytest
import torch

from tests.inference import models


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: OpenMP's thread barriers cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: models.save(kind, root / kind) for kind in ("gpt2", "llama")}


@pytest.fixture(scope="session")
def okm_files(hf_dirs, tmp_path_factory):
    from okto.package import export_model

    root = tmp_path_factory.mktemp("okm")
    return {kind: export_model(path, root / f"{kind}.okm") for kind, path in hf_dirs.items()}


@pytest.fixture(scope="session")
def loaded(okm_files):
    """okto models loaded from the packages (CPU, fp32), shared by the read-only tests."""
    from okto.inference import load_model

    return {kind: load_model(path, device="cpu") for kind, path in okm_files.items()}
