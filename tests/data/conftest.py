"""A tokenizer trained once per session on a small corpus, for every data test."""

from __future__ import annotations

import random

import pytest

from okto.data import train_tokenizer

WORDS = [
    "the",
    "model",
    "reads",
    "data",
    "and",
    "learns",
    "to",
    "answer",
    "questions",
    "about",
    "tokens",
    "packing",
    "masks",
    "labels",
    "chat",
    "user",
    "assistant",
    "system",
    "hello",
    "world",
    "answer",
    "one",
    "two",
    "three",
    "okto",
    "trains",
    "fast",
    "small",
    "tests",
    "write",
    "files",
    "every",
    "format",
    "works",
]


@pytest.fixture(scope="session")
def tokenizer():
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=40)) for _ in range(300)]
    return train_tokenizer(corpus, vocab_size=400)
