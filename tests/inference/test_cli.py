"""`okto infer`, `okto chat` and `okto export` through the real entry point."""

import io
import json
import re
import shutil

import pytest
import torch

import okto
from okto.cli import main
from okto.errors import MachineError, UsageError
from okto.package import open_checkpoint
from tests.inference.models import PROMPTS

RECORD_FIELDS = {
    "index",
    "prompt",
    "text",
    "prompt_tokens",
    "generated_tokens",
    "finish_reason",
    "error",
    "ttft_ms",
    "setup_ms",
    "tokens_per_s",
    "seed",
    "batch_size",
    "decode_tokens_per_s",
    "total_tokens_per_s",
    "decode_gb_per_s",
    "bandwidth_utilization",
    "engine",
}


@pytest.fixture
def stdin(monkeypatch):
    def feed(text):
        monkeypatch.setattr("sys.stdin", io.StringIO(text))

    return feed


def as_text(model, prompts):
    """What `Model.generate` was called with, as text: `okto chat` passes a turn's token ids."""
    if isinstance(prompts, list) and len(prompts) == 1 and isinstance(prompts[0], list):
        return model.tokenizer.decode(prompts[0])
    return prompts


@pytest.fixture
def prompts(monkeypatch):
    """The prompts `Model.generate` is called with, in order (a chat turn's ids decoded)."""
    from okto.inference.generate import Model

    called, generate = [], Model.generate

    def spy(self, prompt, **options):
        called.append(as_text(self, prompt))
        return generate(self, prompt, **options)

    monkeypatch.setattr(Model, "generate", spy)
    return called


def records(out):
    return [json.loads(line) for line in out.splitlines()]


def test_json_records(okm_files, capsys, stdin):
    stdin("")
    argv = ["infer", "--model", str(okm_files["gpt2"]), "--json", "--max-tokens", "5"]
    assert main([*argv, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", "3"]) == 0
    out = records(capsys.readouterr().out)
    assert [r["prompt"] for r in out] == PROMPTS[:2]
    assert all(set(r) == RECORD_FIELDS for r in out)
    assert all(r["generated_tokens"] == 5 and r["finish_reason"] == "length" for r in out)
    assert all(r["seed"] == 3 and r["ttft_ms"] > 0 and r["error"] is None for r in out)


def test_a_prompt_too_long_fails_alone(okm_files, loaded, capsys, stdin):
    """One prompt longer than the context window stopped the whole batch with a usage error;
    the others now run, the long one gets its own message (and a record with its error), and
    the exit code is 3 (inference failed) so a script sees that not all prompts ran. The spec
    gives INFERENCE no truncation setting, and cutting a prompt silently changes its meaning."""
    stdin("")
    long = PROMPTS[0] * 200
    argv = ["infer", "-m", str(okm_files["gpt2"]), "--max-tokens", "3", "--temperature", "0"]
    argv += ["-p", PROMPTS[0], "-p", long, "-p", PROMPTS[1]]
    tokens = len(loaded["gpt2"].encode(long))
    words = f"error: prompt 2: it has {tokens} tokens and the model's context window is 256"
    for output in ([], ["--batch-size", "1"]):
        assert main([*argv, *output]) == 3
        captured = capsys.readouterr()
        assert captured.out.splitlines()[0].startswith(PROMPTS[0])
        assert captured.out.splitlines()[1].startswith(PROMPTS[1])
        assert words in captured.err
        assert "error: 1 of 3 prompts could not be generated" in captured.err
    assert main([*argv, "--json"]) == 3
    first, failed, last = records(capsys.readouterr().out)
    assert first["generated_tokens"] == last["generated_tokens"] == 3
    assert set(failed) == RECORD_FIELDS and failed["finish_reason"] == "error"
    assert failed["text"] == "" and failed["prompt_tokens"] == tokens
    assert failed["error"].startswith(f"it has {tokens} tokens") and failed["engine"] is None
    assert main([*argv, "--stream"]) == 3
    captured = capsys.readouterr()
    assert [line[: len(PROMPTS[1])] for line in captured.out.splitlines()] == [
        PROMPTS[0][: len(PROMPTS[1])],
        PROMPTS[1],
    ]
    assert words in captured.err


def test_prompts_from_stdin_and_file(okm_files, capsys, stdin, tmp_path):
    stdin(f"{PROMPTS[0]}\n\n{PROMPTS[2]}\n")
    argv = [
        "infer",
        "-m",
        str(okm_files["llama"]),
        "--json",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
    ]
    assert main(argv) == 0
    assert [r["prompt"] for r in records(capsys.readouterr().out)] == [PROMPTS[0], PROMPTS[2]]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    assert main([*argv, "--prompts-file", str(prompts), "--batch-size", "2"]) == 0
    out = records(capsys.readouterr().out)
    assert [r["prompt"] for r in out] == PROMPTS
    assert {r["batch_size"] for r in out} == {2}


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_the_random_seed_is_reported(okm_files, capsys, stdin, stream):
    """The docs say an unset seed is random and reported, but only a --json record carried it:
    sampled text could not be had again. A note gives it; greedy text needs none."""
    stdin("")
    argv = ["infer", "-m", str(okm_files["gpt2"]), "-p", "Hello", "--max-tokens", "6", *stream]
    assert main([*argv, "--temperature", "1"]) == 0
    first = capsys.readouterr()
    (seed,) = re.findall(r"note: sampled with seed (\d+); --seed \1 gives this text again", first.err)
    assert main([*argv, "--temperature", "1", "--seed", seed]) == 0
    again = capsys.readouterr()
    assert again.out == first.out and "note: sampled" not in again.err
    assert main([*argv, "--temperature", "0"]) == 0
    assert "note: sampled" not in capsys.readouterr().err


def test_text_and_stream_output(okm_files, capsys, stdin):
    stdin("")
    argv = [
        "infer",
        "-m",
        str(okm_files["gpt2"]),
        "-p",
        "Hello",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
    ]
    assert main(argv) == 0
    plain = capsys.readouterr()
    assert plain.out.startswith("Hello")
    assert "tok/s" in plain.err
    assert main([*argv, "--stream"]) == 0
    assert capsys.readouterr().out == plain.out


def test_json_and_stream_together_is_a_usage_error(okm_files, capsys, stdin):
    """There is no streamed JSON form: --json records come when a prompt is done."""
    stdin("")
    argv = ["infer", "-m", str(okm_files["gpt2"]), "-p", "Hello", "--json", "--stream"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--stream: not allowed with argument --json" in captured.err


def test_inference_block_with_flags_over_it(okm_files, capsys, stdin, tmp_path):
    stdin("")
    okt = tmp_path / "infer.okt"
    okt.write_text(
        'PROJECT "demo"\n'
        "INFERENCE {\n"
        f'  model: "{okm_files["gpt2"]}"\n'
        '  format: "Q: {input}\\nA:"\n'
        "  max_tokens: 7\n"
        "  params { temperature: 0.0 }\n"
        "}\n"
    )
    assert main(["infer", "-f", str(okt), "--json", "-p", "Hello"]) == 0
    (record,) = records(capsys.readouterr().out)
    assert record["generated_tokens"] == 7
    assert record["prompt_tokens"] > 3  # the template was applied
    assert main(["infer", "-f", str(okt), "--json", "-p", "Hello", "--max-tokens", "2"]) == 0
    assert records(capsys.readouterr().out)[0]["generated_tokens"] == 2
    # --file is the .okt file, as in every okto command (prompts come from --prompts-file)
    assert main(["infer", "--file", str(okt), "--json", "-p", "Hello"]) == 0
    assert records(capsys.readouterr().out)[0]["generated_tokens"] == 7


def test_inference_model_is_looked_for_next_to_the_file_first(
    okm_files, capsys, stdin, tmp_path, monkeypatch
):
    """INFERENCE.model was looked for in the working directory first, MODEL.base next to the
    file first: one name could mean two models. Both now look next to the file first."""
    stdin("")
    job, here = tmp_path / "job", tmp_path / "here"
    (job / "runs").mkdir(parents=True)
    (here / "runs").mkdir(parents=True)
    shutil.copy(okm_files["gpt2"], job / "runs" / "m.okm")
    (here / "runs" / "m.okm").write_text("not a model\n")
    (job / "infer.okt").write_text('INFERENCE { model: "runs/m.okm" }\n')
    monkeypatch.chdir(here)
    argv = ["infer", "-f", str(job / "infer.okt"), "-p", "Hi", "--max-tokens", "2", "--json"]
    assert main(argv) == 0
    assert records(capsys.readouterr().out)[0]["generated_tokens"] == 2


def test_an_inference_model_found_nowhere_names_every_place_looked_in(
    okm_files, capsys, stdin, tmp_path, monkeypatch
):
    """`cd examples && okto infer -f inference-only.okt` after `okto train` ran in the folder
    above: the error was "runs/tiny: no such file or directory", which named neither folder."""
    stdin("")
    job, here = tmp_path / "examples", tmp_path / "elsewhere"
    job.mkdir()
    here.mkdir()
    okt = job / "infer.okt"
    okt.write_text('INFERENCE { model: "runs/tiny" }\n')
    monkeypatch.chdir(here)
    assert main(["infer", "-f", str(okt), "-p", "Hi"]) == 2
    err = capsys.readouterr().err
    assert f"INFERENCE model 'runs/tiny' not found; looked in {job}/runs/tiny (next to" in err
    assert f"{here}/runs/tiny (the working directory) and the local Hugging Face cache" in err
    monkeypatch.chdir(job)  # one folder: named once
    assert main(["infer", "-f", str(okt), "-p", "Hi"]) == 2
    assert f"looked in {job}/runs/tiny and the local" in capsys.readouterr().err
    argv = ["infer", "-f", str(okt), "-m", str(okm_files["gpt2"]), "-p", "Hi", "--max-tokens", "1"]
    assert main(argv) == 0  # --model wins: the block's model is not looked for


def test_the_trained_model_is_found_from_the_files_folder_too(
    hf_dirs, capsys, stdin, tmp_path, monkeypatch
):
    """`cd job && okto train -f train.okt` writes job/runs/demo; `okto infer -f job/train.okt`
    from the folder above looked only in ./runs/demo. The working directory's run (where okto
    train run from here writes) comes first; the error names both places."""
    stdin("")
    job = tmp_path / "job"
    job.mkdir()
    okt = job / "train.okt"
    okt.write_text('PROJECT "demo"\nINFERENCE { max_tokens: 2 }\n')
    monkeypatch.chdir(tmp_path)
    argv = ["infer", "-f", str(okt), "-p", "Hi", "--json", "--temperature", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "but runs/demo does not exist (not trained yet), and " in err
    assert f"{job}/runs/demo does not exist (not trained yet): train it first" in err
    shutil.copytree(hf_dirs["gpt2"], job / "runs" / "demo" / "final")
    assert main(argv) == 0
    assert records(capsys.readouterr().out)[0]["generated_tokens"] == 2
    shutil.copytree(hf_dirs["llama"], tmp_path / "runs" / "demo" / "final")
    assert main(argv) == 0
    (record,) = records(capsys.readouterr().out)
    assert main([*argv, "-m", str(hf_dirs["llama"])]) == 0
    assert records(capsys.readouterr().out)[0]["text"] == record["text"]


def test_no_inference_model_loads_the_trained_one(hf_dirs, capsys, stdin, tmp_path, monkeypatch):
    """INFERENCE `model` unset means the model `okto train -f` writes: its run folder (OUTPUT.dir
    and the PROJECT name as training resolves them, from the working directory)."""
    stdin("")
    monkeypatch.chdir(tmp_path)
    okt = tmp_path / "train.okt"
    okt.write_text('PROJECT "My demo"\nOUTPUT { dir: "out" }\nINFERENCE { max_tokens: 3 }\n')
    argv = ["-f", str(okt), "--temperature", "0"]
    assert main(["infer", *argv, "-p", "Hello"]) == 2
    err = capsys.readouterr().err
    assert f"`okto train -f {okt}` writes, but out/My-demo does not exist (not trained yet)" in err
    assert "train it first, or set INFERENCE model or pass --model" in err
    stdin("hi\n")
    assert main(["chat", *argv]) == 2
    assert "out/My-demo does not exist" in capsys.readouterr().err
    (tmp_path / "out" / "My-demo" / "checkpoints").mkdir(parents=True)
    assert main(["infer", *argv, "-p", "Hello"]) == 2
    assert "out/My-demo holds no final model" in capsys.readouterr().err
    shutil.copytree(hf_dirs["gpt2"], tmp_path / "out" / "My-demo" / "final")
    assert main(["infer", *argv, "-p", "Hello", "--json"]) == 0
    (trained,) = records(capsys.readouterr().out)
    assert trained["generated_tokens"] == 3
    assert main(["infer", "-m", str(hf_dirs["gpt2"]), *argv, "-p", "Hello", "--json"]) == 0
    assert records(capsys.readouterr().out)[0]["text"] == trained["text"]
    stdin("Hello\n")
    assert main(["chat", *argv]) == 0
    untitled = tmp_path / "untitled.okt"
    untitled.write_text("INFERENCE { max_tokens: 3 }\n")
    assert main(["infer", "-f", str(untitled), "-p", "Hello"]) == 2
    assert "no PROJECT" in capsys.readouterr().err


def test_compile_from_the_file_or_the_flag(okm_files, capsys, stdin, tmp_path, monkeypatch):
    """OPTIMIZE compile and --compile both reach the engine (torch.compile itself is tested in
    test_engine.py; here it hands the step back as it is)."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)
    stdin("")
    okt = tmp_path / "compiled.okt"
    okt.write_text(
        f'PROJECT "demo"\nOPTIMIZE {{ compile: true }}\nINFERENCE {{ model: "{okm_files["gpt2"]}" }}\n'
    )
    argv = ["--json", "-p", "Hello", "--max-tokens", "2"]
    assert main(["infer", "-f", str(okt), *argv]) == 0
    assert "compiled decode step" in records(capsys.readouterr().out)[0]["engine"]
    assert main(["infer", "-m", str(okm_files["gpt2"]), "--compile", *argv]) == 0
    assert "compiled decode step" in records(capsys.readouterr().out)[0]["engine"]
    assert main(["infer", "-m", str(okm_files["gpt2"]), *argv]) == 0
    assert "compiled" not in records(capsys.readouterr().out)[0]["engine"]


def test_damaged_package_exits_with_a_message(okm_files, capsys, stdin, tmp_path):
    stdin("")
    damaged = tmp_path / "damaged.okm"
    data = bytearray(okm_files["gpt2"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(["infer", "--model", str(damaged), "-p", "hi"]) == 3
    err = capsys.readouterr().err
    assert "SHA-256" in err and "Traceback" not in err
    assert main(["infer", "--model", str(tmp_path / "missing.okm"), "-p", "hi"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_no_prompts_is_a_usage_error(okm_files, capsys, stdin):
    stdin("")
    assert main(["infer", "--model", str(okm_files["gpt2"])]) == 2
    assert "no prompts: pass --prompt, --prompts-file, or pipe" in capsys.readouterr().err


def test_a_closed_stdin_is_no_input(okm_files, capsys, monkeypatch):
    """Started with stdin closed (`<&-`), Python's sys.stdin is None: both commands were an
    AttributeError traceback; infer says it has no prompts, chat ends at once."""
    monkeypatch.setattr("sys.stdin", None)
    assert main(["infer", "-m", str(okm_files["gpt2"])]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(["chat", "-m", str(okm_files["gpt2"])]) == 0


def test_chat_keeps_history_and_exits(okm_files, capsys, stdin, prompts):
    stdin("hello there\n\nhow are you\nbye\nnever read\n")
    argv = ["chat", "-m", str(okm_files["gpt2"]), "--max-tokens", "4", "--exit-command", "bye"]
    assert main(argv) == 0
    assert len(prompts) == 2  # the empty line is skipped, "bye" ends the session
    assert prompts[0] == "User: hello there\nAssistant:"
    assert prompts[1].startswith("User: hello there\nAssistant:")
    assert prompts[1].endswith("User: how are you\nAssistant:")


def test_chat_skips_a_line_that_is_not_utf8(okm_files, capsys, monkeypatch, prompts):
    """A line of Latin-1 bytes was a traceback (UnicodeDecodeError, or lone surrogates the
    tokenizer refused); it is skipped with a word and the session goes on."""
    lines = io.TextIOWrapper(io.BytesIO(b"caf\xe9\nhello\n"), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", lines)
    assert main(["chat", "-m", str(okm_files["gpt2"]), "--max-tokens", "3"]) == 0
    assert "that line is not UTF-8 text (at position 3); skipped" in capsys.readouterr().err
    assert prompts == ["User: hello\nAssistant:"]


def test_chat_ends_its_prompt_line_at_the_end_of_input(okm_files, capsys, monkeypatch):
    """Ctrl-D at a terminal's "> " prompt left the shell's prompt on the same line."""
    terminal = io.StringIO("")
    terminal.isatty = lambda: True
    monkeypatch.setattr("sys.stdin", terminal)
    assert main(["chat", "-m", str(okm_files["gpt2"])]) == 0
    assert capsys.readouterr().out.endswith("> \n")


@pytest.mark.parametrize("command", ["", "  "])
def test_chat_refuses_an_empty_exit_command(command, okm_files, capsys, stdin, monkeypatch):
    """An empty exit command was taken as "not given" (the default, exit), and a blank one would
    end the chat at the first empty line. It is refused before the model loads (it was after)."""
    import okto.inference

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(okto.inference, "load_model", no_loading)
    stdin("hi\n")
    assert main(["chat", "-m", str(okm_files["gpt2"]), "--exit-command", command]) == 2
    assert "exit_command is empty" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["infer", "chat"])
def test_a_bad_kernel_variable_is_refused_before_the_model_loads(
    command, okm_files, capsys, stdin, monkeypatch
):
    """OKTO_KERNELS=bogus ran silently on a CPU (and would fail at the first kernel on a GPU);
    okto train and okto plan refused it."""
    import okto.inference

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(okto.inference, "load_model", no_loading)
    monkeypatch.setenv("OKTO_KERNELS", "bogus")
    stdin("hi\n")
    extra = ["--prompt", "hi"] if command == "infer" else []
    assert main([command, "-m", str(okm_files["gpt2"]), *extra]) == 2
    assert "OKTO_KERNELS='bogus' is not one of auto, triton, native" in capsys.readouterr().err


def test_chat_seed_gives_each_turn_its_own_stream(okm_files, capsys, stdin, monkeypatch):
    """With --seed each turn samples from a stream of its own (from the seed and the turn number):
    turns differ, and the same seed and lines replay the same session."""
    from okto.inference.generate import Model

    seeds, generate = [], Model.generate

    def spy(self, prompt, **options):
        results = generate(self, prompt, **options)
        seeds.append(results[0].seed)
        return results

    monkeypatch.setattr(Model, "generate", spy)
    argv = ["chat", "-m", str(okm_files["gpt2"]), "--max-tokens", "4", "--temperature", "1"]
    sessions = []
    for seed in ("7", "7", "8"):
        stdin("hi\nhi\nhi\n")
        assert main([*argv, "--seed", seed]) == 0
        sessions.append((capsys.readouterr().out, seeds[-3:]))
    (out, turns), (again, replayed), (_, other) = sessions
    assert len(set(turns)) == 3
    assert (again, replayed) == (out, turns)
    assert not set(other) & set(turns)


def test_chat_history_stays_in_the_context_window(loaded):
    from okto.inference.chat import Conversation

    model = loaded["gpt2"]
    chat = Conversation(model, model.settings(max_tokens=8))
    chat.turns = [("a long question " * 10, "a long answer " * 10)] * 20
    ids = chat.prompt("and now?")
    assert len(ids) + 8 <= model.context_window
    prompt = model.tokenizer.decode(ids)
    assert prompt.endswith("User: and now?\nAssistant:")
    assert prompt.count("User:") < 21


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{% for m in messages %}{{ m['content'] }{% endfor %}", "TemplateSyntaxError"),
        ("{{ raise_exception('System message required') }}", "System message required"),
    ],
)
def test_a_chat_template_that_does_not_render_is_one_line(
    hf_dirs, capsys, stdin, tmp_path, template, words
):
    """A chat template with a syntax error, or one that refuses the conversation, was a jinja2
    traceback; now the message says so and how to render turns without it."""
    folder = shutil.copytree(hf_dirs["gpt2"], tmp_path / "m")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    okt = tmp_path / "chat.okt"
    okt.write_text(f'INFERENCE {{ model: "{folder}"  mode: "chat" }}\n')
    for argv in (["chat", "-m", str(folder)], ["infer", "-f", str(okt), "-p", "hi"]):
        stdin("hi\n")
        assert main([*argv, "--max-tokens", "2"]) == 3
        err = capsys.readouterr().err
        assert "the model's chat template cannot render this conversation" in err
        assert words in err and "set INFERENCE format" in err


def test_export_round_trip(hf_dirs, capsys, tmp_path):
    out = tmp_path / "m.okm"
    assert (
        main(["export", "--model", str(hf_dirs["llama"]), "--out", str(out), "--dtype", "bf16"])
        == 0
    )
    assert "bfloat16" in capsys.readouterr().out
    assert (
        main(["export", "--model", str(out), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    )
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_export_weights_alone(okm_files, capsys, tmp_path):
    """`--format safetensors` (or an --out ending in .safetensors) writes one weights file, as
    EXPORT's `safetensors` format does, holding the package's tensors unchanged."""
    from safetensors.torch import load_file

    out = tmp_path / "w.safetensors"
    assert main(["export", "--model", str(okm_files["gpt2"]), "--out", str(out)]) == 0
    assert "the weights alone" in capsys.readouterr().out
    tensors = open_checkpoint(okm_files["gpt2"]).tensors()
    loaded = load_file(out)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    named = tmp_path / "named"
    assert main(["export", "-m", str(okm_files["gpt2"]), "-o", str(named), "--format",
                 "safetensors"]) == 0  # fmt: skip
    assert named.is_file() and named.read_bytes() == out.read_bytes()


def test_weights_alone_are_refused_with_what_to_load(okm_files, hf_dirs, capsys, stdin, tmp_path):
    """A safetensors file holds no config or tokenizer: a usage error that says what to load."""
    stdin("")
    weights = tmp_path / "w.safetensors"
    assert main(["export", "-m", str(okm_files["gpt2"]), "-o", str(weights)]) == 0
    capsys.readouterr()
    for path in (weights, hf_dirs["gpt2"] / "model.safetensors"):
        assert main(["infer", "--model", str(path), "-p", "Hello"]) == 2
        err = capsys.readouterr().err
        assert f"{path}: a safetensors file of weights alone (no config, no tokenizer)" in err
        assert "load the run folder, Hugging Face folder or .okm it came from" in err
        assert "Traceback" not in err
    assert f"(here: {hf_dirs['gpt2']})" in err
    assert main(["export", "-m", str(weights), "-o", str(tmp_path / "m.okm")]) == 2


def test_chat_mode_renders_each_prompt_as_a_turn(okm_files, capsys, stdin, tmp_path):
    stdin("")
    okt = tmp_path / "chat.okt"
    okt.write_text(f'INFERENCE {{\n  model: "{okm_files["gpt2"]}"\n  mode: "chat"\n}}\n')
    options = ["--json", "-p", "Hello", "--max-tokens", "3"]
    assert main(["infer", "-f", str(okt), *options]) == 0
    (chat,) = records(capsys.readouterr().out)
    assert main(["infer", "--model", str(okm_files["gpt2"]), *options]) == 0
    assert chat["prompt"] == "Hello"
    assert chat["prompt_tokens"] > records(capsys.readouterr().out)[0]["prompt_tokens"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize(
    ("device", "code", "words"),
    [("cuda", 4, "no CUDA GPU"), ("cuda:1", 4, "no CUDA GPU"), ("tpu", 2, "unknown device")],
)
def test_a_device_this_machine_lacks_is_a_clear_error(okm_files, capsys, device, code, words):
    argv = ["infer", "--model", str(okm_files["gpt2"]), "-p", "Hi", "--device", device]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    if code == 4:
        assert f"--device {device}: " in err and "use --device cpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_load_model_names_its_device_parameter_not_the_flag(okm_files):
    """okto.load_model(path, device="cuda") told a Python caller "--device cuda: ... use
    --device cpu", flags it never passed."""
    with pytest.raises(MachineError) as raised:
        okto.load_model(okm_files["gpt2"], device="cuda")
    assert str(raised.value) == "device='cuda': this machine has no CUDA GPU; use device='cpu'"


def test_a_file_that_is_no_model_is_a_usage_error(okm_files, hf_dirs, capsys, stdin, tmp_path):
    """A .txt, an .okt or a model's own tokenizer.json given as --model is a wrong argument
    (exit 2) that says what to pass; a file named .okm without the magic is a damaged package
    (exit 3)."""
    stdin("")
    notes, job, damaged = tmp_path / "notes.txt", tmp_path / "job.okt", tmp_path / "m.okm"
    notes.write_text("hello\n")
    job.write_text('PROJECT "job"\n')
    damaged.write_bytes(b"hello" + okm_files["gpt2"].read_bytes()[5:])
    cases = [
        (notes, 2, "not a model: expected an .okm file, a Hugging Face directory"),
        (job, 2, "an .okt file describes a job: pass it with -f"),
        (
            hf_dirs["gpt2"] / "tokenizer.json",
            2,
            f"load the Hugging Face folder it is in (here: {hf_dirs['gpt2']})",
        ),
        (damaged, 3, "not an .okm package (wrong magic bytes"),
    ]
    for path, code, words in cases:
        for command in (["infer", "-p", "Hi"], ["export", "-o", str(tmp_path / "out.okm")]):
            assert main([*command, "--model", str(path)]) == code
            err = capsys.readouterr().err
            assert words in err and "Traceback" not in err
    assert not (tmp_path / "out.okm").exists()


def test_an_export_with_nowhere_to_go_is_a_usage_error(okm_files, capsys, tmp_path):
    """--out naming a folder, or a place under a file, says so (exit 2) and leaves nothing."""
    folder = tmp_path / "taken.okm"
    folder.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        (folder, "cannot write", "it is a folder; name a file"),
        (blocker / "model.okm", "cannot make the folder", "a file has that name"),
        (blocker / "hf", "cannot make the folder", "Not a directory"),
    ]
    for out, start, reason in cases:
        assert main(["export", "-m", str(okm_files["gpt2"]), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert start in err and reason in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.okm"]
    assert list(folder.iterdir()) == []


def test_library_follows_the_models_chat_mode_as_infer_does(hf_dirs, capsys, stdin, tmp_path):
    """A model whose defaults say mode chat renders prompts as chat turns in
    `Model.generate` too, not only in `okto infer`: both give the same record."""
    from okto.inference import load_model
    from okto.inference.chat import PLAIN_TEMPLATE

    stdin("")
    final = tmp_path / "run" / "final"
    shutil.copytree(hf_dirs["gpt2"], final)
    (final / "okto_config.json").write_text(json.dumps({"inference": {"mode": "chat"}}))
    package = tmp_path / "chat.okm"
    assert main(["export", "-m", str(final.parent), "-o", str(package)]) == 0
    capsys.readouterr()
    argv = ["infer", "-m", str(package), "-p", "Hello", "--json", "--temperature", "0"]
    assert main([*argv, "--max-tokens", "4"]) == 0
    (record,) = records(capsys.readouterr().out)
    model = load_model(package, device="cpu")
    (g,) = model.generate("Hello", temperature=0, max_tokens=4)
    turn = PLAIN_TEMPLATE.replace("{input}", "Hello")
    assert g.prompt == record["prompt"] == "Hello"
    assert g.prompt_tokens == record["prompt_tokens"] == len(model.encode(turn))
    assert g.text == record["text"]
    (plain,) = model.generate("Hello", temperature=0, max_tokens=4, mode="completion")
    assert plain.prompt_tokens == len(model.encode("Hello"))


@pytest.mark.parametrize("stream", [False, True])
def test_a_reader_that_leaves_ends_okto_quietly(okm_files, stdin, monkeypatch, stream):
    """`okto infer ... | head`: a write after the reader left ends the run with SIGPIPE's code
    (it was a BrokenPipeError traceback, and another at exit); stdout then goes nowhere."""
    import os

    stdin("")
    read, write = os.pipe()
    os.close(read)
    with open(write, "w") as gone:
        monkeypatch.setattr("sys.stdout", gone)
        argv = ["infer", "-m", str(okm_files["gpt2"]), "-p", "Hello", "--max-tokens", "3"]
        assert main(argv + (["--stream"] if stream else [])) == 141
        gone.write("x" * 100_000)
        gone.flush()  # would raise BrokenPipeError: the descriptor now points at devnull


def test_streamed_prompts_draw_what_they_draw_unstreamed(okm_files, capsys, stdin):
    """--stream with a seed prints the same text as without: prompt i samples from the seed's
    stream i (each prompt was generated alone, so every prompt drew stream 0 and two equal
    prompts got equal text); a prompt whose text is empty still gets its line."""
    stdin("")
    argv = ["infer", "-m", str(okm_files["gpt2"]), "--seed", "7", "--max-tokens", "8"]
    argv += ["-p", "Hello", "-p", "Hello", "-p", PROMPTS[1]]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert main([*argv, "--stream"]) == 0
    streamed = capsys.readouterr()
    assert streamed.out == plain
    assert len(set(plain.splitlines()[:2])) == 2
    assert streamed.err.count("batch 1 ·") == 3


def test_streamed_figures_follow_each_prompts_text(okm_files, stdin, monkeypatch):
    """--stream printed every prompt's figures after the last prompt's text; each line now
    comes once its prompt is done, before the next prompt starts."""
    import sys

    events = []

    class Log(io.StringIO):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def write(self, text):
            events.append((self.name, text))
            return len(text)

    stdin("")
    monkeypatch.setattr(sys, "stdout", Log("out"))
    monkeypatch.setattr(sys, "stderr", Log("err"))
    argv = ["infer", "-m", str(okm_files["gpt2"]), "--max-tokens", "3", "--stream"]
    assert main([*argv, "-p", PROMPTS[0], "-p", PROMPTS[1]]) == 0
    order = [
        text if stream == "out" else "figures"
        for stream, text in events
        if text in PROMPTS[:2] or (stream == "err" and "tok/s" in text)
    ]
    assert order == [PROMPTS[0], "figures", PROMPTS[1], "figures"]


def test_stream_prints_a_prompt_that_gets_no_text(okm_files, capsys, stdin, monkeypatch):
    from okto.inference import generate

    stdin("")
    monkeypatch.setattr(generate, "_eos_ids", lambda *_: set(range(400)))  # every token ends
    argv = ["infer", "-m", str(okm_files["gpt2"]), "-p", "A", "-p", "B", "--stream"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "A\nB\n"


def test_stop_flag_reads_escapes_as_okt_strings_do(okm_files, capsys, stdin):
    """`--stop '\\n'` (a backslash and an n from the shell) is a line end, as in a .okt file."""
    from okto.cli.infer import unescaped

    assert unescaped(r"\n\t\r\\n \u00e9 \x") == "\n\t\r\\n é \\x"
    stdin("")
    model = str(okm_files["gpt2"])
    argv = ["infer", "-m", model, "-p", PROMPTS[0], "--temperature", "0", "--json"]
    assert main([*argv, "--max-tokens", "40"]) == 0
    (full,) = records(capsys.readouterr().out)
    stop = full["text"][3:5].replace("\\", "\\\\").replace("\n", "\\n")
    assert main([*argv, "--max-tokens", "40", "--stop", stop]) == 0
    (cut,) = records(capsys.readouterr().out)
    assert cut["finish_reason"] == "stop" and cut["text"] == full["text"][:3]


def test_prompts_as_people_save_them(okm_files, capsys, stdin, tmp_path):
    """A byte-order mark and CR LF line ends are not part of a prompt, a form feed inside one
    does not split it; text that is not UTF-8 and a folder are one-line errors (tracebacks:
    UnicodeDecodeError, the tokenizer's TypeError; a folder was 'no such file')."""
    stdin("")
    argv = ["infer", "-m", str(okm_files["gpt2"]), "--max-tokens", "1", "--json"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xef\xbb\xbfHello\r\nx\x0cy\r\n\r\n")
    assert main([*argv, "--prompts-file", str(prompts)]) == 0
    assert [r["prompt"] for r in records(capsys.readouterr().out)] == ["Hello", "x\x0cy"]
    prompts.write_bytes(b"caf\xe9\n")
    cases = [
        (["--prompts-file", str(prompts)], "prompts.txt: not UTF-8 text (at position 3)"),
        (["--prompts-file", str(tmp_path)], "a folder; --prompts-file takes a text file"),
        (["-p", "caf\udce9"], "prompt 1: not UTF-8 text (at position 3)"),  # as argv brings it
    ]
    for extra, words in cases:
        assert main([*argv, *extra]) == 2
        assert words in capsys.readouterr().err
    stdin("ok\ncaf\udce9\n")  # a C-locale stdin hands such bytes over the same way
    assert main(argv) == 2
    assert "prompt 2: not UTF-8 text" in capsys.readouterr().err


def test_okto_generate_returns_what_okto_infer_prints(okm_files, loaded, capsys, stdin):
    """README promised the command line as a library, but `okto infer` had no one-call
    counterpart: okto.generate loads a path (or takes a loaded model) and returns the text
    okto infer prints after each prompt."""
    stdin("")
    options = ["--max-tokens", "6", "--temperature", "0.8", "--seed", "4", "--device", "cpu"]
    prompts = PROMPTS[:2]
    argv = ["infer", "--model", str(okm_files["gpt2"]), "-p", prompts[0], "-p", prompts[1]]
    assert main([*argv, *options]) == 0
    printed = capsys.readouterr().out
    settings = {"max_tokens": 6, "temperature": 0.8, "seed": 4}
    texts = okto.generate(okm_files["gpt2"], prompts, device="cpu", **settings)
    assert printed == "".join(
        f"{prompt}{text}\n" for prompt, text in zip(prompts, texts, strict=True)
    )
    assert okto.generate(loaded["gpt2"], prompts[0], **settings) == texts[0]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"device": "cpu"}, "device: settings for loading a model, but this one is loaded"),
        ({"max_new_tokens": 3}, "unknown setting max_new_tokens; okto.generate takes"),
    ],
)
def test_okto_generate_refuses_settings_it_cannot_use(loaded, settings, words):
    with pytest.raises(okto.OktoError, match=words):
        okto.generate(loaded["gpt2"], "Hello", **settings)


def test_a_bad_setting_is_said_before_the_model_loads(okm_files, capsys, stdin, monkeypatch):
    """--max-tokens 0 was refused only once the model had loaded (minutes for a large one)."""
    import okto.inference

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    stdin("")
    monkeypatch.setattr(okto.inference, "load_model", no_loading)
    for flags, words in (
        (["--max-tokens", "0"], "max_tokens must be a positive integer, got 0"),
        (["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
        (["--stop", ""], "a stop sequence is empty"),
    ):
        assert main(["infer", "-m", str(okm_files["gpt2"]), "-p", "Hi", *flags]) == 2
        assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    ("prompts", "settings", "words"),
    [
        ("Hi", {"max_tokens": 0}, "max_tokens must be a positive integer, got 0"),
        ("Hi", {"stream": "yes"}, "stream must be a function"),
        (["Hi", 3], {}, "prompt 2 is an int"),
    ],
)
def test_okto_generate_says_a_bad_setting_before_the_model_loads(
    okm_files, monkeypatch, prompts, settings, words
):
    """okto.generate(path, ...) loaded the model (minutes for a large one), then refused the
    setting or the prompt that `okto infer` refuses before loading."""
    from okto.inference import generate

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(generate, "load_model", no_loading)
    with pytest.raises(UsageError, match=words):
        okto.generate(okm_files["gpt2"], prompts, **settings)


def test_stream_says_it_does_not_batch(okm_files, capsys, stdin, tmp_path):
    """--stream runs prompts one at a time; a batch_size asked for (flag or INFERENCE) was
    dropped without a word."""
    stdin("")
    okt = tmp_path / "batched.okt"
    okt.write_text(f'INFERENCE {{ model: "{okm_files["gpt2"]}" batch_size: 4 }}\n')
    argv = ["infer", "-f", str(okt), "-p", "Hi", "--max-tokens", "1", "--stream"]
    assert main(argv) == 0
    assert "note: --stream runs the prompts one at a time; batch_size 4 is not used" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--batch-size", "1"]) == 0
    assert "note: --stream" not in capsys.readouterr().err


@pytest.fixture
def terminal(monkeypatch):
    """stdin as a terminal that types `text`; a line "^C" is Ctrl-C at the prompt."""

    def type_(text):
        class Terminal(io.StringIO):
            def isatty(self):
                return True

            def readline(self, *args):
                line = super().readline(*args)
                if line == "^C\n":
                    raise KeyboardInterrupt
                return line

        monkeypatch.setattr("sys.stdin", Terminal(text))

    return type_


@pytest.fixture
def ctrl_c_in_reply(monkeypatch):
    """Model.generate, with SIGINT sent to the process as reply i starts streaming when
    `pressed[i]`; returns the prompts generate was called with, and `pressed`. SIGINT is
    Python's KeyboardInterrupt meanwhile: a shell that starts the tests in the background
    (`... &`) hands them SIGINT ignored, as it does every background job."""
    import signal

    from okto.inference.generate import Model

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    called, pressed, generate = [], [], Model.generate

    def spy(self, prompt, stream=None, **options):
        press = len(called) < len(pressed) and pressed[len(called)]
        called.append(as_text(self, prompt))

        def pressing(index, text):
            if press:
                signal.raise_signal(signal.SIGINT)
            stream(index, text)

        return generate(self, prompt, stream=pressing, **options)

    monkeypatch.setattr(Model, "generate", spy)
    yield called, pressed
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_chat_stops_the_reply_and_returns_to_the_prompt(
    okm_files, capsys, terminal, ctrl_c_in_reply
):
    """Ctrl-C while a reply streamed ended the whole session (exit 130); it stops the reply,
    which is not kept, and the next line is a turn of the same session."""
    called, pressed = ctrl_c_in_reply
    pressed += [True, False]
    terminal("hello\nagain\n")
    argv = ["chat", "-m", str(okm_files["gpt2"]), "--max-tokens", "8", "--temperature", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "reply stopped" in captured.err
    assert called == ["User: hello\nAssistant:", "User: again\nAssistant:"]


def test_ctrl_c_at_the_chat_prompt_leaves(okm_files, capsys, terminal, ctrl_c_in_reply):
    """Ctrl-C, a reply's, then at the prompt: the session ends there, on a line of its own."""
    called, pressed = ctrl_c_in_reply
    pressed.append(True)
    terminal("hello\n^C\nnever read\n")
    assert main(["chat", "-m", str(okm_files["gpt2"]), "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out.endswith("> \n")
    assert len(called) == 1


def test_ctrl_c_in_a_piped_chat_ends_it(okm_files, capsys, stdin, ctrl_c_in_reply):
    """With no one at a prompt (lines piped in), Ctrl-C ends the session as before."""
    called, pressed = ctrl_c_in_reply
    pressed.append(True)
    stdin("hello\nagain\n")
    assert main(["chat", "-m", str(okm_files["gpt2"]), "--max-tokens", "4"]) == 130
    assert len(called) == 1


@pytest.mark.parametrize("as_json", [False, True])
def test_infer_prints_finished_prompts_early_and_keeps_them_on_ctrl_c(
    okm_files, capsys, stdin, monkeypatch, as_json
):
    """Every result was printed after the last batch, and Ctrl-C lost all of them: a batch's
    results come out once the prompts before them are out (in the prompts' order), and on
    Ctrl-C every finished prompt is printed before okto exits with 130."""
    from okto.inference.engine import Engine

    printed, run = [], Engine.run

    def interrupted_second_batch(self, *args):
        printed.append(capsys.readouterr())
        if len(printed) == 2:
            raise KeyboardInterrupt
        return run(self, *args)

    monkeypatch.setattr(Engine, "run", interrupted_second_batch)
    stdin("")
    # batches run longest first: prompts 3 and 1 together, then 2; prompt 1 is printed once its
    # batch ends, prompt 3 waits for prompt 2, then is printed when Ctrl-C ends the run
    argv = ["infer", "-m", str(okm_files["gpt2"]), "--batch-size", "2", "--max-tokens", "2"]
    argv += ["-p", "Hello world", "-p", "A", "-p", PROMPTS[3]] + (["--json"] if as_json else [])
    assert main(argv) == 130
    early, (out, err) = printed[1], capsys.readouterr()
    assert "2 of 3 prompts were done when interrupted" in err
    if as_json:
        assert [r["index"] for r in records(early.out)] == [0]
        assert [r["index"] for r in records(out)] == [2]
    else:
        assert early.out.startswith("Hello world") and early.out.count("\n") == 1
        assert "batch 2 · " in early.err
        assert out.startswith(PROMPTS[3]) and out.count("\n") == 1


def test_ctrl_c_in_a_streamed_line_ends_it(okm_files, capsys, stdin, monkeypatch):
    """--stream cut by Ctrl-C: the prompt's line is ended, so "interrupted" is not glued to it."""
    from okto.cli import infer

    pieces, write = [], infer.write

    def interrupted(index, text):
        pieces.append(text)
        if len(pieces) == 2:
            raise KeyboardInterrupt
        write(index, text)

    monkeypatch.setattr(infer, "write", interrupted)
    stdin("")
    argv = ["infer", "-m", str(okm_files["gpt2"]), "-p", "Hello", "--max-tokens", "8", "--stream"]
    assert main([*argv, "--temperature", "0"]) == 130
    assert capsys.readouterr().out == "Hello" + pieces[0] + "\n"
