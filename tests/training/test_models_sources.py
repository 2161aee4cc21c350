"""MODEL.base as a local Hugging Face folder: each family a user brings trains, and a folder
missing part of its weights is refused in words instead of a traceback or random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tests.training.conftest import steps, train

SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
FAMILIES = {
    "qwen2": {"num_attention_heads": 4, "num_key_value_heads": 2},
    "mistral": {"num_attention_heads": 4, "num_key_value_heads": 2},
    "phi3": {"num_attention_heads": 4, "num_key_value_heads": 2},
    "gemma": {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8},
    "gpt_neox": {"num_attention_heads": 4},
}


def save_model(folder: Path, tokenizer_dir: Path, family: str = "qwen2", **kwargs) -> Path:
    """A tiny random `family` model and the tests' tokenizer, as a Hugging Face folder."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = {"pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}
    config = AutoConfig.for_model(
        family, **SHAPE, **FAMILIES[family], **ids, vocab_size=len(tokenizer), **kwargs
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_from_a_local_folder(project, tokenizer_dir, tmp_path, family):
    save_model(tmp_path / "base", tokenizer_dir, family, max_position_embeddings=64)
    assert train(project(train="max_steps: 2", model='base: "base"')) == 0
    losses = [row["loss"] for row in steps()]
    assert len(losses) == 2 and losses[1] < losses[0]


def test_a_folder_with_a_config_and_no_weights_exits_2(project, tokenizer_dir, tmp_path, capsys):
    """transformers' OSError used to end the run with a traceback and exit 1."""
    save_model(tmp_path / "base", tokenizer_dir)
    (tmp_path / "base" / "model.safetensors").unlink()
    assert train(project(model='base: "base"')) == 2
    err = capsys.readouterr().err
    assert "holds a config.json but no weights" in err and "pretrained: false" in err


def test_a_missing_shard_is_named(project, tokenizer_dir, tmp_path, capsys):
    folder = save_model(tmp_path / "base", tokenizer_dir)
    weights = load_file(str(folder / "model.safetensors"))
    names = sorted(weights)
    half = len(names) // 2
    shards = {"model-1.safetensors": names[:half], "model-2.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors").unlink()
    path = project(train="max_steps: 1", model='base: "base"')
    assert train(path) == 0  # sharded and complete: it loads
    (folder / "model-2.safetensors").unlink()
    assert train(path) == 2
    assert "lacks 1 of the 2 weight shards" in capsys.readouterr().err


def test_weights_the_config_expects_and_the_file_lacks_are_refused(
    project, tokenizer_dir, tmp_path, capsys
):
    """transformers filled them with random values and the run went on as a fine-tune."""
    folder = save_model(tmp_path / "base", tokenizer_dir)
    weights = load_file(str(folder / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if "layers.1." not in k}
    save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert train(project(model='base: "base"')) == 2
    err = capsys.readouterr().err
    assert "weights do not fit its config.json (missing ['model.layers.1." in err


def test_a_truncated_weight_file_exits_2(project, tokenizer_dir, tmp_path, capsys):
    folder = save_model(tmp_path / "base", tokenizer_dir)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert train(project(model='base: "base"')) == 2
    assert "cannot read its weights" in capsys.readouterr().err


def test_architecture_with_a_base_and_pretrained_false_builds_that_architecture(
    project, tokenizer_dir, tmp_path
):
    """`okto plan` planned a llama while `okto train` built a new qwen2 shaped like the base."""
    save_model(tmp_path / "base", tokenizer_dir)
    model = 'base: "base" pretrained: false architecture: "llama"'
    assert train(project(train="max_steps: 1", model=model)) == 0
    config = json.loads(Path("runs/tiny/final/config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["hidden_size"] == 32 and config["intermediate_size"] == 64  # the base's
