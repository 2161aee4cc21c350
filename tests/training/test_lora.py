"""A LoRA run as a user meets it: a base kept in bf16 beside an fp32 adapter, the adapter
loaded back onto the base it names, exports equal to the adapted model, and resuming with
another adapter shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from okto.errors import UsageError
from okto.language.config import AdapterConfig
from okto.package import open_checkpoint
from okto.package.hf_config import transformers_config
from okto.package.transformers_model import causal_lm
from okto.training.lora import apply_lora, check_lora_reached, merged_state_dict
from tests.inference import models
from tests.training.conftest import train

LLAMA_LORA = 'base: "{base}" ADAPTER {{ rank: 4 alpha: 8 }}'


def _llama_base(folder: Path, tokenizer_dir: Path) -> Path:
    """A local Hugging Face checkpoint: a tiny Llama and the tests' tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    models.model("llama", tokenizer).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_a_base_kept_in_bf16_runs_its_fp32_adapter():
    """MODEL.precision bf16 keeps the frozen base in bf16 and the adapter in fp32: the probe
    before training (no autocast) stopped with 'expected m1 and m2 to have the same dtype'
    (examples/finetune-lora.okt on the CPU, and every bf16 LoRA run on a GPU)."""
    model = models.model("gpt2", models.tokenizer("gpt2")).to(torch.bfloat16)
    apply_lora(model, AdapterConfig(rank=4))
    check_lora_reached(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16  # the base's layers add the update in theirs
    out.loss.backward()
    lora = [p for n, p in model.named_parameters() if ".lora." in n]
    assert lora and all(p.dtype == torch.float32 and p.grad is not None for p in lora)


def _load_adapter(adapter: Path):
    """The base the adapter names, with the adapter applied as PEFT applies it: each
    `base_model.model.<layer>.lora_A/B` pair adds B·A·alpha/r to that layer's weight."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]).eval()
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    layers = {k.removeprefix("base_model.model.").rsplit(".", 2)[0] for k in tensors}
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer in layers:
            a = tensors[f"base_model.model.{layer}.lora_A.weight"]
            b = tensors[f"base_model.model.{layer}.lora_B.weight"]
            delta = b @ a * config["lora_alpha"] / config["r"]
            modules[layer].weight += delta.t() if config["fan_in_fan_out"] else delta
    return model, len(layers)


def test_the_adapter_loads_onto_the_base_it_names_and_the_exports_equal_it(
    project, tokenizer_dir, tmp_path, monkeypatch
):
    """The adapter named MODEL.base as written, relative to the .okt file ("models/base"
    here), which no loader finds from anywhere else: it names the absolute folder now. The
    base plus the adapter, the final model and every export give the same logits."""
    base = _llama_base(tmp_path / "models" / "base", tokenizer_dir)
    path = project(
        train="max_steps: 3",
        model=LLAMA_LORA.format(base="models/base"),
        extra='EXPORT { format: ["okm", "hf", "safetensors"] }',
    )
    assert train(path) == 0
    run = Path("runs/tiny").resolve()
    monkeypatch.chdir(tmp_path.parent)  # where "models/base" is no folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nor a hub name to look up
    adapted, layers = _load_adapter(run / "adapter")
    assert layers == 8  # q, k, v, o in both layers: LoRA on Llama's nn.Linear projections
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(str(base))(input_ids=ids).logits
        assert not torch.allclose(expected, base_logits, atol=1e-3)  # it trained
        package = open_checkpoint(run / "export" / "tiny.okm")
        values = dict(package.config)
        config = transformers_config(values.pop("model_type"), values, "tiny.okm")
        loaded = [
            AutoModelForCausalLM.from_pretrained(str(run / "final")),
            AutoModelForCausalLM.from_pretrained(str(run / "export" / "tiny")),
            causal_lm(config, package.tensors())[0],
        ]
        weights = load_file(str(run / "export" / "tiny.safetensors"))
        assert weights.keys() == load_file(str(run / "final" / "model.safetensors")).keys()
        for model in loaded:
            logits = model.eval()(input_ids=ids).logits
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        # the names matched, the shapes did not: a RuntimeError traceback from copy_
        ("rank=8", "does not fit this model (model.layers.0.self_attn.k_proj.lora.A is [4, 64] in "),
        # the tensors fit, so the run went on with the adapter's update rescaled mid-run
        # (alpha 8 -> 64 moved step 4's loss from 5.81 to 4.99) without a word
        ("alpha=64", "trained its adapter with alpha 8, this run has 64: the adapter's update "
         "would be rescaled 8x mid-run"),
    ],
)  # fmt: skip
def test_resuming_with_another_rank_or_alpha_is_refused(
    project, tokenizer_dir, tmp_path, capsys, change, said
):
    _llama_base(tmp_path / "base", tokenizer_dir)
    path = project(train="max_steps: 2 save_steps: 1", model=LLAMA_LORA.format(base="base"))
    assert train(path) == 0
    capsys.readouterr()
    assert train(path, "--resume", "auto", "--set", f"MODEL.adapter.{change}") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert said in err and "Traceback" not in err
    assert train(path, "--resume", "auto", "--set", "MODEL.adapter.dropout=0.1") == 0


def test_the_adapter_is_kept_without_the_final_model(project, tokenizer_dir, tmp_path):
    """The adapter is what a LoRA run makes: OUTPUT.save_model: false left the run with
    nothing (no adapter/ folder), and now leaves out only the merged model."""
    _llama_base(tmp_path / "base", tokenizer_dir)
    path = project(
        train="max_steps: 2",
        model=LLAMA_LORA.format(base="base"),
        extra="OUTPUT { save_model: false }",
    )
    assert train(path) == 0
    run = Path("runs/tiny")
    assert not (run / "final").exists()
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # it trained
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_a_full_disk_while_saving_the_adapter_is_said_after_the_summary(
    project, tokenizer_dir, tmp_path, capsys, monkeypatch
):
    """safetensors' SafetensorError on a full disk ended the run in a traceback."""
    from okto.training import lora

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(lora, "save_file", disk_full)
    _llama_base(tmp_path / "base", tokenizer_dir)
    assert train(project(train="max_steps: 2", model=LLAMA_LORA.format(base="base"))) == 1
    out, err = capsys.readouterr()
    said = " ".join(err.split())
    assert "finished 2 steps" in out and "Traceback" not in err
    assert "the trained model could not be written to runs/tiny/adapter" in said
    assert "No space left on device" in said and not Path("runs/tiny/adapter").exists()


def test_an_adapter_on_a_new_model_is_warned(project, capsys):
    """LoRA over random frozen weights was silent: its adapter_config.json names no base
    (null), and no file but the merged final model holds the weights it adapts."""
    model = 'architecture: "gpt2" pretrained: false config { n_layer: 1 n_head: 2 n_embd: 32 }'
    assert train(project(train="max_steps: 1", model=model + " ADAPTER { rank: 2 }")) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert said.count("ADAPTER on a new model (pretrained: false): LoRA trains over frozen") == 1


def test_an_adapter_write_cut_short_leaves_the_earlier_adapter(tmp_path, monkeypatch):
    """The adapter was written in place: a write that failed half way left a folder with new
    weights and an old (or no) adapter_config.json."""
    from okto.training import lora

    model = models.model("gpt2", models.tokenizer("gpt2"))
    apply_lora(model, AdapterConfig(rank=4))
    folder = lora.save_adapter(model, AdapterConfig(rank=4), "gpt2", tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.lora.B.fill_(1.0)
    with pytest.raises(OSError):
        lora.save_adapter(model, AdapterConfig(rank=4), "gpt2", folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left


def test_lora_on_a_head_tied_to_the_embeddings_stays_the_heads():
    """GPT-2 ties lm_head to wte: the merged update went into lm_head.weight under a config
    still saying tie_word_embeddings, so a loader that ties them (okto's engine, a new model
    of that config) lost it or put it into the embeddings too."""
    model = models.model("gpt2", models.tokenizer("gpt2"))
    embeddings = model.transformer.wte.weight.detach().clone()
    apply_lora(model, AdapterConfig(rank=4, target_modules=["lm_head"]))
    with torch.no_grad():
        model.lm_head.lora.B.normal_()
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    expected = model(input_ids=ids).logits
    assert model.config.tie_word_embeddings is False
    fresh = type(model)(model.config).eval()
    fresh.load_state_dict(merged_state_dict(model))
    torch.testing.assert_close(fresh(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(fresh.transformer.wte.weight, embeddings)


def test_an_empty_target_modules_list_is_refused():
    """`target_modules: []` adapted the attention projections, as if the field were unset."""
    model = models.model("llama", models.tokenizer("llama"))
    with pytest.raises(UsageError, match=r"target_modules is empty: name the layers .*'q_proj'"):
        apply_lora(model, AdapterConfig(rank=2, target_modules=[]))


def test_refused_targets_leave_the_model_as_it_was():
    """Targets matching nothing were refused after every parameter was frozen: the caller's
    model stayed frozen, and would train nothing."""
    model = models.model("gpt2", models.tokenizer("gpt2"))
    with pytest.raises(UsageError, match="match no linear layer"):
        apply_lora(model, AdapterConfig(rank=2, target_modules=["q_proj"]))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.gpu
def test_a_bf16_lora_run_on_the_gpu_with_the_kernels(project, tokenizer_dir, tmp_path):
    """MODEL.precision bf16: the base kept in bf16, the adapter in fp32, the planner's kernels
    around the hooked layers (`python -m pytest -m gpu tests/training/test_lora.py`)."""
    _llama_base(tmp_path / "base", tokenizer_dir)
    model = LLAMA_LORA.format(base="base") + ' precision: "bf16"'
    path = project(train="max_steps: 6", model=model, device="cuda")
    assert train(path, "--set", "ACCELERATE.fused_ops=true", "--set", "BLAS.streams=2") == 0
    final = load_file("runs/tiny/final/model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in final.values() if t.is_floating_point())
    adapter = load_file("runs/tiny/adapter/adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # it trained
