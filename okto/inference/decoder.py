"""A compact decoder (GPT-2 and Llama families) with a static KV cache, in the spirit of gpt-fast.

Two entry points: `prefill` runs whole prompts (right-padded, every row from
position 0) and fills the cache; `decode` runs one token per row at that
row's own position. Each row's valid cache entries are [0, length), so rows of
different lengths share one batch without masks in the cache. Every matmul,
norm and attention call goes through the `Ops` of its phase (see
`okto.inference.ops`, the one place where okto's kernels replace PyTorch's).

Few kernels per decode step, since at small batches a step costs about a
launch per kernel: each residual add happens inside the next norm (okto's
norm kernels take the residual), a layer's keys and values are cached by one
write into one tensor, and the decode attention's mask is made once per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from okto.errors import RunError
from okto.inference.ops import FUSED_ACTIVATIONS, Ops, Plan
from okto.inference.spec import Spec

_ACT = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class KVCache:
    """Keys and values of `batch` rows of up to `length` tokens: per layer one [B, 2, H_kv, S, D] tensor."""

    def __init__(self, spec: Spec, batch: int, length: int, dtype, device):
        shape = (batch, 2, spec.n_kv_head, length, spec.head_dim)
        # Zeros, not empty: masked-out entries still meet the values in a matmul, and 0 * NaN is NaN.
        self.layers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(spec.n_layer)]
        self.length = length


class Norm(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(spec.dim))
        self.bias = nn.Parameter(torch.zeros(spec.dim)) if spec.family == "gpt2" else None
        self.eps = spec.norm_eps

    def forward(self, ops: Ops, x, residual):
        """(norm(x + residual), x + residual); a None residual adds nothing."""
        if residual is None:
            if self.bias is None:
                return ops.rms_norm(x, self.weight, self.eps), x
            return ops.layer_norm(x, self.weight, self.bias, self.eps), x
        if self.bias is None:
            return ops.rms_norm(x, self.weight, self.eps, residual=residual)
        return ops.layer_norm(x, self.weight, self.bias, self.eps, residual=residual)


class Attention(nn.Module):
    def __init__(self, spec: Spec, layer: int):
        super().__init__()
        h, kv, d = spec.n_head, spec.n_kv_head, spec.head_dim
        self.wqkv = nn.Linear(spec.dim, (h + 2 * kv) * d, bias=spec.attn_bias)
        self.wo = nn.Linear(h * d, spec.dim, bias=spec.attn_bias)
        self.n_head, self.n_kv_head, self.head_dim = h, kv, d
        self.scale = 1 / math.sqrt(d) / (layer + 1 if spec.scale_by_layer else 1)
        self.rotary = spec.family == "llama"

    def _project(self, ops: Ops, h, rope):
        """Queries [B, H, T, D] and the keys and values to cache, stacked: [B, 2, H_kv, T, D]."""
        b, t, _ = h.shape
        heads = self.n_head + 2 * self.n_kv_head
        qkv = ops.linear(h, self.wqkv.weight, self.wqkv.bias).view(b, t, heads, self.head_dim)
        qkv = qkv.transpose(1, 2)
        if not self.rotary:  # views of the projection: no copy
            return qkv[:, : self.n_head], qkv[:, self.n_head :].unflatten(1, (2, self.n_kv_head))
        # queries and keys share the positions: one rotation for both
        qk = _rotate(qkv[:, : self.n_head + self.n_kv_head], *rope)
        k, v = qk[:, self.n_head :], qkv[:, self.n_head + self.n_kv_head :]
        return qk[:, : self.n_head], torch.stack((k, v), dim=1)

    def _out(self, ops: Ops, y):
        b, _, t, _ = y.shape
        y = y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        return ops.linear(y, self.wo.weight, self.wo.bias)

    def prefill(self, ops: Ops, h, rope, cache):
        """Attention over the normed `h`, caching keys and values at [0, T)."""
        q, kv = self._project(ops, h, rope)
        cache[:, :, :, : h.shape[1]] = kv
        k, v = kv.unbind(1)
        return self._out(ops, ops.prefill_attention(q, k, v, self.scale))

    def decode(self, ops: Ops, h, rope, cache, rows, positions, mask):
        """Attention of one new token per row, cached at `positions`; `mask` from `ops.decode_mask`."""
        q, kv = self._project(ops, h, rope)
        cache[rows, :, :, positions] = kv[:, :, :, 0]
        y = ops.decode_attention(q[:, :, 0], cache[:, 0], cache[:, 1], mask, self.scale)
        return self._out(ops, y[:, :, None])


class FeedForward(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        self.gated = spec.family == "llama"
        width = 2 * spec.hidden if self.gated else spec.hidden  # Llama: gate and up fused
        self.w1 = nn.Linear(spec.dim, width, bias=spec.mlp_bias)
        self.w2 = nn.Linear(spec.hidden, spec.dim, bias=spec.mlp_bias)
        self.activation = spec.activation

    def forward(self, ops: Ops, h):
        """The MLP of the normed `h` (a GELU in the first matmul's epilogue when a kernel fuses it)."""
        if self.gated:
            gate, up = ops.linear(h, self.w1.weight, self.w1.bias).chunk(2, dim=-1)
            h = _ACT[self.activation](gate) * up
        elif self.activation in FUSED_ACTIVATIONS:
            h = ops.linear(h, self.w1.weight, self.w1.bias, activation=self.activation)
        else:
            h = _ACT[self.activation](ops.linear(h, self.w1.weight, self.w1.bias))
        return ops.linear(h, self.w2.weight, self.w2.bias)


class Block(nn.Module):
    def __init__(self, spec: Spec, layer: int):
        super().__init__()
        self.attention_norm = Norm(spec)
        self.attention = Attention(spec, layer)
        self.ffn_norm = Norm(spec)
        self.feed_forward = FeedForward(spec)


class Decoder(nn.Module):
    def __init__(self, spec: Spec, plan: Plan):
        super().__init__()
        self.spec, self.plan = spec, plan
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.dim)
        self.pos_embeddings = (
            nn.Embedding(spec.max_positions, spec.dim) if spec.family == "gpt2" else None
        )
        self.layers = nn.ModuleList(Block(spec, i) for i in range(spec.n_layer))
        self.norm = Norm(spec)
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
        """The token embeddings and what the first norm adds to them (GPT-2's position embeddings)."""
        x = self.tok_embeddings(tokens)
        return x, None if self.pos_embeddings is None else self.pos_embeddings(positions)

    def _blocks(self, ops: Ops, x, residual, attend):
        """Every block; `attend(attention, h, i)` runs layer i's attention. (stream, its pending add)."""
        for i, layer in enumerate(self.layers):
            h, x = layer.attention_norm(ops, x, residual)
            residual = attend(layer.attention, h, i)
            h, x = layer.ffn_norm(ops, x, residual)
            residual = layer.feed_forward(ops, h)
        return x, residual

    def _logits(self, ops: Ops, x, residual):
        h, _ = self.norm(ops, x, residual)
        return ops.linear(h, self.output.weight, None).float()

    def prefill(self, tokens, lengths, cache: KVCache):
        """Logits [B, V] at each row's last prompt token; fills cache positions [0, T)."""
        b, t = tokens.shape
        ops = self.plan.prefill
        positions = torch.arange(t, device=tokens.device).expand(b, t)
        x, residual = self._embed(tokens, positions)
        rope = self._rope(positions)

        def attend(attention, h, i):
            return attention.prefill(ops, h, rope, cache.layers[i])

        x, residual = self._blocks(ops, x, residual, attend)
        last = (torch.arange(b, device=tokens.device), lengths - 1)
        return self._logits(ops, x[last], residual[last])

    def decode(self, tokens, positions, rows, cache: KVCache):
        """Logits [B, V] for one new token per row at `positions` (also where it is cached)."""
        ops = self.plan.decode
        x, residual = self._embed(tokens[:, None], positions[:, None])
        rope = self._rope(positions[:, None])
        mask = ops.decode_mask(positions + 1, cache.length, x.dtype)

        def attend(attention, h, i):
            return attention.decode(ops, h, rope, cache.layers[i], rows, positions, mask)

        x, residual = self._blocks(ops, x, residual, attend)
        return self._logits(ops, x[:, 0], residual[:, 0])

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
        if head is None:
            raise KeyError("lm_head.weight")
        out["output.weight"] = head
    return out


def _fuse(out: dict, ours: str, state: dict, theirs: list[str]) -> None:
    """One Linear from several stacked on the output dimension (q/k/v, gate/up)."""
    for part in ("weight", "bias"):
        tensors = [state[f"{t}.{part}"] for t in theirs if f"{t}.{part}" in state]
        if tensors:
            out[f"{ours}.{part}"] = tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def build(spec: Spec, state: dict, plan: Plan, device, dtype) -> Decoder:
    """A Decoder holding the Hugging Face `state` weights on `device` in `dtype`; weights that
    do not fit the config (a tensor missing, a shape other than the config's) are a RunError."""
    with torch.device("meta"):
        model = Decoder(spec, plan)
    try:
        weights = hf_to_okto(spec, state)
    except KeyError as e:
        raise RunError(f"the weights lack {e.args[0]}, which a {spec.family} model has") from None
    for name, expected in model.state_dict().items():
        got = weights.get(name)
        if got is None and name == "output.weight" and spec.tie_embeddings:
            continue
        if got is None:
            raise RunError(f"the weights lack the tensor okto calls {name}")
        if got.shape != expected.shape:
            raise RunError(
                f"the weights do not fit the config: okto's {name} is {list(got.shape)} in the "
                f"weights, {list(expected.shape)} by the config"
            )
    model.load_state_dict(
        {k: v.to(device=device, dtype=dtype).contiguous() for k, v in weights.items()},
        strict=False,
        assign=True,
    )
    if spec.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.set_rope()
    return model.eval().requires_grad_(False)
