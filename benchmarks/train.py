"""GPT-2 124M training throughput from scratch: Hugging Face eager and compiled, okto's plan.

    python benchmarks/train.py [--steps 30] [--batch 16] [--seq 1024] [--model gpt2|llama]
                               [--only hf-eager okto-kernels ...] [--out train.jsonl]
                               [--markdown train.md] [--timeout 600] [--gpus 2]

Every configuration trains the same model (GPT-2 small, vocabulary padded to
50,304, dropout off, same seed; with `--model llama` a Llama of the same width
and depth with grouped-query attention, 12 query and 4 key/value heads, SwiGLU
MLP 2,048 wide, ~134M parameters) on the same synthetic tokens with bf16
autocast, fused AdamW, gradient clipping at 1.0 (`clip_grad_norm_` for hf-*; okto-*
fold the clipping into the AdamW step, as okto's Trainer does), in one process:

- hf-eager: the Hugging Face model as it is (SDPA attention);
- hf-compile: the same under torch.compile;
- okto-kernels: okto's plan with every kernel on (GEMMs with fused GELU, flash
  attention, LayerNorm, fused linear + cross-entropy);
- okto-native: okto's plan with ACCELERATE native for every kind (nothing patched);
- okto-trainer: okto's own training loop (okto.training.loop.Trainer) with the
  kernels: per-step loss/NaN check, batches prefetched to the GPU on a side stream;
- okto-trainer-compile, okto-trainer-graphs: that loop on the plan a user gets from
  ACCELERATE on auto and `OPTIMIZE { compile: true }` (or `cuda_graphs: true`), as
  `okto train` runs it: what `okto train` itself reaches with the fastest plan
  (GEMMs on cuBLAS, GPT-2's MLP as okto's gelu_mlp with the GELU in cuBLASLt's
  epilogues, okto's LayerNorm with the residual adds inside, okto attention and
  fused loss);
- okto-trainer-native-gelu-graphs: okto-trainer-graphs with ACCELERATE
  `activation: native` (the GELU left to inductor, as before gelu_mlp);
- okto-trainer-inductor-norm-graphs: okto-trainer-graphs with ACCELERATE
  `layernorm: native` (LayerNorm and the residual adds left to inductor, as before
  okto's norm took the adds);
- okto-trainer-kernels-graphs: that loop with every kernel on and `cuda_graphs: true`,
  the plan of examples/gpt2-124m.okt;
- okto-kernels-compile: the patched model (every kernel on) under torch.compile:
  inductor fuses what lies between okto's custom ops, which it traces as they are;
- okto-attention-loss-compile: only attention and the fused linear + cross-entropy
  on okto, GEMMs on cuBLAS and LayerNorm, GELU and the residual adds left to
  inductor (which fuses them): whether okto's GEMM and norm kernels pay for
  themselves in the compiled step;
- okto-attention-loss-graphs: the same plan compiled in reduce-overhead mode (CUDA
  graphs: each compiled graph replayed with no host launches), as OPTIMIZE
  cuda_graphs gives it;
- okto-attention-loss-layernorm-graphs, okto-attention-loss-gemm-graphs,
  okto-kernels-graphs: that plan with okto's LayerNorm, with okto's GEMMs (GELU
  fused), with every kernel: with no host launches left, whether okto's GEMM and
  norm kernels beat inductor's fusions around cuBLAS on GPU time alone;
- okto-ddp, okto-fsdp (on a machine with `--gpus` GPUs, 2 by default): okto-trainer's
  plan and loop in `--gpus` processes started through torchrun, wrapped as
  `okto train --gpus N` wraps it (DDP; FSDP2), batch 16 x 1,024 in each process:
  the table gives their tokens/s against okto-trainer's on one GPU (the target for
  two GPUs is 1.9x).

Each configuration runs in a process of its own (this script with `--one`), so
one that crashes, hangs past `--timeout` or corrupts the CUDA context costs
only its own row, and each peak memory is its own. Each reports tokens/s,
TFLOP/s and MFU (the FLOPs formula of docs/training.md over the device's
datasheet bf16 peak), peak memory and the last loss (the configurations should
agree on it), each written as soon as it is measured; the final table gives
every throughput and peak memory against hf-compile and hf-eager of the same
run. Needs a CUDA GPU; takes a few minutes, most of it compiling and autotuning.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from okto.kernels.device import get_device_info
from okto.training.flops import flops_model, peak_tflops
from okto.training.plan import compiled, run_settings

VOCAB = 50304
WARMUP = 5
# The comparisons that matter first, so a time limit cuts the least important.
CONFIGS = (
    "hf-eager",
    "hf-compile",
    "okto-kernels",
    "okto-native",
    "okto-trainer",
    "okto-trainer-compile",
    "okto-trainer-graphs",
    "okto-trainer-native-gelu-graphs",
    "okto-trainer-inductor-norm-graphs",
    "okto-trainer-kernels-graphs",
    "okto-ddp",
    "okto-fsdp",
    "okto-kernels-compile",
    "okto-attention-loss-compile",
    "okto-attention-loss-graphs",
    "okto-attention-loss-layernorm-graphs",
    "okto-attention-loss-gemm-graphs",
    "okto-kernels-graphs",
)
# Configurations in several processes, one per GPU (--gpus), started through torchrun.
DISTRIBUTED = ("okto-ddp", "okto-fsdp")
SINGLE_GPU_BASE = "okto-trainer"
KINDS = ("gemm", "attention", "layernorm", "softmax", "cross_entropy", "activation")


def backends(name: str) -> dict[str, str]:
    """ACCELERATE's choice per layer kind for an okto configuration."""
    if name == "okto-native":
        return dict.fromkeys(KINDS, "native")
    if name.startswith("okto-trainer-") and "-kernels" not in name:
        native = ["activation"] if "-native-gelu" in name else []
        native += ["layernorm"] if "-inductor-norm" in name else []
        return dict.fromkeys(KINDS, "auto") | dict.fromkeys(native, "native")
    if name.startswith("okto-attention-loss"):
        okto = ["attention", "cross_entropy"]
        okto += ["layernorm"] if "-layernorm" in name else []
        okto += ["gemm", "activation"] if "-gemm" in name else []
        return dict.fromkeys(KINDS, "native") | dict.fromkeys(okto, "oktoblas")
    return dict.fromkeys(KINDS, "oktoblas")


def okt(
    kinds: dict[str, str], seq: int, batch: int, family: str, strategy: str = "ddp", optimize=""
) -> str:
    accelerate = " ".join(f'{kind}: "{backend}"' for kind, backend in kinds.items())
    return f"""PROJECT "bench-gpt2-124m"
ENV {{ accelerator: "gpu" precision: "bf16" seed: 0 }}
MODEL {{ architecture: "{family}" pretrained: false }}
TRAIN {{ batch_size: {batch} learning_rate: 6e-4 weight_decay: 0.1 gradient_clip: 1.0
        scheduler: "constant" save_strategy: "no" logging_steps: 1000 strategy: "{strategy}" }}
DATASET {{ shuffle: false max_length: {seq} }}
BLAS {{ streams: 2 }}
ACCELERATE {{ {accelerate} fused_ops: true }}
OPTIMIZE {{ {optimize} }}
"""


def new_model(seq: int, family: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "llama":
        config = LlamaConfig(
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=seq,
        )
        return LlamaForCausalLM(config).cuda()
    config = GPT2Config(
        n_layer=12,
        n_head=12,
        n_embd=768,
        n_positions=seq,
        vocab_size=VOCAB,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).cuda()


def optimize(name: str) -> str:
    """The OPTIMIZE block of an okto-trainer configuration."""
    if not name.startswith("okto-trainer-"):
        return ""
    return "cuda_graphs: true" if name.endswith("-graphs") else "compile: true"


def planned(model, name: str, seq: int, batch: int):
    import okto
    from okto.planner import build_plan

    text = okt(backends(name), seq, batch, model.config.model_type, optimize=optimize(name))
    program = okto.parse(text, "bench.okt")
    plan = build_plan(program, model=model)
    plan.apply(model)
    return program, plan


def step_loop(model, forward, tokens: torch.Tensor, okto_plan) -> tuple[float, float]:
    """(seconds for the timed steps, last loss): the loop every non-trainer config shares.
    Under an okto plan the clipping is folded into the AdamW step as okto's Trainer folds
    it, and the update runs where the plan puts it; otherwise `clip_grad_norm_` clips the
    gradients before torch's fused AdamW step."""
    from okto.training.optim import build_optimizer, clip_in_step

    params = [p for p in model.parameters() if p.requires_grad]
    kernel = okto_plan is not None and run_settings(okto_plan).optimizer_kernel
    optimizer = build_optimizer(model, "adamw", 6e-4, 0.1, kernel)  # as okto's
    loss = None
    for index, batch in enumerate(tokens):
        if index == WARMUP:
            torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(input_ids=batch, labels=batch).loss
        loss.backward()
        if okto_plan is not None:
            clip_in_step(optimizer, params, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return time.perf_counter() - started, loss.detach().item()


def trainer_run(
    model, forward, program, settings, tokens: torch.Tensor, parallel=None
) -> tuple[float, float, int]:
    """(seconds, last loss, steps timed) of okto's Trainer over the same tokens; `forward`
    is the model, or its DDP wrapper in a job of several processes (`parallel`)."""
    import datasets
    import numpy as np
    import pyarrow as pa
    from rich.console import Console

    from okto.training.display import Display
    from okto.training.loop import WARMUP_STEPS, Live, Trainer
    from okto.training.metrics import MetricsFile
    from okto.training.optim import build_optimizer, build_scheduler

    steps, batch, seq = tokens.shape
    flat = tokens.reshape(steps * batch, seq).cpu().numpy().astype(np.int32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), seq)
    rows = datasets.Dataset(pa.table({"input_ids": column, "labels": column}))
    config = program.config
    optimizer = build_optimizer(model, "adamw", 6e-4, 0.1, settings.optimizer_kernel)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(
            model=model,
            forward=forward,
            optimizer=optimizer,
            scheduler=build_scheduler(optimizer, "constant", 0, steps),
            scaler=None,
            settings=settings,
            config=config,
            train_rows=rows,
            val_rows=None,
            total_steps=steps,
            live=Live(batch, 1, 0.1, 1.0, steps, None, None),
            flops=flops_model(model),
            peak=peak_tflops(settings.device, "bf16", False),
            display=Display(Console(quiet=True), False, False),
            metrics=MetricsFile(Path(scratch) / "metrics.jsonl", append=False),
            checkpoints=Path(scratch) / "checkpoints",
            save_model=lambda label: Path(scratch),
            parallel=parallel,
        )
        outcome = trainer.fit()
        trainer.metrics.close()
    timed = trainer.session[WARMUP_STEPS:]
    if outcome.reason != "completed" or not timed:  # a record of nothing is no figure
        raise RuntimeError(f"the run ended {outcome.reason}: {outcome.message}")
    return sum(s for s, _, _ in timed), trainer.totals.last_loss, len(timed)


def synthetic_tokens(steps: int, batch: int, seq: int) -> torch.Tensor:
    generator = torch.Generator("cuda").manual_seed(1)
    shape = (WARMUP + steps, batch, seq)
    return torch.randint(0, VOCAB, shape, device="cuda", generator=generator)


def run(name: str, steps: int, batch: int, seq: int, family: str) -> dict:
    if name in DISTRIBUTED:
        return run_distributed(name, steps, batch, seq, family)
    tokens = synthetic_tokens(steps, batch, seq)
    model = new_model(seq, family)
    torch.cuda.reset_peak_memory_stats()
    forward = model
    timed_steps = steps
    if name.startswith("okto"):
        program, plan = planned(model, name, seq, batch)
    if name.startswith("okto-trainer"):  # compiled as `okto train` compiles, if the plan says
        settings = run_settings(plan)
        forward = compiled(model, settings)
        seconds, loss, timed_steps = trainer_run(model, forward, program, settings, tokens)
    else:
        if name.endswith("compile"):
            forward = torch.compile(model)
        if name.endswith("graphs"):
            forward = torch.compile(model, mode="reduce-overhead")
        seconds, loss = step_loop(model, forward, tokens, plan if name.startswith("okto") else None)
    return measured(name, model, seconds, loss, timed_steps, batch, seq)


def run_distributed(name: str, steps: int, batch: int, seq: int, family: str) -> dict | None:
    """One process of a job torchrun started: okto-trainer's plan and loop on this process's
    GPU, wrapped as `okto train --gpus N` wraps it; rank 0's record (None elsewhere)."""
    import okto
    from okto.planner import build_plan
    from okto.training.distributed import Parallel, ranks_from_environment

    text = okt(backends(name), seq, batch, family, strategy=name.removeprefix("okto-"))
    program = okto.parse(text, "bench.okt")
    ranks = ranks_from_environment()
    parallel, settings = Parallel.start(ranks, run_settings(build_plan(program)))
    tokens = synthetic_tokens(steps, batch, seq)
    model = new_model(seq, family)  # on this process's GPU: the one Parallel.start made current
    torch.cuda.reset_peak_memory_stats()
    build_plan(program, model=model).apply(model)
    forward = parallel.wrap(model, settings)
    seconds, loss, timed_steps = trainer_run(model, forward, program, settings, tokens, parallel)
    record = measured(name, model, seconds, loss, timed_steps, batch, seq, parallel.world)
    parallel.close()
    return record if parallel.is_main else None


def measured(name, model, seconds, loss, timed_steps, batch, seq, gpus: int = 1) -> dict:
    """The record of a configuration: the whole job's tokens/s and TFLOP/s, MFU per GPU."""
    tokens_per_s = timed_steps * batch * seq * gpus / seconds
    tflops = tokens_per_s * flops_model(model).per_token(seq) / 1e12
    peak, _ = peak_tflops(torch.device("cuda"), "bf16", False)
    return {
        "config": name,
        "gpus": gpus,
        "tokens_per_s": tokens_per_s,
        "tflops": tflops,
        "mfu": tflops / (peak * gpus) if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "ms_per_step": 1000 * seconds / timed_steps,
        "last_loss": loss,
        "steps": timed_steps,
    }


def run_one(name: str, args, record_path: Path) -> int:
    """`--one`: measure one configuration in this process and write its record (or its error)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        record = run(name, args.steps, args.batch, args.seq, args.model)
    except Exception as error:  # the parent reports it and goes on with the next config
        traceback.print_exc()
        record = {"config": name, "error": _first_line(f"{type(error).__name__}: {error}")}
    if record is not None and os.environ.get("RANK", "0") == "0":  # rank 0 speaks for a job
        record_path.write_text(json.dumps(record))
    return 0 if record is None or "error" not in record else 1


def measure(name: str, args) -> dict:
    """One configuration in a child process: its record, or {"config", "error"}."""
    with tempfile.TemporaryDirectory() as scratch:
        record_path = Path(scratch) / "record.json"
        command = [sys.executable, __file__, "--one", name, "--record", str(record_path)]
        command += ["--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
        command += ["--model", args.model]
        if name in DISTRIBUTED:  # one process per GPU, started by torchrun
            launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
            command[1:1] = [*launcher, "--nproc-per-node", str(args.gpus)]
        try:
            done = subprocess.run(command, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"config": name, "error": f"timed out after {args.timeout}s"}
        if record_path.is_file():
            return json.loads(record_path.read_text())
        return {"config": name, "error": f"the process exited with code {done.returncode}"}


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "failed"


MODEL_NAMES = {"gpt2": "GPT-2 124M", "llama": "Llama 134M (GQA 12/4 heads)"}


def markdown(records: list[dict], command: str, batch: int, seq: int, family: str) -> str:
    info = get_device_info()
    done = {r["config"]: r for r in records if "error" not in r}
    bases = [name for name in ("hf-compile", "hf-eager") if name in done]
    lines = [
        f"Device: {info.name}; torch {torch.__version__}. Command: `{command}`.",
        f"{MODEL_NAMES[family]} from scratch, batch {batch} x {seq} tokens, bf16 autocast, "
        "fused AdamW.",
        "Ratios are against the baselines of this run: throughput x, peak memory x.",
        "",
        "| config | tokens/s | "
        + "".join(f"vs {b} | " for b in bases)
        + "TFLOP/s | MFU | peak memory | "
        + "".join(f"memory vs {b} | " for b in bases)
        + "ms/step | last loss |",
        "|---" * (7 + 2 * len(bases)) + "|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} |")
            continue
        speed = "".join(f"{r['tokens_per_s'] / done[b]['tokens_per_s']:.2f}x | " for b in bases)
        memory = "".join(
            f"{r['peak_memory_gb'] / done[b]['peak_memory_gb']:.2f}x | " for b in bases
        )
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(
            f"| {label(r)} | {r['tokens_per_s'] / 1e3:,.0f}k | {speed}{r['tflops']:.0f} "
            f"| {mfu} | {r['peak_memory_gb']:.1f} GB | {memory}{r['ms_per_step']:.1f} "
            f"| {r['last_loss']:.4f} |"
        )
    scaling = scaling_lines(done)
    if scaling:
        lines += ["", *scaling]
    return "\n".join(lines) + "\n"


def label(record: dict) -> str:
    gpus = record.get("gpus", 1)
    return f"{record['config']} ({gpus} GPUs)" if gpus > 1 else record["config"]


def scaling_lines(done: dict) -> list[str]:
    """Each configuration of several GPUs against okto-trainer (the same plan) on one:
    the whole job's tokens/s over one GPU's, the ratio the 1.9x target for two is about.
    MFU and peak memory are per GPU (rank 0's)."""
    base = done.get(SINGLE_GPU_BASE)
    if base is None:
        return []
    return [
        f"- {name} on {r['gpus']} GPUs: {r['tokens_per_s'] / base['tokens_per_s']:.2f}x "
        f"{SINGLE_GPU_BASE} on 1 GPU ({r['tokens_per_s'] / r['gpus'] / 1e3:,.0f}k tokens/s "
        f"per GPU against {base['tokens_per_s'] / 1e3:,.0f}k)"
        for name, r in done.items()
        if r.get("gpus", 1) > 1
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per config")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--model", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=CONFIGS,
        help="configurations to run (default: all; okto-ddp and okto-fsdp where --gpus GPUs are)",
    )
    parser.add_argument(
        "--gpus", type=int, default=2, help="processes (GPUs) for okto-ddp and okto-fsdp"
    )
    parser.add_argument("--out", type=Path, help="write the records as JSON lines")
    parser.add_argument("--markdown", type=Path, help="write a table for docs/benchmarks.md")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds one configuration may take"
    )
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # a child's config
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)  # where a child writes
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/train.py needs a CUDA GPU", file=sys.stderr)
        return 4
    if args.one:
        return run_one(args.one, args, args.record)
    several = torch.cuda.device_count() >= args.gpus > 1
    args.only = args.only or [c for c in CONFIGS if several or c not in DISTRIBUTED]
    records = []
    command = "python " + " ".join(sys.argv)
    if args.out:
        args.out.write_text("")
    for name in args.only:
        started = time.perf_counter()
        record = measure(name, args)
        records.append(record)
        if args.out:  # as each is measured, so a time limit keeps what was done
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
        if args.markdown:
            args.markdown.write_text(markdown(records, command, args.batch, args.seq, args.model))
        took = f"({time.perf_counter() - started:.0f}s)"
        if "error" in record:
            print(f"{name:22s} FAILED: {record['error']}  {took}", flush=True)
            continue
        mfu = f"{100 * record['mfu']:.1f}%" if record["mfu"] is not None else "n/a"
        print(
            f"{label(record):27s} {record['tokens_per_s'] / 1e3:8.1f}k tokens/s  "
            f"{record['tflops']:6.1f} "
            f"TFLOP/s  MFU {mfu:>6s}  peak {record['peak_memory_gb']:5.1f} GB  "
            f"loss {record['last_loss']:.4f}  {took}",
            flush=True,
        )
    print(markdown(records, command, args.batch, args.seq, args.model))
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
