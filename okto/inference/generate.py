"""`load_model(path).generate(prompts)`: tokenize, batch, run the engine, stop, detokenize, time.

The engine only produces tokens; this module owns everything about text:
templates, EOS and stop sequences (checked on the decoded text and trimmed),
streaming deltas, and the per-prompt and per-batch figures (time to first
token, tokens/s, and the decode step's memory traffic against the device's
bandwidth).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from okto.data.fields import Unusable
from okto.errors import MachineError, RunError, UsageError
from okto.inference.chat import Conversation
from okto.inference.sampling import Sampler, row_keys
from okto.inference.settings import Settings, checked_prompts

DEFAULT_BATCH = 16
DTYPES = ("fp32", "fp16", "bf16", "float32", "float16", "bfloat16")  # what load_model runs in
Stream = Callable[[int, str], None]


@dataclass
class Stats:
    """Figures for one batch; every prompt in the batch shares them."""

    engine: str
    batch_size: int
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    decode_s: float
    total_s: float
    decode_tokens_per_s: float
    total_tokens_per_s: float
    decode_gb_per_s: float | None
    peak_gb_per_s: float | None
    setup_s: float = 0.0  # one-time work before the batch (graph capture, compilation)

    @property
    def bandwidth_utilization(self) -> float | None:
        if not self.decode_gb_per_s or not self.peak_gb_per_s:
            return None
        return self.decode_gb_per_s / self.peak_gb_per_s


@dataclass
class Generation:
    """One prompt's result. A prompt that could not run (longer than the context window)
    has `error` set, finish_reason "error", no text and no figures; the others still run."""

    index: int
    prompt: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # "eos", "stop", "length" or "error"
    ttft_s: float | None
    tokens_per_s: float | None
    seed: int
    stats: Stats | None
    error: str | None = None

    def as_record(self) -> dict:
        """The `--json` record (documented in docs/inference.md); a failed prompt's has its
        `error` and nulls for the figures, so every record has the same fields."""
        stats = self.stats
        return {
            "index": self.index,
            "prompt": self.prompt,
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "ttft_ms": _round(self.ttft_s and self.ttft_s * 1e3, 3),
            "setup_ms": _round(stats and stats.setup_s * 1e3, 3),
            "tokens_per_s": _round(self.tokens_per_s),
            "seed": self.seed,
            "batch_size": stats and stats.batch_size,
            "decode_tokens_per_s": _round(stats and stats.decode_tokens_per_s),
            "total_tokens_per_s": _round(stats and stats.total_tokens_per_s),
            "decode_gb_per_s": _round(stats and stats.decode_gb_per_s),
            "bandwidth_utilization": _round(stats and stats.bandwidth_utilization, 4),
            "engine": stats and stats.engine,
        }


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


CONTEXT_TOKENS = 5  # the prompt's last tokens, decoded before a completion's (see _Text)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def completion_text(tokenizer, context: list[int], ids: list[int]) -> str:
    """`ids` decoded as they read after `context`, the prompt's last tokens: a SentencePiece
    decoder drops the space of the first token it decodes ('▁time' alone is 'time'), which a
    completion's first token keeps after its prompt ('Once upon a' + ' time')."""
    before, after = _decode(tokenizer, context), _decode(tokenizer, context + ids)
    return after[len(before) :] if after.startswith(before) else _decode(tokenizer, ids)


class _Text:
    """A row's text as its tokens arrive, decoded over a short window (not the whole row each
    time) that starts in the prompt's last tokens, as `completion_text` decodes."""

    def __init__(self, tokenizer, context: list[int]):
        self.tokenizer, self.text = tokenizer, ""
        self.ids = list(context)
        self.prefix, self.read = 0, len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return _decode(self.tokenizer, ids)

    def add(self, token: int) -> None:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        # hold back while the window ends inside a multi-byte character
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)


@dataclass
class _Row:
    index: int
    prompt: str
    prompt_ids: list[int]
    limit: int  # most tokens it may generate
    error: str | None = None  # why it cannot run (then it is not batched)
    ids: list[int] = dataclasses.field(default_factory=list)
    finish: str | None = None
    stop_at: int | None = None  # where a stop sequence starts in the text
    text: _Text | None = None
    emitted: int = 0  # characters streamed so far
    t_first: float = 0.0
    t_last: float = 0.0


def _special_stops(tokenizer, stop: tuple[str, ...]) -> set[int]:
    """The tokens of the stop sequences that are one special token's text (`<|im_end|>`, a chat
    template's end of turn): the decoded text never holds them, since decoding skips special
    tokens, so they stop at the token."""
    ids = set()
    for text in stop:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) == 1 and not _decode(tokenizer, tokens):
            ids.add(tokens[0])
    return ids


class _Tracker:
    """Receives each step's tokens: ends rows on EOS, stop sequences (as text, or as the special
    token one is the text of) and limits; streams text."""

    def __init__(self, rows, tokenizer, eos: set[int], stop, stream: Stream | None, seed: int):
        self.rows, self.eos, self.stop, self.stream = rows, eos, stop, stream
        self.stop_ids = _special_stops(tokenizer, stop)
        self.watch_text = bool(stop) or stream is not None
        for row in rows:
            context = row.prompt_ids[-CONTEXT_TOKENS:]
            row.text = _Text(tokenizer, context) if self.watch_text else None
        self.seed, self.keys = seed, row_keys(seed, [r.index for r in rows])
        self.done = [False] * len(rows)
        self.steps = 0
        self.t0 = time.perf_counter()
        self.setup_s = 0.0

    def set_aside(self, seconds: float) -> None:
        """One-time work done before the first token (graph capture, compilation): the
        batch's clock starts after it."""
        self.setup_s += seconds
        self.t0 += seconds

    def push(self, tokens: list[int]) -> bool:
        now = time.perf_counter()
        self.steps += 1
        for i, (row, token) in enumerate(zip(self.rows, tokens, strict=True)):
            if self.done[i]:
                continue
            row.t_first = row.t_first or now
            row.t_last = now
            row.ids.append(token)
            if token in self.eos:
                row.finish = "eos"
            elif token in self.stop_ids:
                row.finish = "stop"
            elif self.watch_text:
                self._follow_text(row)
            if row.finish is None and len(row.ids) >= row.limit:
                row.finish = "length"
            self.done[i] = row.finish is not None
        return all(self.done)

    def _follow_text(self, row: _Row) -> None:
        checked = len(row.text.text)
        row.text.add(row.ids[-1])
        text = row.text.text
        if self.stop:
            longest = max(len(s) for s in self.stop)
            start = max(0, checked - longest + 1)
            hits = [p for p in (text.find(s, start) for s in self.stop) if p >= 0]
            if hits:
                row.finish, row.stop_at = "stop", min(hits)
        if self.stream is None:
            return
        end = row.stop_at if row.stop_at is not None else len(text) - self._held_back(text)
        if end > row.emitted:
            self.stream(row.index, text[row.emitted : end])
            row.emitted = end

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that may be the start of a stop sequence."""
        for n in range(min(len(text), max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stop):
                return n
        return 0


class Model:
    """A loaded model: its tokenizer, its engine, and its own generation defaults."""

    def __init__(self, checkpoint, tokenizer, engine, defaults: Settings, context_window: int):
        self.checkpoint, self.tokenizer, self.engine = checkpoint, tokenizer, engine
        self.defaults, self.context_window = defaults, context_window
        self.eos_ids = _eos_ids(checkpoint, tokenizer)

    @property
    def notes(self) -> tuple[str, ...]:
        """Things a user should know about how this model runs (fallbacks, kernels not used)."""
        return tuple(self.engine.notes)

    def encode(self, text: str) -> list[int]:
        """The text's tokens, special-token text read as the special tokens (a raw prompt's
        own markers), with one BOS where the tokenizer adds it."""
        return self._one_bos(text, self.tokenizer(text)["input_ids"])

    def encode_filled(self, render: Callable[[list[str]], str], texts: list[str]) -> list[int]:
        """The tokens of `render(texts)`, `texts` (what a user typed into a template) read as
        plain text: `<|im_end|>` typed in a chat turn stays text, while the markers `render`
        writes around it are special tokens, as training encodes a record's text
        (okto.data.specials). A tokenizer without a Rust backend reads both as before."""
        try:
            escaped = self._special_text.escape(texts) if self._special_text else None
        except Unusable as e:
            raise UsageError(str(e)) from None
        if escaped is None:
            return self.encode(render(texts))
        rendering = render(escaped[0])
        ((ids, _),) = self._special_text.encode_batch([rendering], add_special_tokens=True)
        return self._one_bos(rendering, ids.tolist())

    @cached_property
    def _special_text(self):
        """okto.data.specials' encoder over a copy of the tokenizer's backend (without the
        truncation or padding a tokenizer.json may carry, which a prompt does not get)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        from tokenizers import Tokenizer

        from okto.data.specials import SpecialText

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
        return SpecialText(backend)

    def _one_bos(self, text: str, ids: list[int]) -> list[int]:
        """`ids` with one BOS where the tokenizer adds it: a chat template writes its own BOS,
        and the tokenizer adding another would double it."""
        bos, written = self.tokenizer.bos_token_id, self.tokenizer.bos_token
        if not ids and bos is not None:
            ids = [bos]
        one_written = (
            bool(written) and text.startswith(written) and not text.startswith(2 * written)
        )
        if one_written and ids[:2] == [bos, bos]:
            ids = ids[1:]  # the text wrote one BOS, the tokenizer added the second
        return ids

    def settings(self, **options) -> Settings:
        """The model's defaults with `options` (Settings field names; None = keep) laid over them."""
        return self.defaults.merged(options)

    def generate(
        self,
        prompts: str | list[str | list[int]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        template: str | None = None,
        mode: str | None = None,
        stream: Stream | None = None,
        done: Callable[[list[Generation]], None] | None = None,
    ) -> list[Generation]:
        """Generate a completion for each prompt; results come back in the prompts' order.

        A prompt is text or a list of token ids (taken as they are: no template, no chat
        rendering). Text alone is read as the tokenizer reads it, special-token text as the
        special tokens; text that fills a `template` or a chat turn is read as plain text.

        temperature 0 is greedy decoding. `stop` strings end a completion (the
        text is cut before them). `seed` makes sampling reproducible, whatever
        the batch size. `mode` "chat" renders each prompt as a one-turn
        conversation, as `okto chat` renders a turn (a model may carry it as its
        default). `stream(index, text)` is called with text as it comes; with `batch_size`
        1 the prompts run one at a time in their order. `done(generations)` is called with
        each batch's results as soon as it ends (a prompt that cannot run comes alone, in its
        turn with `batch_size` 1, else before the batches).
        """
        s = self.settings(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            stop=stop,
            seed=seed,
            batch_size=batch_size,
            template=template,
            mode=mode,
        )
        _check_callbacks(stream=stream, done=done)
        prompts = checked_prompts(prompts, self.checkpoint.config.get("vocab_size"))
        if not prompts:
            return []
        chat = Conversation(self, s) if s.mode == "chat" else None
        if chat is not None:
            s = s.merged({"stop": chat.stop})
        rows = []
        for i, prompt in enumerate(prompts):
            try:
                ids = self._prompt_ids(prompt, s, chat)
            except UsageError as e:
                raise UsageError(f"prompt {i + 1}: {e}") from None
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)
            rows.append(self._row(i, text, ids, s.max_tokens, isinstance(prompt, str)))
        seed = s.seed if s.seed is not None else secrets.randbits(63)
        size = s.batch_size or min(len(rows), DEFAULT_BATCH)
        sampler = Sampler(s.temperature, s.top_k, s.top_p, s.repetition_penalty)
        results = []
        for batch in _batches(rows, size):
            if batch[0].error is not None:
                finished = [_failed(batch[0], seed)]
            else:
                tracker = _Tracker(batch, self.tokenizer, self.eos_ids, s.stop, stream, seed)
                max_new = max(r.limit for r in batch)
                self.engine.run([r.prompt_ids for r in batch], max_new, sampler, tracker)
                finished = self._finish(tracker, stream)
            if done is not None:
                done(finished)
            results += finished
        return sorted(results, key=lambda g: g.index)

    def _prompt_ids(self, prompt: str | list[int], s: Settings, chat: Conversation | None):
        """A prompt's tokens. Token ids are the model's input as they are. Text alone is the
        model's whole input, read as the tokenizer reads it (special-token text, such as a
        hand-written `<|im_start|>`, is the special token); text that fills a template (a
        `format`, a chat turn) is read as plain text, the template's markers as themselves."""
        if not isinstance(prompt, str):
            return prompt
        if chat is not None:
            return chat.encode(prompt, [])
        if s.template == "{input}":
            return self.encode(prompt)
        return self.encode_filled(lambda texts: s.apply_template(texts[0]), [prompt])

    def _row(self, index: int, prompt: str, ids: list[int], max_tokens: int, text: bool) -> _Row:
        """The prompt's row; one that cannot run carries why (its batch-mates still run)."""
        room = self.context_window - len(ids)
        row = _Row(index, prompt, ids, min(max_tokens, room))
        if not ids:
            row.error = (
                "it is empty and the tokenizer has no BOS token to start from"
                if text
                else "it holds no token ids"
            )
        elif room < 1:
            row.error = (
                f"it has {len(ids)} tokens and the model's context window is "
                f"{self.context_window}, which leaves no room to generate; shorten it"
            )
        return row

    def _finish(self, tracker: _Tracker, stream: Stream | None) -> list[Generation]:
        end = time.perf_counter()
        rows = tracker.rows
        for row in rows:  # Hugging Face generate may end a row on its own EOS settings
            row.finish = row.finish or "length"
        first = min(r.t_first for r in rows)
        generated = sum(len(r.ids) for r in rows)
        decode_tokens = sum(len(r.ids) - 1 for r in rows)
        stats = Stats(
            engine=self.engine.description,
            batch_size=len(rows),
            prompt_tokens=sum(len(r.prompt_ids) for r in rows),
            generated_tokens=generated,
            ttft_s=first - tracker.t0,
            decode_s=end - first,
            total_s=end - tracker.t0,
            decode_tokens_per_s=decode_tokens / (end - first) if end > first else 0.0,
            total_tokens_per_s=generated / (end - tracker.t0),
            decode_gb_per_s=self._decode_gb_per_s(tracker, end - first),
            peak_gb_per_s=peak_gb_per_s(self.engine.device),
            setup_s=tracker.setup_s,
        )
        out = []
        for row in rows:
            if row.stop_at is not None:
                text = row.text.text[: row.stop_at]
            else:  # without the EOS or stop token, which need not be one the decode skips
                ids = row.ids[:-1] if row.finish in ("eos", "stop") else row.ids
                context = row.prompt_ids[-CONTEXT_TOKENS:]
                text = completion_text(self.tokenizer, context, ids)
            flush = stream is not None and len(text) > row.emitted
            if flush and text.startswith(row.text.text[: row.emitted]):
                stream(row.index, text[row.emitted :])
            n = len(row.ids)
            rate = (
                (n - 1) / (row.t_last - row.t_first) if n > 1 and row.t_last > row.t_first else 0.0
            )
            out.append(
                Generation(
                    index=row.index,
                    prompt=row.prompt,
                    text=text,
                    token_ids=row.ids,
                    prompt_tokens=len(row.prompt_ids),
                    generated_tokens=n,
                    finish_reason=row.finish,
                    ttft_s=row.t_first - tracker.t0,
                    tokens_per_s=rate,
                    seed=tracker.seed,
                    stats=stats,
                )
            )
        return out

    def _decode_gb_per_s(self, tracker: _Tracker, seconds: float) -> float | None:
        """Weights plus the cache entries each decode step attends to, per second of decoding."""
        steps = tracker.steps - 1
        per_token = self.engine.kv_bytes_per_token()
        if steps < 1 or seconds <= 0 or not per_token:
            return None
        prompts = [len(r.prompt_ids) for r in tracker.rows]
        return decode_bytes(steps, prompts, self.engine.weight_bytes, per_token) / seconds / 1e9


def _batches(rows: list[_Row], size: int) -> list[list[_Row]]:
    """Rows in batches of `size`, a row that cannot run alone. With `size` 1 the prompts keep
    their order; else those that cannot run come first, then the others longest first, so a
    batch's rows are of similar length (less padding)."""
    if size == 1:
        return [[row] for row in rows]
    runnable = sorted((r for r in rows if r.error is None), key=lambda r: -len(r.prompt_ids))
    failed = [[r] for r in rows if r.error is not None]
    return failed + [runnable[i : i + size] for i in range(0, len(runnable), size)]


def _failed(row: _Row, seed: int) -> Generation:
    return Generation(
        index=row.index,
        prompt=row.prompt,
        text="",
        token_ids=[],
        prompt_tokens=len(row.prompt_ids),
        generated_tokens=0,
        finish_reason="error",
        ttft_s=None,
        tokens_per_s=None,
        seed=seed,
        stats=None,
        error=row.error,
    )


def decode_bytes(
    steps: int, prompt_lengths: list[int], weight_bytes: int, kv_per_token: int
) -> int:
    """Bytes `steps` decode steps read: the weights once a step, and at every step each row's
    cached keys and values (its prompt plus the tokens generated so far)."""
    kv_tokens = steps * sum(prompt_lengths) + len(prompt_lengths) * steps * (steps + 1) // 2
    return steps * weight_bytes + kv_tokens * kv_per_token


def peak_gb_per_s(device) -> float | None:
    """The device's datasheet memory bandwidth in GB/s (None on a CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    import torch

    from okto.kernels.device import peak_for

    peak = peak_for(torch.cuda.get_device_name(device))
    return peak.bandwidth_tbps * 1e3 if peak else None


def _eos_ids(checkpoint, tokenizer) -> set[int]:
    """EOS tokens from the generation config, the model config and the tokenizer, together."""
    ids: set[int] = set()
    sources = [checkpoint.config]
    if checkpoint.generation_config:
        sources.append(json.loads(checkpoint.generation_config))
    for source in sources:
        value = source.get("eos_token_id")
        ids.update([value] if isinstance(value, int) else value or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def device_for(name, asked: str = "device={!r}"):
    """The torch device to run on: CUDA when there is one, unless `name` (cpu, cuda, cuda:N)
    says otherwise; a name this machine cannot honour is a clear error. `asked` spells the
    request in the caller's terms: `device='cuda'` for Python, `--device {}` for the CLI."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MachineError(
                f"{asked.format(name)}: this machine has no CUDA GPU; use {asked.format('cpu')}"
            )
        if (device.index or 0) >= count:
            raise MachineError(
                f"{asked.format(name)}: this machine has {count} CUDA "
                f"GPU{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})"
            )
    return device


def load_model(
    path: str | Path,
    device=None,
    dtype: str | None = None,
    backend: str = "auto",
    cuda_graphs: bool = True,
    decode_steps: int | None = None,
    compile: bool = False,
) -> Model:
    """Load an `.okm`, a Hugging Face directory or a run directory for generation.

    `device` (cpu, cuda, cuda:N or a torch.device) defaults to CUDA when there is
    one; `dtype` (fp32, fp16, bf16) defaults to the stored one, with half precision
    widened to fp32 on the CPU. `backend`: auto / okto (okto's engine, with okto's kernels on CUDA),
    native (okto's engine on PyTorch ops), hf (Hugging Face generate).
    okto's engine runs `decode_steps` decode steps per CUDA graph (default
    `engine.DECODE_STEPS`) and, with `compile`, its decode step through torch.compile.
    """
    import torch

    from okto.inference import decoder, ops
    from okto.inference.engine import DECODE_STEPS, Engine
    from okto.inference.hf import HFEngine, build_model
    from okto.inference.spec import spec_for
    from okto.package import open_checkpoint
    from okto.package.weights import check_range, torch_dtype

    if backend not in ops.BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(ops.BACKENDS)}")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    for name, flag in (("cuda_graphs", cuda_graphs), ("compile", compile)):
        if not isinstance(flag, bool):  # "no" would be true
            raise UsageError(f"{name} must be True or False, got {flag!r}")
    if decode_steps is not None and (type(decode_steps) is not int or decode_steps < 1):
        raise UsageError(f"decode_steps must be a positive integer, got {decode_steps!r}")
    if not isinstance(path, str | Path):
        raise UsageError(f"path: the model's path or hub name, not {path!r}")
    checkpoint = open_checkpoint(path)
    config = _hf_config(checkpoint)
    tokenizer = checkpoint.tokenizer()
    device = device_for(device)
    state = checkpoint.tensors()
    stored = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    if dtype is not None:
        target = torch_dtype(dtype)
    elif device.type == "cpu" and stored in (torch.float16, torch.bfloat16):
        target = torch.float32
    else:
        target = stored
    check_range(state, target, "load it in bf16 or fp32")  # fp16 would turn them into inf
    spec = spec_for(config) if backend != "hf" else "the hf backend was asked for"
    if isinstance(spec, str):
        note = f"{checkpoint.architecture} runs through Hugging Face generate: {spec}"
        pad = tokenizer.pad_token_id
        pad = pad if pad is not None else (tokenizer.eos_token_id or 0)
        engine = HFEngine(build_model(config, state, device, target), pad, note)
        asked = (("compile", compile), ("decode_steps", decode_steps is not None))
        unused = [name for name, given in asked if given]
        if unused:
            engine.notes += (
                f"okto engine settings not used by Hugging Face generate: {', '.join(unused)}",
            )
        context = _context_window(config, tokenizer)
    else:
        plan = ops.plan(device, target, spec, backend, compile)
        engine = Engine(
            decoder.build(spec, state, plan, device, target),
            cuda_graphs,
            DECODE_STEPS if decode_steps is None else decode_steps,
            compile,
        )
        context = spec.max_positions
    defaults = Settings().merged(checkpoint.generation_defaults)
    return Model(checkpoint, tokenizer, engine, defaults, context)


def generate(model: Model | str | Path, prompts: str | list[str], **settings) -> str | list[str]:
    """The completion of one prompt (a string), or of each of a list of prompts, as `okto infer`
    prints them after their prompts: `okto.generate("m.okm", "Once", max_tokens=20)`.

    `model` is a loaded `Model` or what `load_model` loads; `settings` are `load_model`'s
    (device, dtype, backend, ...; for a path only) and `Model.generate`'s (max_tokens,
    temperature, seed, ...). Loading once with `load_model` is quicker for several calls.
    """
    load_names = set(inspect.signature(load_model).parameters) - {"path"}
    generate_names = set(inspect.signature(Model.generate).parameters) - {"self", "prompts"}
    unknown = sorted(set(settings) - load_names - generate_names)
    if unknown:
        known = ", ".join(sorted(load_names | generate_names))
        raise UsageError(f"unknown setting {', '.join(unknown)}; okto.generate takes {known}")
    loading = {name: value for name, value in settings.items() if name in load_names}
    options = {name: value for name, value in settings.items() if name in generate_names}
    if isinstance(model, Model):
        if loading:
            raise UsageError(
                f"{', '.join(sorted(loading))}: settings for loading a model, but this one is "
                "loaded; pass them to okto.load_model"
            )
    else:
        # a bad setting or prompt is said before the model loads (minutes, for a large one),
        # as `okto infer` says it
        _check_callbacks(stream=options.get("stream"), done=options.get("done"))
        Settings().merged(options)  # the fields it knows: the callbacks are checked above
        checked_prompts(prompts)
        model = load_model(model, **loading)
    generations = model.generate(prompts, **options)
    failed = [f"prompt {g.index + 1}: {g.error}" for g in generations if g.error]
    if failed:  # a list of texts has no place for them: Model.generate returns them instead
        raise RunError("; ".join(failed))
    texts = [g.text for g in generations]
    return texts[0] if isinstance(prompts, str) else texts


def _check_callbacks(**callbacks) -> None:
    for name, callback in callbacks.items():
        if callback is not None and not callable(callback):
            raise UsageError(f"{name} must be a function, got {callback!r}")


def _hf_config(checkpoint):
    """The transformers config object, or a UsageError in one line naming the checkpoint."""
    from okto.package.hf_config import transformers_config

    values = dict(checkpoint.config)
    kind = values.pop("model_type", None)
    where = f"{checkpoint.path}: its config.json"
    if kind is None:
        raise UsageError(f"{where} has no model_type")
    return transformers_config(kind, values, where)


def _context_window(config, tokenizer) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    return int(min(tokenizer.model_max_length, 1 << 20))
