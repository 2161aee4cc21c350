"""A resumed run keeps the tokenizer it trained, which its checkpoint fits, even when the
data changed since: training a new one gave another vocabulary (a checkpoint that no
longer loads) or, with a full vocabulary, token ids that mean other things."""

from __future__ import annotations

import json
from pathlib import Path

from tests.training.conftest import sentences, train


def test_resume_keeps_the_runs_trained_tokenizer(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = Path("data.jsonl")
    data.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences(120)))
    path = Path("train.okt")
    path.write_text(
        """PROJECT "tok"
DATASET { train: "data.jsonl" tokenizer: "train" vocab_size: 400 max_length: 32 }
MODEL { architecture: "gpt2" pretrained: false config { n_layer: 1 n_head: 2 n_embd: 32 } }
TRAIN { batch_size: 4 max_steps: 4 save_steps: 2 logging_steps: 1 device: "cpu" }
"""
    )
    assert train(path, "--max-steps", "2") == 0
    vocab = Path("runs/tok/tokenizer/tokenizer.json").read_text()
    with data.open("a") as extra:  # words the first tokenizer never saw
        extra.write(json.dumps({"text": "zyxwvut qponmlk " * 20}) + "\n")
    capsys.readouterr()
    assert train(path, "--resume", "auto") == 0
    assert "resuming keeps it" in " ".join(capsys.readouterr().out.split())
    assert Path("runs/tok/tokenizer/tokenizer.json").read_text() == vocab
