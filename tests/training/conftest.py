"""Tiny training runs for the CPU: a 2-layer, 64-wide GPT-2 over a ~300-entry vocabulary,
sequences of 32 tokens, data files the tests write, and a tokenizer trained once."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from okto.cli import main
from okto.data import train_tokenizer
from okto.training.metrics import read_metrics

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "the",
    "dog",
    "ran",
    "to",
    "the",
    "park",
    "while",
    "small",
    "birds",
    "sang",
    "in",
    "tall",
    "green",
    "trees",
    "near",
    "a",
    "quiet",
    "river",
    "where",
    "children",
    "played",
]


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) for _ in range(count)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(sentences(400, seed=1), 300).save_pretrained(str(folder))
    return folder


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, tmp_path_factory):
    """Runs write under the test's folder; tokenized data is cached once per session."""
    monkeypatch.chdir(tmp_path)
    # PyTorch's ops unless a test asks for okto's kernels itself: in Triton's interpreter a
    # few training steps take minutes (a clean-venv CI run once stalled here that way).
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    monkeypatch.setenv("OKTO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "okto-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier on a shared CPU; results do not depend on it
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def project(tmp_path, tokenizer_dir):
    """Write `train.okt` (and its data) in the test's folder: `project(train="...", extra="...")`."""

    def write(
        train: str = "max_steps: 12",
        extra: str = "",
        model: str = "",
        records: list | None = None,
        name: str = "train.okt",
        device: str = "cpu",
        dataset: str = "",
    ) -> Path:
        """The CPU by default, where runs are bit-for-bit repeatable, also on a GPU machine."""
        data = tmp_path / "data.jsonl"
        if not data.exists() or records is not None:
            rows = records if records is not None else [{"text": s} for s in sentences(160)]
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        model = model or (
            'architecture: "gpt2" pretrained: false config { n_layer: 2 n_head: 2 n_embd: 64 }'
        )
        path = tmp_path / name
        path.write_text(
            f"""PROJECT "tiny"
DATASET {{ train: "data.jsonl" tokenizer: "{tokenizer_dir}" max_length: 32 {dataset} }}
MODEL {{ {model} }}
TRAIN {{ batch_size: 4 learning_rate: 3e-3 logging_steps: 1 seed: 3 device: "{device}" {train} }}
{extra}
"""
        )
        return path

    return write


def train(path: Path, *args: str) -> int:
    return main(["train", "-f", str(path), *args])


def steps(run: Path = Path("runs/tiny")) -> list[dict]:
    return read_metrics(run / "metrics.jsonl", "step")
