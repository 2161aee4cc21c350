"""Which files a hub download asks for, against a stand-in hub (no network)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub.utils import filter_repo_objects

from okto.training.hub import hub_snapshot

SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
TOKENIZER = ["config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model"]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A repository of `hub.files` (an index's content in `hub.index`); `hub.fetched` is what
    snapshot_download selects from it by the patterns okto passes."""
    repo = SimpleNamespace(files=[], index={}, fetched=[])

    def list_repo_files(name, **kwargs):
        return repo.files

    def hf_hub_download(name, filename, **kwargs):
        assert filename in repo.files
        path = tmp_path / filename
        path.write_text(json.dumps(repo.index))
        return str(path)

    def snapshot_download(name, allow_patterns=None, **kwargs):
        assert not kwargs.get("local_files_only")
        repo.fetched = sorted(filter_repo_objects(repo.files, allow_patterns=allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repo


def test_a_sharded_repo_fetches_the_shards_its_index_names_not_consolidated(hub):
    """Mistral's repositories hold consolidated.safetensors beside the shards: fetching every
    *.safetensors downloaded the model twice."""
    index = "model.safetensors.index.json"
    hub.files = [*TOKENIZER, index, *SHARDS, "consolidated.safetensors", "params.json"]
    hub.index = {"metadata": {}, "weight_map": {"a": SHARDS[0], "b": SHARDS[1], "c": SHARDS[0]}}
    assert hub_snapshot("org/model", offline=False)[1] == "Hugging Face hub"
    assert hub.fetched == sorted([*TOKENIZER, index, *SHARDS, "params.json"])


def test_a_single_file_repo_fetches_model_safetensors_alone(hub):
    hub.files = [*TOKENIZER, "model.safetensors", "consolidated.safetensors"]
    hub_snapshot("org/model", offline=False)
    assert hub.fetched == sorted([*TOKENIZER, "model.safetensors"])


def test_a_repo_without_safetensors_falls_back_to_pytorch_bin(hub):
    bins = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    hub.files = [*TOKENIZER, "pytorch_model.bin.index.json", *bins, "tf_model.h5"]
    hub_snapshot("org/model", offline=False)
    assert hub.fetched == sorted([*TOKENIZER, "pytorch_model.bin.index.json", *bins])
