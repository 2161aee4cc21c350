"""Chat templates and loss masks: exactly the assistant's tokens carry labels."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from okto.data import build_datasets
from okto.data.templates import PLAIN_CHAT_TEMPLATE, Renderer
from tests.data.helpers import chat, config, real_text, trained_runs, write_jsonl

CONVERSATION = chat(
    ("system", "be brief"),
    ("human", "hello world"),
    ("gpt", "answer one"),
    ("human", "two three"),
    ("gpt", "answer two three"),
)
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Marks the last message: a shorter conversation does not render as a prefix of a longer one.
MARKS_LAST = (
    "{% for message in messages %}{% if loop.last %}LAST {% endif %}"
    "<{{ message['role'] }}>{{ message['content'] }}</{{ message['role'] }}>"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _row(tmp_path, tokenizer, records=(CONVERSATION,)):
    path = write_jsonl(tmp_path / "chat.jsonl", list(records))
    cfg = config(train=str(path), validation=str(path), packing=False, max_length=128)
    return build_datasets(cfg, tokenizer).train[0]


def _with_template(tokenizer, template: str, *specials: str):
    other = copy.deepcopy(tokenizer)
    if specials:
        other.add_special_tokens({"additional_special_tokens": list(specials)})
    other.chat_template = template
    return other


def test_plain_template_trains_only_the_assistant(tmp_path, tokenizer):
    row = _row(tmp_path, tokenizer)
    assert real_text(tokenizer, row) == (
        "<|system|>\nbe brief\n<|user|>\nhello world\n<|assistant|>\nanswer one<|endoftext|>"
        "<|user|>\ntwo three\n<|assistant|>\nanswer two three<|endoftext|>"
    )
    assert trained_runs(tokenizer, row) == [
        "answer one<|endoftext|>",
        "answer two three<|endoftext|>",
    ]


def test_tokenizers_own_template_masks_by_prefix(tmp_path, tokenizer):
    chatml = _with_template(tokenizer, CHATML, "<|im_start|>", "<|im_end|>")
    row = _row(tmp_path, chatml)
    assert real_text(chatml, row).startswith("<|im_start|>system\nbe brief<|im_end|>\n")
    # The end-of-turn marker is trained; the separator EOS follows a trained token.
    assert trained_runs(chatml, row) == [
        "answer one<|im_end|>\n",
        "answer two three<|im_end|>\n<|endoftext|>",
    ]


def test_the_plain_template_gets_the_bos_the_tokenizer_adds(tmp_path, tokenizer):
    """A tokenizer that adds BOS to any text (Llama's) but has no chat template: records in
    okto's plain template had no BOS, while raw records and prompts at inference had one."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", bos)]
    )
    adds_bos = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|startoftext|>"
    )
    row = _row(tmp_path, adds_bos)
    assert real_text(adds_bos, row).startswith("<|startoftext|><|system|>\nbe brief")
    assert trained_runs(adds_bos, row) == [
        "answer one<|endoftext|>",
        "answer two three<|endoftext|>",
    ]


def test_template_without_consistent_prefixes_falls_back_to_the_turn_text(tmp_path, tokenizer):
    marked = _with_template(tokenizer, MARKS_LAST)
    row = _row(tmp_path, marked)
    assert "LAST <assistant>answer two three</assistant>" in real_text(marked, row)
    # The turn's end marker (what the template renders after the turn's text) is trained
    # too, and so the EOS after the last one: without them the model never learned to stop.
    assert trained_runs(marked, row) == [
        "answer one</assistant>",
        "answer two three</assistant><|endoftext|>",
    ]


def test_fallback_trains_the_first_word_after_a_space(tmp_path, tokenizer):
    """With a space between the tag and the answer, the answer's first token (` answer`)
    starts at the space, before the located text: it went untrained."""
    spaced = _with_template(
        tokenizer, MARKS_LAST.replace("}}>{{ message['content']", "}}> {{ message['content']")
    )
    row = _row(tmp_path, spaced)
    assert "LAST <assistant> answer two three</assistant>" in real_text(spaced, row)
    assert trained_runs(spaced, row) == [
        " answer one</assistant>",
        " answer two three</assistant><|endoftext|>",
    ]


def test_fallback_does_not_take_an_answer_quoted_in_the_prompt(tokenizer):
    marked = Renderer(_with_template(tokenizer, MARKS_LAST))
    text, spans = marked.render(["user", "assistant"], ["say yes", "yes"], True, False)
    assert [text[start:end] for start, end in spans] == ["yes</assistant>"]
    assert spans[0][0] > text.index("<assistant>")


def test_rejected_by_the_template_is_dropped(tmp_path, tokenizer):
    strict = _with_template(
        tokenizer,
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        + CHATML,
        "<|im_start|>",
        "<|im_end|>",
    )
    records = [chat(("gpt", "answer one")), chat(("human", "hi"), ("gpt", "answer two"))]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    splits = build_datasets(config(train=str(path), validation=str(path), packing=False), strict)
    assert splits.stats.train.dropped == {"the chat template rejected it (user first)": 1}
    assert splits.stats.train.examples == 1


def test_jinja_plain_template_matches_the_direct_renderer(tokenizer):
    roles = ["system", "user", "assistant", "tool", "assistant"]
    texts = ["s", "u", "a1", "t", "a2"]
    direct = Renderer(tokenizer)
    assert direct.tokenizer is None  # okto's own template is rendered without Jinja
    jinja = Renderer(_with_template(tokenizer, PLAIN_CHAT_TEMPLATE + "{# through Jinja #}"))
    assert jinja.render(roles, texts, True, False) == direct.render(roles, texts, True, False)
    messages = [{"role": r, "content": t} for r, t in zip(roles[:2], texts[:2], strict=True)]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|system|>\ns\n<|user|>\nu\n<|assistant|>\n"


@pytest.mark.parametrize("packing", [True, False])
def test_masked_fraction_counts_the_prompt(tmp_path, tokenizer, packing):
    path = write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION] * 3)
    cfg = config(train=str(path), validation=str(path), packing=packing, max_length=64)
    stats = build_datasets(cfg, tokenizer).stats.train
    row = _row(tmp_path, tokenizer)
    per_record = int((row["labels"] != -100).sum())
    # Packed, a label that lands first in a row is no target (nothing predicts it).
    record = np.asarray(row["labels"])[np.asarray(row["attention_mask"]) == 1]
    stream = np.tile(record, 3)
    at_row_starts = int((stream[::64] != -100).sum()) if packing else 0
    assert stats.trained_tokens == 3 * per_record - at_row_starts
    assert stats.masked_fraction == pytest.approx(1 - stats.trained_tokens / stats.tokens)
    assert 0.3 < stats.masked_fraction < 0.9


@pytest.mark.parametrize("cached", [False, True])
def test_chat_rows_leave_the_plain_template_on_a_tokenizer_without_one(
    tmp_path, tokenizer, cached
):
    """A base model's tokenizer (no chat template) trained on chats in okto's plain template
    was saved without it, so `okto chat` prompted the model in "User:" lines instead."""
    chats = write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION] * 4)
    texts = write_jsonl(tmp_path / "text.jsonl", [{"text": "the model reads data"}] * 4)
    cache_dir = tmp_path / "cache" if cached else None
    for path, expected in ((chats, PLAIN_CHAT_TEMPLATE), (texts, None)):
        for _ in range(2 if cached else 1):  # the second build comes from the cache
            base = _with_template(tokenizer, None)
            build_datasets(config(train=str(path), max_length=64), base, cache_dir=cache_dir)
            assert base.chat_template == expected
