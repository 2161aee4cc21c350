"""`okto plan -f FILE [--json] [--set ...]`."""

from __future__ import annotations

import json

import pytest
import torch

import okto
from okto.cli import main
from okto.errors import EXIT_MACHINE, EXIT_OK
from tests.planner.util import gpt2

TINY_GPT2 = """PROJECT "tiny"
MODEL {
  architecture: "gpt2"
  pretrained: false
  config { n_layer: 2  n_head: 4  n_embd: 128 }
}
ACCELERATE { layernorm: native }
TRAIN { seed: 5 }
"""


@pytest.fixture
def okt(tmp_path, monkeypatch):
    monkeypatch.delenv("OKTO_KERNELS", raising=False)

    def write(text: str) -> str:
        path = tmp_path / "train.okt"
        path.write_text(text)
        return str(path)

    return write


def test_json(okt, capsys):
    path = okt(TINY_GPT2)
    assert main(["plan", "-f", path, "--json", "--set", "TRAIN.seed=6"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["file"] == path and plan["project"] == "tiny"
    assert plan["model"]["architecture"] == "gpt2" and plan["model"]["head_dim"] == 32
    assert plan["settings"]["seed"] == {
        "value": 6,
        "field": "TRAIN.seed",
        "origin": "command line",
        "reason": "",
    }
    layernorm = plan["layers"]["layernorm"]
    assert (layernorm["impl"], layernorm["field"]) == ("native", "ACCELERATE.layernorm")
    assert layernorm["origin"] == f"{path}:7:25"
    assert set(plan["layers"]) == {
        "gemm", "attention", "layernorm", "softmax", "cross_entropy", "activation",
    }  # fmt: skip
    assert plan["notes"][0] == "model config from MODEL.architecture gpt2"


def test_a_config_the_model_class_refuses_is_said_by_plan_and_train(okt, capsys):
    """n_embd 100 over 3 heads: okto plan printed a plan (head dim 33, exit 0), and okto
    train refused the model only after preparing the data."""
    path = okt(TINY_GPT2.replace("n_embd: 128", "n_embd: 100").replace("n_head: 4", "n_head: 3"))
    expected = "cannot build a new gpt2 model from MODEL.config (ValueError: `embed_dim` must"
    assert main(["plan", "-f", path]) == 2
    assert expected in capsys.readouterr().err
    assert main(["train", "-f", path]) == 2  # it names no data: refused before reading any
    out, err = capsys.readouterr()
    assert expected in err and "data" not in out


def test_table(okt, capsys):
    assert main(["plan", "-f", okt(TINY_GPT2)]) == EXIT_OK
    out = capsys.readouterr()
    assert "okto plan: tiny" in out.out and "ACCELERATE.layernorm" in out.out
    assert "GPT-2 and Llama" not in out.out  # gpt2 is planned
    assert "model config from MODEL.architecture gpt2" in out.err


def test_the_files_warnings_are_shown(okt, capsys):
    """okto check and okto train print them; okto plan printed none."""
    path = okt(TINY_GPT2 + "DATASET { vocab_size: 300 }\n")
    assert main(["plan", "-f", path]) == EXIT_OK
    assert 'warning: vocab_size only applies with tokenizer: "train"' in capsys.readouterr().err
    assert main(["plan", "-f", path, "--json"]) == EXIT_OK
    (warning,) = json.loads(capsys.readouterr().out)["warnings"]
    assert warning["severity"] == "warning" and warning["line"] == 9


def test_unknown_model(okt, capsys):
    path = okt('PROJECT "x"\nMODEL { base: "nobody/no-such-model-here" }\n')
    assert main(["plan", "-f", path, "--json"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"] is None
    assert "not in the local hub cache" in plan["notes"][0]


def test_an_uncached_hub_base_offline_is_refused_as_train_refuses_it(okt, capsys):
    """The plan noted that okto train downloads it; offline, train refuses the file."""
    path = okt(
        'PROJECT "x"\nENV { network: "offline" }\nMODEL { base: "nobody/no-such-model-here" }\n'
    )
    assert main(["plan", "-f", path]) == 2
    assert 'ENV network is "offline", and it is not in the local' in " ".join(
        capsys.readouterr().err.split()
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("as_json", [False, True])
def test_gpu_file_on_a_cpu_machine_exits_4(okt, capsys, as_json):
    path = okt('ENV { accelerator: "cuda" }\n')
    assert main(["plan", "-f", path, *(["--json"] if as_json else [])]) == EXIT_MACHINE
    out = capsys.readouterr()
    message = json.loads(out.out)["error"] if as_json else out.err
    assert "ENV.accelerator" in message and "no" in message


@pytest.mark.parametrize("as_json", [False, True])
def test_a_bad_data_cache_size_exits_2_as_in_okto_train(okt, capsys, monkeypatch, as_json):
    """README: okto train and okto plan refuse a bad OKTO_* value; okto plan passed
    OKTO_DATA_CACHE_SIZE=abc, which okto train stops on."""
    monkeypatch.setenv("OKTO_DATA_CACHE_SIZE", "abc")
    code = main(["plan", "-f", okt(TINY_GPT2), *(["--json"] if as_json else [])])
    out = capsys.readouterr()
    assert code == 2
    message = json.loads(out.out)["error"] if as_json else out.err
    assert "OKTO_DATA_CACHE_SIZE='abc' is not a size" in message


def test_json_error_of_an_invalid_file_has_every_error(okt, capsys):
    """It had the first error only, where okto plan without --json printed them all."""
    path = okt('PROJECT "x"\nTRAIN { batch_size: -1  epoch: 3 }\n')
    assert main(["plan", "-f", path, "--json"]) == 2
    message = json.loads(capsys.readouterr().out)["error"]
    assert "must be at least 1" in message and "unknown field 'epoch'" in message
    assert message.endswith("2 errors in " + path)


def test_a_bad_set_names_the_override(okt, capsys):
    """It read 'command line:1:24', a position in no text the user wrote."""
    assert main(["plan", "-f", okt(TINY_GPT2), "--set", "TRAIN.batch_size=abc"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[:3] == [
        "override 'TRAIN.batch_size=abc': error: batch_size: expected a whole number, got 'abc'",
        "  TRAIN.batch_size=abc",
        "                   ^^^",
    ]


def test_okto_plan_is_the_plan_okto_plan_prints(tmp_path, capsys, monkeypatch):
    """There was no okto.plan: a notebook had to rebuild what the command did. It returns the
    Plan `okto plan --json` prints, a relative MODEL.base found next to the file as there."""
    gpt2().save_pretrained(tmp_path / "base")
    job = tmp_path / "job"
    job.mkdir()
    (job / "train.okt").write_text('PROJECT "tiny"\nMODEL { base: "../base" }\n')
    monkeypatch.chdir(tmp_path.parent)  # ../base is found from the file alone
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    path = str(job / "train.okt")
    assert main(["plan", "-f", path, "--json", "--set", "TRAIN.seed=6"]) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    plan = okto.plan(path, overrides="TRAIN.seed=6")
    assert {"file": path, **plan.to_dict(), "warnings": []} == printed
    assert plan.notes[0] == "model config from MODEL.base ../base"
    assert okto.plan(okto.load(path), ["TRAIN.seed=6"]).to_dict() == plan.to_dict()
