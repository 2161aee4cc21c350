"""Architectures okto's engine does not implement run through Hugging Face generate, from a
folder and from an `.okm`, with the greedy tokens transformers' own generate gives. GPT-NeoX and
the MoE models store keys that transformers renames on load (`embed_out` is `lm_head`, the
experts are packed into one tensor): a plain `load_state_dict` left their head or experts out."""

import pytest
import torch

from okto.inference import load_model
from okto.package import export_model
from tests.inference import models
from tests.inference.models import PROMPTS
from tests.inference.test_generate import hf_greedy

SHAPES = {
    "gpt_neox": {"intermediate_size": 64},
    "mixtral": {"intermediate_size": 64, "num_key_value_heads": 2, "num_local_experts": 4},
    "qwen2_moe": {
        "intermediate_size": 64,
        "num_key_value_heads": 2,
        "num_experts": 4,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
    },
    "qwen2": {"intermediate_size": 64, "num_key_value_heads": 2},
}


@pytest.mark.parametrize("arch", list(SHAPES))
def test_fallback_generate_equals_transformers(arch, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = models.tokenizer("gpt2")
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        initializer_range=0.2,
        **SHAPES[arch],
    )
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config).eval()
    folder = tmp_path / arch
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    okm = export_model(folder, tmp_path / f"{arch}.okm")
    for path in (folder, okm):
        model = load_model(path, device="cpu")
        assert f"not {arch!r}" in model.notes[0]
        (g,) = model.generate(PROMPTS[0], max_tokens=8, temperature=0)
        assert g.token_ids == hf_greedy(hf, model.encode(g.prompt), 8)[: len(g.token_ids)], path
