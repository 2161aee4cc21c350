"""`okto init NAME`: a new project folder with a commented `train.okt` and a
tiny dataset, ready for `okto check`, `okto train` and `okto infer` (it trains a small
GPT-2 from scratch, so nothing is downloaded)."""

from __future__ import annotations

import itertools
import json
import shlex
from pathlib import Path

from okto.errors import UsageError

TRAIN_OKT = """\
# okto_version: "1.3"
#
# A new okto project. Check it with   okto check -f train.okt
# and train it with                   okto train -f train.okt
# Data paths are relative to this file's folder, runs/ to the folder okto train
# runs in. The language is described in docs/language.md of the okto repository.

PROJECT {name}
DESCRIPTION "A tiny GPT-2 trained from scratch on the sample data"

ENV {{
  accelerator: "auto"          # auto, cpu or gpu
  precision: "auto"            # auto, fp32, bf16 or fp16
}}

DATASET {{
  train: "data/train.jsonl"    # one {{"text": "..."}} record per line
  validation: "data/val.jsonl"
  tokenizer: "train"           # train a byte-level BPE tokenizer on the data...
  vocab_size: 320              # ...with this many tokens
  max_length: 64               # tokens per training sequence
}}

MODEL {{
  architecture: "gpt2"
  pretrained: false            # a new model, built from the config below
  config {{ n_layer: 2  n_head: 2  n_embd: 64 }}
}}

TRAIN {{
  epochs: 3
  batch_size: 8
  learning_rate: 1e-3
  scheduler: "cosine"
  warmup_steps: 2
  logging_steps: 5
}}

# Rules checked while training runs.
CONTROL {{
  on_epoch_end {{ LOG val_loss }}
  IF loss > 20 {{ STOP }}        # the run has diverged
}}

OUTPUT {{
  dir: "runs"
}}
"""

_ANIMALS = ("cat", "dog", "fox", "owl", "bee", "cow")
_PLACES = ("garden", "kitchen", "forest", "river", "library", "market")
_ACTIONS = ("sleeps in", "runs to", "looks at", "waits by", "sings near", "walks through")


def sample_texts() -> list[str]:
    """Short, regular sentences: enough for a tiny model to learn something."""
    return [
        f"The {animal} {action} the {place}."
        for animal, action, place in itertools.product(_ANIMALS, _ACTIONS, _PLACES)
    ]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "init",
        help="create a project folder with a commented train.okt and a tiny dataset",
        description="Create NAME/ with train.okt and data/ (a tiny text dataset).",
    )
    p.add_argument(
        "name", metavar="NAME", help="the folder to create (its name becomes the PROJECT name)"
    )
    p.set_defaults(run=run)


def run(args) -> int:
    if not args.name.strip():
        raise UsageError("name the project's folder: okto init NAME")
    root = Path(args.name)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"{root} already exists and is not an empty folder")
    from okto.package.format import make_folder, write_file

    texts = sample_texts()
    validation = texts[::9]
    train = [t for t in texts if t not in validation]
    make_folder(root / "data")
    okt = TRAIN_OKT.format(name=json.dumps(root.resolve().name, ensure_ascii=False))
    write_file(root / "train.okt", okt.encode("utf-8"))
    for name, records in (("train.jsonl", train), ("val.jsonl", validation)):
        lines = "".join(json.dumps({"text": text}) + "\n" for text in records)
        write_file(root / "data" / name, lines.encode("utf-8"))
    print(f"created {root}/train.okt and {root}/data/ ({len(train)} + {len(validation)} records)")
    for line in next_steps(root):
        print(line)
    return 0


def next_steps(root: Path) -> list[str]:
    """The commands that check, train and try the new project, as a shell takes them."""
    from okto.training.outputs import slug  # the run folder okto train names

    run = shlex.quote(f"runs/{slug(root.resolve().name)}")
    return [
        f"next: cd {shlex.quote(str(root))} && okto check -f train.okt",
        "then: okto train -f train.okt",
        f"      okto infer --model {run} --prompt 'The cat'",
    ]
