"""Validation sums a chunk of tokens at a time match the whole logits' loss and accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import MistralConfig, MistralForCausalLM

import okto
from okto.planner import build_plan
from okto.training import evaluation
from tests.planner.util import H100, LLAMA_SIZES, gpt2


def _whole(model, ids, labels):
    """What the loop computed before: fp32 logits of the whole batch."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != -100
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return torch.stack([loss.double(), correct.double(), mask.sum().double()])


def _close(actual, expected):
    """fp32 loss sums added in another order differ in the last bits."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


def _batch(vocab: int = 101):
    ids = torch.randint(0, vocab, (3, 16))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[2, -3:] = -100
    return ids, labels


@pytest.mark.parametrize("chunk_tokens", [1000, 7])
def test_chunked_head_matches_the_whole_logits(monkeypatch, chunk_tokens):
    model = gpt2().eval()
    monkeypatch.setattr(evaluation, "CHUNK_ELEMENTS", chunk_tokens * 101)  # 7: uneven chunks
    ids, labels = _batch()
    sums = evaluation.batch_sums(model, ids, labels)
    assert sums.dtype == torch.float64 and sums[2] == 3 * 15 - 4 - 3  # targets: labels[:, 1:]
    _close(sums, _whole(model, ids, labels))


def test_patched_model_evaluates_through_its_head(monkeypatch):
    """With the fused loss patched in, the chunks still run the (okto) LM head."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2().eval()
    ids, labels = _batch()
    expected = _whole(model, ids, labels)
    with build_plan(okto.parse("", "t.okt"), machine=H100, model=model).apply(model):
        _close(evaluation.batch_sums(model, ids, labels), expected)


def test_other_models_give_their_logits_whole(monkeypatch):
    model = MistralForCausalLM(MistralConfig(**LLAMA_SIZES)).eval()
    monkeypatch.setattr(evaluation, "CHUNK_ELEMENTS", 7 * 101)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    ids, labels = _batch()
    sums = evaluation.batch_sums(model, ids, labels)
    assert calls == [1]  # the model's own forward, which applies whatever follows its head
    _close(sums, _whole(model, ids, labels))


def test_the_test_split_is_scored_once_at_the_end(project, tmp_path, capsys):
    """DATASET.test is scored with the final weights: the same file as the validation data
    gives the final validation figures, and it never steers the run (no `eval` events)."""
    import json

    from okto.training.metrics import read_metrics
    from tests.training.conftest import sentences, train

    held_out = "".join(json.dumps({"text": s}) + "\n" for s in sentences(24, seed=9))
    (tmp_path / "held.jsonl").write_text(held_out)
    path = project(
        train='max_steps: 6 eval_steps: 4 scheduler: "constant"',
        dataset='validation: "held.jsonl" test: "held.jsonl"',
    )
    assert train(path) == 0
    metrics = tmp_path / "runs/tiny/metrics.jsonl"
    evals, tests = read_metrics(metrics, "eval"), read_metrics(metrics, "test")
    assert [e["step"] for e in evals] == [4, 6] and [t["step"] for t in tests] == [6]
    assert tests[0]["test_loss"] == evals[-1]["val_loss"]
    assert tests[0]["accuracy"] == evals[-1]["accuracy"]
    summary = read_metrics(metrics, "summary")[0]
    assert summary["test_loss"] == summary["val_loss"]
    out = capsys.readouterr().out
    assert "(file); test 28 rows" in out and "test   step 6  test_loss" in out
