"""Tiny GPT-2 and Llama models with a locally trained byte-level BPE tokenizer, saved as HF directories.

Nothing is downloaded: the tokenizer is trained on a few sentences and the
weights are random (with a wide init, so greedy decoding has few near-ties).
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The future of AI is bright and full of small models.",
    "Once upon a time there was a tiny language model.",
    "okto trains and runs language models fast.",
    "Hello world! How are you today? I am fine, thank you.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
]
PROMPTS = [
    "The future of AI is",
    "Once upon a time",
    "Hello",
    "okto trains and runs language models fast. Numbers: 0 1 2",
]


def tokenizer(kind: str):
    """A byte-level BPE tokenizer; Llama's adds <s> at the start like the real one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] if kind == "gpt2" else ["<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if kind == "gpt2":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def sentencepiece_tokenizer():
    """A Llama-style SentencePiece BPE (spaces as '▁', byte fallback) whose decoder drops the
    space of the first token it decodes, as Llama's and Mistral's do."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def model(kind: str, tok, **overrides):
    import transformers

    common = {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    if kind == "gpt2":
        shape = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 256}
        config = transformers.GPT2Config(**{**shape, "initializer_range": 0.1, **common, **overrides})
        cls = transformers.GPT2LMHeadModel
    else:
        shape = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
        }
        config = transformers.LlamaConfig(**{**shape, "initializer_range": 0.1, **common, **overrides})
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    return cls(config).eval()


def save(kind: str, path: Path, tok=None, **overrides) -> Path:
    """Build and save a tiny `kind` (gpt2 or llama) model with its tokenizer (`tok`, else
    `tokenizer(kind)`) to `path`; `overrides` replace config fields, the shape's included."""
    tok = tok or tokenizer(kind)
    model(kind, tok, **overrides).save_pretrained(path)
    tok.save_pretrained(path)
    return path
