"""How fast okto reads `.okt` files: lines per second on a large generated
file, for the syntax alone (grammar + typed tree) and for the whole front end
(with resolution, CONTROL rule building and validation). Times are CPU
seconds of this process, so other work on the machine does not skew them.

    python benchmarks/parse.py [--rules N] [--repeat R]
"""

from __future__ import annotations

import argparse
import time

import okto
from okto.language.diagnostics import Source
from okto.language.parser import parse_document

HEAD = """\
# okto_version: "1.3"
PROJECT "benchmark"
DESCRIPTION "A large generated file"
TAGS ["bench", "generated"]

ENV { accelerator: "auto"  precision: "bf16"  min_memory: 16GB  seed: 1 }

DATASET {
  mix_datasets: [
    { path: "a.jsonl", weight: 50 },
    { path: "b.jsonl", weight: 50 },
  ]
  dataset_percent: 90%
  tokenizer: "train"
  vocab_size: 8192
}

MODEL {
  architecture: "gpt2"
  pretrained: false
  config { n_layer: 12  n_head: 12  n_embd: 768 }
  ADAPTER { rank: 8  alpha: 16 }
}

TRAIN {
  max_steps: 100000  batch_size: 32  learning_rate: 6e-4  scheduler: "cosine"
  warmup_steps: 2000  save_steps: 5000  eval_steps: 1000  log_interval: 10
}

INFERENCE { params { temperature: 0.7  top_p: 0.9  max_new_tokens: 128 } }

MONITOR {
{monitor}
}

CONTROL {
{rules}
}
"""

RULE = """\
  # rule {i}
  IF step > {i} AND (loss > {loss} OR val_loss > {loss}) {{
    SET learning_rate = 0.0001
    DECREASE batch_size BY 10%
    LOG "rule {i} fired at {{step}}"
  }}
  WHEN gpu_memory < {gb}GB {{ SAVE "rule-{i}" }}
"""


def generate(rules: int) -> str:
    monitor = "\n".join(f'  metric_{i}: [{i}, {i}.5, "m{i}"]' for i in range(rules))
    body = "".join(RULE.format(i=i, loss=1 + i % 7, gb=1 + i % 40) for i in range(rules))
    return HEAD.replace("{monitor}", monitor).replace("{rules}", body.rstrip("\n"))


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000, help="CONTROL rules to generate")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    args = parser.parse_args()
    text = generate(args.rules)
    lines = text.count("\n") + 1
    source = Source(text, "bench.okt")
    okto.parse(text, "bench.okt")  # warm up: grammar tables, model validators
    syntax = best_of(args.repeat, lambda: parse_document(source))
    whole = best_of(args.repeat, lambda: okto.parse(text, "bench.okt"))
    print(f"{lines} lines, {len(text) / 1e6:.2f} MB")
    print(f"syntax only:    {syntax:.3f} CPU s  {lines / syntax:,.0f} lines/s")
    print(f"whole pipeline: {whole:.3f} CPU s  {lines / whole:,.0f} lines/s")


if __name__ == "__main__":
    main()
