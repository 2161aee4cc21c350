"""okto's inference engine against Hugging Face `generate`, GPT-2 124M in fp16, in one process.

    python benchmarks/inference.py --out inference.json [--markdown inference.md]

The model is randomly initialised from `GPT2Config(n_positions=2048)` (no
download; 2,048 positions so the 1,984-token prompt fits) and goes through
the real path: saved as a Hugging Face directory, exported to `.okm`, loaded
back. The tokenizer is byte-level with no merges, so an n-character prompt is
n tokens. EOS is disabled on both sides so every row generates exactly the
asked number of tokens.

Cases: batch 1, 8 and 32 (5-token prompts, 64 new tokens) and the time to the
first token of a 1,984-token prompt. Engines: okto (its kernels where they
pass their probe, CUDA graphs), okto on PyTorch ops, okto without CUDA graphs,
HF `generate`, and HF with a static cache (which `generate` compiles with
torch.compile, mode reduce-overhead) while the time budget lasts. tokens/s is
new tokens of the whole batch over wall time, prefill included. `--smoke`
runs a tiny model on whatever device there is, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGETS = {"decode_b1": 1500.0, "decode_b32": 10000.0, "ttft_ms": 5.0, "vs_hf_static": 2.0}
LONG_TEXT = "The quick brown fox jumps over the lazy dog, and the dog does not mind. " * 40


def build(folder: Path, smoke: bool) -> tuple[Path, Path]:
    """A random GPT-2 saved as a Hugging Face directory and as an .okm; (hf dir, okm file)."""
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
    return hf_dir, export_model(hf_dir, folder / "gpt2.okm")


def prompts(batch: int) -> list[str]:
    return [f"abcd{chr(97 + i % 26)}" for i in range(batch)]  # 5 tokens each


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

    def __init__(self, label: str, okm: Path, device: str, **options):
        from okto.inference import load_model

        self.label = label
        self.model = load_model(okm, device=device, dtype="fp16", **options)
        self.model.eos_ids = set()  # exactly max_tokens per row, as HF with min_new_tokens
        self.notes = self.model.notes
        self.skip: set[str] = set()
        self.last = None

    def generate(self, texts: list[str], new: int) -> None:
        self.last = self.model.generate(texts, max_tokens=new, temperature=0, batch_size=len(texts))

    def figures(self) -> dict:
        stats = self.last[0].stats
        return {
            "decode_tokens_per_s": stats.decode_tokens_per_s,
            "ttft_ms": stats.ttft_s * 1e3,
            "decode_gb_per_s": stats.decode_gb_per_s,
            "bandwidth_utilization": stats.bandwidth_utilization,
        }


class HF:
    """Hugging Face generate, eager (dynamic cache) or with a static cache (compiled by generate)."""

    def __init__(self, label: str, hf_dir: Path, device: str, static: bool):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.label, self.static = label, static
        # a 1,984-token prefill would be one more compilation; the TTFT target is absolute
        self.skip = {"ttft"} if static else set()
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float16).to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.device = device
        self.notes = ()

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


def run_case(engine, case: str, texts: list[str], new: int, repeats: int) -> dict:
    engine.generate(texts, new)  # warm-up: CUDA graph capture, compilation, autotuning
    times = timed(lambda: engine.generate(texts, new), repeats)
    seconds = statistics.median(times)
    record = {
        "case": case,
        "engine": engine.label,
        "batch": len(texts),
        "prompt_tokens": len(texts[0]),
        "new_tokens": new,
        "seconds": seconds,
        "tokens_per_s": len(texts) * new / seconds,
        **engine.figures(),
    }
    if case == "ttft":
        record["ttft_ms"] = record.get("ttft_ms", seconds * 1e3)
    return record


def cases(smoke: bool) -> list[tuple[str, list[str], int]]:
    new = 8 if smoke else 64
    long_prompt = LONG_TEXT[: 200 if smoke else 1984]
    return [
        ("decode_b1", prompts(1), new),
        ("decode_b8", prompts(8), new),
        ("decode_b32", prompts(32), new),
        ("ttft", [long_prompt], 1),
    ]


def markdown(report: dict) -> str:
    lines = [
        f"Device: {report['device']}; torch {report['torch']}, transformers {report['transformers']}, "
        f"triton {report['triton']}. GPT-2 124M (random init, n_positions 2048), fp16.",
        f"Command: `{report['command']}`. tokens/s = new tokens of the batch / wall time.",
        "",
        "| case | engine | tokens/s | decode tok/s | TTFT ms | decode GB/s | vs HF | vs HF static |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        gbps = r.get("decode_gb_per_s")
        util = r.get("bandwidth_utilization")
        bandwidth = "" if gbps is None else f"{gbps:,.0f}" + (f" ({util:.0%})" if util else "")
        lines.append(
            f"| {r['case']} | {r['engine']} | {r['tokens_per_s']:,.0f} "
            f"| {_num(r.get('decode_tokens_per_s'))} | {_num(r.get('ttft_ms'), 2)} | {bandwidth} "
            f"| {_ratio(r.get('vs_hf'))} | {_ratio(r.get('vs_hf_static'))} |"
        )
    lines += ["", *report["verdicts"]]
    return "\n".join(lines) + "\n"


def _num(x, digits=0):
    return "" if x is None else f"{x:,.{digits}f}"


def _ratio(x):
    return "" if x is None else f"{x:.1f}x"


def compare(results: list[dict]) -> list[str]:
    """Ratios against HF in each record, and the issue's targets as pass/fail lines."""
    by = {(r["case"], r["engine"]): r for r in results}
    for r in results:
        for key, engine in (("vs_hf", "hf"), ("vs_hf_static", "hf static+compile")):
            base = by.get((r["case"], engine))
            if base is None or not r["engine"].startswith("okto"):
                continue
            if r["case"] == "ttft":
                r[key] = base["ttft_ms"] / r["ttft_ms"]
            else:
                r[key] = r["tokens_per_s"] / base["tokens_per_s"]
    okto = {r["case"]: r for r in results if r["engine"] == "okto"}
    verdicts = []
    for case, target in (
        ("decode_b1", TARGETS["decode_b1"]),
        ("decode_b32", TARGETS["decode_b32"]),
    ):
        if case in okto:
            got = okto[case]["tokens_per_s"]
            verdicts.append(
                f"{case}: {got:,.0f} tokens/s, target {target:,.0f}: {_verdict(got >= target)}"
            )
    if "ttft" in okto:
        got = okto["ttft"]["ttft_ms"]
        verdicts.append(
            f"ttft (1,984 tokens): {got:.2f} ms, target < 5 ms: {_verdict(got < TARGETS['ttft_ms'])}"
        )
    static = [r["vs_hf_static"] for r in okto.values() if r.get("vs_hf_static")]
    if static:
        worst = min(static)
        verdicts.append(
            f"vs HF static+compile: at least {worst:.1f}x, target 2x: {_verdict(worst >= 2)}"
        )
    return verdicts


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--markdown", type=Path, help="also write a markdown table here")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="seconds; no new case starts past it"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, any device: checks the script"
    )
    args = parser.parse_args()
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

    with tempfile.TemporaryDirectory(prefix="okto-bench-") as folder:
        hf_dir, okm = build(Path(folder), args.smoke)
        engines = [
            lambda: Okto("okto", okm, device),
            lambda: Okto("okto (PyTorch ops)", okm, device, backend="native"),
            lambda: Okto("okto (no CUDA graphs)", okm, device, cuda_graphs=False),
            lambda: HF("hf", hf_dir, device, static=False),
        ]
        if device == "cuda":
            engines.append(lambda: HF("hf static+compile", hf_dir, device, static=True))
        results, skipped, failed = [], [], []
        for make in engines:
            try:
                engine = make()
            except Exception as e:  # unattended: report the engine and go on with the others
                failed.append(f"{type(e).__name__}: {e}")
                continue
            for case, texts, new in cases(args.smoke):
                if case in engine.skip:
                    continue
                if time.perf_counter() - start > args.budget:
                    skipped.append(f"{engine.label} {case}")
                    continue
                try:
                    record = run_case(engine, case, texts, new, args.repeats)
                except Exception as e:
                    failed.append(f"{engine.label} {case}: {type(e).__name__}: {e}")
                    continue
                print(
                    f"{record['engine']:24} {case:10} {record['tokens_per_s']:10,.0f} tokens/s  "
                    f"{record['seconds'] * 1e3:9.2f} ms",
                    flush=True,
                )
                results.append(record)
            for note in engine.notes:
                print(f"  note ({engine.label}): {note}")
            del engine
            if device == "cuda":
                torch.cuda.empty_cache()
    verdicts = compare(results) + [
        f"skipped (over the {args.budget:.0f} s budget): {s}" for s in skipped
    ]
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
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
