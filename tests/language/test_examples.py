"""The shipped examples, the JSON Schema and the generated reference page."""

from __future__ import annotations

import functools
import json
import re
import shutil

import pytest
import torch

import okto
from okto.cli import main
from okto.data.files import resolve_files
from okto.language import docs
from okto.language.config import BLOCK_KEYWORDS, HEADER_KEYWORDS, NOT_EXECUTED_BLOCKS, OktoConfig
from okto.language.schema import json_schema
from tests.language.schema_check import problems
from tests.language.util import EXAMPLES, ROOT

SCHEMA = json_schema()


@functools.cache
def loaded(path) -> okto.Program:
    return okto.load(path)


def test_there_are_at_least_ten_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid_and_round_trips(path):
    p = loaded(path)
    assert OktoConfig.model_validate(p.to_dict()) == p.config
    only_other_tools = all(
        d.severity == "note"
        or d.message.endswith("no effect here")
        or "does not execute" in d.message
        for d in p.warnings
    )
    assert only_other_tools, [d.render() for d in p.warnings]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_schema_accepts_every_example(path):
    assert problems(loaded(path).to_dict(), SCHEMA, SCHEMA) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_data_files_exist(path):
    dataset = loaded(path).config.dataset
    paths = [dataset.train, dataset.validation] + [m.path for m in dataset.mix_datasets or []]
    for relative in filter(None, paths):
        # The loader's own resolver: relative paths, globs and `pkg:` package files alike.
        assert all(f.is_file() for f in resolve_files(relative, path.parent)), relative


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_outputs_stay_in_one_run_folder(path):
    """export-and-logging.okt set OUTPUT.dir to its own run folder, so the model went to
    runs/export-and-logging/export-and-logging/ and its checkpoints and logs one level up."""
    from okto.training.outputs import RunPaths

    paths = RunPaths.resolve(loaded(path).config)
    written = [paths.checkpoints, paths.export, paths.metrics, paths.log]
    assert all(p.is_relative_to(paths.run) for p in written if p is not None), written


def test_the_examples_cover_every_syntax_element():
    text = "\n".join(p.read_text(encoding="utf-8") for p in EXAMPLES)
    for element in [
        '# okto_version: "1.3"',  # version header
        'PROJECT "',
        "DESCRIPTION ",
        "VERSION ",
        "AUTHOR ",
        "TAGS [",
        "  # ",  # trailing comment
        "16GB",
        "50%",
        "10K",
        "0.9M",
        '"4GB"',  # quoted quantity
        "params {",
        "ADAPTER {",
        "config {",
        "mix_datasets: [\n    { path:",  # multi-line list of inline objects
        "DATA {",
        "log_interval:",
        "target_field:",
        "checkpoint_steps:",
        "max_new_tokens:",
        "dtype:",
        "val:",
        "on_epoch_end {",
        "EVERY 500 steps",
        "WHEN ",
        " AND (",
        "SET LR",
        "DECREASE learning_rate BY 50%",
        "STOP_TRAINING",
        "METRICS {",
        "REPLACE with_message:",
        "\t",  # tabs
    ]:
        assert element in text, element
    for keyword in [*BLOCK_KEYWORDS, *NOT_EXECUTED_BLOCKS]:
        assert re.search(rf"^{keyword}\b", text, re.MULTILINE), keyword


def test_the_schema_is_valid_json_schema_and_lists_aliases():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    train = SCHEMA["$defs"]["TrainConfig"]["properties"]
    assert {"log_interval", "log_every", "checkpoint_steps", "lr"} <= set(train)
    assert {"DATASET", "DATA", "TRAIN"} <= set(SCHEMA["properties"])
    for path in EXAMPLES:
        validator.validate(loaded(path).to_dict())


def test_the_schema_rejects_what_the_models_reject():
    assert problems({"train": {"epochs": 0}}, SCHEMA, SCHEMA)
    assert problems({"train": {"epoch": 2}}, SCHEMA, SCHEMA)
    assert problems({"env": {"min_memory": "12"}}, SCHEMA, SCHEMA)
    assert problems({"train": {"log_interval": 5}}, SCHEMA, SCHEMA) == []


def test_the_reference_page_is_up_to_date():
    page = docs.PAGE.read_text(encoding="utf-8")
    assert docs.update(page) == page, "run: python -m okto.language.docs"


def test_the_reference_page_documents_every_field():
    page = docs.PAGE.read_text(encoding="utf-8")
    for keyword in HEADER_KEYWORDS:
        assert f"`{keyword}`" in page
    for name, info in OktoConfig.model_fields.items():
        model = docs.model_in(info.annotation) if name != "project" else None
        for field in model.model_fields if model else ():
            assert f"`{field}`" in page, f"{name}.{field}"


def test_the_readme_language_example_is_valid():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The language") :]
    code = re.search(r"```okt\n(.*?)```", section, re.DOTALL).group(1)
    okto.parse(code, "README.md")


# Examples that ask for a CUDA GPU: without one, okto plan and okto train stop with exit 4.
GPU_EXAMPLES = {"gpt2-124m.okt", "gpu-kernels.okt"}
# The hub model the examples fine-tune; the tests put a stand-in in a cache of their own.
HUB_MODEL = "sshleifer/tiny-gpt2"
# What okto train says of the others, offline, in a fresh folder.
NOT_TRAINED = {
    "inference-only.okt": "MODEL names no model",  # for okto infer -f
    "finetune.okt": "no such file or folder",  # needs the quickstart's run first
}
# The quickstart reads and tokenizes a 125 MB dump: scripts/quickstart trains it, the
# tests plan it.
SLOW = {"quickstart.okt"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_plans(path, capsys):
    needs_gpu = path.name in GPU_EXAMPLES and not torch.cuda.is_available()
    code = main(["plan", "-f", str(path), "--json"])
    record = json.loads(capsys.readouterr().out)
    if needs_gpu:
        assert (code, record["exit_code"]) == (4, 4)
        assert "asks for a CUDA GPU, but this machine has none" in record["error"]
    else:
        assert code == 0, record


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache, in tmp_path, that holds a stand-in for HUB_MODEL: a random GPT-2
    of its layer shape (2 layers, 2 heads, width 2) with a locally trained byte-level BPE
    tokenizer, laid out as the hub library lays out a download (refs/main -> a snapshot)."""
    from huggingface_hub import constants

    from tests.inference import models

    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{HUB_MODEL.replace('/', '--')}"
    commit = "0" * 40
    models.save("gpt2", repo / "snapshots" / commit, n_embd=2, n_head=2, n_positions=1024)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.name not in SLOW], ids=lambda p: p.name)
def test_every_example_trains_two_steps_or_says_why(
    path, tmp_path, monkeypatch, capsys, hub_cache
):
    """In a copy of examples/ (so that runs/ and ../runs land in tmp_path), offline, with the
    hub model in the cache: an example trains 2 steps on the CPU, or stops with its exit code
    and a one-line reason."""
    shutil.copytree(path.parent, tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OKTO_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # a run offline sets them
        monkeypatch.setenv(name, "0")
    args = ["train", "-f", f"examples/{path.name}", "--max-steps", "2"]
    code = main([*args, "--set", "ENV.network=offline"])
    out, err = capsys.readouterr()
    if path.name in GPU_EXAMPLES and not torch.cuda.is_available():
        assert code == 4 and "asks for a CUDA GPU" in err
    elif path.name in NOT_TRAINED:
        assert code == 2 and NOT_TRAINED[path.name] in err
    else:
        assert code == 0, err
        assert "finished 2 steps" in out
        assert list(tmp_path.glob("runs/*/final/config.json"))
    assert "Traceback" not in err
