"""okto as a notebook user imports it: light, every public name discoverable and reachable."""

from __future__ import annotations

import logging
import os
import random
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import okto
from okto import process_state
from okto.cli import main
from okto.errors import MissingFileError, UsageError


def _fresh(script: str) -> list[str]:
    """The lines a fresh interpreter prints running `script`."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def test_import_okto_is_light_and_dir_lists_the_lazy_names():
    """dir(okto) listed only 'annotations', 'lazy' and 'lazy_exports', so tab completion
    showed none of okto.load, okto.train, okto.kernels."""
    imported, listed = _fresh(
        """
        import sys
        import okto
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "okto")))
        print(sorted(set(okto.__all__) - set(dir(okto))))
        """
    )
    assert imported == "['okto', 'okto.lazy']"
    assert listed == "[]"


def test_okto_kernels_is_an_attribute_of_okto():
    """`import okto; okto.kernels.matmul(a, b)` was an AttributeError: only an explicit
    `import okto.kernels` made the attribute."""
    (line,) = _fresh(
        """
        import okto
        import numpy as np
        print(okto.kernels.matmul(np.eye(2, dtype=np.float32), np.ones((2, 2), np.float32)).sum())
        """
    )
    assert line == "4.0"


def _process_state() -> dict:
    """What a library call must leave as it found: the process-wide state a run may touch."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return {
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
        "signals": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)],
        "logging": (list(logging.root.handlers), logging.root.level),
        "torch": (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic),
        "dtype": (torch.get_default_dtype(), torch.get_num_threads()),
        "random": (random.getstate(), np.random.get_state()[1].tolist()),
        "torch random": torch.get_rng_state().tolist(),
    }


def test_train_twice_in_one_process_leaves_it_as_it_found_it(tmp_path, monkeypatch, capsys):
    """A run with ENV network "offline" left HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 in
    os.environ, so the notebook's next okto.train of a file that downloads a hub model, or
    its own transformers calls, could not reach the hub. Its TRAIN.seed was left in the
    random generators: the notebook's own draws after a run repeated with each run."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OKTO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["init", "tiny"]) == 0
    before = _process_state()
    for _ in range(2):
        result = okto.train("tiny/train.okt", max_steps=1, overrides=["ENV.network=offline"])
        assert (result.outcome, result.steps) == ("completed", 1)
        assert _process_state() == before
    with pytest.raises(okto.OktoError):
        okto.train("tiny/train.okt", overrides=["TRAIN.batch_size=abc"])
    assert _process_state() == before


def test_train_puts_back_what_a_run_changed_even_when_it_raises(monkeypatch):
    """On a GPU a run turns TF32 and cuDNN autotuning on for the process (apply_switches):
    the caller's fp32 matmuls after okto.train ran in TF32."""

    def run_that_changes_everything(*args, **kwargs):
        torch.backends.cuda.matmul.allow_tf32 = not torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
        torch.set_default_dtype(torch.float64)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.chdir(os.path.dirname(os.getcwd()))
        signal.signal(signal.SIGTERM, lambda *_: None)
        logging.root.addHandler(logging.NullHandler())
        for generator in (random, np.random, torch):
            generator.seed()
        raise okto.OktoError("failed")

    monkeypatch.setattr(process_state, "run_training", run_that_changes_everything)
    before = _process_state()
    with pytest.raises(okto.OktoError, match="failed"):
        okto.train("any.okt")
    assert _process_state() == before


@pytest.mark.skipif(
    not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch before 2.9"
)
def test_train_keeps_tf32_set_through_pytorchs_newer_api(monkeypatch):
    """With TF32 on through `matmul.fp32_precision = "tf32"` (the API PyTorch recommends),
    okto.train ended in PyTorch's RuntimeError before anything ran: reading `allow_tf32`,
    as it did to put it back later, raises once the newer API set it."""
    matmul = torch.backends.cuda.matmul

    def run_that_turns_tf32_off(*args, **kwargs):
        matmul.allow_tf32 = False  # as a GPU run's apply_switches does, through the old API

    monkeypatch.setattr(process_state, "run_training", run_that_turns_tf32_off)
    matmul.fp32_precision = "tf32"
    try:
        okto.train("any.okt")
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = "none"


def test_okto_init_then_the_commands_it_prints_word_for_word(tmp_path, monkeypatch, capsys):
    """`okto init` named `okto check` alone: nothing said how to train the project or try
    the model. Each command it prints now runs as printed, the model included."""
    monkeypatch.setenv("OKTO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["init", "my proj"]) == 0
    printed = capsys.readouterr().out.splitlines()[1:]
    first, *others = (line.split(":", 1)[1] if ":" in line else line for line in printed)
    folder, check = first.split("&&")
    assert shlex.split(folder) == ["cd", "my proj"]
    monkeypatch.chdir(tmp_path / "my proj")
    for command in [check, *others]:
        okto_word, *args = shlex.split(command)
        assert okto_word == "okto"
        assert main(args) == 0, command
    out = capsys.readouterr().out
    assert "finished 15 steps" in out
    assert "\nThe cat" in out  # the prompt and its completion


_TWO_MODELS = {
    "alpha": 'architecture: "gpt2"  config { n_layer: 1  n_head: 2  n_embd: 32 }',
    "beta": (
        'architecture: "llama"  config { num_hidden_layers: 1  num_attention_heads: 2 '
        " hidden_size: 32  intermediate_size: 64 }"
    ),
}


def test_every_command_is_a_call_two_models_in_one_process(tmp_path, monkeypatch, capsys):
    """okto export had no call in `okto`: exporting from Python meant finding
    okto.package.export_model. Check, plan, train, generate and export two different
    models in one process, each model's export generating what its run folder does."""
    monkeypatch.setenv("OKTO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["init", "tiny"]) == 0
    for name, model in _TWO_MODELS.items():
        program = okto.parse(
            f'PROJECT "{name}"\n'
            'DATASET { train: "tiny/data/train.jsonl"  tokenizer: "train"  vocab_size: 320 '
            " max_length: 32 }\n"
            f"MODEL {{ pretrained: false  {model} }}\n"
            "TRAIN { max_steps: 2  batch_size: 4  seed: 1 }\n"
        )
        assert okto.plan(program).to_dict()["project"] == name
        result = okto.train(program)
        assert (result.outcome, result.steps, result.run_dir) == ("completed", 2, Path("runs", name))
        package = okto.export_model(result.run_dir, f"{name}.okm")
        assert package == Path(f"{name}.okm")
        greedy = {"max_tokens": 4, "temperature": 0}
        assert okto.generate(package, "The cat", **greedy) == okto.generate(
            result.run_dir, "The cat", **greedy
        )
    assert "export_model" in dir(okto)


def test_parse_and_load_say_which_one_takes_text_and_which_a_path(tmp_path):
    text = 'PROJECT "x"\nMODEL { base: "gpt2" }\n'
    for wrong in (tmp_path / "a.okt", text.encode()):
        with pytest.raises(UsageError, match=r"okto.parse takes \.okt text.*okto.load"):
            okto.parse(wrong)
    with pytest.raises(MissingFileError, match=r"takes the path.*okto.parse\(text\)"):
        okto.load(text * 200)  # longer than a file name may be
    with pytest.raises(MissingFileError, match="no such file"):
        okto.load(tmp_path / "a.okt")


def test_a_file_or_overrides_of_the_wrong_kind_say_what_they_take(tmp_path):
    """okto.plan(123) and okto.plan(path, 5) were bare TypeErrors."""
    path = tmp_path / "a.okt"
    path.write_text('PROJECT "x"\nMODEL { architecture: "gpt2" pretrained: false }\n')
    with pytest.raises(UsageError, match=r"a path or an okto\.Program, not int"):
        okto.plan(123)
    with pytest.raises(UsageError, match="or a list of them, not int"):
        okto.plan(path, 5)


@pytest.mark.parametrize("resume", ["", "  ", 5])
def test_train_refuses_a_resume_that_names_nothing(tmp_path, resume):
    """okto.train(resume="") (an unset variable, say) was read as no resume: the run started
    afresh and set the earlier checkpoints aside."""
    path = tmp_path / "a.okt"
    path.write_text('PROJECT "x"\nMODEL { architecture: "gpt2" pretrained: false }\n')
    with pytest.raises(UsageError, match=r'resume: "auto" or a checkpoint folder, not'):
        okto.train(path, resume=resume)
    assert not (tmp_path / "runs").exists()


def test_train_points_a_resume_file_at_its_folder(tmp_path):
    path = tmp_path / "a.okt"
    path.write_text('PROJECT "x"\nMODEL { architecture: "gpt2" pretrained: false }\n')
    state = tmp_path / "trainer.json"
    state.write_text("{}")
    with pytest.raises(UsageError, match=r"a file; it takes a checkpoint folder"):
        okto.train(path, resume=str(state))
