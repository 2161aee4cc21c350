"""Where models come from (a local checkpoint folder, an .okm package) and LoRA: the base
stays frozen, the adapter is saved on its own, and the merged model equals the adapted one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from okto.cli import main
from okto.language.config import AdapterConfig
from okto.package import export_model
from okto.training.lora import apply_lora, merged_state_dict, save_adapter, unmatched_targets
from tests.inference import models
from tests.training.conftest import steps, train


@pytest.fixture
def base_dir(tmp_path, tokenizer_dir) -> Path:
    """A local Hugging Face checkpoint: a tiny GPT-2 and the tests' tokenizer."""
    folder = tmp_path / "base"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    models.model("gpt2", tokenizer).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_merged_weights_equal_the_adapted_model(family):
    model = models.model(family, models.tokenizer(family))
    targets = ["c_attn", "c_proj", "c_fc"] if family == "gpt2" else None  # None: q, k, v, o
    base = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = apply_lora(model, AdapterConfig(rank=4, alpha=8, target_modules=targets))
    assert len(adapted) == 8  # per layer: c_attn, both c_proj, c_fc / q, k, v, o
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora." not in n)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora.B"):
                param.normal_()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    adapted_logits = model(input_ids=ids).logits
    fresh = type(model)(model.config).eval()
    fresh.load_state_dict(merged_state_dict(model))
    torch.testing.assert_close(fresh(input_ids=ids).logits, adapted_logits, atol=1e-5, rtol=1e-5)
    assert not torch.equal(fresh.state_dict()[f"{adapted[0]}.weight"], base[f"{adapted[0]}.weight"])


def test_target_modules_that_match_nothing_are_named():
    """A misspelt target beside a good one used to be dropped without a word."""
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50))
    adapter = AdapterConfig(rank=2, target_modules=["c_attn", "c_atn", "mlp.c_fc"])
    adapted = apply_lora(model, adapter)
    assert len(adapted) == 4
    assert unmatched_targets(adapter, adapted) == ["c_atn"]
    assert unmatched_targets(AdapterConfig(rank=2), adapted) == []  # the defaults


# Attention's linear layers by architecture: a table by model type had no default for most.
ATTENTION_LAYERS = {
    "gpt2": ({"n_layer": 2, "n_head": 2, "n_embd": 32}, ["c_attn", "c_proj"]),
    "bloom": ({"n_layer": 2, "n_head": 2, "hidden_size": 32}, ["query_key_value", "dense"]),
    "falcon": ({}, ["query_key_value", "dense"]),
    "gpt_bigcode": ({"n_layer": 2, "n_head": 2, "n_embd": 32}, ["c_attn", "c_proj"]),
    "gptj": (
        {"n_layer": 2, "n_head": 2, "n_embd": 32, "rotary_dim": 4},
        ["k_proj", "v_proj", "q_proj", "out_proj"],
    ),
    "phi": ({"intermediate_size": 64}, ["q_proj", "k_proj", "v_proj", "dense"]),
    "qwen3": ({"intermediate_size": 64, "head_dim": 16}, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "mixtral": (
        {"intermediate_size": 64, "num_local_experts": 2},
        ["q_proj", "k_proj", "v_proj", "o_proj"],
    ),
}


@pytest.mark.parametrize("arch", list(ATTENTION_LAYERS))
def test_default_lora_targets_are_the_attention_layers(arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    shape, names = ATTENTION_LAYERS[arch]
    size = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32}
    config = AutoConfig.for_model(
        arch, vocab_size=50, **(shape if "n_head" in shape else size | shape)
    )
    model = AutoModelForCausalLM.from_config(config)
    adapted = apply_lora(model, AdapterConfig(rank=2))
    attention = {n for n, m in model.named_modules() if type(m).__name__.endswith("Attention")}
    assert len(attention) == 2
    assert sorted(adapted) == sorted(f"{a}.{n}" for a in attention for n in names)


def test_adapter_config_picks_the_adapted_layers_alone(tmp_path):
    """PEFT adapts every module whose name ends with a target_modules entry: the saved entries
    pick the adapted layers and nothing else, with fan_in_fan_out for Conv1D layers only."""
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    for model, short in (
        (GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50)), False),
        (
            GPTBigCodeForCausalLM(GPTBigCodeConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=50)),
            False,
        ),
        (models.model("llama", models.tokenizer("llama")), True),
    ):
        adapter = AdapterConfig(rank=2)
        adapted = apply_lora(model, adapter)
        config = json.loads(
            (save_adapter(model, adapter, None, tmp_path) / "adapter_config.json").read_text()
        )
        targets = config["target_modules"]
        picked = [
            n
            for n, _ in model.named_modules()
            if any(n == t or n.endswith("." + t) for t in targets)
        ]
        assert sorted(picked) == sorted(adapted)
        assert (targets == ["k_proj", "o_proj", "q_proj", "v_proj"]) is short
        assert config["fan_in_fan_out"] is isinstance(model, GPT2LMHeadModel)


def test_lora_run_keeps_the_base_and_saves_the_adapter(project, base_dir, capfd):
    path = project(
        train="max_steps: 6",
        model='base: "base" ADAPTER { rank: 4 alpha: 8 }',
    )
    assert train(path) == 0
    out, err = capfd.readouterr()
    # 4 layers of rank 4: (64 + 192) x 4 + (64 + 64) x 4 per block, two blocks
    assert "parameters, 3.07k trained (" in out and "LoRA on 4 layers" in out
    assert "Loading weights" not in err and "Writing model" not in err  # okto's lines only
    run = Path("runs/tiny")
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    # exact names: PEFT adapts every module whose name ends with one, and "c_proj" ends mlp.c_proj
    assert config["target_modules"] == [
        f"transformer.h.{i}.attn.{n}" for i in (0, 1) for n in ("c_attn", "c_proj")
    ]
    assert config["fan_in_fan_out"] is True  # GPT-2's Conv1D
    base = load_file(str(base_dir / "model.safetensors"))
    final = load_file(str(run / "final" / "model.safetensors"))
    changed = set()
    for name, weight in base.items():
        prefix = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{prefix}.lora_A.weight" in adapter:
            a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
            delta = (b @ a * config["lora_alpha"] / config["r"]).t()  # Conv1D: (in, out)
            torch.testing.assert_close(final[name], weight + delta)
            changed.add(name)
        else:
            assert torch.equal(final[name], weight), name
    assert len(changed) == 4  # attn.c_attn and attn.c_proj in both layers
    assert any(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)  # it trained


def test_fine_tune_from_an_okm_package(project, base_dir):
    export_model(base_dir, Path("base.okm"), "okm")
    path = project(train="max_steps: 8", model='base: "base.okm"')
    assert train(path) == 0
    losses = [r["loss"] for r in steps()]
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_fine_tune_gpt_neox_from_an_okm_package(project, tokenizer_dir, tmp_path):
    """GPT-NeoX stores its head as embed_out, which transformers loads as lm_head: the package
    loader went around that rename and refused the weights as not fitting the model."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    GPTNeoXForCausalLM(config).save_pretrained(str(tmp_path / "neox"))
    tokenizer.save_pretrained(str(tmp_path / "neox"))
    export_model(tmp_path / "neox", Path("neox.okm"), "okm")
    assert train(project(train="max_steps: 2", model='base: "neox.okm"')) == 0
    assert len(steps()) == 2


def test_context_window_sizes_a_new_models_position_table(project):
    """Rows of 32 tokens, a model that can later read 128 (it used to get 32 and the
    setting was ignored)."""
    path = project(
        train="max_steps: 1",
        model='architecture: "gpt2" pretrained: false context_window: 128 '
        "config { n_layer: 1 n_head: 2 n_embd: 32 }",
    )
    assert train(path) == 0
    assert json.loads(Path("runs/tiny/final/config.json").read_text())["n_positions"] == 128


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            'architecture: "gpt2" pretrained: false context_window: 64 config { n_positions: 48 }',
            "MODEL.context_window is 64, but MODEL.config sets 48 positions: set only one",
        ),
        (
            'base: "base" context_window: 4096',
            "but the base model has 256 positions: use at most 256",
        ),
    ],
)
def test_a_context_window_the_model_cannot_have_exits_2(project, base_dir, capsys, model, message):
    assert train(project(model=model)) == 2
    assert message in capsys.readouterr().err


def test_rows_longer_than_the_context_window_are_refused_at_load(project, capsys):
    path = project(model='architecture: "gpt2" pretrained: false context_window: 16')
    assert train(path) == 2
    assert "rows of 32 tokens do not fit MODEL.context_window (16)" in capsys.readouterr().err


def test_llama_from_scratch_with_config_overrides(project):
    path = project(
        train="max_steps: 4",
        model='architecture: "llama" pretrained: false config { hidden_size: 64 '
        "intermediate_size: 128 num_hidden_layers: 2 num_attention_heads: 4 }",
    )
    assert train(path) == 0
    config = json.loads(Path("runs/tiny/final/config.json").read_text())
    assert config["num_key_value_heads"] == 4 and config["head_dim"] == 16
    assert config["max_position_embeddings"] == 32 and config["vocab_size"] == 300


def test_a_model_type_transformers_cannot_build_from_a_config_exits_2(project, capsys):
    """transformers' table of causal LMs holds decoders its constructor refuses on a config
    alone (Reformer's asks for is_decoder): that was an AssertionError traceback."""
    assert train(project(model='architecture: "reformer" pretrained: false')) == 2
    err = capsys.readouterr().err
    assert "cannot build a new reformer model from MODEL.config (AssertionError" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("architecture", "instead"),
    [("mllama", "a text-only type"), ("gemma3", '"gemma3_text"'), ("musicgen", "a text-only")],
)
def test_a_multimodal_model_type_is_refused_at_check_time(tmp_path, architecture, instead):
    """MLlama's new model was built with Llama 3.2 Vision's 9.8B-parameter language model,
    whatever MODEL.config said (its values shaped the outer config), and trained on text;
    others of transformers' causal-LM table failed only after the data was prepared. `okto
    check` refuses them, in one line naming text-only types, without importing torch."""
    path = tmp_path / "m.okt"
    path.write_text(
        f'PROJECT "m"\nMODEL {{ architecture: "{architecture}" pretrained: false '
        "config { hidden_size: 64 } }\n"
    )
    check = """import sys, okto
from okto.language.diagnostics import OktoValidationError
try:
    okto.load(sys.argv[1])
except OktoValidationError as invalid:
    print(*[d.message for d in invalid.errors], sep="\\n")
print("torch" in sys.modules)"""
    said = subprocess.run(
        [sys.executable, "-c", check, str(path)], capture_output=True, text=True, check=False
    )
    lines = said.stdout.splitlines()
    assert lines[-1] == "False", said.stderr
    (message,) = [line for line in lines if "multimodal" in line]
    assert message.startswith(f"'{architecture}' is a multimodal model (its config holds ")
    assert f"write {instead}" in message


def test_the_multimodal_types_read_from_source_are_transformers_own():
    """okto check reads the config classes' sub-configs from transformers' source; the
    imported classes say the same (transformers 5.2x renamed `sub_configs`)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from okto.language import architectures

    types = ["mllama", "gemma3", "qwen3_5", "llama4", "musicgen", "git", "gpt2", "llama", "mpt"]
    for model_type in types:
        sub_configs = CONFIG_MAPPING[model_type].sub_configs or {}
        expected = [k for k in sub_configs if any(w in k for w in architectures._NOT_TEXT_ONLY)]
        refused = architectures.not_text_only(model_type)
        assert (refused is not None) == bool(expected), model_type
        assert refused is None or f"holds {', '.join(expected)})" in refused


def test_an_okm_whose_weights_do_not_fit_its_config_exits_2(project, base_dir, capsys):
    """A ValueError naming the misfit tensor came up as a traceback."""
    config_file = base_dir / "config.json"
    config = json.loads(config_file.read_text())
    config["n_inner"] = 3 * config["n_embd"]  # the MLP's width: the weights have 4x
    config_file.write_text(json.dumps(config))
    export_model(base_dir, Path("misfit.okm"), "okm")
    assert train(project(train="max_steps: 1", model='base: "misfit.okm"')) == 2
    err = capsys.readouterr().err
    assert "the weights do not fit the config" in err and "Traceback" not in err


@pytest.mark.parametrize("base", ["runs/x/final", "./x", "../x", "~/no-such-okto-model", "m.okm"])
def test_a_missing_path_is_no_hub_name_to_train_or_plan(project, capsys, base):
    """A MODEL.base no hub id can be (two slashes, ./ ../ ~ first, an .okm), found nowhere,
    is a missing file for okto train (exit 2) and okto plan alike, naming where it was
    looked for. okto train called runs/x/final a hub name not in the cache (`hf download
    runs/x/final`), okto plan an .okm one that okto train would download."""
    path = project(model=f'base: "{base}"', extra='ENV { network: "offline" }')
    message = (
        f"MODEL.base {base!r}: no such file or folder "
        f"(looked in {Path(base).expanduser().absolute()})"  # the .okt file's folder is here
    )
    assert train(path) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert main(["plan", "-f", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"][0] == f"model unknown: {message}"


def test_a_per_layer_setting_is_a_setting():
    """MODEL.config { head_dim: 32 } for gemma4_text stopped with transformers'
    AmbiguousGlobalPerLayerAttributeError traceback: the name check read the global value,
    which a config whose layers differ refuses."""
    from transformers import AutoConfig

    from okto.training.models import check_names

    check_names(AutoConfig.for_model("gemma4_text"), {"head_dim": 32})


def test_a_smaller_vocabulary_drops_the_architectures_special_ids():
    """MODEL.config { vocab_size: 300 } on a new GPT-2 kept its bos/eos ids of 50256, past the
    vocabulary (two transformers warnings in plan and train): they are left to the tokenizer."""
    from okto.language.config import ModelConfig
    from okto.planner.model_config import model_config
    from okto.training.models import _new_config

    values = {"n_layer": 1, "vocab_size": 300}
    planned, _ = model_config(
        ModelConfig(architecture="gpt2", pretrained=False, config=values)
    )
    for config in (_new_config("gpt2", values), planned):
        assert config.vocab_size == 300
        assert config.bos_token_id is None and config.eos_token_id is None
    assert _new_config("gpt2", {"n_layer": 1}).eos_token_id == 50256  # the vocabulary kept
