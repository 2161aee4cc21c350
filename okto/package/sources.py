"""Where a model comes from (an `.okm`, a Hugging Face directory, a training run) and where it goes.

`open_checkpoint` reads any of the three into one `Checkpoint`, so that
inference and export handle them alike; `export_okm` and `export_hf` write
one out. Files that need no change are copied byte for byte, which is what
makes Hugging Face -> `.okm` -> Hugging Face bit-exact.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from okto import __version__
from okto.errors import RunError, UsageError
from okto.inference.settings import (
    from_block,
    from_generation_config,
    model_defaults,
)
from okto.package.format import (
    CONFIG,
    MAGIC,
    WEIGHTS,
    Package,
    make_folder,
    write_file,
    write_files,
    write_package,
)
from okto.package.hf_config import transformers_config
from okto.package.weights import (
    FLOAT_CODES,
    WeightsError,
    dtype_summary,
    read_index,
    serialize,
    torch_dtype,
)

# Names tokenizers commonly save under. What a package holds is what the tokenizer's own
# save_pretrained writes (`tokenizer_files`); these only tell a folder whose tokenizer fails to
# load from one with none, and which files an export over another model removes.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
GENERATION_CONFIG = "generation_config.json"
TRAINING_CONFIG = "okto_config.json"
_TOKENIZER_PREFIX = "tokenizer/"


@dataclass
class Checkpoint:
    """A model's parts: config, weights, tokenizer files, and what produced it."""

    path: Path
    config: dict
    generation_config: bytes | None = None
    training_config: dict | None = None
    package: Package | None = None
    weight_files: list[Path] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return self.config.get("model_type", "unknown")

    @cached_property
    def tokenizer_files(self) -> dict[str, bytes]:
        """The tokenizer's files by name: a package's tokenizer members, or for a folder every
        file its tokenizer's save_pretrained writes (read on first use: `okto plan` needs
        only the config)."""
        if self.package is None:
            return _folder_tokenizer_files(self.path)
        return {
            name.removeprefix(_TOKENIZER_PREFIX): bytes(self.package.member(name))
            for name in self.package.names("tokenizer")
        }

    def tokenizer(self):
        """The transformers tokenizer (a package's from its files in a temporary folder), or a
        UsageError when the model has none."""
        if self.package is None:
            tokenizer = load_tokenizer(self.path)
        else:
            with tempfile.TemporaryDirectory(prefix="okto-tokenizer-") as folder:
                for name, data in self.tokenizer_files.items():
                    file = Path(folder) / name  # a name may hold folders: tokenizer/a/b.json
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_bytes(data)
                # AutoTokenizer reads the model config when tokenizer_config.json names no class
                (Path(folder) / CONFIG).write_text(json.dumps(self.config))
                tokenizer = load_tokenizer(Path(folder), self.path)
        if tokenizer is None:
            raise UsageError(f"{self.path}: the model has no tokenizer files")
        return tokenizer

    @property
    def generation_defaults(self) -> dict:
        """Generation settings the model carries: its generation_config, then the fields its
        training's INFERENCE block set."""
        if self.package is not None:
            return model_defaults(self.package.manifest.get("generation") or {})
        out = {}
        if self.generation_config:
            out.update(from_generation_config(json.loads(self.generation_config)))
        training = self.training_config or {}
        out.update(from_block(training.get("inference") or training.get("INFERENCE")))
        return model_defaults(out)

    def tensors(self) -> dict:
        """The weights as torch tensors (in place for `.okm`, never through pickle there)."""
        if self.package is not None:
            return self.package.tensors()
        return _load_hf_weights(self.weight_files)

    def single_weights_file(self) -> Path | memoryview | None:
        """The weights as one safetensors blob, when they already are one (copied verbatim)."""
        if self.package is not None:
            return self.package.member(WEIGHTS)
        files = self.weight_files
        if len(files) == 1 and files[0].suffix == ".safetensors":
            return files[0]
        return None


def open_checkpoint(path: Path | str) -> Checkpoint:
    """Read a model from an `.okm` file, a Hugging Face directory, or a run directory; a file
    this user may not read is a UsageError naming it (it was a PermissionError traceback)."""
    path = Path(path)
    try:
        return _open(path)
    except PermissionError as e:
        raise UsageError(f"{e.filename or path}: cannot be read (permission denied)") from None


def _open(path: Path) -> Checkpoint:
    if not path.exists():
        path = _hub_cache(str(path))
    if path.is_file():
        here = f" (here: {path.parent})" if (path.parent / CONFIG).is_file() else ""
        if _is_safetensors(path):
            raise UsageError(
                f"{path}: a safetensors file of weights alone (no config, no tokenizer), which "
                f"cannot be loaded by itself; load the run folder, Hugging Face folder or .okm "
                f"it came from{here}"
            )
        if path.suffix != ".okm" and not _has_magic(path):
            # some other file (a .txt, an .okt, a tokenizer.json): a wrong argument, not a
            # damaged package; a file named .okm without the magic is damaged (exit code 3)
            hint = f"; load the Hugging Face folder it is in{here}" if here else ""
            if path.suffix == ".okt":
                hint = "; an .okt file describes a job: pass it with -f, or load the run it trains"
            raise UsageError(f"{path}: {NOT_A_MODEL}{hint}")
        return _from_package(Package(path))
    if (path / "config.json").is_file():
        return _from_hf_dir(path)
    final = path / "final"
    if (final / "config.json").is_file():
        return _from_hf_dir(final)
    raise UsageError(f"{path}: {NOT_A_MODEL}{_what_it_holds(path)}")


NOT_A_MODEL = (
    "not a model: expected an .okm file, a Hugging Face directory (with config.json), "
    "or a run directory (with final/config.json)"
)


def _what_it_holds(folder: Path) -> str:
    """What a folder of a training run that is not a model holds, and what to load instead."""
    if (folder / "adapter_config.json").is_file():
        return (
            "; it holds a LoRA adapter alone (adapter_config.json): load the run folder it was "
            "trained in, whose final/ holds the model with the adapter merged"
        )
    if (folder / "trainer.json").is_file():
        parents = folder.resolve().parents[:2]
        run = next((p for p in parents if (p / "final" / CONFIG).is_file()), None)
        if run is not None:  # runs/<project>/checkpoints/step-N of a run that has finished
            return (
                f"; it is a training checkpoint of a finished run: load the run folder {run}, "
                "whose final/ holds the model"
            )
        return (
            "; it is a training checkpoint: `okto train -f FILE.okt --resume auto` finishes "
            "the run, whose folder then holds the model in final/"
        )
    if (folder / "checkpoints").is_dir():
        return (
            "; it is a run folder with checkpoints but no final/ model (training has not "
            "finished): `okto train -f FILE.okt --resume auto` finishes it"
        )
    return ""


def _has_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _is_safetensors(path: Path) -> bool:
    """Whether a file starts as safetensors does: an 8-byte header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:] == b"{" and 8 + size <= path.stat().st_size


def _hub_cache(name: str) -> Path:
    """A hub name ("org/model") already in the local Hugging Face cache; okto downloads nothing."""
    found = cached_hub_model(name)
    if found is None:
        raise UsageError(
            f"{name}: no such file or directory (nor a model in the local Hugging Face cache)"
        )
    return found


def cached_hub_model(name: str) -> Path | None:
    """The local snapshot of hub model `name`, or None when `name` is not one in the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError):
        return None


def _from_package(package: Package) -> Checkpoint:
    generation = package.names("generation_config")
    return Checkpoint(
        path=package.path,
        config=_json_value(bytes(package.member(CONFIG)), f"{package.path}:{CONFIG}"),
        generation_config=bytes(package.member(generation[0])) if generation else None,
        training_config=package.manifest.get("training_config"),
        package=package,
    )


def _from_hf_dir(path: Path) -> Checkpoint:
    training = None
    for where in (path / TRAINING_CONFIG, path.parent / TRAINING_CONFIG):
        if where.is_file():
            training = _json_object(where)
            break
    generation = path / GENERATION_CONFIG
    if generation.is_file():
        _json_object(generation)
    return Checkpoint(
        path=path,
        config=_json_object(path / CONFIG),
        generation_config=generation.read_bytes() if generation.is_file() else None,
        training_config=training,
        weight_files=_hf_weight_files(path),
    )


def load_tokenizer(folder: Path, model: Path | None = None):
    """The tokenizer in `folder` (transformers' AutoTokenizer), or None when it holds none:
    for some model types transformers 5 makes an empty tokenizer from the config alone, so one
    counts only when a file it reads is in the folder. A tokenizer that does not load is a
    RunError naming `model` (default: the folder)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # the tokenizers library raises bare Exceptions for bad files
        names = [p.name for p in folder.iterdir()]
        if not any(n in TOKENIZER_FILES or n.endswith(".model") for n in names):
            return None
        detail = next((line for line in str(e).splitlines() if line.strip()), "")
        raise RunError(
            f"{model or folder}: its tokenizer cannot be loaded ({type(e).__name__}: "
            f"{detail.strip()})"
        ) from None
    reads = {"tokenizer_config.json", *type(tokenizer).vocab_files_names.values()}
    return tokenizer if any((folder / name).is_file() for name in reads) else None


def _folder_tokenizer_files(folder: Path) -> dict[str, bytes]:
    """Every file the folder's tokenizer writes with save_pretrained, whatever their names
    (sentencepiece.bpe.model, bpe.codes, chat_template.jinja, ...): the folder's own bytes
    where it has the file, so a copy is byte for byte, else the written ones (a tokenizer.json
    transformers converted from a sentencepiece model). {} when the folder has no tokenizer."""
    tokenizer = load_tokenizer(folder)
    if tokenizer is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="okto-tokenizer-") as saved:
        tokenizer.save_pretrained(saved)
        written = {p.name: p.read_bytes() for p in Path(saved).iterdir() if p.is_file()}
    return {
        name: (folder / name).read_bytes() if (folder / name).is_file() else data
        for name, data in written.items()
    }


def _json_object(path: Path) -> dict:
    """A model folder's JSON file (config, generation or run config); one that is damaged is
    a RunError naming it, as damaged weights are."""
    return _json_value(path.read_bytes(), path)


def _json_value(data: bytes, where) -> dict:
    """`data` parsed as a JSON object, or a RunError naming `where` (a file or package member)."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{where}: not valid JSON ({e}); the file is damaged") from None
    if not isinstance(value, dict):
        raise RunError(f"{where}: holds a JSON {type(value).__name__}, not an object")
    return value


# A Hugging Face folder's weights, in the order transformers looks for them.
_HF_WEIGHTS = (
    WEIGHTS,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _hf_weight_files(path: Path) -> list[Path]:
    """The folder's weight files: one, or the shards its index names."""
    for name in _HF_WEIGHTS:
        if (path / name).is_file():
            return _shards(path / name) if name.endswith(".index.json") else [path / name]
    raise UsageError(
        f"{path}: no weights (model.safetensors or pytorch_model.bin, or their shards)"
    )


def _shards(index: Path) -> list[Path]:
    """The shards a weight index names; an index that cannot be read, or that names a shard
    the folder lacks, is a damaged model (RunError), not a missing one."""
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise RunError(f"{index}: not a readable shard index") from None
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise RunError(
            f"{index.parent}: {index.name} names {len(shards)} weight shards, but {missing[0]} is "
            f"not in the folder ({len(missing)} missing); copy the model again"
        )
    return [index.parent / s for s in shards]


def _load_hf_weights(files: list[Path]) -> dict:
    """Every tensor of the files; one that cannot be read (cut short, damaged) is a RunError
    naming it."""
    import pickle

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                tensors.update(load_file(f))
            else:  # weights_only: the restricted unpickler, which runs no code from the file
                tensors.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        except (OSError, RuntimeError, EOFError, SafetensorError, pickle.UnpicklingError) as e:
            detail = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise RunError(
                f"{f}: the weights cannot be read ({detail.strip()}); the file is damaged or "
                "incomplete"
            ) from None
    return tensors


def _index_of(blob: Path | memoryview) -> dict[str, dict]:
    """The checked tensor index of a safetensors blob, reading only its header from a file."""
    if isinstance(blob, memoryview):
        return read_index(blob)[1]
    with open(blob, "rb") as f:
        head = f.read(8)
        head += f.read(int.from_bytes(head, "little"))
    try:
        return read_index(head, blob.stat().st_size)[1]
    except WeightsError as e:
        raise RunError(f"{blob}: not a valid safetensors file ({e})") from None


def _dtype_name(dtype: str) -> str:
    return str(torch_dtype(dtype)).removeprefix("torch.")


def _weights_blob(
    checkpoint: Checkpoint, dtype: str | None
) -> tuple[Path | memoryview | bytes, dict]:
    """The weights as a safetensors blob and its index: verbatim when possible, re-serialized to cast."""
    blob = checkpoint.single_weights_file()
    if blob is not None:
        index = _index_of(blob)
        if dtype is None or dtype_summary(index) == _dtype_name(dtype):
            return blob, index
    data = serialize(_stored_once(checkpoint), torch_dtype(dtype) if dtype else None)
    return data, read_index(data)[1]


def _stored_once(checkpoint: Checkpoint) -> dict:
    """The tensors without the copies of tied ones (GPT-2's lm_head.weight beside the wte it
    shares, as a `pytorch_model.bin` can hold it): transformers ties them again on load, so
    they are stored once, as its save_pretrained stores them. Only copies equal to what they
    are tied to are left out, so the loaded model is the same."""
    import torch

    tensors = checkpoint.tensors()
    for copy, source in _tied_names(checkpoint.config).items():
        if copy in tensors and source in tensors and torch.equal(tensors[copy], tensors[source]):
            del tensors[copy]
    return tensors


def _tied_names(values: dict) -> dict[str, str]:
    """{tied tensor: the tensor it is tied to} of the model `values` (a config.json) describes,
    when its config ties them (tie_word_embeddings); {} for a config transformers cannot make."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    values = dict(values)
    try:
        config = transformers_config(values.pop("model_type", None), values, CONFIG)
    except UsageError:
        return {}
    if not getattr(config.get_text_config(), "tie_word_embeddings", False):
        return {}
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    tied = getattr(model_class, "_tied_weights_keys", None)
    return tied if isinstance(tied, dict) else {}


def _config_bytes(checkpoint: Checkpoint, dtype: str | None) -> bytes:
    """config.json: verbatim, or with its dtype field updated when the weights are cast."""
    if dtype is None:
        if checkpoint.package is not None:
            return bytes(checkpoint.package.member(CONFIG))
        return (checkpoint.path / CONFIG).read_bytes()
    config = dict(checkpoint.config)
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = _dtype_name(dtype)
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def export_okm(checkpoint: Checkpoint, out: Path | str, dtype: str | None = None) -> Path:
    """Write `checkpoint` as one `.okm` file (weights cast to `dtype`: fp32, fp16, bf16)."""
    weights, index = _weights_blob(checkpoint, dtype)
    members = [(CONFIG, "config", _config_bytes(checkpoint, dtype)), (WEIGHTS, "weights", weights)]
    members += [
        (_TOKENIZER_PREFIX + name, "tokenizer", data)
        for name, data in sorted(checkpoint.tokenizer_files.items())
    ]
    if checkpoint.generation_config is not None:
        members.append((GENERATION_CONFIG, "generation_config", checkpoint.generation_config))
    manifest = {
        "okto_version": __version__,
        "architecture": checkpoint.architecture,
        "dtype": dtype_summary(index),
        "parameters": sum(math.prod(t["shape"]) for t in index.values()),
        "tensors": index,
        "training_config": checkpoint.training_config,
        "generation": checkpoint.generation_defaults,
    }
    return write_package(out, members, manifest)


def export_hf(checkpoint: Checkpoint, out: Path | str, dtype: str | None = None) -> Path:
    """Write `checkpoint` as a Hugging Face directory (config, model.safetensors, tokenizer)."""
    out = Path(out)
    if out.is_file():
        raise UsageError(f"{out}: is a file; a Hugging Face export writes a directory")
    weights, _ = _weights_blob(checkpoint, dtype)  # a refused cast leaves no empty folder
    make_folder(out)
    files = {CONFIG: _config_bytes(checkpoint, dtype), **checkpoint.tokenizer_files}
    if checkpoint.generation_config is not None:
        files[GENERATION_CONFIG] = checkpoint.generation_config
    if checkpoint.training_config is not None:
        files[TRAINING_CONFIG] = (json.dumps(checkpoint.training_config, indent=2) + "\n").encode()
    files[WEIGHTS] = weights
    stale = _model_files(out) - set(files)
    write_files(out, files)  # all of them, or the folder as it was
    for name in stale:  # another model's, which would load with this one's
        (out / name).unlink(missing_ok=True)
    return out


def _model_files(folder: Path) -> set[str]:
    """The files of a model already in `folder` that okto reads or writes (config, weights,
    shards, tokenizer, generation and training configs); other files are not a model's."""
    names = {CONFIG, GENERATION_CONFIG, TRAINING_CONFIG, *TOKENIZER_FILES, *_HF_WEIGHTS}
    for index in (n for n in _HF_WEIGHTS if n.endswith(".index.json")):
        try:
            names.update(json.loads((folder / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # no index, or one that names no shards
    # a shard name is a file in the folder (an index naming "../x" deletes nothing outside)
    return {n for n in names if isinstance(n, str) and Path(n).name == n and (folder / n).is_file()}


def export_safetensors(checkpoint: Checkpoint, out: Path | str, dtype: str | None = None) -> Path:
    """Write the weights alone as one safetensors file (no config, no tokenizer)."""
    weights, _ = _weights_blob(checkpoint, dtype)
    return write_file(out, weights)


FORMATS = ("okm", "hf", "safetensors")
_FORMAT_BY_SUFFIX = {".okm": "okm", ".safetensors": "safetensors"}
# Other tools' model files: an --out named so asks for a format okto does not write.
_OTHER_FORMATS = {
    ".onnx": "ONNX",
    ".gguf": "GGUF",
    ".ggml": "GGML",
    ".bin": "PyTorch .bin",
    ".pt": "PyTorch",
    ".pth": "PyTorch",
    ".ckpt": "a checkpoint",
    ".h5": "Keras/HDF5",
    ".tflite": "TensorFlow Lite",
    ".pb": "TensorFlow",
    ".mlmodel": "Core ML",
    ".engine": "TensorRT",
}


def export_format(out: Path | str, format: str | None = None) -> str:
    """The format an export to `out` writes: `format` if given, else okm for an `.okm` path,
    safetensors for a `.safetensors` one, hf for anything else; a name ending like another
    tool's model file (model.onnx, model.gguf) is a UsageError, not a folder of that name."""
    suffix = Path(out).suffix.lower()
    if format is None and suffix in _OTHER_FORMATS:
        raise UsageError(
            f"{out}: okto does not write {_OTHER_FORMATS[suffix]} files; it writes "
            f"{', '.join(FORMATS)} (an --out ending in .okm, .safetensors, or a folder); "
            "pass --format hf to write a Hugging Face folder by that name"
        )
    format = format or _FORMAT_BY_SUFFIX.get(suffix, "hf")
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    return format


def export_model(
    source: Path | str, out: Path | str, format: str | None = None, dtype: str | None = None
) -> Path:
    """Export the model at `source` (okm, HF or run directory) to `out`; what EXPORT runs.

    `format` is okm (one file), hf (a Hugging Face directory, weights in
    safetensors) or safetensors (the weights alone, one file); by default okm when
    `out` ends in .okm, safetensors when it ends in .safetensors, else hf.
    `dtype` is fp32, fp16 or bf16 (default: as stored).
    """
    for name, value in (("source", source), ("out", out)):
        if not isinstance(value, str | Path):  # os.fspath's TypeError said neither which nor why
            raise UsageError(f"export_model: {name} is a path, not {type(value).__name__}")
        if not str(value).strip():  # "" would be the current folder: an unset variable
            raise UsageError(f"export_model: {name} is an empty path; name a file or folder")
    format = export_format(out, format)
    if dtype is not None and (not isinstance(dtype, str) or dtype not in FLOAT_CODES):
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(FLOAT_CODES)}")
    checkpoint = open_checkpoint(source)
    if format == "okm":
        return export_okm(checkpoint, out, dtype)
    if format == "safetensors":
        return export_safetensors(checkpoint, out, dtype)
    return export_hf(checkpoint, out, dtype)
