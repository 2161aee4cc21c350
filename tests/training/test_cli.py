"""`okto train` end to end on a tiny GPT-2: the loss falls, the run folder is complete,
and bad input gives a clear message and exit code 2, without a traceback."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM

import okto
from okto.training.display import Display
from okto.training.metrics import read_metrics
from tests.training.conftest import steps, train


def test_trains_and_the_loss_falls(project, capsys):
    path = project(train='max_steps: 30 scheduler: "cosine" warmup_steps: 3 save_steps: 10')
    assert train(path, "--show-tflops", "--verbose") == 0
    losses = [record["loss"] for record in steps()]
    assert len(losses) == 30
    assert losses[-1] < losses[0] - 1.0
    out = capsys.readouterr().out
    assert "summary" in out and "MFU n/a (CPU)" in out and "first" in out
    run = Path("runs/tiny")
    final = run / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "okto_config.json"):
        assert (final / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-0000010",
        "step-0000020",
        "step-0000030",
    ]
    assert json.loads((run / "okto_config.json").read_text())["train"]["max_steps"] == 30
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert "summary" in (run / "train.log").read_text()
    summary = read_metrics(run / "metrics.jsonl", "summary")[0]
    assert summary["outcome"] == "completed" and summary["last_loss"] < summary["first_loss"]
    assert AutoModelForCausalLM.from_pretrained(str(final)).config.vocab_size == 300


def test_python_api_with_overrides_and_exports(project):
    path = project(extra='EXPORT { format: ["okm", "safetensors"] quantization: "fp16" }')
    program = okto.load(path)
    result = okto.train(program, max_steps=4, overrides=["TRAIN.batch_size=2"])
    assert result.steps == 4 and result.outcome == "completed"
    assert program.config.train.max_steps == 12  # the caller's program is left alone
    assert read_metrics(result.metrics_file, "start")[0]["total_steps"] == 4
    assert sorted(p.name for p in result.exports) == ["tiny.okm", "tiny.safetensors"]
    generated = okto.load_model(result.exports[0]).generate(["the cat"], max_tokens=4)
    assert generated[0].generated_tokens >= 1


def test_python_api_takes_one_override_string(project):
    """`overrides="TRAIN.batch_size=3"` was split into characters by list(): "override 'T':
    expected BLOCK.field=value"."""
    result = okto.train(project(), max_steps=1, overrides="TRAIN.batch_size=3")
    assert json.loads((result.run_dir / "okto_config.json").read_text())["train"]["batch_size"] == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"overrides": ["TRAIN.batch_size=3", 5]}, "overrides must be BLOCK.field=value strings"),
        ({"max_steps": "2"}, "max_steps must be a whole number of at least 1, not '2'"),
        ({"max_steps": 0}, "max_steps must be a whole number of at least 1, not 0"),
    ],
)
def test_python_api_errors_name_its_parameters(project, settings, message):
    """max_steps="2" raised TypeError: '<' not supported; max_steps=0 told a Python caller
    "--max-steps must be at least 1", a flag it never passed."""
    with pytest.raises(okto.OktoError) as raised:
        okto.train(project(), **settings)
    assert message in str(raised.value) and "--" not in str(raised.value)


def test_cli_errors_name_its_flags(project, capsys):
    assert train(project(), "--max-steps", "0") == 2
    assert "--max-steps must be at least 1, not 0" in capsys.readouterr().err


def test_a_warmup_longer_than_the_run_is_warned(project, capsys):
    assert train(project(train='max_steps: 3 scheduler: "cosine" warmup_steps: 5')) == 0
    out = capsys.readouterr()
    assert "warmup_steps (5) is not below the run's 3 steps" in out.out + out.err


@pytest.mark.parametrize(
    ("extra", "args", "expected"),
    [
        ("EXPORT { }", (), ["tiny.safetensors"]),  # the block's defaults; it wrote nothing
        ("", ("--set", 'EXPORT.format="okm"'), ["tiny.okm"]),
        ("", (), []),  # no EXPORT block, no exports
    ],
)
def test_an_export_block_exports_with_its_defaults(project, extra, args, expected):
    assert train(project(train="max_steps: 1", extra=extra), *args) == 0
    summary = read_metrics(Path("runs/tiny/metrics.jsonl"), "summary")[0]
    assert [Path(p).name for p in summary["exports"]] == expected


def test_exports_without_keeping_the_final_model(project, tmp_path):
    """OUTPUT.save_model: false keeps no final folder, but EXPORT still writes its files."""
    path = project(extra='EXPORT { format: "okm" }\nOUTPUT { save_model: false }')
    result = okto.train(okto.load(path), max_steps=2)
    assert [p.name for p in result.exports] == ["tiny.okm"] and result.exports[0].is_file()
    run = result.metrics_file.parent
    assert not (run / "final").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("keep", ["true", "false"])
def test_a_failed_export_keeps_the_model_and_the_summary(project, monkeypatch, capsys, keep):
    """An EXPORT the model could not take (fp16 past its range) ended the run with its error
    alone: no summary, and with save_model: false the trained model was deleted."""
    from okto.errors import UsageError

    def refuse(*_):
        raise UsageError("tensor 'w' holds values up to 1e+05, beyond the range of float16")

    monkeypatch.setattr("okto.training.outputs.export", refuse)
    path = project(extra=f'EXPORT {{ format: "okm" }}\nOUTPUT {{ save_model: {keep} }}')
    assert train(path, "--max-steps", "2") == 2
    out, err = capsys.readouterr()
    assert "training ended, but EXPORT failed: tensor 'w' holds values" in " ".join(err.split())
    assert "final model" in out  # the summary table
    final = Path("runs/tiny/final")
    assert (final / "model.safetensors").is_file()
    assert read_metrics(Path("runs/tiny/metrics.jsonl"), "summary")[0]["final"] == str(final)
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (None, "does not exist"),
        ([], "is empty"),
        ([{"count": 1}, {"count": 2}], "text"),
        ("{broken\n{also broken\n", "JSON"),
    ],
    ids=["missing", "empty", "no-text-field", "broken-json"],
)
def test_bad_data_is_a_clear_error(project, capsys, tmp_path, records, expected):
    path = project()
    data = tmp_path / "data.jsonl"
    if records is None:
        data.unlink()
    elif isinstance(records, str):
        data.write_text(records)
    else:
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert train(path) == 2
    err = capsys.readouterr().err
    assert expected.lower() in err.lower()
    assert "Traceback" not in err


def test_data_warnings_are_shown_before_the_error_they_explain(project, capsys):
    """'no training rows are left ... (see the warnings)' came with no warning shown."""
    prompt = " ".join(["the cat sat on a mat"] * 4)
    path = project(
        records=[{"input": prompt, "output": "yes"}] * 20, dataset="packing: false max_length: 8"
    )
    path.write_text(path.read_text().replace("max_length: 32", ""))
    assert train(path) == 2
    said = capsys.readouterr()
    assert "no train rows are left" in said.err
    assert "dropped (no trained tokens within max_length)" in " ".join(said.out.split())


@pytest.mark.parametrize(
    "model",
    [
        'base: "nobody/small-gpt" pretrained: false architecture: "gpt2" ',
        'base: "gpt2" pretrained: false ',  # a hub name that is a model type: its default shape
    ],
)
def test_offline_new_model_needs_no_base_download(project, capsys, model, monkeypatch, tmp_path):
    """As the spec says: offline with no cache is an error unless pretrained: false, which
    needs only a shape."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    path = project(
        train="max_steps: 2",
        model=model + "config { n_layer: 1 n_head: 2 n_embd: 32 }",
        extra='ENV { network: "offline" }',
    )
    assert train(path) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "is not in the cache, offline: gpt2's shape)" in out
    assert json.loads(Path("runs/tiny/final/config.json").read_text())["n_layer"] == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("OUTPUT.dir=train.okt", "OUTPUT.dir: cannot make the folder train.okt/tiny"),
        ("TRAIN.checkpoint_path=train.okt", "TRAIN.checkpoint_path: cannot make the folder"),
        ("LOGGING.metrics_file=train.okt/m.jsonl", "LOGGING.metrics_file: cannot make the"),
    ],
)
def test_an_output_path_that_cannot_be_a_folder_is_exit_2(project, capsys, setting, message):
    """These were tracebacks (exit 1), after the data and the model were prepared."""
    assert train(project(), "--set", setting) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


def test_an_unusable_cache_folder_is_exit_2(project, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("OKTO_CACHE_DIR", str(tmp_path / "train.okt"))
    assert train(project()) == 2
    assert "OKTO_CACHE_DIR: cannot make the folder" in capsys.readouterr().err


def test_a_cache_cap_that_is_not_a_size_is_exit_2_before_any_work(project, capsys, monkeypatch):
    monkeypatch.setenv("OKTO_DATA_CACHE_SIZE", "big")
    assert train(project()) == 2
    out = capsys.readouterr()
    assert "OKTO_DATA_CACHE_SIZE='big' is not a size" in out.err
    assert "data " not in out.out  # refused before the data was prepared


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [
        ("warning", ["warning: TRAIN.warmup_steps", "summary"], ["step 1/2", "okto plan"]),
        ("error", ["summary"], ["warning:", "step 1/2", "okto plan"]),
        ("debug", ["step 1/2", "step", "ms", "summary"], []),
    ],
)
def test_log_level_sets_what_the_console_shows(project, capsys, level, shown, hidden):
    """warning and error used to change nothing; the log file keeps every line."""
    path = project(
        train="max_steps: 2 warmup_steps: 5", extra=f'LOGGING {{ log_level: "{level}" }}'
    )
    assert train(path) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in shown) and not any(text in out for text in hidden)
    assert "step 1/2" in Path("runs/tiny/train.log").read_text()


def test_evaluation_settings_without_validation_data_are_warned(project, capsys):
    """One record: no validation split, so nothing is ever evaluated (it was silent)."""
    path = project(
        train="max_steps: 1 eval_steps: 1 early_stopping: 2",
        records=[{"text": "the cat sat on a mat"}],
        extra="""CONTROL { on_plateau { LOG "flat" } IF val_loss > 3 { STOP } }
STABILITY { min_improvement: 0.1 }
METRICS { loss accuracy perplexity }""",
    )
    assert train(path) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert (
        "there is no validation data, so TRAIN.eval_steps, TRAIN.early_stopping, CONTROL "
        "on_plateau rules, CONTROL conditions on val_loss, STABILITY.min_improvement "
        "never act" in said
    )
    assert (
        "there is no validation data, so the metrics accuracy, perplexity that METRICS or "
        "OUTPUT.metrics ask for are never reported" in said
    )


def test_metrics_and_schedule_shape_fields_act(project):
    """METRICS { tflops mfu } showed nothing more than without it (only --show-tflops did);
    cosine_with_restarts never restarted."""
    path = project(
        train='max_steps: 6 scheduler: "cosine_with_restarts" num_cycles: 2',
        extra="METRICS { loss tflops mfu }",
    )
    assert train(path) == 0
    log = Path("runs/tiny/train.log").read_text().splitlines()  # as the console, unwrapped
    lines = [line for line in log if line.startswith("step ")]
    assert len(lines) == 6 and all("TFLOP/s" in line and "MFU n/a" in line for line in lines)
    rates = [record["lr"] for record in steps()]  # the rate after each step
    assert rates[0] > rates[1] < rates[2] == pytest.approx(3e-3)  # the second cycle's start


def test_bad_files_and_models_are_clear_errors(project, capsys, tmp_path):
    assert train(tmp_path / "nothing.okt") == 2
    assert "no such file" in capsys.readouterr().err
    path = project(model='base: "nobody/no-such-model"', extra='ENV { network: "offline" }')
    assert train(path) == 2
    err = capsys.readouterr().err
    assert "pretrained: false" in err and "Traceback" not in err
    path = project(
        model='base: "nobody/no-such-model" pretrained: false', extra='ENV { network: "offline" }'
    )
    assert train(path) == 2
    assert "With pretrained: false only its shape is needed: add architecture" in (
        capsys.readouterr().err
    )
    path = project(model='architecture: "gpt2" pretrained: false config { n_layers: 2 }')
    assert train(path) == 2
    assert "did you mean 'n_layer'" in capsys.readouterr().err
    text = (tmp_path / "train.okt").read_text()
    (tmp_path / "nomodel.okt").write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("MODEL"))
    )
    assert train(tmp_path / "nomodel.okt") == 2
    err = capsys.readouterr().err
    assert "MODEL names no model" in err and "Traceback" not in err
    (tmp_path / "noproject.okt").write_text(
        (tmp_path / "train.okt").read_text().replace('PROJECT "tiny"', "")
    )
    assert train(tmp_path / "noproject.okt") == 2
    assert "PROJECT" in capsys.readouterr().err


def test_set_changes_one_key_of_model_config(project):
    assert train(project(train="max_steps: 1"), "--set", "MODEL.config.n_layer=3") == 0
    config = json.loads(Path("runs/tiny/final/config.json").read_text())
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (3, 2, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_asking_for_a_gpu_without_one_is_exit_4(project, capsys):
    assert train(project(), "--set", "TRAIN.device=gpu") == 4
    assert "GPU" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("show_memory", "verbose", "shown"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_gpu_memory_in_metrics_adds_the_memory_column(show_memory, verbose, shown):
    """METRICS { gpu_memory } asks for the log lines' memory column, which only --verbose
    showed (a GPU's; a CPU run measures none per step)."""
    out = StringIO()
    display = Display(Console(file=out, width=200), verbose, False, show_memory=show_memory)
    record = {
        "step": 1,
        "loss": 2.0,
        "lr": 1e-3,
        "grad_norm": 1.0,
        "examples_per_second": 8.0,
        "tokens_per_second": 256.0,
        "epoch": 0.1,
        "step_ms": 5.0,
        "data_wait_percent": 0.0,
        "memory_gb": 1.25,
    }
    display.step_line(record, total=10)
    assert ("mem 1.25 GB" in out.getvalue()) == shown


def test_lines_off_a_terminal_are_never_broken():
    """A CI log or `| tee` got each long line (the data line, --verbose log lines) broken
    at 80 columns into pieces; a terminal still wraps them itself."""
    out = StringIO()  # not a terminal
    display = Display(Console(file=out, width=60), verbose=True, show_tflops=True)
    display.text("data     " + "x" * 100)
    record = {
        "step": 7,
        "loss": 2.0,
        "lr": 1e-3,
        "grad_norm": 1.0,
        "examples_per_second": 8.0,
        "tokens_per_second": 256.0,
        "tflops": 0.5,
        "mfu": None,
        "mfu_note": "n/a (CPU)",
        "epoch": 0.1,
        "step_ms": 5.0,
        "data_wait_percent": 0.0,
        "memory_gb": None,
    }
    display.step_line(record, total=10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("x" * 100)
    assert lines[1].startswith("step  7/10") and lines[1].endswith("data wait 0.0%")


def test_sigterm_before_training_says_so_and_exits_143(project, capsys, monkeypatch):
    """SIGTERM while the data or the model was being prepared killed the command without a
    word (status -15); Ctrl-C there said `interrupted` with 130."""
    import os
    import signal

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(okto.training, "train", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert train(project()) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_metrics_records_have_every_documented_key_and_match_the_summary(project, capsys):
    """On a CPU `step` lines had no mfu or memory_gb, and the summary record lacked the
    accuracy, step count and peak memory its table shows."""
    path = project(train="max_steps: 3 eval_steps: 3")
    assert train(path, "--set", "TRAIN.logging_steps=3") == 0
    step = read_metrics(Path("runs/tiny/metrics.jsonl"), "step")[0]
    assert set(step) == {
        *("event", "step", "epoch", "loss", "lr", "grad_norm", "examples_per_second"),
        *("tokens_per_second", "tflops", "mfu", "step_ms", "data_wait_percent", "memory_gb"),
    }
    assert step["mfu"] is None and step["memory_gb"] is None
    summary = read_metrics(Path("runs/tiny/metrics.jsonl"), "summary")[0]
    table = " ".join(capsys.readouterr().out.split())
    assert f"steps {summary['steps']} of {summary['total_steps']} (epoch" in table
    assert f"accuracy {100 * summary['accuracy']:.1f}% (step 3)" in table
    assert f"peak memory {summary['peak_memory_gb']:.2f} GB" in table
    assert summary["test_accuracy"] is None and summary["mfu"] is None


@pytest.mark.parametrize("terminal", [True, False])
def test_long_data_preparation_shows_its_stage_on_a_terminal_only(terminal):
    """Preparing a large dataset took minutes with nothing on screen; a terminal now shows a
    spinner with the stage and the time so far, and it leaves no trace in a log."""
    out = StringIO()
    display = Display(Console(file=out, force_terminal=terminal, width=100), False, False)
    with display.working("preparing the data") as stage:
        stage("tokenizing 17,671 train records")
    shown = "preparing the data: tokenizing 17,671 train records" in out.getvalue()
    assert shown == terminal
    assert terminal or out.getvalue() == ""


def test_a_huge_perplexity_is_shown_in_a_few_digits(project, capsys):
    """A run that blew up printed exp(val_loss) with all its digits (up to 305, capped at
    exp(700)) in the eval line and the summary, which wrapped it over lines."""
    assert train(project(train="max_steps: 2"), "--set", "TRAIN.learning_rate=50") == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("eval ")]
    shown = line.split("perplexity ")[1].split()[0]
    assert re.fullmatch(r"\d\.\d\de\+\d+", shown), line
    summary = " ".join(out.split("summary")[-1].split())
    assert f"perplexity {shown}, accuracy" in summary


@pytest.mark.parametrize(
    ("name", "folder"),
    [("my model v2", "my-model-v2"), ("Café", "Café"), ("日本", "日本"), ("中文", "中文"), ("..", "model")],
)
def test_the_run_folder_keeps_letters_of_any_script(name, folder):
    """Every character outside ASCII was dropped: PROJECT "日本" and "中文" both trained into
    runs/model/, one over the other, and "Café" into runs/Caf/."""
    from okto.training.outputs import slug

    assert slug(name) == folder


def test_tables_off_a_terminal_are_never_broken(tmp_path):
    """The plan's and the summary's rows were broken at 80 columns in a CI log (120 in
    train.log), a setting's name cut in two: OPTIMIZE.memory_effici / ent."""
    out = StringIO()  # not a terminal
    display = Display(Console(file=out, width=60), verbose=False, show_tflops=False)
    display.keep_log(tmp_path / "train.log", append=False)
    row = ("throughput", "10.4k tokens/s over 9 steps (the first 3, with any compilation, " * 2)
    display.table("summary", [row, ("memory_efficient", "OPTIMIZE.memory_efficient  default")])
    display.close_log()
    for text in (out.getvalue(), (tmp_path / "train.log").read_text()):
        lines = [line.rstrip() for line in text.splitlines()]
        assert len(lines) == 3 and lines[1].endswith(row[1].rstrip())


def test_show_tflops_shows_a_small_rate_in_its_digits():
    """A CPU run's log lines read '0.00 TFLOP/s' (two decimals) where the summary said 0.00792."""
    out = StringIO()
    display = Display(Console(file=out, width=60), verbose=False, show_tflops=True)
    record = {
        **dict(step=1, loss=2.0, lr=1e-3, grad_norm=1.0, examples_per_second=8.0),
        **dict(tokens_per_second=256.0, tflops=0.000355, mfu=None, mfu_note="n/a (CPU)"),
    }
    display.step_line(record, total=10)
    assert "0.000355 TFLOP/s  MFU n/a (CPU)" in out.getvalue()


def test_a_new_run_says_which_outputs_are_an_earlier_runs(project, capsys):
    """A new run sets the earlier run's checkpoints, metrics and log aside but leaves its
    final/ (a MODEL.base may name it): after a run with save_model: false the folder held an
    earlier run's model without a word. Both the note that sets checkpoints aside and this one
    were also missing from train.log (said before it was opened)."""
    path = project(train="max_steps: 2")
    Path("runs/tiny/export").mkdir(parents=True)
    Path("runs/tiny/export/another-project.okm").write_text("not this project's")
    assert train(path, "--set", "EXPORT.format=safetensors") == 0
    capsys.readouterr()
    assert train(path, "--set", "OUTPUT.save_model=false") == 0
    out = " ".join(capsys.readouterr().out.split())
    earlier = "runs/tiny/final, runs/tiny/export/tiny.safetensors"
    assert f"kept in place from an earlier run: {earlier} (replaced" in out
    assert f"earlier run {earlier}: not this run's" in out
    summary = read_metrics(Path("runs/tiny/metrics.jsonl"), "summary")[-1]
    assert summary["earlier_outputs"] == earlier.split(", ") and summary["final"] is None
    log = Path("runs/tiny/train.log").read_text()
    assert "kept 1 checkpoint(s) of an earlier run" in log and "kept in place" in log
    assert train(path, "--set", "EXPORT.format=safetensors") == 0  # replaces both
    assert read_metrics(Path("runs/tiny/metrics.jsonl"), "summary")[-1]["earlier_outputs"] == []


def test_a_new_project_trains_without_a_warning(tmp_path, monkeypatch, capsys):
    """okto init asked for 512 tokens that its sample data cannot fill (about 350): every
    new project's first run warned that the trained tokenizer came out smaller."""
    from okto.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["init", "fresh"]) == 0
    assert main(["train", "-f", "fresh/train.okt", "--max-steps", "3"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in out + err


def test_counts_take_their_noun_in_the_number_they_need():
    """'finished 1 steps', 'the run's 1 steps' and 'written by 2 process(es)'."""
    from okto.language.diagnostics import counted

    assert [counted(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
    assert counted(2, "process") == "2 processes"


def test_a_model_whose_layers_okto_cannot_cost_says_its_figures_read_low(
    project, capsys, monkeypatch
):
    """flops_model named the layers of unknown cost (Jamba's Mamba layers, say), but the run
    showed TFLOP/s and MFU without a word."""
    from dataclasses import replace

    from okto.training import flops

    counted = flops.flops_model
    monkeypatch.setattr(
        flops, "flops_model", lambda model: replace(counted(model), uncounted=(("mamba", 2),))
    )
    assert train(project(train="max_steps: 2")) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "TFLOP/s and MFU leave out the sequence mixing of the model's 2 'mamba' layers" in out


def test_checkpointed_activations_train_without_transformers_warnings(project, capfd, recwarn):
    """OPTIMIZE.memory_efficient called transformers' deprecated gradient_checkpointing_enable
    (a FutureWarning), and the loss forward built a KV cache, which transformers said it
    turned off."""
    assert train(project(train="max_steps: 2", extra="OPTIMIZE { memory_efficient: true }")) == 0
    out, err = capfd.readouterr()
    assert "use_cache" not in out + err and "deprecated" not in out + err
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_the_start_record_says_what_the_weights_and_the_matmuls_are(project):
    """It said only the autocast dtype, which is fp32 for bf16 weights that compute in bf16
    with no autocast."""
    path = project(
        train="max_steps: 1",
        model=(
            'architecture: "gpt2" pretrained: false precision: "bf16" '
            "config { n_layer: 1 n_head: 2 n_embd: 32 }"
        ),
    )
    assert train(path) == 0
    start = read_metrics(Path("runs/tiny/metrics.jsonl"), "start")[0]
    assert (start["weights"], start["matmul_precision"]) == ("bf16", "bf16")
