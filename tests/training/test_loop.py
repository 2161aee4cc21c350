"""The training loop's arithmetic, checked on tiny CPU runs: what a step computes and what
the run reports about it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import steps, train

# GPT-2 without dropout: two runs over the same rows compute the same thing.
NO_DROPOUT = (
    'architecture: "gpt2" pretrained: false '
    "config { n_layer: 2 n_head: 2 n_embd: 64 resid_pdrop: 0 embd_pdrop: 0 attn_pdrop: 0 }"
)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_accumulation_computes_the_batch_it_adds_up_to(project, device):
    """Micro-batches of different numbers of counted tokens (short rows then long, not
    packed): each micro-batch's mean loss was halved and added, so 2 x batch 2 trained a
    different model from batch 4. On the GPU: with the kernels, bf16 and CUDA graphs."""
    short, long = "the cat", " ".join(["the cat sat on a mat"] * 4)
    Path("validation.jsonl").write_text('{"text": "a dog ran to the park"}\n')
    path = project(
        train='max_steps: 2 optimizer: "sgd" gradient_clip: false',
        model=NO_DROPOUT,
        records=[{"text": text} for text in [short, short, long, long] * 2],
        dataset='packing: false shuffle: false validation: "validation.jsonl"',
        device=device,
    )
    gpu = ["ACCELERATE.fused_ops=true", "OPTIMIZE.cuda_graphs=true"] if device == "cuda" else []
    for run, batch, accumulation in (("whole", 4, 1), ("accumulated", 2, 2)):
        overrides = [*gpu, "TRAIN.learning_rate=0.1", f"TRAIN.batch_size={batch}"]
        overrides += [f"TRAIN.gradient_accumulation={accumulation}", f"OUTPUT.dir={run}"]
        assert train(path, *(arg for value in overrides for arg in ("--set", value))) == 0
    # bf16 on the GPU: the two groupings round differently; a halved micro-batch is off by ~2x
    rel, atol = (1e-5, 1e-6) if device == "cpu" else (2e-2, 1e-3)
    whole, accumulated = Path("whole/tiny"), Path("accumulated/tiny")
    for name, weight in _weights(whole).items():
        torch.testing.assert_close(_weights(accumulated)[name], weight, rtol=rel, atol=atol)
    for one, other in zip(steps(whole), steps(accumulated), strict=True):
        assert other["loss"] == pytest.approx(one["loss"], rel=rel)
        assert other["grad_norm"] == pytest.approx(one["grad_norm"], rel=rel)
