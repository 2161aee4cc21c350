"""The .okm package: round trips, casts, run directories, and every kind of damage refused."""

import hashlib
import json
import os
import re
import shutil
import stat
import struct
import zlib

import pytest
import torch

from okto.errors import OktoError, RunError, UsageError
from okto.package import Package, PackageError, export_model, open_checkpoint
from okto.package import format as okm


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hf_to_okm_to_hf_is_bit_exact(kind, hf_dirs, okm_files, tmp_path):
    back = export_model(okm_files[kind], tmp_path / "back", format="hf")
    assert files_of(back) == files_of(hf_dirs[kind])


def test_manifest_describes_the_model(okm_files):
    manifest = Package(okm_files["llama"]).manifest
    assert manifest["format_version"] == okm.FORMAT_VERSION
    assert manifest["architecture"] == "llama"
    assert manifest["dtype"] == "float32"
    assert manifest["parameters"] == sum(
        t.numel() for t in Package(okm_files["llama"]).tensors().values()
    )
    names = [m["name"] for m in manifest["members"]]
    assert names[:2] == ["config.json", "model.safetensors"]
    assert "tokenizer/tokenizer.json" in names
    assert all(m["offset"] % okm.ALIGN == 0 for m in manifest["members"])


def test_weights_are_read_in_place(okm_files):
    """The tensors point into the mapped file: nothing is unpacked or copied on load."""
    package = Package(okm_files["gpt2"])
    start = torch.frombuffer(package._map, dtype=torch.uint8, count=1).data_ptr()
    end = start + okm_files["gpt2"].stat().st_size
    for tensor in package.tensors().values():
        assert start <= tensor.data_ptr() < end


def test_cast_to_fp16(hf_dirs, tmp_path):
    out = export_model(hf_dirs["gpt2"], tmp_path / "half.okm", dtype="fp16")
    package = Package(out)
    assert package.manifest["dtype"] == "float16"
    assert json.loads(bytes(package.member("config.json")))["dtype"] == "float16"
    original = open_checkpoint(hf_dirs["gpt2"]).tensors()
    for name, tensor in package.tensors().items():
        assert torch.equal(tensor, original[name].half())
    # and back to a Hugging Face directory that transformers loads
    from transformers import AutoModelForCausalLM

    back = export_model(out, tmp_path / "half_hf")
    assert AutoModelForCausalLM.from_pretrained(back).dtype == torch.float16


@pytest.fixture
def beyond_fp16(hf_dirs, tmp_path):
    """The tiny GPT-2 with one weight (a bias) of 1e5, past fp16's 65504."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "big"
    shutil.copytree(hf_dirs["gpt2"], folder)
    weights = load_file(folder / "model.safetensors")
    weights["transformer.h.0.mlp.c_fc.bias"][3] = 1e5
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


BEYOND_FP16 = (
    "tensor 'transformer.h.0.mlp.c_fc.bias' holds values up to 1e+05, beyond the range of float16"
)


def test_a_cast_that_would_overflow_is_refused(beyond_fp16, tmp_path, capsys):
    """A weight beyond fp16's range (65504) became infinite in an fp16 export without a word,
    and the package generated NaNs; the export is refused, the old file left as it was."""
    from okto.cli import main

    folder = beyond_fp16
    out = tmp_path / "half.okm"
    out.write_bytes(b"the old file")
    assert main(["export", "-m", str(folder), "-o", str(out), "--dtype", "fp16"]) == 2
    assert BEYOND_FP16 in capsys.readouterr().err
    assert out.read_bytes() == b"the old file"
    folder_out = tmp_path / "new" / "hf"  # a Hugging Face export left this folder, empty
    assert main(["export", "-m", str(folder), "-o", str(folder_out), "--dtype", "fp16"]) == 2
    assert not (tmp_path / "new").exists()
    assert Package(export_model(folder, out, dtype="bf16")).manifest["dtype"] == "bfloat16"


def test_loading_in_a_dtype_that_would_overflow_is_refused(beyond_fp16, capsys):
    """load_model(dtype="fp16") (and okto infer --dtype fp16) turned the weight into inf without
    a word and generated from NaNs; it is refused as the export is, and bf16 loads."""
    from okto.cli import main
    from okto.inference import load_model

    with pytest.raises(UsageError, match=re.escape(BEYOND_FP16) + ".*load it in bf16 or fp32"):
        load_model(beyond_fp16, device="cpu", dtype="fp16")
    argv = ["infer", "-m", str(beyond_fp16), "-p", "Hi", "--max-tokens", "1", "--dtype", "fp16"]
    assert main(argv) == 2
    assert BEYOND_FP16 in capsys.readouterr().err
    model = load_model(beyond_fp16, device="cpu", dtype="bf16")
    (g,) = model.generate("Hello", max_tokens=2, temperature=0)
    assert g.error is None


def test_run_directory_carries_its_training_config(hf_dirs, tmp_path):
    run = tmp_path / "runs" / "demo"
    final = run / "final"
    final.mkdir(parents=True)
    for name, data in files_of(hf_dirs["gpt2"]).items():
        (final / name).write_bytes(data)
    inference = {"params": {"temperature": 0}, "max_tokens": 3, "batch_size": 1, "backend": "auto"}
    training = {"project": "demo", "inference": inference}
    (final / "okto_config.json").write_text(json.dumps(training))
    package = Package(export_model(run, tmp_path / "demo.okm"))
    assert package.manifest["training_config"] == training
    # how to generate travels with the model; how to run (batch size, backend) does not
    assert package.manifest["generation"] == {"temperature": 0.0, "max_tokens": 3}
    back = export_model(package.path, tmp_path / "demo_hf", format="hf")
    assert json.loads((back / "okto_config.json").read_text()) == training


def test_not_a_model(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        open_checkpoint(tmp_path / "missing.okm")
    with pytest.raises(UsageError, match="not a model"):
        open_checkpoint(tmp_path)


def test_write_is_atomic(okm_files, tmp_path):
    with pytest.raises(OktoError, match=r"writing .*x\.okm failed .*nope"):
        okm.write_package(tmp_path / "x.okm", [("config.json", "config", tmp_path / "nope")], {})
    assert list(tmp_path.iterdir()) == []


def test_interrupted_hf_export_leaves_the_old_files_whole(hf_dirs, tmp_path, monkeypatch):
    """A Hugging Face export into a folder that holds a model replaces each file whole:
    a failure mid-write leaves every earlier file as it was and no temporary files."""
    out = export_model(hf_dirs["gpt2"], tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(out_file, data, digest=None):
        out_file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(okm, "_stream", fail)
    with pytest.raises(OktoError, match="disk full"):
        export_model(hf_dirs["llama"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_model_says_which_argument_is_not_a_path(okm_files, tmp_path):
    """okto.export_model(model, 5) and export_model(123, ...) were os.fspath's bare TypeErrors;
    dtype=["fp16"] a TypeError of an unhashable list."""
    with pytest.raises(UsageError, match="export_model: source is a path, not int"):
        export_model(123, tmp_path / "x.okm")
    with pytest.raises(UsageError, match="export_model: out is a path, not NoneType"):
        export_model(okm_files["gpt2"], None)
    with pytest.raises(UsageError, match="unknown dtype"):
        export_model(okm_files["gpt2"], tmp_path / "x.okm", dtype=["fp16"])
    assert list(tmp_path.iterdir()) == []


def _bin_folder(hf_dir, folder, state: dict):
    """`hf_dir` with its weights as a `pytorch_model.bin` of `state` (torch.save keeps tensors
    that share memory shared, as a model's state_dict has its tied head)."""
    shutil.copytree(hf_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("dtype", [None, "fp16"])
def test_tied_weights_from_a_bin_are_stored_once_and_restored_tied(dtype, hf_dirs, tmp_path):
    """GPT-2's lm_head.weight shares wte's memory in a torch.save'd state_dict: the export
    ended in safetensors' 'Some tensors share memory' traceback, and cast to fp16 it stored
    the head twice."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dirs["gpt2"])
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    folder = _bin_folder(hf_dirs["gpt2"], tmp_path / "bin", state)
    package = Package(export_model(folder, tmp_path / "tied.okm", dtype=dtype))
    assert "lm_head.weight" not in package.tensor_index
    assert package.manifest["parameters"] == model.num_parameters()
    back = AutoModelForCausalLM.from_pretrained(export_model(package.path, tmp_path / "back"))
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()
    stored = torch.float16 if dtype else torch.float32
    assert torch.equal(back.transformer.wte.weight, model.transformer.wte.weight.to(stored))


def test_shared_tensors_of_an_untied_model_are_stored_each(hf_dirs, tmp_path):
    """A Llama (tie_word_embeddings false) whose head shares the embeddings' memory in its
    .bin: both are stored, so each name loads its values."""
    state = dict(open_checkpoint(hf_dirs["llama"]).tensors())
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    folder = _bin_folder(hf_dirs["llama"], tmp_path / "bin", state)
    tensors = Package(export_model(folder, tmp_path / "shared.okm")).tensors()
    assert torch.equal(tensors["lm_head.weight"], state["model.embed_tokens.weight"])
    assert torch.equal(tensors["model.embed_tokens.weight"], state["model.embed_tokens.weight"])


def test_written_package_has_the_users_file_mode(tmp_path):
    """Not the private 0600 of the temporary file it was written as: the umask decides."""
    mask = os.umask(0o027)
    try:
        path = okm.write_package(tmp_path / "x.okm", [("a", "config", b"{}")], {})
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --- damage -------------------------------------------------------------------------------


def rewrite(path, mutate_manifest=None, header=None):
    """Re-seal a package after editing it the way a careful tamperer would (checksums fixed)."""
    data = bytearray(path.read_bytes())
    _, version, size, _, m_off, m_len, _ = okm._HEADER.unpack_from(data)
    manifest = json.loads(data[m_off : m_off + m_len])
    if mutate_manifest:
        mutate_manifest(manifest)
    blob = json.dumps(manifest).encode()
    data = data[:m_off] + blob
    fields = {"version": version, "length": len(data)}
    fields.update(header or {})
    head = okm._HEADER.pack(
        okm.MAGIC,
        fields["version"],
        size,
        fields["length"],
        m_off,
        len(blob),
        hashlib.sha256(blob).digest(),
    ).ljust(okm._CRC_AT, b"\0")
    data[: okm.HEADER_SIZE] = head + struct.pack("<I", zlib.crc32(head))
    path.write_bytes(bytes(data))


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def member(path, name):
    return Package(path).members[name]


def truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def drop_weights(p):
    def mutate(m):
        m["members"] = [x for x in m["members"] if x["name"] != "model.safetensors"]

    rewrite(p, mutate)


def shape_mismatch(p):
    def mutate(m):
        name = sorted(m["tensors"])[0]
        m["tensors"][name]["shape"] = [7, *m["tensors"][name]["shape"]]

    rewrite(p, mutate)


def extra_tensor(p):
    def mutate(m):
        m["tensors"]["ghost.weight"] = {"dtype": "F32", "shape": [1], "offsets": [0, 4]}

    rewrite(p, mutate)


def bad_bounds(p):
    def mutate(m):
        m["members"][0]["offset"] = 10**9

    rewrite(p, mutate)


def bad_checksum_in_manifest(p):
    def mutate(m):
        m["members"][-1]["sha256"] = "0" * 64

    rewrite(p, mutate)


def escaping_name(p):
    """A tokenizer member named to be written outside the folder its files go to (its bytes and
    their checksum unchanged): loading the package wrote it wherever the name pointed."""

    def mutate(m):
        entry = next(x for x in m["members"] if x["name"] == "tokenizer/tokenizer.json")
        entry["name"] = "tokenizer/../../escaped.json"

    rewrite(p, mutate)


DAMAGE = {
    "truncated": (truncate, "truncated"),
    "header cut": (lambda p: p.write_bytes(p.read_bytes()[:40]), "fewer than its 128-byte header"),
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "wrong magic": (lambda p: flip(p, 1), "wrong magic"),
    "not a package": (lambda p: p.write_bytes(b"{}" * 100), "wrong magic"),
    "future version": (lambda p: rewrite(p, header={"version": 2}), "newer than this okto"),
    "header byte": (lambda p: flip(p, 20), "header is corrupt"),
    "trailing bytes": (lambda p: p.write_bytes(p.read_bytes() + b"x"), "unexpected bytes"),
    "manifest byte": (lambda p: flip(p, p.stat().st_size - 10), "manifest is corrupt"),
    "weights byte": (
        lambda p: flip(
            p, member(p, "model.safetensors").offset + member(p, "model.safetensors").length - 3
        ),
        "the weights failed the SHA-256 check",
    ),
    "weights header byte": (
        lambda p: flip(p, member(p, "model.safetensors").offset + 20),
        "the weights failed the SHA-256 check",
    ),
    "tokenizer byte": (
        lambda p: flip(p, member(p, "tokenizer/tokenizer.json").offset + 5),
        "member 'tokenizer/tokenizer.json' failed the SHA-256 check",
    ),
    "checksum edited": (bad_checksum_in_manifest, "failed the SHA-256 check"),
    "missing member": (drop_weights, "no 'model.safetensors' member"),
    "member out of bounds": (bad_bounds, "outside its place"),
    "member name escapes": (escaping_name, "unsafe or invalid name: 'tokenizer/../../escaped"),
    "tensor index shape": (shape_mismatch, "tensor index describes tensor"),
    "tensor index extra": (extra_tensor, "lists tensor 'ghost.weight'"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_package_is_refused(damage, okm_files, tmp_path):
    path = tmp_path / "damaged.okm"
    path.write_bytes(okm_files["gpt2"].read_bytes())
    spoil, message = DAMAGE[damage]
    spoil(path)
    with pytest.raises(PackageError) as error:
        Package(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_hub_name_from_the_local_cache(hf_dirs, tmp_path, monkeypatch):
    """A hub name resolves to the local Hugging Face cache, never to a download."""
    import huggingface_hub.constants

    snapshot = tmp_path / "models--okto--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name, data in files_of(hf_dirs["gpt2"]).items():
        (snapshot / name).write_bytes(data)
    (tmp_path / "models--okto--tiny" / "refs").mkdir()
    (tmp_path / "models--okto--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert open_checkpoint("okto/tiny").path == snapshot
    with pytest.raises(UsageError, match="local Hugging Face cache"):
        open_checkpoint("okto/absent")


def test_a_runs_inference_fields_override_the_base_generation_config_and_no_more(hf_dirs, tmp_path):
    """okto_config.json keeps the INFERENCE fields the file set, an explicit value equal to
    okto's default included (temperature 0.8), and none of okto's defaults: the base model's
    generation_config keeps the rest (its top_p 0.7; okto's default 0.95 used to win)."""
    from okto.language import parse

    final = tmp_path / "runs" / "ft" / "final"
    final.mkdir(parents=True)
    for name, data in files_of(hf_dirs["llama"]).items():
        (final / name).write_bytes(data)
    sampling = {"do_sample": True, "temperature": 0.3, "top_p": 0.7, "max_new_tokens": 9}
    (final / "generation_config.json").write_text(json.dumps(sampling))
    program = parse('MODEL { base: "x" }\nINFERENCE { max_tokens: 7 temperature: 0.8 }')
    (final / "okto_config.json").write_text(json.dumps(program.to_dict()))
    expected = {"temperature": 0.8, "top_p": 0.7, "max_tokens": 7}
    assert open_checkpoint(final.parent).generation_defaults == expected
    package = Package(export_model(final.parent, tmp_path / "ft.okm"))
    assert package.manifest["generation"] == expected


def test_hf_export_over_another_model_leaves_none_of_its_files(hf_dirs, tmp_path):
    """Exporting into a folder that holds another model removes that model's files the export
    does not write (its chat template, run config, shards), which would load with the new one;
    files that are no model's, and anything outside the folder, stay."""
    out = tmp_path / "hf"
    old = {
        "chat_template.jinja": "{{ messages }}",
        "okto_config.json": json.dumps({"inference": {"format": "Q: {input}"}}),
        "model-00001-of-00002.safetensors": "",
        "model.safetensors.index.json": json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "../outside"}}
        ),
        "README.md": "notes",
    }
    out.mkdir()
    for name, text in old.items():
        (out / name).write_text(text)
    (tmp_path / "outside").write_text("keep")
    export_model(hf_dirs["llama"], out, format="hf")
    assert files_of(out) == {**files_of(hf_dirs["llama"]), "README.md": b"notes"}
    assert (tmp_path / "outside").read_text() == "keep"
    assert open_checkpoint(out).generation_defaults == {}


def test_hf_export_that_fails_at_the_weights_leaves_the_folder_as_it_was(
    hf_dirs, tmp_path, monkeypatch
):
    """A full disk at the weights (the last and largest file) left the new model's config and
    tokenizer beside the old weights, a folder that loads as neither model: every file is now
    written to a temporary name before any is renamed."""
    out = export_model(hf_dirs["gpt2"], tmp_path / "hf")
    before = files_of(out)
    stream = okm._stream

    def full_at_the_weights(out_file, data, digest=None):
        if isinstance(data, os.PathLike):  # the weights, copied from the source folder
            raise OSError(28, "No space left on device")
        return stream(out_file, data, digest)

    monkeypatch.setattr(okm, "_stream", full_at_the_weights)
    with pytest.raises(OktoError, match="No space left on device"):
        export_model(hf_dirs["llama"], out)
    assert files_of(out) == before


def test_generation_config_stop_strings_are_the_models_stops(hf_dirs, tmp_path):
    """stop_strings, which Hugging Face generate honours, were dropped without a word."""
    folder = shutil.copytree(hf_dirs["gpt2"], tmp_path / "m")
    for stop, expected in (("\n\n", ["\n\n"]), (["###", "User:"], ["###", "User:"])):
        (folder / "generation_config.json").write_text(json.dumps({"stop_strings": stop}))
        assert open_checkpoint(folder).generation_defaults == {"stop": expected}
        package = Package(export_model(folder, tmp_path / "m.okm"))
        assert package.manifest["generation"] == {"stop": expected}


def phobert_tokenizer(folder):
    """A tokenizer whose files are not the usual ones: PhobertTokenizer keeps its merges in
    `bpe.codes` (as XGLM keeps its vocabulary in `sentencepiece.bpe.model`)."""
    from transformers import PhobertTokenizer

    pieces = ["h@@", "e@@", "l@@", "lo", "hello", "w@@", "o@@", "r@@", "ld", "world", "o"]
    (folder / "vocab.txt").write_text("".join(f"{piece} 1\n" for piece in pieces))
    merges = ["h e", "he l", "hel lo", "w o", "wo r", "wor ld"]
    (folder / "bpe.codes").write_text("#version: 0.2\n" + "".join(f"{m} 1\n" for m in merges))
    tokenizer = PhobertTokenizer(str(folder / "vocab.txt"), str(folder / "bpe.codes"))
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tokenizer


def test_a_tokenizer_member_in_a_subfolder_is_no_traceback(okm_files, tmp_path):
    """Member names may hold folders ('tokenizer/sub/tokenizer.json'); writing the tokenizer's
    files out for loading was a FileNotFoundError traceback, as the subfolder was not made."""
    path = tmp_path / "nested.okm"
    path.write_bytes(okm_files["gpt2"].read_bytes())

    def mutate(m):
        entry = next(x for x in m["members"] if x["name"] == "tokenizer/tokenizer.json")
        entry["name"] = "tokenizer/sub/tokenizer.json"

    rewrite(path, mutate)
    with pytest.raises(RunError, match="its tokenizer cannot be loaded"):
        open_checkpoint(path).tokenizer()


def test_a_package_holds_every_file_the_tokenizer_saves(hf_dirs, tmp_path):
    """Packages took the tokenizer from a fixed list of file names, so a tokenizer with files of
    its own (bpe.codes here; sentencepiece.bpe.model, *.model elsewhere) lost them: the .okm
    held a tokenizer that could not load. Now it holds what the tokenizer's save_pretrained
    writes, and loads through okto's loading code as the folder's tokenizer does."""
    from transformers import AutoTokenizer

    from okto.inference import load_model

    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((hf_dirs["gpt2"] / name).read_bytes())
    sources = tmp_path / "sources"
    sources.mkdir()
    phobert_tokenizer(sources).save_pretrained(folder)
    package = export_model(folder, tmp_path / "m.okm")
    members = set(Package(package).names("tokenizer"))
    assert {
        "tokenizer/bpe.codes",
        "tokenizer/vocab.txt",
        "tokenizer/chat_template.jinja",
    } <= members
    model = load_model(package, device="cpu")
    assert type(model.tokenizer).__name__ == "PhobertTokenizer"
    text = "hello world"
    assert model.encode(text) == AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    assert model.tokenizer.chat_template is not None
    (generated,) = model.generate(text, max_tokens=2, temperature=0)
    assert generated.generated_tokens == 2
    back = export_model(package, tmp_path / "back", format="hf")
    assert files_of(back) == files_of(folder)  # byte for byte, the folder's own files


def test_a_folder_without_a_tokenizer_is_said_to_have_none(hf_dirs, tmp_path, capsys):
    """transformers 5 makes a one-token GPT-2 tokenizer from a config alone; that is no
    tokenizer, and okto infer says the model has none rather than generate with it."""
    from okto.cli import main

    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((hf_dirs["gpt2"] / name).read_bytes())
    assert open_checkpoint(folder).tokenizer_files == {}
    assert main(["infer", "-m", str(folder), "-p", "Hi"]) == 2
    assert "the model has no tokenizer files" in capsys.readouterr().err


def test_a_package_whose_config_is_not_an_object_is_refused(okm_files, tmp_path):
    """Checksums cannot vouch for what another tool sealed: config.json must be an object."""
    source = Package(okm_files["gpt2"])
    members = [
        (m.name, m.role, b"[1, 2]" if m.name == okm.CONFIG else bytes(source.member(m.name)))
        for m in source.members.values()
    ]
    manifest = {
        k: v for k, v in source.manifest.items() if k not in ("format", "format_version", "members")
    }
    path = okm.write_package(tmp_path / "list-config.okm", members, manifest)
    with pytest.raises(OktoError, match=r"config\.json: holds a JSON list, not an object"):
        open_checkpoint(path)
