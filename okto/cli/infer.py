"""`okto infer`: generate from an `.okm`, a Hugging Face directory or a run directory.

Settings come from okto's defaults, then the model's own, then the INFERENCE
block of `-f FILE.okt`, then flags. Generated text goes to stdout (or one JSON
record per prompt with `--json`); timings and notes go to stderr.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from okto.errors import EXIT_OK, EXIT_RUN_FAILED, UsageError

# Settings fields that `Model.generate` takes; the rest are for loading or for chat.
GENERATE_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
    "batch_size",
    "template",
    "mode",
)


_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|[ntr\\])")
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescaped(text: str) -> str:
    """A flag's text with the escapes of `.okt` strings read: `--stop '\\n'` is a line end, as
    `stop_sequences: ["\\n"]` is (a shell passes the backslash and the n as they are)."""

    def one(match: re.Match) -> str:
        code = match.group(1)
        return chr(int(code[1:], 16)) if code[0] == "u" else _ESCAPED[code]

    return _ESCAPE.sub(one, text)


def add_generation_arguments(p) -> None:
    """The model and sampling flags `okto infer` and `okto chat` share."""
    p.add_argument(
        "--model", "-m", metavar="M", help=".okm file, Hugging Face directory or run directory"
    )
    p.add_argument(
        "-f",
        "--file",
        "--file-okt",
        dest="okt",
        metavar="FILE.okt",
        help="use its INFERENCE block (as -f/--file in every okto command)",
    )
    p.add_argument("--max-tokens", type=int, metavar="N", help="most new tokens per prompt")
    p.add_argument("--temperature", type=float, metavar="T", help="0 = greedy")
    p.add_argument(
        "--top-p",
        type=float,
        metavar="P",
        help="nucleus sampling: keep the likeliest tokens up to probability P",
    )
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K likeliest tokens; 0 = off")
    p.add_argument(
        "--repetition-penalty", type=float, metavar="X", help="1 = off; above 1 discourages repeats"
    )
    p.add_argument(
        "--stop",
        action="append",
        type=unescaped,
        metavar="TEXT",
        help="stop sequence (repeatable); \\n \\t \\r \\\\ \\uXXXX are escapes, as in .okt strings",
    )
    p.add_argument("--seed", type=int, metavar="N", help="makes sampling reproducible")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: as stored")
    p.add_argument(
        "--backend",
        choices=("auto", "okto", "native", "hf"),
        help="okto's engine (with its kernels on CUDA), native (PyTorch ops), hf (HF generate)",
    )
    p.add_argument("--no-cuda-graphs", action="store_true", help="run decode steps eagerly on CUDA")
    p.add_argument(
        "--compile", action="store_true", help="compile the decode step with torch.compile"
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "infer",
        help="generate text from a model (.okm, Hugging Face or run directory)",
        description="Generate completions for prompts from --prompt, --prompts-file (one per line) "
        "or stdin.",
    )
    add_generation_arguments(p)
    p.add_argument("--prompt", "-p", action="append", help="a prompt (repeatable)")
    p.add_argument(
        "--prompts-file", type=Path, metavar="FILE", help="a text file with one prompt per line"
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="prompts run together (default: up to 16)"
    )
    output = p.add_mutually_exclusive_group()  # a record is written once its prompt is done
    output.add_argument("--json", action="store_true", help="one JSON record per prompt on stdout")
    output.add_argument(
        "--stream", action="store_true", help="print text as it comes (one prompt at a time)"
    )
    p.set_defaults(run=run)


def inference_block(config) -> dict:
    """The fields a `.okt` file's INFERENCE block sets (not its defaults, which would hide the model's),
    and OPTIMIZE's `cuda_graphs` and `compile` when the file sets them."""
    block = config.inference.model_dump(exclude_unset=True)
    block.update(config.optimize.model_dump(include={"cuda_graphs", "compile"}, exclude_unset=True))
    return block


def block_model(name: str, path: Path) -> str:
    """What the INFERENCE `model` of the `.okt` file at `path` names: a relative path is looked
    for next to the file, then in the working directory (as MODEL.base is), else it is a hub
    name in the local cache. None of these is a usage error naming every place looked in."""
    from okto.language.paths import local_path, looked_in
    from okto.package.sources import cached_hub_model

    found = local_path(name, path.parent)
    if found is not None:
        return str(found)
    if cached_hub_model(name) is not None:
        return name
    raise UsageError(
        f"{path}: INFERENCE model {name!r} not found; looked in {looked_in(name, path.parent)} "
        "and the local Hugging Face cache (okto train writes its run folder under the folder "
        "it runs in: run okto infer there, or give the model's absolute path)"
    )


def trained_model(config, path: Path) -> str:
    """The run folder `okto train -f path` writes to: what an unset INFERENCE `model` loads.
    Training puts it under the working directory; it is looked for there first, then next to
    the `.okt` file (where `cd` to the file's folder and `okto train` put it)."""
    from okto.language.paths import candidates
    from okto.training.outputs import RunPaths

    if not config.project.name:
        raise UsageError(
            f"no model: {path} sets no INFERENCE model and no PROJECT, so it trains none; "
            "set INFERENCE model or pass --model"
        )
    run = RunPaths.resolve(config).run
    places = candidates(str(run), path.parent)[::-1]  # the working directory's first
    for place in places:
        if (place / "final" / "config.json").is_file():
            return str(place)
    states = [
        f"{place} "
        + (
            "holds no final model (training unfinished, or OUTPUT.save_model is false)"
            if place.is_dir()
            else "does not exist (not trained yet)"
        )
        for place in places
    ]
    raise UsageError(
        f"no model: {path} sets no INFERENCE model, so okto loads the model that "
        f"`okto train -f {path}` writes, but {', and '.join(states)}: train it first, "
        "or set INFERENCE model or pass --model"
    )


def requested(args) -> dict:
    """Settings asked for by `-f` and the flags (flags win), as Settings field names; checked
    here, so a bad value is said before a model is loaded (minutes, for a large one)."""
    import okto
    from okto.inference.settings import Settings, from_block
    from okto.kernels import environment
    from okto.kernels.errors import KernelError

    try:  # the kernel variables, as okto train and okto plan check them
        environment.check()
    except KernelError as error:
        raise UsageError(str(error)) from None
    okt = Path(args.okt) if args.okt else None
    config = okto.load(okt).config if okt else None
    values = from_block(inference_block(config)) if okt else {}
    flags = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "stop": args.stop,
        "seed": args.seed,
        "batch_size": getattr(args, "batch_size", None),  # infer's
        "exit_command": getattr(args, "exit_command", None),  # chat's
        "dtype": args.dtype,
        "backend": args.backend,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.model is None and values.get("model"):
        values["model"] = block_model(values["model"], okt)
    elif not values.get("model"):
        if okt is None:
            raise UsageError(
                "no model: pass --model, or -f FILE.okt (its INFERENCE model or the one it trains)"
            )
        values["model"] = trained_model(config, okt)
    Settings().merged(values)
    return values


def load(args, values: dict):
    """Load the model `values` names, printing the engine's notes to stderr."""
    from okto.inference import load_model
    from okto.inference.generate import device_for

    model = load_model(
        values["model"],
        device=device_for(args.device, "--device {}"),
        dtype=values.get("dtype"),
        backend=values.get("backend", "auto"),
        cuda_graphs=values.get("cuda_graphs", True) and not args.no_cuda_graphs,
        compile=values.get("compile", False) or args.compile,
    )
    for note in model.notes:
        print(f"note: {note}", file=sys.stderr)
    return model


def _prompts(args) -> list[str]:
    """The prompts of -p, --prompts-file and stdin, each checked to be text the tokenizer takes."""
    from okto.inference.settings import checked_prompts

    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        prompts += _lines(_read_prompts_file(args.prompts_file))
    if not prompts and sys.stdin is not None and not sys.stdin.isatty():  # None: stdin closed
        try:
            prompts = _lines(sys.stdin.read())
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin: {_not_utf8(e)}") from None
    if not prompts:
        raise UsageError(
            "no prompts: pass --prompt, --prompts-file, or pipe them on stdin (one per line)"
        )
    return checked_prompts(prompts)


def _read_prompts_file(path: Path) -> str:
    if path.is_dir():
        raise UsageError(f"{path}: a folder; --prompts-file takes a text file, one prompt a line")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not a prompt's
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: {_not_utf8(e)}; save it as UTF-8") from None


def _not_utf8(error: UnicodeError) -> str:
    return f"not UTF-8 text (at position {error.start})"


def _lines(text: str) -> list[str]:
    """One prompt per line: split at line ends only (CR LF or LF), not at the other breaks
    `str.splitlines` knows (form feed, U+2028), which a prompt may hold; blank lines skipped."""
    lines = text.removeprefix("\ufeff").split("\n")
    return [line.removesuffix("\r") for line in lines if line.strip()]


def stats_line(stats) -> str:
    """One line of timings for a batch, for stderr."""
    parts = [
        f"batch {stats.batch_size}",
        f"ttft {stats.ttft_s * 1e3:.1f} ms",
        f"decode {stats.decode_tokens_per_s:,.0f} tok/s",
        f"total {stats.total_tokens_per_s:,.0f} tok/s",
    ]
    if stats.decode_gb_per_s is not None:
        bandwidth = f"{stats.decode_gb_per_s:,.1f} GB/s"
        if stats.bandwidth_utilization is not None:
            bandwidth += f" ({stats.bandwidth_utilization:.0%} of {stats.peak_gb_per_s:,.0f})"
        parts.append(bandwidth)
    if stats.setup_s:
        parts.append(f"setup {stats.setup_s:.1f} s (graph capture, compilation; not counted)")
    return " · ".join(parts) + f" · {stats.engine}"


def run(args) -> int:
    values = requested(args)
    prompts = _prompts(args)
    model = load(args, values)
    options = {k: v for k, v in values.items() if k in GENERATE_FIELDS}
    if args.stream:
        if (values.get("batch_size") or 1) > 1:
            print(
                f"note: --stream runs the prompts one at a time; batch_size "
                f"{values['batch_size']} is not used",
                file=sys.stderr,
            )
        # one generate call, a prompt at a time in their order: prompt i draws from the seed's
        # stream i as without --stream (a call per prompt gave every prompt stream 0)
        printer = StreamPrinter(prompts)
        try:
            generations = model.generate(
                prompts, **{**options, "batch_size": 1}, stream=printer, done=printer.done
            )
        except KeyboardInterrupt:
            if printer.open is not None:
                print(flush=True)  # "interrupted" on a line of its own
            raise
        _say_seed(model, options, generations)
        return _exit_code(generations)
    printer = InOrder(args.json)
    try:
        generations = model.generate(prompts, **options, done=printer)
    except KeyboardInterrupt:
        printer.rest()
        print(
            f"note: {printer.printed} of {len(prompts)} prompts were done when interrupted; "
            "their output is above",
            file=sys.stderr,
        )
        raise
    if not args.json:
        _say_seed(model, options, generations)
    return _exit_code(generations)


def _say_seed(model, options: dict, generations) -> None:
    """The random seed sampled text was drawn with, on stderr, when none was given: the way to
    get that text again (a `--json` record carries it in its `seed`)."""
    if options.get("seed") is None and model.settings(**options).temperature > 0:
        seed = generations[0].seed
        print(f"note: sampled with seed {seed}; --seed {seed} gives this text again", file=sys.stderr)


def _say_failures(generations) -> None:
    """The `done` callback: a prompt that cannot run is said on stderr at once."""
    for g in generations:
        if g.error is not None:
            print(f"error: prompt {g.index + 1}: {g.error}", file=sys.stderr, flush=True)


def _exit_code(generations) -> int:
    """0, or 3 (inference failed, spec section 6) when any prompt could not run: the others
    were generated and printed, and a script sees that not all were."""
    failed = sum(g.error is not None for g in generations)
    if not failed:
        return EXIT_OK
    print(
        f"error: {failed} of {len(generations)} prompts could not be generated (see above)",
        file=sys.stderr,
    )
    return EXIT_RUN_FAILED


class InOrder:
    """The `done` callback of `okto infer` without --stream: a batch's results are printed as
    soon as every prompt before them has been (batches run the longest prompts first, and the
    output keeps the prompts' order), its figures on stderr at once; on Ctrl-C `rest` prints
    the finished prompts that still wait for an earlier one, so no finished work is lost."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.waiting: dict[int, object] = {}  # finished, behind a prompt not yet done
        self.next = 0  # the index of the next prompt to print
        self.printed = 0

    def __call__(self, generations) -> None:
        _say_failures(generations)
        if not self.as_json and generations[0].stats is not None:
            print(stats_line(generations[0].stats), file=sys.stderr, flush=True)
        self.waiting.update((g.index, g) for g in generations)
        while self.next in self.waiting:
            self._print(self.waiting.pop(self.next))
            self.next += 1

    def rest(self) -> None:
        for index in sorted(self.waiting):
            self._print(self.waiting.pop(index))

    def _print(self, g) -> None:
        if self.as_json:
            print(json.dumps(g.as_record(), ensure_ascii=False), flush=True)
        elif g.error is None:
            print(g.prompt + g.text, flush=True)
        self.printed += g.error is None


def write(_index: int, text: str) -> None:
    """The stream callback: text straight to stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


class StreamPrinter:
    """The stream and done callbacks of `okto infer --stream`: each prompt, then its text as it
    comes, a line each, then its figures on stderr once it is done (prompts run one at a time
    in their order). A prompt with no text (EOS at once) still gets its line; one that cannot
    run gets its error on stderr instead."""

    def __init__(self, prompts: list[str]):
        self.prompts = prompts
        self.open: int | None = None  # the prompt whose line is being written

    def __call__(self, index: int, text: str) -> None:
        if self.open is None:
            sys.stdout.write(self.prompts[index])
            self.open = index
        write(index, text)

    def done(self, generations) -> None:
        (g,) = generations
        if g.error is not None:
            _say_failures(generations)
            return
        if self.open is None:
            sys.stdout.write(g.prompt)
        print(flush=True)
        self.open = None
        print(stats_line(g.stats), file=sys.stderr, flush=True)
