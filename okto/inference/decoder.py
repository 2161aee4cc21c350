"""A compact decoder (GPT-2 and Llama families) with a static KV cache, in the spirit of gpt-fast.

Two entry points: `prefill` runs whole prompts (right-padded, every row from
position 0) and fills the cache; `decode` runs one token per row at that
row's own position. Each row's valid cache entries are [0, length), so rows of
different lengths share one batch without masks in the cache. Every matmul,
norm and attention call goes through `ops` (see `okto.inference.ops`), the one
place where okto's kernels replace PyTorch's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from okto.inference.ops import FUSED_ACTIVATIONS, Ops
from okto.inference.spec import Spec

_ACT = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class KVCache:
    """Keys and values of every layer for `batch` rows of up to `length` tokens: [L, B, H_kv, S, D]."""

    def __init__(self, spec: Spec, batch: int, length: int, dtype, device):
        shape = (spec.n_layer, batch, spec.n_kv_head, length, spec.head_dim)
        # Zeros, not empty: masked-out entries still meet the values in a matmul, and 0 * NaN is NaN.
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)


class Norm(nn.Module):
    def __init__(self, spec: Spec, ops: Ops):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(spec.dim))
        self.bias = nn.Parameter(torch.zeros(spec.dim)) if spec.family == "gpt2" else None
        self.eps, self.ops = spec.norm_eps, ops

    def forward(self, x):
        if self.bias is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)


class Attention(nn.Module):
    def __init__(self, spec: Spec, layer: int, ops: Ops):
        super().__init__()
        h, kv, d = spec.n_head, spec.n_kv_head, spec.head_dim
        self.wqkv = nn.Linear(spec.dim, (h + 2 * kv) * d, bias=spec.attn_bias)
        self.wo = nn.Linear(h * d, spec.dim, bias=spec.attn_bias)
        self.sizes = (h * d, kv * d, kv * d)
        self.n_head, self.n_kv_head, self.head_dim = h, kv, d
        self.scale = 1 / math.sqrt(d) / (layer + 1 if spec.scale_by_layer else 1)
        self.rotary = spec.family == "llama"
        self.ops = ops

    def _qkv(self, x, rope):
        b, t, _ = x.shape
        q, k, v = self.ops.linear(x, self.wqkv.weight, self.wqkv.bias).split(self.sizes, dim=-1)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.rotary:
            cos, sin = rope
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        return q, k, v

    def _out(self, y, residual):
        b, _, t, _ = y.shape
        y = y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        return self.ops.linear(y, self.wo.weight, self.wo.bias, residual=residual)

    def prefill(self, x, h, rope, k_cache, v_cache):
        """`x` plus attention over the normed `h`, caching keys and values at [0, T)."""
        q, k, v = self._qkv(h, rope)
        t = h.shape[1]
        k_cache[:, :, :t] = k
        v_cache[:, :, :t] = v
        return self._out(self.ops.prefill_attention(q, k, v, self.scale), x)

    def decode(self, x, h, rope, k_cache, v_cache, rows, positions, lengths):
        """`x` plus attention of one new token per row, cached at `positions`."""
        q, k, v = self._qkv(h, rope)
        k_cache[rows, :, positions] = k[:, :, 0]
        v_cache[rows, :, positions] = v[:, :, 0]
        y = self.ops.decode_attention(q[:, :, 0], k_cache, v_cache, lengths, self.scale)
        return self._out(y[:, :, None], x)


class FeedForward(nn.Module):
    def __init__(self, spec: Spec, ops: Ops):
        super().__init__()
        self.gated = spec.family == "llama"
        width = 2 * spec.hidden if self.gated else spec.hidden  # Llama: gate and up fused
        self.w1 = nn.Linear(spec.dim, width, bias=spec.mlp_bias)
        self.w2 = nn.Linear(spec.hidden, spec.dim, bias=spec.mlp_bias)
        self.activation, self.ops = spec.activation, ops

    def forward(self, x, h):
        """`x` plus the MLP of the normed `h` (activation and residual in the matmuls' epilogues)."""
        if self.gated:
            gate, up = self.ops.linear(h, self.w1.weight, self.w1.bias).chunk(2, dim=-1)
            h = _ACT[self.activation](gate) * up
        elif self.activation in FUSED_ACTIVATIONS:
            h = self.ops.linear(h, self.w1.weight, self.w1.bias, activation=self.activation)
        else:
            h = _ACT[self.activation](self.ops.linear(h, self.w1.weight, self.w1.bias))
        return self.ops.linear(h, self.w2.weight, self.w2.bias, residual=x)


class Block(nn.Module):
    def __init__(self, spec: Spec, layer: int, ops: Ops):
        super().__init__()
        self.attention_norm = Norm(spec, ops)
        self.attention = Attention(spec, layer, ops)
        self.ffn_norm = Norm(spec, ops)
        self.feed_forward = FeedForward(spec, ops)


class Decoder(nn.Module):
    def __init__(self, spec: Spec, ops: Ops):
        super().__init__()
        self.spec, self.ops = spec, ops
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.dim)
        self.pos_embeddings = (
            nn.Embedding(spec.max_positions, spec.dim) if spec.family == "gpt2" else None
        )
        self.layers = nn.ModuleList(Block(spec, i, ops) for i in range(spec.n_layer))
        self.norm = Norm(spec, ops)
        self.output = nn.Linear(spec.dim, spec.vocab_size, bias=False)
        self.rope_cos = self.rope_sin = None

    def set_rope(self) -> None:
        """Precompute RoPE tables for every position (after the weights are on their device)."""
        if self.spec.family != "llama":
            return
        device, dtype = self.tok_embeddings.weight.device, self.tok_embeddings.weight.dtype
        inv_freq = rope_frequencies(self.spec).to(device)
        positions = torch.arange(self.spec.max_positions, device=device, dtype=torch.float)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.rope_cos, self.rope_sin = emb.cos().to(dtype), emb.sin().to(dtype)

    def _rope(self, positions):
        if self.rope_cos is None:
            return None
        # [B, T] positions -> [B, 1, T, D], broadcast over heads
        return self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]

    def _embed(self, tokens, positions):
        x = self.tok_embeddings(tokens)
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings(positions)
        return x

    def _logits(self, x):
        return self.ops.linear(self.norm(x), self.output.weight, None).float()

    def prefill(self, tokens, lengths, cache: KVCache):
        """Logits [B, V] at each row's last prompt token; fills cache positions [0, T)."""
        b, t = tokens.shape
        positions = torch.arange(t, device=tokens.device).expand(b, t)
        x, rope = self._embed(tokens, positions), self._rope(positions)
        for i, layer in enumerate(self.layers):
            x = layer.attention.prefill(x, layer.attention_norm(x), rope, cache.k[i], cache.v[i])
            x = layer.feed_forward(x, layer.ffn_norm(x))
        last = x[torch.arange(b, device=x.device), lengths - 1]
        return self._logits(last)

    def decode(self, tokens, positions, rows, cache: KVCache):
        """Logits [B, V] for one new token per row at `positions` (also where it is cached)."""
        x = self._embed(tokens[:, None], positions[:, None])
        rope, lengths = self._rope(positions[:, None]), positions + 1
        for i, layer in enumerate(self.layers):
            h = layer.attention_norm(x)
            x = layer.attention.decode(x, h, rope, cache.k[i], cache.v[i], rows, positions, lengths)
            x = layer.feed_forward(x, layer.ffn_norm(x))
        return self._logits(x[:, 0])

    def weight_bytes_per_step(self) -> int:
        """Bytes of weights one decode step reads: all but the embedding rows it does not touch."""
        total = sum(p.numel() * p.element_size() for p in self.parameters())
        if self.pos_embeddings is not None:
            total -= self.pos_embeddings.weight.numel() * self.pos_embeddings.weight.element_size()
        if self.output.weight is not self.tok_embeddings.weight:
            emb = self.tok_embeddings.weight
            total -= emb.numel() * emb.element_size()
        return total


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_frequencies(spec: Spec) -> torch.Tensor:
    """Inverse RoPE frequencies as Hugging Face computes them (default, linear and llama3 types)."""
    p, dim = spec.rope_params, spec.head_dim
    inv_freq = 1.0 / (p["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    kind = p.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / p["factor"]
    if kind == "llama3":
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) * ~(wavelen > old / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def hf_to_okto(spec: Spec, state: dict) -> dict:
    """Map a Hugging Face state dict onto `Decoder`'s names (fusing QKV and gate/up, transposing Conv1D)."""
    state = {k.removeprefix("transformer.").removeprefix("model."): v for k, v in state.items()}
    out = {
        "tok_embeddings.weight": state[
            "wte.weight" if spec.family == "gpt2" else "embed_tokens.weight"
        ]
    }
    head = state.get("lm_head.weight")
    if spec.family == "gpt2":
        out["pos_embeddings.weight"] = state["wpe.weight"]
        out["norm.weight"], out["norm.bias"] = state["ln_f.weight"], state["ln_f.bias"]
        names = {
            "attention_norm": "ln_1",
            "ffn_norm": "ln_2",
            "attention.wqkv": "attn.c_attn",
            "attention.wo": "attn.c_proj",
            "feed_forward.w1": "mlp.c_fc",
            "feed_forward.w2": "mlp.c_proj",
        }
        for i in range(spec.n_layer):
            for ours, theirs in names.items():
                weight = state[f"h.{i}.{theirs}.weight"]
                # GPT-2's Conv1D stores [in, out]; nn.Linear wants [out, in]
                out[f"layers.{i}.{ours}.weight"] = weight if "norm" in ours else weight.t()
                out[f"layers.{i}.{ours}.bias"] = state[f"h.{i}.{theirs}.bias"]
    else:
        out["norm.weight"] = state["norm.weight"]
        for i in range(spec.n_layer):
            src, dst = f"layers.{i}.", f"layers.{i}."
            out[dst + "attention_norm.weight"] = state[src + "input_layernorm.weight"]
            out[dst + "ffn_norm.weight"] = state[src + "post_attention_layernorm.weight"]
            _fuse(out, dst + "attention.wqkv", state, [src + f"self_attn.{p}_proj" for p in "qkv"])
            _fuse(out, dst + "attention.wo", state, [src + "self_attn.o_proj"])
            _fuse(out, dst + "feed_forward.w1", state, [src + "mlp.gate_proj", src + "mlp.up_proj"])
            _fuse(out, dst + "feed_forward.w2", state, [src + "mlp.down_proj"])
    if not spec.tie_embeddings:
        out["output.weight"] = head
    return out


def _fuse(out: dict, ours: str, state: dict, theirs: list[str]) -> None:
    """One Linear from several stacked on the output dimension (q/k/v, gate/up)."""
    for part in ("weight", "bias"):
        tensors = [state[f"{t}.{part}"] for t in theirs if f"{t}.{part}" in state]
        if tensors:
            out[f"{ours}.{part}"] = tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def build(spec: Spec, state: dict, ops: Ops, device, dtype) -> Decoder:
    """A Decoder holding the Hugging Face `state` weights on `device` in `dtype`."""
    with torch.device("meta"):
        model = Decoder(spec, ops)
    weights = hf_to_okto(spec, state)
    missing = [k for k in model.state_dict() if k not in weights and k != "output.weight"]
    if missing:
        raise KeyError(f"the weights lack {missing[0]}")
    model.load_state_dict(
        {k: v.to(device=device, dtype=dtype).contiguous() for k, v in weights.items()},
        strict=False,
        assign=True,
    )
    if spec.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.set_rope()
    return model.eval().requires_grad_(False)
