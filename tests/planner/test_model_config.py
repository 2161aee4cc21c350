"""A new model's config from MODEL { architecture  config {} }: `okto plan` reads it
(`model_config`) and `okto train` builds it (`okto.training.models.locate`); both must agree,
for any causal LM transformers has, and refuse bad values with a message, not a traceback."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import okto
from okto.cli import main
from okto.errors import UsageError
from okto.planner import model_config
from okto.training.models import locate

QWEN3 = (
    'MODEL { architecture: "qwen3" pretrained: false config { hidden_size: 32 '
    "intermediate_size: 64 num_hidden_layers: 1 num_attention_heads: 2 num_key_value_heads: 1 "
    "head_dim: 16 vocab_size: 64 } }"
)


def test_a_qwen3_from_scratch_plans_and_builds(tmp_path):
    """Qwen3 was refused by the language, and training's config kept the default's 32
    layer_types against num_hidden_layers: 1 (a StrictDataclassClassValidationError)."""
    model = okto.parse(QWEN3).config.model
    planned, where = model_config(model)
    assert where == "MODEL.architecture qwen3"
    built = locate(model, tmp_path, offline=True, scratch=tmp_path).config
    assert planned.to_dict() == built.to_dict()
    assert built.layer_types == ["full_attention"]
    torch.manual_seed(0)
    logits = AutoModelForCausalLM.from_config(built)(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64)


BAD_VALUE = (
    'PROJECT "p"\nMODEL { architecture: "gpt2" pretrained: false config { n_layer: "two" } }\n'
)
REFUSED = (
    "MODEL.config: transformers cannot make a gpt2 config from it: "
    "Field 'n_layer' expected int, got str (value: 'two')"
)


def test_a_config_value_transformers_refuses_is_an_error(tmp_path, capsys):
    """okto plan and okto train ended in huggingface_hub's StrictDataclassFieldValidationError."""
    path = tmp_path / "train.okt"
    path.write_text(BAD_VALUE)
    assert main(["plan", "-f", str(path)]) == 2
    assert capsys.readouterr().err.strip() == REFUSED
    with pytest.raises(UsageError) as caught:
        locate(okto.load(path).config.model, tmp_path, offline=True, scratch=tmp_path)
    assert str(caught.value) == REFUSED


def test_okto_plan_finds_a_relative_base_beside_the_file_as_okto_train_does(
    tmp_path, monkeypatch, capsys
):
    """examples/finetune.okt's MODEL.base "../runs/quickstart/final" trained from the
    repository root, but okto plan looked for it in the working directory alone and said
    'model unknown: ... is neither a local path nor a hub name'."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)
    config.bos_token_id = config.eos_token_id = 0
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "base")
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "train.okt"
    path.write_text('PROJECT "p"\nMODEL { base: "../base" }\n')
    monkeypatch.chdir(tmp_path.parent)
    assert main(["plan", "-f", str(path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["model"]["architecture"], plan["model"]["head_dim"]) == ("gpt2", 8)
    assert plan["notes"][0] == "model config from MODEL.base ../base"


def test_a_head_dim_that_varies_by_layer_is_read_per_layer():
    """Gemma 4's config raises on its global head_dim: okto plan and okto train ended in
    transformers' AmbiguousGlobalPerLayerAttributeError traceback."""
    from transformers import AutoConfig

    from okto.planner.architecture import read_facts

    try:
        config = AutoConfig.for_model("gemma4_text", num_hidden_layers=2)
    except ValueError:
        pytest.skip("this transformers has no Gemma 4")
    expected = max(layer.head_dim for layer in config.per_layer_config)
    assert read_facts(config, None, False, None).head_dim == expected


@pytest.mark.parametrize("architecture", ["", 'architecture: "llama"'])
def test_a_base_with_fewer_layers_plans_and_builds(tmp_path, architecture):
    """`base: X pretrained: false config { num_hidden_layers: 1 }` over a two-layer Qwen2
    kept the base's two layer_types, which transformers refused against the one layer
    (okto plan and okto train both stopped with exit 2); more heads dropped the base's
    key-value head count for the class default, 32."""
    from transformers import AutoConfig

    base = AutoConfig.for_model(
        "qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, vocab_size=64,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(base).save_pretrained(str(tmp_path / "base"))
    text = (
        f'MODEL {{ base: "base" pretrained: false {architecture} '
        "config { num_hidden_layers: 1 num_attention_heads: 4 } }"
    )
    model = okto.parse(text).config.model
    planned, _ = model_config(model, tmp_path)
    built = locate(model, tmp_path, offline=True, scratch=tmp_path).config
    assert planned.num_hidden_layers == built.num_hidden_layers == 1
    if not architecture:  # Qwen2 lists a type per layer; Llama has no such list
        assert len(planned.layer_types) == len(built.layer_types) == 1
    for config in (planned, built):  # 32 / 4, where the base's was 32 / 2 (Qwen2 lists none)
        assert getattr(config, "head_dim", 8) == 8
    # Qwen2 keeps the base's grouped-query count (its class default would be 32); a new
    # Llama derives its own, as for any other architecture named over a base
    kv_heads = 4 if architecture else 1
    assert planned.num_key_value_heads == built.num_key_value_heads == kv_heads


def test_overrides_add_no_key_a_config_lacks():
    """GPT-2 names its heads n_head: the rule for key-value heads added
    num_key_value_heads: None to every GPT-2 config built with a config {} block."""
    from okto.package.hf_config import overridden

    assert overridden({"n_head": 4, "n_layer": 12}, {"n_layer": 2}) == {"n_head": 4, "n_layer": 2}
    grouped = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "head_dim": 16}
    assert overridden(grouped, {"num_attention_heads": 8}) == {
        **grouped, "num_attention_heads": 8, "head_dim": 8  # the grouped count kept
    }  # fmt: skip
