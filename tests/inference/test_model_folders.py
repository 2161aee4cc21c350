"""Hugging Face folders as users have them: sharded `.bin` weights, and folders that are
damaged or do not hold the model their config describes, each refused in one line."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from okto.cli import main
from okto.inference import load_model
from okto.package import export_model, open_checkpoint


def copy(hf_dirs, kind, tmp_path):
    return shutil.copytree(hf_dirs[kind], tmp_path / kind)


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def test_sharded_bin_weights_load_and_export(hf_dirs, loaded, tmp_path):
    """pytorch_model.bin.index.json and its shards (older hub models) load like safetensors."""
    folder = copy(hf_dirs, "gpt2", tmp_path)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_model(folder, device="cpu")
    options = {"max_tokens": 6, "temperature": 0}
    assert model.generate("Hello", **options)[0].token_ids == (
        loaded["gpt2"].generate("Hello", **options)[0].token_ids
    )
    package = export_model(folder, tmp_path / "m.okm")
    assert open_checkpoint(package).tensors().keys() == state.keys()


def truncated_safetensors(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def missing_shard(folder):
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    save_file(state, folder / "model-00001-of-00002.safetensors")
    weight_map = dict.fromkeys(state, "model-00001-of-00002.safetensors")
    weight_map["extra"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def damaged_bin(folder):
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")


def broken_tokenizer(folder):
    (folder / "tokenizer.json").write_text("{not json")


def damaged_generation_config(folder):
    (folder / "generation_config.json").write_text('{"do_sample": tru')


def run_config_not_an_object(folder):
    (folder / "okto_config.json").write_text("[]")


def unknown_model_type(folder):
    edit_config(folder, model_type="no_such_model")


def config_value_of_the_wrong_type(folder):  # transformers 5: a StrictDataclassError
    edit_config(folder, n_layer=1.5)


def wider_config(folder):
    edit_config(folder, n_embd=32)


def missing_head(folder):  # the llama here has an untied head
    state = load_file(folder / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, folder / "model.safetensors")


@pytest.mark.parametrize(
    ("kind", "damage", "backend", "code", "words"),
    [
        ("gpt2", truncated_safetensors, "auto", 3, "model.safetensors: the weights cannot be read"),
        ("gpt2", missing_shard, "auto", 3, "model-00002-of-00002.safetensors is not in the folder"),
        ("gpt2", damaged_bin, "auto", 3, "pytorch_model.bin: the weights cannot be read"),
        ("gpt2", broken_tokenizer, "auto", 3, "its tokenizer cannot be loaded (JSONDecodeError"),
        ("gpt2", damaged_generation_config, "auto", 3, "generation_config.json: not valid JSON"),
        ("gpt2", run_config_not_an_object, "auto", 3, "okto_config.json: holds a JSON list"),
        ("gpt2", unknown_model_type, "auto", 2, "model type 'no_such_model', which transformers"),
        ("gpt2", config_value_of_the_wrong_type, "auto", 2, "cannot make a gpt2 config from"),
        ("gpt2", wider_config, "auto", 3, "the weights do not fit the config"),
        ("gpt2", wider_config, "hf", 3, "is [192] in the weights, [96] by the config"),
        ("llama", missing_head, "auto", 3, "the weights lack lm_head.weight"),
        ("llama", missing_head, "hf", 3, "the weights lack lm_head.weight"),
    ],
)
def test_a_damaged_folder_is_one_line_not_a_traceback(
    kind, damage, backend, code, words, hf_dirs, tmp_path, capsys
):
    folder = copy(hf_dirs, kind, tmp_path)
    damage(folder)
    argv = ["infer", "-m", str(folder), "-p", "Hi", "--device", "cpu", "--backend", backend]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert words in err
    assert len(err.strip().splitlines()) == 1, err  # no list of every model type, no load report


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (config_value_of_the_wrong_type, "Field 'n_layer' expected int, got float (value: 1.5)"),
        (unknown_model_type, "model type 'no_such_model', which transformers"),
    ],
)
def test_okto_plan_and_okto_infer_refuse_a_config_alike(damage, words, hf_dirs, tmp_path, capsys):
    """okto infer caught ValueError and TypeError, okto plan also huggingface_hub's
    StrictDataclassError (transformers 5's value checks): infer ended in a traceback for a value
    of the wrong type, and plan printed transformers' list of every model type it knows."""
    folder = copy(hf_dirs, "gpt2", tmp_path)
    damage(folder)
    okt = tmp_path / "plan.okt"
    okt.write_text(f'PROJECT "p"\nMODEL {{ base: "{folder}" }}\n')
    for argv in (["plan", "-f", str(okt)], ["infer", "-m", str(folder), "-p", "Hi"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("files", "words"),
    [
        (["adapter_config.json"], "holds a LoRA adapter alone (adapter_config.json): load the run"),
        (
            ["trainer.json", "state.pt"],
            "is a training checkpoint: `okto train -f FILE.okt --resume",
        ),
        (["checkpoints/step-0000002/trainer.json"], "run folder with checkpoints but no final/"),
    ],
)
def test_a_run_folder_that_is_no_model_says_what_to_load(files, words, tmp_path, capsys):
    """A LoRA adapter, a checkpoint, an unfinished run: 'not a model' alone left the user
    guessing what okto wants."""
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    for command in (["infer", "-p", "Hi"], ["export", "-o", str(tmp_path / "out.okm")]):
        assert main([*command, "-m", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "not a model" in err and words in err


def test_a_checkpoint_of_a_finished_run_says_to_load_the_run(tmp_path, capsys, monkeypatch):
    """A checkpoint of a run that has finished was said to need `--resume auto` to finish the
    run; the run folder, whose final/ holds the model, is what to load (given relatively too)."""
    run = tmp_path / "runs" / "p"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (run / "checkpoints" / "step-0000002").mkdir(parents=True)
    (run / "checkpoints" / "step-0000002" / "trainer.json").write_text("{}")
    monkeypatch.chdir(run / "checkpoints")
    assert main(["infer", "-p", "Hi", "-m", "step-0000002"]) == 2
    err = capsys.readouterr().err
    assert f"a training checkpoint of a finished run: load the run folder {run.resolve()}," in err


@pytest.mark.parametrize("where", ["okto.package.sources", "okto.package.format"])
def test_a_model_this_user_may_not_read_is_one_line(okm_files, capsys, monkeypatch, where):
    """A package without read permission was a PermissionError traceback."""

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(f"{where}.open", denied, raising=False)
    assert main(["infer", "-m", str(okm_files["gpt2"]), "-p", "Hi"]) == 2
    err = capsys.readouterr().err
    assert f"{okm_files['gpt2']}: cannot be read (permission denied)" in err.lower()


def test_export_to_another_tools_format_is_refused(okm_files, capsys, tmp_path):
    """--out model.onnx wrote a Hugging Face folder named model.onnx and said so in passing."""
    for name, words in (("m.onnx", "does not write ONNX files"), ("m.gguf", "GGUF")):
        out = tmp_path / name
        assert main(["export", "-m", str(okm_files["gpt2"]), "-o", str(out)]) == 2
        assert words in capsys.readouterr().err and not out.exists()
    out = tmp_path / "m.gguf"
    assert main(["export", "-m", str(okm_files["gpt2"]), "-o", str(out), "--format", "hf"]) == 0
    assert (out / "config.json").is_file()
