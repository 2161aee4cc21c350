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


def test_accumulation_computes_the_batch_it_adds_up_to(project):
    """Micro-batches of different numbers of counted tokens (short rows then long, not
    packed): each micro-batch's mean loss was halved and added, so 2 x batch 2 trained a
    different model from batch 4."""
    short, long = "the cat", " ".join(["the cat sat on a mat"] * 4)
    Path("validation.jsonl").write_text('{"text": "a dog ran to the park"}\n')
    path = project(
        train='max_steps: 2 optimizer: "sgd" gradient_clip: false',
        model=NO_DROPOUT,
        records=[{"text": text} for text in [short, short, long, long] * 2],
        dataset='packing: false shuffle: false validation: "validation.jsonl"',
    )
    for run, batch, accumulation in (("whole", 4, 1), ("accumulated", 2, 2)):
        overrides = ["TRAIN.learning_rate=0.1", f"TRAIN.batch_size={batch}", f"TRAIN.gradient_accumulation={accumulation}"]
        overrides += [f"OUTPUT.dir={run}"]
        assert train(path, *(arg for value in overrides for arg in ("--set", value))) == 0
    whole, accumulated = Path("whole/tiny"), Path("accumulated/tiny")
    for name, weight in _weights(whole).items():
        torch.testing.assert_close(_weights(accumulated)[name], weight, rtol=1e-5, atol=1e-6)
    for one, other in zip(steps(whole), steps(accumulated), strict=True):
        assert other["loss"] == pytest.approx(one["loss"], rel=1e-5)
        assert other["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
