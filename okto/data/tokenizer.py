"""The tokenizer a run uses: the model's, one at a path, or a byte-level BPE trained on the data.

`tokenizer: "train"` trains a byte-level BPE (the `tokenizers` library) with
`vocab_size` entries on a seeded sample of at most `SAMPLE_CHARS` characters
of the training records: a larger sample buys little compression and costs
seconds per megabyte on a small CPU. Special tokens: `<|endoftext|>` (EOS),
`<|pad|>`, `<|startoftext|>` (BOS) and the chat role tags; okto's plain chat
template becomes the tokenizer's own. It is saved with the run as a
`PreTrainedTokenizerFast` directory (`run_dir/tokenizer`, loadable by
`AutoTokenizer.from_pretrained`) with `okto_tokenizer.json` recording what it
was trained on, so a later run on the same data and settings reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

from okto.data import cache
from okto.data.errors import DataError, DataWarning, warn
from okto.data.files import DataFiles
from okto.data.progress import stage
from okto.data.selection import NOT_READING, TOKENIZER_SAMPLE, rng, training_mix
from okto.data.settings import DataSettings
from okto.data.templates import PLAIN_CHAT_TEMPLATE, ROLE_TAGS

EOS, PAD, BOS = "<|endoftext|>", "<|pad|>", "<|startoftext|>"
SAMPLE_CHARS = 5_000_000
TRAIN = "train"
SUBDIR = "tokenizer"
META_FILE = "okto_tokenizer.json"
# EOS names to look for in a bare tokenizer.json, which does not say which token ends text.
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>")


def resolve_tokenizer(
    cfg,
    model_path: str | Path | None = None,
    run_dir: str | Path | None = None,
    *,
    seed: int = 0,
    base_dir: str | Path | None = None,
    resuming: bool = False,
):
    """The run's tokenizer (a `PreTrainedTokenizerFast`), saved to `run_dir/tokenizer`.

    DATASET `tokenizer` decides: "train", a path (a tokenizer directory or a
    tokenizer.json), or unset for the model's own (`model_path`: a local
    checkpoint directory or a hub name). `resuming` (a run going on from a checkpoint)
    keeps a tokenizer trained in `run_dir` even when the data changed since: the
    checkpoint's embeddings are its tokens', and a new one would give them other meanings.
    """
    settings = DataSettings.from_config(cfg)
    base = Path(base_dir or Path.cwd())
    target = Path(run_dir) / SUBDIR if run_dir is not None else None
    choice = settings.tokenizer
    if choice is not None and choice.lower() == TRAIN:
        return _trained(settings, base, target, seed, resuming)
    if choice is None and model_path is None:
        raise DataError(
            'no tokenizer: the model is built from scratch, so set DATASET tokenizer: "train" '
            "(a byte-level BPE trained on the data) or a path to a tokenizer"
        )
    tokenizer = _load(choice, base) if choice is not None else _from_model(model_path)
    check_tokenizer(tokenizer)
    if target is not None:
        _save(tokenizer, target)
    return tokenizer


def _save(tokenizer, target: Path, meta: dict | None = None) -> None:
    """Save the run's tokenizer under a temporary name, then put it in place of the folder
    there: a save cut short leaves the old one whole, and no file of the old one outlives
    it (a trained one's `META_FILE` would make a later run on its data take this one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: the folder gets the umask's mode, as final/ does (mkdtemp's is 0700,
    # which others sharing the run folder cannot read)
    staging = target.parent / f".{target.name}-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        tokenizer.save_pretrained(str(staging))
        if meta is not None:
            (staging / META_FILE).write_text(json.dumps(meta, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_tokenizer(tokenizer) -> None:
    """Okto needs offsets (for label masks) and an EOS token (to separate records)."""
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{name}: okto needs a fast tokenizer (one with a tokenizer.json)")
    if tokenizer.eos_token_id is None:
        raise DataError(f"{name}: the tokenizer has no EOS token, which okto needs between records")


def _load(choice: str, base: Path):
    """A tokenizer.json, a folder holding one (a Hugging Face model's, or a run folder's
    final model), as DATASET tokenizer names it; anything else is a DataError."""
    path = Path(choice).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise DataError(f'DATASET tokenizer {choice!r}: {path} does not exist (a path, or "train")')
    if (path / "final").is_dir():  # a run folder, as MODEL.base takes one
        path = path / "final"
    try:
        return _read(path)
    except Exception as error:  # tokenizers raises bare Exceptions for files it cannot parse
        detail = (str(error).splitlines() or [""])[0]
        raise DataError(
            f"DATASET tokenizer {choice!r}: {path} is not a tokenizer okto can load "
            f"({type(error).__name__}: {detail}); give a tokenizer.json, a folder holding "
            'one, or "train" to train one on the data'
        ) from None


def _read(path: Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path.is_file() and not (path.parent / "tokenizer_config.json").is_file():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
        vocab = tokenizer.get_vocab()
        tokenizer.eos_token = next((name for name in EOS_NAMES if name in vocab), None)
        return tokenizer
    return AutoTokenizer.from_pretrained(str(path.parent if path.is_file() else path))


def _from_model(model_path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_path))
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot load the tokenizer of model {str(model_path)!r} ({error}); "
            f'set DATASET tokenizer to a path, or "train" to train one on the data'
        ) from None


def _trained(settings: DataSettings, base: Path, target: Path | None, seed: int, resuming: bool):
    files = DataFiles.resolve(settings, base)
    key = cache.make_key(
        {
            "files": files.fingerprints(training_only=True),
            "settings": {
                name: value for name, value in settings.as_key().items() if name not in NOT_READING
            },
            "sample_chars": SAMPLE_CHARS,
            "seed": seed,
        }
    )
    saved_key = _trained_key(target) if target is not None else None
    if saved_key is not None and (saved_key == key or resuming):
        saved = _saved(target)
        if saved is not None:
            if saved_key != key:
                warn(
                    "the training data or DATASET settings changed since the run's tokenizer "
                    f"was trained: resuming keeps it ({target}), as the checkpoint's model "
                    "learned its tokens; a run started afresh trains a new one",
                    [],
                )
            return saved
    with warnings.catch_warnings():
        # What reading finds (a cut, skipped lines) build_datasets reports once.
        warnings.simplefilter("ignore", DataWarning)
        stage("reading the training data")
        table, _ = training_mix(settings, files.train, seed, [], [], keep=True)
    texts = sample_texts(table, seed)
    stage(f"training the tokenizer ({settings.vocab_size:,} entries) on {len(texts):,} records")
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, settings.vocab_size)
    meta = {
        "key": key,
        "vocab_size": len(tokenizer),
        "sample_records": len(texts),
        "sample_chars": sum(map(len, texts)),
        "records": table.num_rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if len(tokenizer) < settings.vocab_size:
        warn(
            f"the trained tokenizer has {len(tokenizer):,} entries, fewer than vocab_size "
            f"{settings.vocab_size:,}: its {meta['sample_chars']:,} characters of text hold no "
            "more pairs seen twice to merge (the model's vocabulary is the tokenizer's size)",
            [],
        )
    if meta["sample_records"] < table.num_rows:
        warn(
            f"trained the tokenizer on {meta['sample_records']:,} of {table.num_rows:,} records "
            f"({meta['sample_chars']:,} characters, the cap is {SAMPLE_CHARS:,})",
            [],
        )
    if target is not None:
        _save(tokenizer, target, meta)
    return tokenizer


def _trained_key(directory: Path) -> str | None:
    """The key a saved trained tokenizer records; None for none, or a record that is not
    readable (damaged: the tokenizer is trained again and saved over it)."""
    try:
        key = json.loads((directory / META_FILE).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def _saved(directory: Path):
    """The saved trained tokenizer; None, with a warning, when its files are damaged."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        check_tokenizer(tokenizer)
    except Exception as error:  # tokenizers raises bare Exceptions for files it cannot parse
        detail = (str(error).splitlines() or [type(error).__name__])[0]
        warn(f"the saved tokenizer {directory} is damaged ({detail}); training it again", [])
        return None
    return tokenizer


def sample_texts(table, seed: int) -> list[str]:
    """Seeded random records' text, up to SAMPLE_CHARS characters in all."""
    order = rng(seed, TOKENIZER_SAMPLE).permutation(table.num_rows)
    texts, chars = [], 0
    for start in range(0, len(order), 256):
        for turns in table.take(order[start : start + 256]).column("texts").to_pylist():
            texts.append("\n".join(turns))
            chars += len(texts[-1])
            if chars >= SAMPLE_CHARS:
                return texts
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE `PreTrainedTokenizerFast` with okto's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, PAD, BOS, *ROLE_TAGS]
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    model.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model.train_from_iterator(
        (texts[i : i + 1000] for i in range(0, len(texts), 1000)), trainer, length=len(texts)
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=BOS,
        additional_special_tokens=list(ROLE_TAGS),
        chat_template=PLAIN_CHAT_TEMPLATE,
    )
