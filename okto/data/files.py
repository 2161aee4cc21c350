"""Finding data files (a path, a directory, a glob), telling their format, hashing them.

Paths are local. Relative ones are taken from `base_dir` (the `.okt` file's
folder). `pkg:NAME/sub/path` names a file shipped inside an installed Python
package, so examples can train on packaged data without knowing where
site-packages lives.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import importlib.resources
import json
import time
from dataclasses import dataclass
from pathlib import Path

from okto.data.errors import JSON_ERRORS, DataError
from okto.data.settings import DataSettings, Source
from okto.training.outputs import CONFIG_FILE as RUN_CONFIG

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
    ".text": "txt",
    ".md": "txt",
    ".parquet": "parquet",
}
PACKAGE_PREFIX = "pkg:"
# Compressed files okto does not read, by their first bytes: (magic, name, command).
COMPRESSED = (
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    *((b"BZh%d" % level, "bzip2", "bunzip2") for level in range(1, 10)),  # not "BZhello"
    (b"PK\x03\x04", "zip", "unzip"),
)
_SNIFF_CHARS = 1 << 16
DATASET_CARD = "readme.md"  # a data folder's, in any case: Hugging Face's dataset card


def resolve_files(pattern: str, base_dir: Path, notes: list[str] | None = None) -> list[Path]:
    """The files a DATASET path names, sorted; an error when there are none. What walking a
    folder skipped that the user may have meant as data goes into `notes`."""
    path = _package_path(pattern) if pattern.startswith(PACKAGE_PREFIX) else Path(pattern)
    path = path.expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if glob.has_magic(str(path)) and not path.exists():  # `data[1].jsonl` may be a name
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"no files match {pattern!r} (looked for {path})")
        return files
    if path.is_dir():
        _refuse_saved_datasets(path)
        found = [p for p in path.rglob("*") if p.is_file()]
        # okto's run folders (their config, tokenizer, metrics and logs) are never data:
        # `train: "."` beside the .okt file would take in runs/ there
        runs = {p.parent for p in found if p.name == RUN_CONFIG}
        candidates = [
            p
            for p in found
            if p.suffix.lower() in EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and not any(folder in p.parents for folder in runs)
        ]
        # A README.md in a data folder is its dataset card, as Hugging Face datasets reads
        # it, not training text; named as a file it is read.
        cards = sorted(p for p in candidates if p.name.lower() == DATASET_CARD)
        files = sorted(p for p in candidates if p.name.lower() != DATASET_CARD)
        if not files:
            known = ", ".join(EXTENSIONS)
            skipped = f" outside okto's run folders ({len(runs)} skipped)" if runs else ""
            card = (
                f"; {cards[0].relative_to(path)} is its dataset card, not data: name the file "
                "itself to train on it"
                if cards
                else ""
            )
            raise DataError(f"directory {path} holds no data files{skipped} ({known}){card}")
        if notes is not None:
            notes += [
                f"skipped {card}: a README.md in a data folder is the dataset card, not "
                "training text (as in Hugging Face datasets); name the file itself to train on it"
                for card in cards
            ]
        return files
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    return [path]


def _refuse_saved_datasets(folder: Path) -> None:
    """A `datasets` folder from `save_to_disk` holds its rows in .arrow files, which okto
    does not read, beside JSON metadata it would take for the data (and refuse in words
    about that metadata's fields)."""
    if (folder / "dataset_dict.json").is_file() or all(
        (folder / name).is_file() for name in ("state.json", "dataset_info.json")
    ):
        raise DataError(
            f"{folder} is a Hugging Face datasets folder (saved with save_to_disk), which okto "
            "does not read: export each split with its to_json('train.jsonl') or "
            "to_parquet('train.parquet') and name those files"
        )


def _package_path(pattern: str) -> Path:
    package, _, inner = pattern[len(PACKAGE_PREFIX) :].partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise DataError(
            f"{pattern!r} names the Python package {package!r}, which is not installed"
        ) from None
    return Path(str(root.joinpath(inner)))


def detect_format(path: Path, requested: str) -> str:
    """The reader for a file: jsonl, json, csv, tsv, txt or parquet.

    `format: auto` goes by the extension. JSON (and ShareGPT) files are told
    apart by content, an array or object versus one object per line, so a
    `.json` file holding JSON lines reads correctly; so is one array in a
    JSON-lines file.
    """
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
    _refuse_compressed(path)
    suffix = path.suffix.lower()
    if requested == "auto":
        requested = EXTENSIONS.get(suffix) or _sniff_kind(path)
    if requested in ("json", "sharegpt"):
        return _json_layout(path)
    if requested == "jsonl" and _one_array(path):
        return "json"
    if requested == "csv" and suffix == ".tsv":
        return "tsv"
    return requested


def _refuse_compressed(path: Path) -> None:
    """A compressed file read as text is a screen of bytes that are not UTF-8 (or, to the
    CSV reader, no rows); and its `.gz` extension asked for a `format` that cannot help."""
    with open(path, "rb") as f:
        start = f.read(8)
    for magic, name, command in COMPRESSED:
        if start.startswith(magic):
            raise DataError(
                f"{path} is {name}-compressed, which okto does not read: decompress it first "
                f"(with {command})"
            )


def _head(path: Path) -> bytes:
    """The file's first bytes from its first character on (a byte-order mark and blanks
    skipped)."""
    with open(path, "rb") as f:
        return f.read(_SNIFF_CHARS).removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")


def _one_array(path: Path) -> bool:
    """A JSON array under a JSON-lines name (read as lines, no line of a pretty-printed one
    parses, and a one-line one is one record that is not an object): its first line does
    not parse alone, or it is the only line. Lines that each hold an array stay lines."""
    head = _head(path)
    if not head.startswith(b"["):
        return False
    first, newline, rest = head.partition(b"\n")
    if not newline:
        return True  # one line, longer than the window
    try:
        json.loads(first)
    except JSON_ERRORS:
        return True
    return not rest.strip()


def _sniff_kind(path: Path) -> str:
    head = _head(path)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head[:1] in (b"[", b"{"):
        return "json"
    raise DataError(
        f"cannot tell the format of {path} from its extension {path.suffix!r}: "
        f"set DATASET format (jsonl, json, csv, txt, parquet)"
    )


def _json_layout(path: Path) -> str:
    """`json` for an array or a single object, `jsonl` for one value per line."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(_SNIFF_CHARS).lstrip()
        if head.startswith("["):
            return "json"
        first, newline, rest = head.partition("\n")
        if not newline:  # a first line longer than the window (a long conversation)
            first += f.readline()
            rest = f.read(_SNIFF_CHARS)
    try:
        json.loads(first)
    except JSON_ERRORS:
        # A pretty-printed document, JSON lines whose first line is broken, or
        # a broken document (the JSON reader then names the line and column).
        if _parses_whole(path) or not _another_line_parses(rest):
            return "json"
        return "jsonl"
    return "jsonl" if rest.strip() else "json"


def _parses_whole(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8-sig", errors="replace"))
    except JSON_ERRORS:
        return False
    return True


def _another_line_parses(text: str) -> bool:
    for line in text.splitlines()[:-1]:  # the last may be cut by the sniff window
        try:
            if isinstance(json.loads(line), dict):
                return True
        except JSON_ERRORS:
            continue
    return False


@dataclass(frozen=True)
class DataFiles:
    """Every file a DATASET block names, resolved before anything is read."""

    train: list[tuple[Source, list[Path]]]
    validation: list[Path]
    test: list[Path]
    notes: list[str]  # files the folders held that are not data (dataset cards), and why

    @classmethod
    def resolve(cls, settings: DataSettings, base_dir: Path) -> DataFiles:
        notes: list[str] = []

        def files(patterns: tuple[str, ...]) -> list[Path]:
            return [f for pattern in patterns for f in resolve_files(pattern, base_dir, notes)]

        named = [
            [(pattern, resolve_files(pattern, base_dir, notes)) for pattern in source.paths]
            for source in settings.train
        ]
        _refuse_repeats([pair for pairs in named for pair in pairs])
        return cls(
            train=[
                (source, [f for _, found in pairs for f in found])
                for source, pairs in zip(settings.train, named, strict=True)
            ],
            validation=files(settings.validation),
            test=files(settings.test),
            notes=notes,
        )

    def fingerprints(self, training_only: bool = False) -> dict:
        """Content hashes of the files, for cache keys."""
        parts = {"train": source_fingerprints(self.train)}
        if not training_only:
            parts["validation"] = _fingerprints(self.validation)
            parts["test"] = _fingerprints(self.test)
        return parts


def _refuse_repeats(named: list[tuple[str, list[Path]]]) -> None:
    """A file named twice in the training data (`train` and `mix_datasets` paths, globs and
    folders included) would be read twice and its records trained twice over, while the mix
    promises that no record repeats; its weight is how a source gets a larger share."""
    seen: dict[tuple[int, int], tuple[str, Path]] = {}
    for pattern, found in named:
        for path in found:
            status = path.stat()  # the same file under two names (a link) counts too
            identity = (status.st_dev, status.st_ino)
            if identity in seen:
                first, first_path = seen[identity]
                by = f"{pattern!r} twice" if first == pattern else f"{first!r} and {pattern!r}"
                raise DataError(
                    f"training file {first_path} is named by {by} among the DATASET training "
                    "paths: its records would train twice. Name each file once in "
                    "mix_datasets; its weight sets its share of the mix"
                )
            seen[identity] = (pattern, path)


def _fingerprints(files: list[Path]) -> list[tuple[str, str]]:
    return [(str(p), content_hash(p)) for p in files]


def source_fingerprints(sources: list[tuple[Source, list[Path]]]) -> list:
    """Content hashes of the training sources' files, as `DataFiles.fingerprints` gives them."""
    return [_fingerprints(files) for _, files in sources]


# Hashes of unchanged files, so the tokenizer and the data hash a file once per process.
_hashes: dict[tuple, str] = {}
_HASHES_KEPT = 256
# A file changed this recently may change again without its times moving (coarse clocks).
_SETTLED_NS = 2_000_000_000


def content_hash(path: Path) -> str:
    """A hash of the file's content (so the cache survives copies and touches).

    It is remembered under the file's size, inode, mtime and ctime (which only
    the kernel sets: a rewrite that restores the mtime still moves it), and only
    for a file whose times are a few seconds older than the hashing, since a
    filesystem with a coarse clock gives a quick second write the same times.
    """
    status = path.stat()
    identity = (
        str(path),
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )
    if identity in _hashes:
        return _hashes[identity]
    started = time.time_ns()
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    if max(status.st_mtime_ns, status.st_ctime_ns) < started - _SETTLED_NS:
        if len(_hashes) >= _HASHES_KEPT:
            _hashes.clear()
        _hashes[identity] = digest.hexdigest()
    return digest.hexdigest()
