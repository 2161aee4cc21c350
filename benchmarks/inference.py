"""okto's inference engine against Hugging Face `generate`, GPT-2 124M in fp16, in under four minutes.

    python benchmarks/inference.py --out inference.json [--markdown inference.md]

The model is randomly initialised from `GPT2Config(n_positions=2048)` (no
download; 2,048 positions so the 1,984-token prompt fits) and goes through
the real path: saved as a Hugging Face directory, exported to `.okm`, loaded
back. The tokenizer is byte-level with no merges, so an n-character prompt is
n tokens. EOS is disabled on both sides so every row generates exactly the
asked number of tokens.

Cases: batch 1, 8 and 32 (5-token prompts, 64 new tokens) and the time to the
first token of a 1,984-token prompt. tokens/s is new tokens of the whole batch
over wall time, prefill included; GB/s is the bytes the decode steps must read
(weights once a step, plus each row's cached keys and values) over that same
wall time, against the GPU's datasheet bandwidth.

Engines, most important first (no case starts past `--budget`): Hugging Face
with a static cache (which `generate` compiles with torch.compile), in a
worker process with its own time limit, so a slow compilation shows as "did
not finish in N s" instead of taking the rest of the run; Hugging Face
`generate`; okto as `load_model` sets it up; okto with a compiled decode step,
also in a time-limited worker; okto varied one setting at a time (PyTorch ops
only, 1 and 8 decode steps per CUDA graph, no CUDA graphs). Every okto row has
its ratio to both Hugging Face rows of the same run. `--smoke` runs a tiny model on whatever
device there is, to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

TARGETS = {"decode_b1": 1500.0, "decode_b32": 10000.0, "ttft_ms": 5.0, "vs_hf_static": 2.0}
LONG_TEXT = "The quick brown fox jumps over the lazy dog, and the dog does not mind. " * 40
ALL_CASES = ("decode_b1", "decode_b8", "decode_b32", "ttft")
DECODE_CASES = ("decode_b1", "decode_b8", "decode_b32")
COMPILED_CASES = ("decode_b1", "decode_b32", "decode_b8")  # one compilation per batch size
HF, HF_STATIC = "hf", "hf static+compile"
SKIPPED = "skipped: over the run's budget"


@dataclass(frozen=True)
class Variant:
    """One engine setup; with `budget`, it runs in a worker process killed after that many seconds."""

    label: str
    kind: str  # "okto" or "hf"
    options: dict = field(default_factory=dict)
    cases: tuple[str, ...] = ALL_CASES
    budget: float | None = None
    cuda_only: bool = False


VARIANTS = (  # in order of importance: when the run's budget runs out, the last ones go
    # a 1,984-token prefill would be one more compilation; the TTFT target is absolute
    Variant(HF_STATIC, "hf", {"static": True}, COMPILED_CASES, budget=75, cuda_only=True),
    Variant(HF, "hf", {"static": False}),
    Variant("okto", "okto"),
    Variant("okto (compiled decode)", "okto", {"compile": True}, COMPILED_CASES, budget=70),
    Variant("okto (PyTorch ops)", "okto", {"backend": "native"}),
    Variant("okto (1 step per graph)", "okto", {"decode_steps": 1}, DECODE_CASES),
    Variant("okto (8 steps per graph)", "okto", {"decode_steps": 8}, DECODE_CASES),
    Variant("okto (no CUDA graphs)", "okto", {"cuda_graphs": False}),
)


def build(folder: Path, smoke: bool) -> dict:
    """A random GPT-2 saved as a Hugging Face directory and as an .okm, with its decode sizes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from okto.package import export_model

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=257,  # the 256 bytes and EOS: no merges, one token per byte
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["a"], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    small = {"n_layer": 2, "n_head": 2, "n_embd": 64} if smoke else {}
    config = GPT2Config(n_positions=2048, **small)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).half()
    hf_dir = folder / "gpt2"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    params = sum(p.numel() for p in model.parameters())
    return {
        "hf_dir": str(hf_dir),
        "okm": str(export_model(hf_dir, folder / "gpt2.okm")),
        # a decode step reads every weight but the position embeddings (2 bytes each) ...
        "weight_bytes": 2 * (params - model.transformer.wpe.weight.numel()),
        # ... and, per cached token, a key and a value per layer
        "kv_bytes_per_token": 2 * 2 * config.n_layer * config.n_embd,
    }


def prompts(batch: int) -> list[str]:
    return [f"abcd{chr(97 + i % 26)}" for i in range(batch)]  # 5 tokens each


def case_inputs(case: str, smoke: bool) -> tuple[list[str], int]:
    if case == "ttft":
        return [LONG_TEXT[: 200 if smoke else 1984]], 1
    return prompts(int(case.removeprefix("decode_b"))), 8 if smoke else 64


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


class Okto:
    """An okto engine variant: generate() wrapped to record okto's own figures."""

    def __init__(self, files: dict, device: str, **options):
        from okto.inference import load_model

        self.model = load_model(files["okm"], device=device, dtype="fp16", **options)
        self.model.eos_ids = set()  # exactly max_tokens per row, as HF with min_new_tokens
        self.notes = self.model.notes
        self.plan = self.model.engine.model.plan.reasons
        self.last = None

    def generate(self, texts: list[str], new: int) -> None:
        self.last = self.model.generate(texts, max_tokens=new, temperature=0, batch_size=len(texts))

    def figures(self) -> dict:
        stats = self.last[0].stats
        return {
            "decode_tokens_per_s": stats.decode_tokens_per_s,
            "ttft_ms": stats.ttft_s * 1e3,
            "okto_decode_gb_per_s": stats.decode_gb_per_s,
            "engine_description": stats.engine,
        }


class HFGenerate:
    """Hugging Face generate, eager (dynamic cache) or with a static cache (compiled by generate)."""

    def __init__(self, files: dict, device: str, static: bool):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.static = static
        model = AutoModelForCausalLM.from_pretrained(files["hf_dir"], dtype=torch.float16)
        self.model = model.to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(files["hf_dir"])
        self.device = device
        self.notes, self.plan = (), ()

    def generate(self, texts: list[str], new: int) -> None:
        ids = torch.tensor([self.tokenizer(t)["input_ids"] for t in texts], device=self.device)
        options = {"cache_implementation": "static"} if self.static else {}
        self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            **options,
        )

    def figures(self) -> dict:
        return {}


def make(variant: Variant, files: dict, device: str):
    if variant.kind == "hf":
        return HFGenerate(files, device, **variant.options)
    return Okto(files, device, **variant.options)


def run_case(engine, label: str, case: str, files: dict, smoke: bool, repeats: int) -> dict:
    texts, new = case_inputs(case, smoke)
    engine.generate(texts, new)  # warm-up: CUDA graph capture, compilation, autotuning
    seconds = statistics.median(timed(lambda: engine.generate(texts, new), repeats))
    record = {
        "case": case,
        "engine": label,
        "batch": len(texts),
        "prompt_tokens": len(texts[0]),
        "new_tokens": new,
        "seconds": seconds,
        "tokens_per_s": len(texts) * new / seconds,
        **engine.figures(),
    }
    if case == "ttft":
        record["ttft_ms"] = record.get("ttft_ms", seconds * 1e3)
    else:
        from okto.inference.generate import decode_bytes

        moved = decode_bytes(
            new - 1, [len(t) for t in texts], files["weight_bytes"], files["kv_bytes_per_token"]
        )
        record["gb_per_s"] = moved / seconds / 1e9
    return record


def unmeasured(variant: Variant, cases, **why) -> list[dict]:
    """Rows for cases without a figure, with the reason (`unfinished=...` or `failed=...`)."""
    return [{"case": c, "engine": variant.label, **why} for c in cases]


def _failure(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def worker(args) -> int:
    """Run one variant's cases and print each record as a JSON line as soon as it is measured."""
    variant = next(v for v in VARIANTS if v.label == args.worker)
    files = json.loads(args.files)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = make(variant, files, device)
    for case in variant.cases:
        try:
            record = run_case(engine, variant.label, case, files, args.smoke, args.repeats)
        except Exception as e:  # reported as the case's row; the next case may still run
            (record,) = unmeasured(variant, [case], failed=_failure(e))
        print(json.dumps(record), flush=True)
    return 0


def in_worker(variant: Variant, files: dict, args, limit: float) -> list[dict]:
    """The variant's records from a worker process given `limit` seconds; a case it did not
    reach in time gets a "did not finish" row."""
    if limit < 10:
        return unmeasured(variant, variant.cases, unfinished=SKIPPED)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", variant.label]
    command += ["--files", json.dumps(files), "--repeats", str(args.repeats)]
    command += ["--smoke"] if args.smoke else []
    # its own process group, so that compiler processes it starts end with it
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=limit)
        why = f"worker failed: {_last_line(err)}" if proc.returncode else "not run"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have ended just now
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        why = f"did not finish in {limit:.0f} s"
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = {r["case"] for r in records}
    return records + unmeasured(
        variant, [c for c in variant.cases if c not in done], unfinished=why
    )


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def in_process(variant: Variant, files: dict, args, deadline: float) -> tuple[list[dict], tuple]:
    """The variant's records, measured here (cases that would start past `deadline` are
    skipped), and its kernel plan."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        engine = make(variant, files, device)
    except Exception as e:  # unattended: report the engine and go on with the others
        return unmeasured(variant, variant.cases, failed=_failure(e)), ()
    for note in engine.notes:
        print(f"  note ({variant.label}): {note}")
    records = []
    for case in variant.cases:
        if time.perf_counter() > deadline:
            records += unmeasured(variant, [case], unfinished=SKIPPED)
            continue
        try:
            records.append(run_case(engine, variant.label, case, files, args.smoke, args.repeats))
        except Exception as e:
            records += unmeasured(variant, [case], failed=_failure(e))
    plan = engine.plan
    del engine
    if device == "cuda":
        torch.cuda.empty_cache()
    return records, plan


def measured(r: dict) -> bool:
    return "tokens_per_s" in r


def compare(results: list[dict]) -> list[str]:
    """Ratios against both Hugging Face rows in each record, and the issue's targets as verdicts."""
    by = {(r["case"], r["engine"]): r for r in results if measured(r)}
    for r in filter(measured, results):
        for key, base_label in (("vs_hf", HF), ("vs_hf_static", HF_STATIC)):
            base = by.get((r["case"], base_label))
            if base is None or r["engine"] in (HF, base_label):
                continue
            if r["case"] == "ttft":
                r[key] = base["ttft_ms"] / r["ttft_ms"]
            else:
                r[key] = r["tokens_per_s"] / base["tokens_per_s"]
    okto = {r["case"]: r for r in results if r["engine"] == "okto" and measured(r)}
    verdicts = []
    for case in ("decode_b1", "decode_b32"):
        if case in okto:
            got, target = okto[case]["tokens_per_s"], TARGETS[case]
            verdicts.append(
                f"okto {case}: {got:,.0f} tokens/s, target {target:,.0f}: {_verdict(got >= target)}"
            )
    if "ttft" in okto:
        got = okto["ttft"]["ttft_ms"]
        verdicts.append(
            f"okto ttft (1,984 tokens): {got:.2f} ms, target < 5 ms: {_verdict(got < TARGETS['ttft_ms'])}"
        )
    static = [r["vs_hf_static"] for r in okto.values() if r.get("vs_hf_static")]
    if static:
        worst = min(static)
        verdicts.append(
            f"okto vs HF static+compile: at least {worst:.1f}x, target 2x: {_verdict(worst >= 2)}"
        )
    else:
        verdicts.append("okto vs HF static+compile: no HF static+compile figure in this run")
    for case in DECODE_CASES:
        rows = [
            r
            for r in results
            if r["case"] == case and r["engine"].startswith("okto") and measured(r)
        ]
        if rows:
            best = max(rows, key=lambda r: r["tokens_per_s"])
            verdicts.append(
                f"fastest okto setup for {case}: {best['engine']}, {best['tokens_per_s']:,.0f} tokens/s"
            )
    return verdicts


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def markdown(report: dict) -> str:
    peak = report["peak_gb_per_s"]
    lines = [
        f"Device: {report['device']}; torch {report['torch']}, transformers {report['transformers']}, "
        f"triton {report['triton']}. GPT-2 124M (random init, n_positions 2048), fp16, greedy.",
        f"Command: `{report['command']}` ({report['seconds']:.0f} s). tokens/s = new tokens of the "
        "batch / wall time, prefill included; GB/s = bytes the decode steps read / the same wall time"
        + (f", against {peak:,.0f} GB/s." if peak else "."),
        "",
        "| case | engine | tokens/s | vs HF | vs HF static+compile | TTFT ms | decode tok/s | GB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if not measured(r):
            lines.append(
                f"| {r['case']} | {r['engine']} | {r.get('unfinished') or r.get('failed')} | | | | | |"
            )
            continue
        gbps = r.get("gb_per_s")
        bandwidth = (
            "" if gbps is None else f"{gbps:,.0f}" + (f" ({gbps / peak:.0%})" if peak else "")
        )
        lines.append(
            f"| {r['case']} | {r['engine']} | {r['tokens_per_s']:,.0f} | {_ratio(r.get('vs_hf'))} "
            f"| {_ratio(r.get('vs_hf_static'))} | {_num(r.get('ttft_ms'), 2)} "
            f"| {_num(r.get('decode_tokens_per_s'))} | {bandwidth} |"
        )
    lines += [
        "",
        *report["verdicts"],
        "",
        "okto's kernel plan:",
        *[f"- {line}" for line in report["plan"]],
    ]
    return "\n".join(lines) + "\n"


def _num(x, digits=0):
    return "" if x is None else f"{x:,.{digits}f}"


def _ratio(x):
    return "" if x is None else f"{x:.1f}x"


def _printed(r: dict) -> None:
    if measured(r):
        print(
            f"{r['engine']:26} {r['case']:10} {r['tokens_per_s']:10,.0f} tokens/s  {r['seconds'] * 1e3:9.2f} ms",
            flush=True,
        )
    else:
        print(
            f"{r['engine']:26} {r['case']:10} {r.get('unfinished') or r.get('failed')}", flush=True
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON report (required)")
    parser.add_argument("--markdown", type=Path, help="also write a markdown table here")
    parser.add_argument(
        "--budget",
        type=float,
        default=220.0,
        help="seconds for the whole run; no case starts past it",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, any device: checks the script"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one variant
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.out is None:
        parser.error("--out is required")
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("benchmarks/inference.py needs a CUDA device (or --smoke)", file=sys.stderr)
        return 4
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from okto.inference.generate import peak_gb_per_s

    variants = [v for v in VARIANTS if device == "cuda" or not v.cuda_only]
    results, plan = [], []
    with tempfile.TemporaryDirectory(prefix="okto-bench-") as folder:
        files = build(Path(folder), args.smoke)
        deadline = start + args.budget
        for variant in variants:
            if variant.budget:
                limit = min(variant.budget, deadline - time.perf_counter())
                records = in_worker(variant, files, args, limit)
            else:
                records, engine_plan = in_process(variant, files, args, deadline)
                plan = list(engine_plan) if variant.label == "okto" else plan
            for r in records:
                _printed(r)
            results += records
    verdicts = compare(results)
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "peak_gb_per_s": peak_gb_per_s(torch.device(device)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "triton": triton_version,
        "command": " ".join(["python", *sys.argv]),
        "seconds": time.perf_counter() - start,
        "results": results,
        "verdicts": verdicts,
        "plan": plan,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
