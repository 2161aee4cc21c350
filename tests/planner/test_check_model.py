"""What `okto train` refuses of the model (a misspelt MODEL.config key, ADAPTER target_modules
matching no layer) is refused by `okto plan` and reported by `okto check` at its position, in
train's words, from the model's config alone (no weights, no network)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

import okto
from okto.cli import main
from okto.errors import EXIT_INVALID, UsageError
from okto.planner import model_config
from okto.training.lora import apply_lora, unmatched_targets
from okto.training.models import locate

SHAPE = {"n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 32, "vocab_size": 64}
SHAPE |= {"bos_token_id": 0, "eos_token_id": 0}
NEW_GPT2 = 'architecture: "gpt2" pretrained: false config { n_layer: 1 n_head: 2 n_embd: 16 }'


@pytest.fixture
def base(tmp_path):
    """A local GPT-2 folder (okto plan and okto check read its config alone)."""
    folder = tmp_path / "base"
    GPT2LMHeadModel(GPT2Config(**SHAPE)).save_pretrained(folder)
    return folder


def _file(tmp_path, model: str) -> str:
    path = tmp_path / "train.okt"
    path.write_text(f'PROJECT "p"\nMODEL {{\n  {model}\n}}\n')
    return str(path)


def _after(path: str, text: str) -> str:
    """`train.okt:LINE:COL` of what follows the first `text` in the file at `path` (the value
    of a field, where diagnostics point)."""
    lines = Path(path).read_text().splitlines()
    line = next(i for i, written in enumerate(lines) if text in written)
    return f"train.okt:{line + 1}:{lines[line].index(text) + len(text) + 1}"


def _train_refusal(adapter) -> str:
    """What okto train says of `adapter` on the real model."""
    with pytest.raises(UsageError) as refused:
        apply_lora(GPT2LMHeadModel(GPT2Config(**SHAPE)), adapter)
    return str(refused.value)


@pytest.mark.parametrize("model", [NEW_GPT2, 'base: "base"'])
def test_targets_that_match_no_layer_are_refused_by_plan_and_check(tmp_path, base, capsys, model):
    adapter = 'ADAPTER { type: "lora" target_modules: ["c_atn"] }'
    path = _file(tmp_path, f"{model}\n  {adapter}")
    expected = _train_refusal(okto.load(path).config.model.adapter)
    assert main(["plan", "-f", path]) == EXIT_INVALID
    assert expected in capsys.readouterr().err
    assert main(["check", "-f", path]) == EXIT_INVALID
    assert f"{_after(path, 'target_modules: ')}: error: {expected}" in capsys.readouterr().err


def test_a_target_that_matches_nothing_beside_others_is_warned_of(tmp_path, base, capsys):
    path = _file(tmp_path, 'base: "base"\n  ADAPTER { target_modules: ["c_attn", "c_atn"] }')
    adapter = okto.load(path).config.model.adapter
    adapted = apply_lora(GPT2LMHeadModel(GPT2Config(**SHAPE)), adapter)
    assert unmatched_targets(adapter, adapted) == ["c_atn"]
    message = "ADAPTER target_modules ['c_atn'] match no linear layer of this model"
    assert main(["check", "-f", path]) == 0
    assert f"{_after(path, 'target_modules: ')}: warning: {message}" in capsys.readouterr().err
    assert main(["check", "--strict", "-f", path]) == EXIT_INVALID
    assert main(["plan", "-f", path]) == 0
    assert f"note: {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "model",
    [
        NEW_GPT2.replace("n_layer", "n_layre"),
        'base: "base" pretrained: false config { n_layre: 1 }',
        'architecture: "llama" config { num_hiden_layers: 1 }',
    ],
)
def test_a_misspelt_config_key_is_refused_by_plan_and_check(tmp_path, base, capsys, model):
    path = _file(tmp_path, model)
    with pytest.raises(UsageError) as refused:  # okto train's words
        locate(okto.load(path).config.model, tmp_path, offline=True, scratch=tmp_path)
    key = "n_layre" if "n_layre" in model else "num_hiden_layers"
    assert main(["plan", "-f", path]) == EXIT_INVALID
    assert str(refused.value) in capsys.readouterr().err
    assert main(["check", "-f", path]) == EXIT_INVALID
    assert f"{_after(path, f'{key}: ')}: error: {refused.value}" in capsys.readouterr().err


def test_check_says_nothing_of_a_model_it_cannot_know_offline(tmp_path, capsys):
    path = _file(tmp_path, 'base: "nobody/not-cached" pretrained: false config { n_layre: 1 }')
    assert main(["check", "-f", path]) == 0


def test_a_pretrained_bases_config_is_planned_as_train_loads_it(tmp_path, base):
    """MODEL.config applies only with pretrained: false (train loads the base as it is, and
    check warns): the plan showed a model of the overridden shape that train never built."""
    path = _file(tmp_path, 'base: "base" config { n_layer: 3 }')
    config, _ = model_config(okto.load(path).config.model, tmp_path)
    assert config.n_layer == 1


def test_check_of_valid_model_names_imports_no_torch(tmp_path, base):
    model = f'{NEW_GPT2}\n  ADAPTER {{ target_modules: ["c_attn", "transformer.h.0.mlp.c_fc"] }}'
    path = _file(tmp_path, model)
    script = (
        "import sys\nfrom okto.cli import main\n"
        f"assert main(['check', '-f', {path!r}]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
