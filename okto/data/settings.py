"""What a DATASET block asks for, read once from the config with defaults filled in.

The config is read by attribute access with the spec's snake_case names, so the
language front end's pydantic model and a plain namespace both work; a missing
or None field takes the default below.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from okto.data.errors import DataError

FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "txt", "parquet", "sharegpt")
TYPES = ("text", "instruction", "chat", "qa", "generation")
DEFAULT_MAX_LENGTH = 1024
DEFAULT_VOCAB_SIZE = 8192
# 256 byte symbols plus the special tokens of a trained tokenizer.
MIN_VOCAB_SIZE = 300


@dataclass(frozen=True)
class Source:
    """One entry of the training mix: path patterns and their sampling weight."""

    paths: tuple[str, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class DataSettings:
    train: tuple[Source, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    format: str
    type: str | None  # None: decided per file from the detected fields
    text_field: str | None
    input_field: str | None
    output_field: str | None
    context_fields: tuple[str, ...]
    percent: float
    shuffle: bool
    max_length: int
    packing: bool
    tokenizer: str | None
    vocab_size: int

    @classmethod
    def from_config(cls, cfg, max_length: int | None = None) -> DataSettings:
        """Read a DatasetConfig; `max_length` overrides the file's (e.g. the model's context)."""
        train = _paths(_get(cfg, "train"))
        mix = tuple(_mix_entry(entry) for entry in _get(cfg, "mix_datasets") or ())
        sources = ((Source(train),) if train else ()) + mix
        if not sources:
            raise DataError("DATASET has no training data: set `train` or `mix_datasets`")
        kind = _get(cfg, "type")
        settings = cls(
            train=sources,
            validation=_paths(_get(cfg, "validation")),
            test=_paths(_get(cfg, "test")),
            format=str(_get(cfg, "format") or "auto").lower(),
            type=None if kind in (None, "auto") else str(kind).lower(),
            text_field=_get(cfg, "text_field"),
            input_field=_get(cfg, "input_field"),
            output_field=_get(cfg, "output_field"),
            context_fields=tuple(_get(cfg, "context_fields") or ()),
            percent=_percent(_get(cfg, "dataset_percent")),
            shuffle=_flag(_get(cfg, "shuffle"), default=True),
            max_length=int(max_length or _get(cfg, "max_length") or DEFAULT_MAX_LENGTH),
            packing=_flag(_get(cfg, "packing"), default=True),
            tokenizer=_get(cfg, "tokenizer"),
            vocab_size=int(_get(cfg, "vocab_size") or DEFAULT_VOCAB_SIZE),
        )
        settings._check()
        return settings

    def _check(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"DATASET format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.type is not None and self.type not in TYPES:
            raise DataError(f"DATASET type {self.type!r} is not one of {', '.join(TYPES)}")
        if self.max_length < 2:
            raise DataError(f"DATASET max_length must be at least 2, not {self.max_length}")
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise DataError(
                f"DATASET vocab_size must be at least {MIN_VOCAB_SIZE} "
                f"(256 byte symbols plus special tokens), not {self.vocab_size}"
            )
        for source in self.train:
            if not source.weight > 0:
                raise DataError(f"mix_datasets weight for {source.paths[0]!r} must be positive")

    def as_key(self) -> dict:
        """Everything that changes the data, for cache keys."""
        return asdict(self)


def _get(cfg, name: str):
    value = getattr(cfg, name, None)
    return value.value if isinstance(value, enum.Enum) else value


def _paths(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def _mix_entry(entry) -> Source:
    """A `{path, weight}` entry, as a pydantic model or a plain dict."""
    if isinstance(entry, dict):
        path, weight = entry.get("path"), entry.get("weight", 1.0)
    else:
        path, weight = getattr(entry, "path", None), getattr(entry, "weight", 1.0)
    if not path:
        raise DataError("every mix_datasets entry needs a `path`")
    return Source(_paths(path), float(1.0 if weight is None else weight))


def _percent(value) -> float:
    """`dataset_percent` as a percentage in (0, 100]: `10`, `10%` and `12.5` all work."""
    if value is None:
        return 100.0
    number = float(getattr(value, "value", value))
    if not 0 < number <= 100:
        raise DataError(f"DATASET dataset_percent must be in (0, 100], not {number:g}")
    return number


def _flag(value, default: bool) -> bool:
    return default if value is None else bool(value)
