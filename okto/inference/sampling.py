"""Choosing the next token on the device: repetition penalty, temperature, top-k, top-p, then a draw.

The processors run in Hugging Face's order with its arithmetic, so greedy
decoding (temperature 0) matches `generate` and the distribution sampled from
is its processors' (to fp32 rounding: the temperature divides logits less
their row's largest, so that tiny temperatures cannot overflow). The random draw is Gumbel-max
style (argmax of probs / Exp(1) noise) with noise from a counter-based hash of
(seed, row, step, token) instead of a generator's state: a row draws the same
numbers whatever batch it is in and on every device, nothing has to be carried
between steps, and the whole step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_STEP = _signed(0xD6E8FEB86659FD93)
_SMALLEST_TEMPERATURE = torch.finfo(torch.float32).tiny


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 (wrapping multiply; masks make the shifts logical)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def row_keys(seed: int, rows: list[int]) -> list[int]:
    """One 63-bit key per prompt index (splitmix64 of seed and index): the row's random stream."""
    mask = (1 << 64) - 1
    keys = []
    for r in rows:
        x = (seed * 0x9E3779B97F4A7C15 + (r + 1) * 0xD6E8FEB86659FD93) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        keys.append((x ^ (x >> 31)) >> 1)
    return keys


def uniform(keys: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniform (0, 1) noise [B, V] from row keys [B] and a step counter (0-d), 24 bits each."""
    base = _mix(keys * _GOLDEN + step * _STEP)
    token = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    x = _mix(base[:, None] + token[None, :] * _GOLDEN)
    return (((x >> 40) & 0xFFFFFF).float() + 0.5) * (1.0 / (1 << 24))


@dataclass(frozen=True)
class Sampler:
    """How to pick tokens; hashable, so a captured decode step can be kept per sampler."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def tracks_seen(self) -> bool:
        return self.repetition_penalty != 1.0

    def __call__(self, logits, seen, keys, step):
        """Next tokens [B] from fp32 logits [B, V]; `seen` [B, V] marks tokens already in each row."""
        if self.greedy:
            return self.penalized(logits, seen).argmax(dim=-1)
        probs = self.probabilities(logits, seen)
        noise = -torch.log(uniform(keys, step, logits.shape[-1]))
        return (probs / noise).argmax(dim=-1)

    def penalized(self, logits, seen):
        """`logits` with the repetition penalty applied to the tokens `seen` marks."""
        if not self.tracks_seen:
            return logits
        p = self.repetition_penalty
        return torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)

    def probabilities(self, logits, seen):
        """The distribution a sampled token is drawn from [B, V], as Hugging Face's processors
        make it. Each row's largest logit is subtracted before dividing by the temperature
        (softmax does not change), so a tiny temperature tends to greedy instead of overflowing
        into infinities whose softmax is NaN; below fp32's smallest normal number the
        temperature is that number, whose reciprocal fp32 still holds."""
        logits = self.penalized(logits, seen)
        temperature = max(self.temperature, _SMALLEST_TEMPERATURE)
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=False)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1 - self.top_p
            drop[..., -1:] = False
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return logits.softmax(dim=-1)
