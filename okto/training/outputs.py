"""The run folder and what goes into it.

    runs/<project>/            (OUTPUT.dir replaces `runs`)
      okto_config.json         the resolved configuration, command-line values included
      tokenizer/               the run's tokenizer
      checkpoints/step-*/      resumable checkpoints (TRAIN.checkpoint_path moves them)
      final/                   the final model: a Hugging Face folder with config.json,
                               model.safetensors, the tokenizer and okto_config.json
      adapter/                 a LoRA run's adapter on its own (PEFT layout)
      saved/<label>/           models CONTROL `SAVE model` / `SAVE "label"` asked for
      export/                  EXPORT's outputs (EXPORT.path; relative paths are taken from here)
      metrics.jsonl            metrics as JSON lines (LOGGING.metrics_file moves it)
      train.log                what the terminal showed (LOGGING.training_file moves it)

Relative OUTPUT, checkpoint, metrics and log paths are taken from the working
directory. Models are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from okto.errors import UsageError

CONFIG_FILE = "okto_config.json"


@dataclass(frozen=True)
class RunPaths:
    run: Path
    checkpoints: Path
    final: Path
    adapter: Path
    saved: Path
    export: Path
    metrics: Path
    log: Path | None
    name: str  # file name for exports: MODEL.name or the project's

    @classmethod
    def resolve(cls, config) -> RunPaths:
        run = Path(config.output.dir) / slug(config.project.name)
        export = Path(config.export.path).expanduser()
        log = config.logging.training_file or (run / "train.log")
        return cls(
            run=run,
            checkpoints=Path(config.train.checkpoint_path or run / "checkpoints"),
            final=run / "final",
            adapter=run / "adapter",
            saved=run / "saved",
            export=export if export.is_absolute() else run / export,
            metrics=Path(config.logging.metrics_file or run / "metrics.jsonl"),
            log=Path(log) if config.logging.save_logs else None,
            name=slug(config.model.name or config.project.name),
        )

    def create(self) -> None:
        """Make the folders the run writes to before any work, so that a path that cannot
        be one (a file, a read-only place) is said at once, with the setting that named it."""
        folders = [
            (self.run, "OUTPUT.dir"),
            (self.checkpoints, "TRAIN.checkpoint_path"),
            (self.metrics.parent, "LOGGING.metrics_file"),
        ]
        if self.log is not None:
            folders.append((self.log.parent, "LOGGING.training_file"))
        for folder, setting in folders:
            make_folder(folder, setting)


def products(paths: RunPaths) -> dict[Path, tuple[int, int]]:
    """The models and exports of this run's names there now (final/, adapter/, each of
    saved/, export/<name>.*), each with what tells a rewrite: they are renamed into place, a
    new inode. EXPORT.path may be a folder shared with other projects: only this one's."""
    found = [paths.final, paths.adapter]
    if paths.saved.is_dir():
        found += sorted(p for p in paths.saved.iterdir() if not p.name.startswith(".tmp-"))
    found += [paths.export / f"{paths.name}{suffix}" for suffix in ("", ".okm", ".safetensors")]
    return {path: identity for path in found if (identity := _identity(path)) is not None}


def left_from_earlier(found: dict[Path, tuple[int, int]]) -> list[Path]:
    """Of the `products` a fresh run found at its start, those it has not replaced."""
    return [path for path, identity in found.items() if _identity(path) == identity]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def make_folder(folder: Path, setting: str) -> None:
    """`folder` and its parents, or a UsageError naming `setting` (exit code 2)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"{setting}: cannot make the folder {folder} ({error.strerror or error}); "
            "choose another path"
        ) from None


def slug(name: str) -> str:
    """A name usable as a file name: `My model v2` -> `My-model-v2`. Letters of any script
    stay (`Café` is not `Caf`, and two names in another script do not both become `model`)."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-.") or "model"


def write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


@contextlib.contextmanager
def staged(folder: Path):
    """A folder to write `folder`'s contents into, put in its place only once complete: a
    write cut short (crash, Ctrl-C, full disk) leaves what `folder` held before, and a
    full disk is an OSError."""
    from okto.training.checkpoint import disk_errors

    staging = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with disk_errors(folder.parent):  # a full disk is an OSError, whatever wrote
            yield staging
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_model(model, tokenizer, config: dict, folder: Path, state_dict=None) -> Path:
    """A Hugging Face folder (safetensors weights, tokenizer, okto_config.json), replaced atomically."""
    from okto.data.progress import quiet_transformers

    with staged(folder) as staging:
        with quiet_transformers():  # the run's own output says what was saved
            model.save_pretrained(str(staging), state_dict=state_dict)
            tokenizer.save_pretrained(str(staging))
        write_config(staging, config)
    return folder


def export(final: Path, export_cfg, folder: Path, name: str) -> list[Path]:
    """EXPORT's formats from the final model: okm (one file), hf (a folder), safetensors (weights)."""
    from okto.package import export_model

    make_folder(folder, "EXPORT.path")  # an OSError would read as final/ left unwritten
    dtype = export_cfg.quantization
    written = []
    for fmt in export_cfg.format:
        if fmt == "okm":
            written.append(export_model(final, folder / f"{name}.okm", "okm", dtype))
        elif fmt == "hf":
            written.append(export_model(final, folder / name, "hf", dtype))
        else:
            written.append(export_model(final, folder / f"{name}.safetensors", fmt, dtype))
    return written
