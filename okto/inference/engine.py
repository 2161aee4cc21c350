"""Running a batch: prefill, then decode steps, several per CUDA graph on CUDA.

An `Engine.run` call pads the batch to a bucket size, takes (or builds) the
`Slot` for that bucket, cache length and sampler — a preallocated KV cache
and the static buffers of the decode step — prefills, then steps. The decode
steps run in chunks of `decode_steps`, unrolled: each step updates the slot's
buffers in place (position, step counter, seen tokens) and writes its tokens
to a [steps, batch] buffer, so on CUDA a chunk is captured once per slot and
replayed: one launch per chunk instead of hundreds per token. The host reads
each chunk's tokens while the next chunk runs, so the GPU does not wait on
Python; tokens a chunk made after every row had finished are dropped.
`compile` runs the decoder's step through torch.compile (fused kernels) before capture.
Capture and compilation are done before a batch's clock starts (`Slot.prepare`) and
reported on their own, so the first batch's rates are the decoder's, not the set-up's.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict, deque

import torch

from okto.errors import RunError
from okto.inference.decoder import Decoder, KVCache
from okto.inference.sampling import Sampler

_MAX_SLOTS = 3
_GRAPH_LENGTH_STEP = 256
DECODE_STEPS = 4  # decode steps per chunk (one CUDA graph); see docs/inference.md


class Slot:
    """Static state of the decode step for one (batch, cache length, sampler)."""

    def __init__(
        self,
        model: Decoder,
        batch: int,
        length: int,
        sampler: Sampler,
        graphs: bool,
        steps: int,
        decode,
        compiled: bool = False,
    ):
        device = model.tok_embeddings.weight.device
        dtype = model.tok_embeddings.weight.dtype
        self.model, self.sampler, self.steps = model, sampler, steps
        self.cache = KVCache(model.spec, batch, length, dtype, device)
        self.tokens = torch.zeros(batch, dtype=torch.int64, device=device)
        self.out = torch.zeros(steps, batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(batch, dtype=torch.int64, device=device)
        self.rows = torch.arange(batch, device=device)
        self.keys = torch.zeros(batch, dtype=torch.int64, device=device)
        self.step_no = torch.zeros((), dtype=torch.int64, device=device)
        vocab = model.spec.vocab_size
        self.seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
        self.last_position = min(length, model.spec.max_positions) - 1
        self.use_graph = graphs
        self.decode = decode  # model.decode, or its compiled form
        self.compiled, self.warm = compiled, False
        # One memory pool for the slot's graphs: they never run at once, and
        # nothing they allocate outlives a replay (results land in the buffers above).
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.chunk_graph = None
        self.prefills: dict[int, tuple] = {}  # prompt width -> (graph, its static inputs)

    def _prefill(self, prompts: torch.Tensor, lengths: torch.Tensor) -> None:
        self.seen.zero_()
        if self.sampler.tracks_seen:
            self.seen.scatter_(1, prompts, True)
        self.step_no.zero_()
        logits = self.model.prefill(prompts, lengths, self.cache)
        self.tokens.copy_(self._sample(logits))
        self.positions.copy_(lengths)

    def prepare(self, prompts: torch.Tensor, lengths: torch.Tensor) -> bool:
        """The one-time work for this prompt width, done before a batch's clock starts: on
        CUDA graphs the prefill (once per width) and the chunk are captured; a compiled
        decode step is compiled for the slot's shapes. Whether there was any."""
        if self.use_graph:
            width, fresh = prompts.shape[1], self.chunk_graph is None
            if width not in self.prefills:
                inputs = (prompts.clone(), lengths.clone())
                self.prefills[width] = (self._capture(lambda: self._prefill(*inputs)), inputs)
                fresh = True
            if self.chunk_graph is None:
                self.chunk_graph = self._capture(self._chunk)
            return fresh
        if self.compiled and not self.warm:
            self._warm_up(self._chunk)
            self.warm = True
            return True
        return False

    def start(self, prompts: torch.Tensor, lengths: torch.Tensor, keys: list[int]) -> torch.Tensor:
        """Prefill `prompts` [B, T] (right-padded with each row's own tokens); the first tokens [B].
        On CUDA graphs a replay of the prefill `prepare` captured for width T."""
        self.keys.copy_(torch.tensor(keys, dtype=torch.int64))
        if not self.use_graph:
            self._prefill(prompts, lengths)
            return self.tokens
        graph, (static_prompts, static_lengths) = self.prefills[prompts.shape[1]]
        static_prompts.copy_(prompts)
        static_lengths.copy_(lengths)
        graph.replay()
        return self.tokens

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """The next tokens [B] from `logits`, marked as seen; the step counter moves on."""
        tokens = self.sampler(logits, self.seen, self.keys, self.step_no)
        if self.sampler.tracks_seen:
            self.seen.scatter_(1, tokens[:, None], True)
        self.step_no.add_(1)
        return tokens

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step: the tokens that follow `tokens` [B], each at its row's position."""
        logits = self.decode(tokens, self.positions, self.rows, self.cache)
        # Rows past their own limit keep stepping with the batch (their tokens are
        # ignored); the clamp keeps their positions inside the cache and the model.
        self.positions.add_(1).clamp_(max=self.last_position)
        return self._sample(logits)

    def _chunk(self) -> None:
        """`steps` decode steps, unrolled, from `self.tokens`: step j's tokens land in `self.out[j]`."""
        tokens = self.tokens
        for j in range(self.steps):
            tokens = self._step(tokens)
            self.out[j].copy_(tokens)
        self.tokens.copy_(tokens)

    def step(self) -> None:
        """Decode a chunk of `steps` tokens per row into `self.out` (on CUDA graphs a replay of
        the chunk `prepare` captured)."""
        if self.use_graph:
            self.chunk_graph.replay()
        else:
            self._chunk()

    def _warm_up(self, fn) -> None:
        """Run `fn` twice (compilation, autotuning, workspaces) and put the state back.

        A warm-up chunk writes the cache from the rows' current positions on; the
        real chunk rewrites each of those entries before any step reads it, so
        nothing is lost. A prefill rewrites all the state it reads.
        """
        state = (self.tokens, self.positions, self.step_no, self.seen)
        saved = [t.clone() for t in state]
        for _ in range(2):
            fn()
            for t, s in zip(state, saved, strict=True):
                t.copy_(s)

    def _capture(self, fn) -> torch.cuda.CUDAGraph:
        """Capture `fn`, warmed up on a side stream first."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._warm_up(fn)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with warnings.catch_warnings():
            # A capture that Ctrl-C stops before its first kernel ends empty, and torch
            # warns of that under the "reply stopped" line; the graph is dropped anyway.
            warnings.filterwarnings("ignore", "The CUDA Graph is empty")
            with torch.cuda.graph(graph, pool=self.pool):
                fn()
        return graph


def _compiled(decode):
    """The decoder's step through torch.compile (one graph, static shapes); a failure to compile
    is a RunError. Sampling stays eager: a few kernels, and Inductor's CPU code for the hashed
    noise crashes (torch 2.13)."""
    compiled = torch.compile(decode, fullgraph=True, dynamic=False)

    def call(*args):
        try:
            return compiled(*args)
        except torch._dynamo.exc.TorchDynamoException as e:
            cause = getattr(e, "inner_exception", None) or e  # the backend's own error
            detail = next((line for line in str(cause).splitlines() if line.strip()), "")
            raise RunError(
                f"torch.compile could not compile the decode step ({type(cause).__name__}: "
                f"{detail.strip()}); run without compile (no --compile, OPTIMIZE compile: false)"
            ) from None

    return call


class Engine:
    """okto's decoder with its slots: the generation backend for the GPT-2 and Llama families."""

    def __init__(
        self,
        model: Decoder,
        cuda_graphs: bool = True,
        decode_steps: int = DECODE_STEPS,
        compile: bool = False,
    ):
        self.model = model
        self.device = model.tok_embeddings.weight.device
        self.graphs = cuda_graphs and self.device.type == "cuda"
        self.decode_steps, self.compile = decode_steps, compile
        self.decode = _compiled(model.decode) if compile else model.decode
        self.slots: OrderedDict[tuple, Slot] = OrderedDict()
        self.weight_bytes = model.weight_bytes_per_step()

    @property
    def description(self) -> str:
        if self.graphs:
            steps = "step" if self.decode_steps == 1 else "steps"
            running = f"CUDA graphs of {self.decode_steps} decode {steps}"
        else:
            running = "eager"
        if self.compile:
            running += ", compiled decode step"
        return f"okto engine ({self.device.type}, {running}; {self.model.plan.describe()})"

    @property
    def notes(self) -> tuple[str, ...]:
        return self.model.plan.notes

    def kv_bytes_per_token(self) -> int:
        spec, size = self.model.spec, self.model.tok_embeddings.weight.element_size()
        return 2 * spec.n_layer * spec.n_kv_head * spec.head_dim * size

    def _shape(self, batch: int, width: int, length: int) -> tuple[int, int, int]:
        """Batch, prompt width and cache length: bucketed on CUDA so that graphs are reused, exact on CPU."""
        if self.device.type != "cuda":
            return batch, width, length
        return bucketed(batch, width, length, self.model.spec.max_positions)

    def _slot(self, batch: int, length: int, sampler: Sampler) -> Slot:
        key = (batch, length, sampler)
        slot = self.slots.pop(key, None)
        if slot is None:
            while len(self.slots) >= _MAX_SLOTS:
                self.slots.popitem(last=False)
            slot = Slot(
                self.model,
                batch,
                length,
                sampler,
                self.graphs,
                self.decode_steps,
                self.decode,
                self.compile,
            )
        self.slots[key] = slot
        return slot

    @torch.inference_mode()
    def run(
        self,
        prompts: list[list[int]],
        max_new: int,
        sampler: Sampler,
        tracker,
    ) -> None:
        """Generate up to `max_new` tokens per prompt, handing each step's tokens to the tracker.

        `tracker.push` gets one token per prompt and returns True once every
        row is finished, which ends the run; `tracker.keys` are the rows' random keys;
        `tracker.set_aside` gets the seconds of one-time work (graph capture, compilation)
        done before the batch's first token, left out of its timings.
        """
        push, n = tracker.push, len(prompts)
        longest = max(len(p) for p in prompts)
        batch, width, length = self._shape(n, longest, longest + max_new)
        rows = prompts + [prompts[0][:1]] * (batch - n)
        keys = tracker.keys + [0] * (batch - n)
        # Pad each row with its own last token: the padding is never attended, and it
        # adds no new token to the row's repetition-penalty set.
        padded = [p + [p[-1]] * (width - len(p)) for p in rows]
        tokens = torch.tensor(padded, dtype=torch.int64).to(self.device)
        lengths = torch.tensor([len(p) for p in rows], dtype=torch.int64).to(self.device)
        slot = self._slot(batch, length, sampler)
        started = time.perf_counter()
        if slot.prepare(tokens, lengths):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            tracker.set_aside(time.perf_counter() - started)
        first = slot.start(tokens, lengths, keys)
        if push(first.tolist()[:n]):
            return
        cuda = self.device.type == "cuda"
        lag = 1 if cuda else 0  # chunks left running while the host reads: overlap needs a GPU
        buffers = [
            torch.empty(slot.out.shape, dtype=torch.int64, pin_memory=cuda) for _ in range(lag + 1)
        ]
        events = [torch.cuda.Event() if cuda else None for _ in buffers]
        pending: deque = deque()
        for i in range(-(-(max_new - 1) // self.decode_steps)):
            slot.step()
            buf, event = buffers[i % len(buffers)], events[i % len(buffers)]
            buf.copy_(slot.out, non_blocking=cuda)
            if event is not None:
                event.record()
            pending.append((buf, event))
            while len(pending) > lag:
                if _deliver(*pending.popleft(), n, push):
                    return
        while pending:
            if _deliver(*pending.popleft(), n, push):
                return


def bucketed(batch: int, width: int, length: int, max_positions: int) -> tuple[int, int, int]:
    """Batch, prompt width and cache length rounded up to buckets.

    Batches to powers of two (multiples of 64 past 64), widths to powers of
    two from 16 (multiples of 256 past 512) but not past the model's
    positions, cache lengths to multiples of 256 and at least the width.
    """
    batch = 1 << (batch - 1).bit_length() if batch <= 64 else _round_up(batch, 64)
    bucket = max(16, 1 << (width - 1).bit_length()) if width <= 512 else _round_up(width, 256)
    width = max(width, min(bucket, max_positions))
    return batch, width, max(width, _round_up(length, _GRAPH_LENGTH_STEP))


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _deliver(buf, event, n: int, push) -> bool:
    """Hand a chunk's tokens to the tracker step by step; True (and the rest dropped) once every row is done."""
    if event is not None:
        event.synchronize()
    return any(push(step[:n]) for step in buf.tolist())
