"""The okto forwards the planner installs on module instances, and their installers.

Each forward reads its module's parameters at call time, so `.to()`, `.half()`
and optimizer steps need no re-patching, and is bound with `types.MethodType`,
so `copy.deepcopy(model)` rebinds it to the copy. Under autocast the operands
are cast to the autocast dtype first: okto's ops are custom ops that autocast
does not cast, and they take one dtype for all operands.
"""

from __future__ import annotations

import copy
import functools
import inspect
import types

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithPast,
)
from transformers.pytorch_utils import Conv1D

from okto import kernels
from okto.kernels import hf_attention
from okto.kernels.ops.attention import DTYPES as ATTENTION_DTYPES
from okto.planner.patches import Patches

IGNORE_INDEX = -100
EPILOGUE = {"tanh": "gelu_tanh", "none": "gelu"}  # gelu approximation -> GEMM epilogue


def install(patches: Patches, module: torch.nn.Module, fn, **params) -> None:
    """Make `fn(module, ...)` (with `params` as keywords) the instance's forward."""
    patches.set(module, "forward", types.MethodType(with_keywords(fn, params), module))


def with_keywords(fn, params: dict):
    """`fn` with `params` added to every call, as a plain function.

    Not a `functools.partial`: torch.compile looks up the source file of a
    module's bound `forward`, and a method over a partial has none (dynamo's
    trace_rules raise an AssertionError before compiling anything).
    """
    if not params:
        return fn

    def forward(self, *args, **kwargs):
        return fn(self, *args, **kwargs, **params)

    forward.__dict__.update(fn.__dict__)  # markers such as `defers_bias`'s
    return forward


def patch_each(model: torch.nn.Module, cls: type, patches: Patches, fn, **params) -> None:
    """Install `fn` on every module of exactly class `cls` (subclasses may compute otherwise)."""
    for module in model.modules():
        if type(module) is cls:
            install(patches, module, fn, **params)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _as(dtype: torch.dtype, *tensors):
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


def _hooked(module: torch.nn.Module) -> bool:
    """A module with forward hooks (a LoRA adapter, say) must be called, not bypassed."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _dropping(dropout: torch.nn.Module) -> bool:
    return dropout.training and dropout.p > 0


def defers_bias(fn):
    """Mark an okto forward that takes `defer_bias=True`: it then returns (its output before
    its last bias add, that bias), or (its output, None) when it cannot leave the add out,
    so that the norm after it adds the bias instead (see `deferring_bias`)."""
    fn.defers_bias = True
    return fn


def deferring_bias(module: torch.nn.Module, x):
    """(module(x), None), or (its output before its last bias add, that bias) where the
    module's forward can leave the add to the norm that follows: okto's forwards marked
    with `defers_bias`, and plain nn.Linear and GPT-2 Conv1D layers.

    okto's norm then adds the bias in its own pass and returns the bias's gradient from
    its backward's column sums, so the layer's bias-gradient pass over its output
    gradient disappears. Hooked modules are called as they are."""
    if _hooked(module):
        return _hidden(module(x)), None
    if getattr(module.forward, "defers_bias", False):
        return module.forward(x, defer_bias=True)
    plain = type(module) in (torch.nn.Linear, Conv1D) and "forward" not in vars(module)
    if plain and module.bias is not None:  # (a forward set on the instance is someone's patch)
        if type(module) is Conv1D:
            return torch.matmul(x, module.weight), module.bias
        return F.linear(x, module.weight), module.bias
    return _hidden(module(x)), None


def _kept_bias(y, defer_bias: bool):
    """A forward's return when its bias was added: y, or (y, None) for a `defer_bias` call."""
    return (y, None) if defer_bias else y


@defers_bias
def gemm_forward(self, x, *, layout: str, defer_bias: bool = False):
    """nn.Linear (`layout="out_in"`) or GPT-2's Conv1D (`"in_out"`) on okto's GEMM."""
    x, weight, bias = _as(compute_dtype(x), x, self.weight, self.bias)
    if defer_bias:
        return kernels.linear(x, weight, None, weight_layout=layout), self.bias
    return kernels.linear(x, weight, bias, weight_layout=layout)


@defers_bias
def gpt2_mlp_forward(self, x, *, approximate: str, fused: bool, defer_bias: bool = False):
    """GPT2MLP: c_fc with GELU in its epilogue (or okto's gelu after it), c_proj, dropout."""
    if fused and not _hooked(self.c_fc):
        fc = self.c_fc
        x, weight, bias = _as(compute_dtype(x), x, fc.weight, fc.bias)
        h = kernels.linear(
            x, weight, bias, activation=EPILOGUE[approximate], weight_layout="in_out"
        )
    else:
        h = kernels.gelu(self.c_fc(x), approximate=approximate)
    if defer_bias and not _dropping(self.dropout):
        return deferring_bias(self.c_proj, h)
    return _kept_bias(self.dropout(self.c_proj(h)), defer_bias)


@defers_bias
def gpt2_gelu_mlp_forward(self, x, *, approximate: str, defer_bias: bool = False):
    """GPT2MLP as okto's gelu_mlp op (GEMMs on cuBLAS, GELU in cuBLASLt's epilogues both
    ways), then dropout. A hooked c_fc or c_proj (a LoRA adapter) is called as a module."""
    if _hooked(self.c_fc) or _hooked(self.c_proj):
        y = self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=approximate)))
        return _kept_bias(y, defer_bias)
    fc, proj = self.c_fc, self.c_proj
    defer = defer_bias and proj.bias is not None and not _dropping(self.dropout)
    dtype = compute_dtype(x)
    params = (fc.weight, fc.bias, proj.weight, None if defer else proj.bias)
    if any(p is not None and p.dtype != torch.float32 for p in params):
        params = _as(dtype, *params)  # else fp32 master weights: the op casts them
    x = x if x.dtype == dtype else x.to(dtype)
    y = kernels.gelu_mlp(x, *params, approximate=approximate)
    if defer:
        return y, proj.bias
    return _kept_bias(self.dropout(y), defer_bias)


def layer_norm_forward(self, x):
    return kernels.layer_norm(x, self.weight, self.bias, self.eps)


def rms_norm_forward(self, x):
    return kernels.rms_norm(x, self.weight, self.variance_epsilon)


def _plain_call_ids(config, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The token ids of a plain training call on a base model (ids, `use_cache=False`,
    nothing else given or asked for, here or by the config's defaults), or None for any
    other call."""
    named = dict(zip(("input_ids",), args, strict=False)) | kwargs
    ids = named.pop("input_ids", None)
    use_cache = named.pop("use_cache", None)
    return_dict = named.pop("return_dict", None)
    if (
        len(args) > 1
        or ids is None
        or ids.dim() != 2
        or use_cache is not False
        or (return_dict is None and not config.return_dict)
        or return_dict is False
        or any(value is not None and value is not False for value in named.values())
        or getattr(config, "output_hidden_states", False)
        or getattr(config, "output_attentions", False)
    ):
        return None
    return ids


def _hidden(out):
    """A decoder block's hidden states: its output, or a tuple's first (before transformers 5)."""
    return out[0] if isinstance(out, tuple) else out


def gpt2_model_forward(self, *args, residual_norms: bool, **kwargs):
    """GPT2Model for a plain training call: the blocks get no attention mask at all, so
    attention runs on okto's packed kernel. transformers would build a mask while
    compiling: with no cache it checks the positions for packed sequences, which it
    cannot read while tracing, and a mask sends every layer to SDPA. Here the positions
    are the model's own `arange`, one sequence per row. With `residual_norms` each
    residual add runs inside the LayerNorm after it (`residual_norm_blocks`).
    Every other call runs the class's forward."""
    ids = _plain_call_ids(self.config, args, kwargs)
    if ids is None:
        return type(self).forward(self, *args, **kwargs)
    positions = torch.arange(ids.shape[1], device=ids.device)
    hidden = self.drop(self.wte(ids) + self.wpe(positions))
    if residual_norms:
        parts = [
            (
                b.ln_1,
                functools.partial(deferring_bias, b.attn),
                b.ln_2,
                functools.partial(deferring_bias, b.mlp),
            )
            for b in self.h
        ]
        out = residual_norm_blocks(self, hidden, self.h, parts, self.ln_f, _layer_norm)
        if out is not None:
            return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=out)
    for block in self.h:
        hidden = _hidden(block(hidden, use_cache=False))
    return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self.ln_f(hidden))


def residual_norm_blocks(model, hidden, blocks, parts, final_norm, norm):
    """Pre-norm blocks, `h = h + attention(norm_1(h)); h = h + mlp(norm_2(h))`, with every
    residual add fused into the norm that follows it (norm_2, the next block's norm_1,
    `final_norm`); the final norm's output, or None where the blocks must run through
    their own calls (none at all, hooks on a block or norm, activation checkpointing).

    okto's norm takes the sublayer's output and the residual stream, writes their sum
    (the new stream) and the normalised sum in one pass, the latter already in the dtype
    the next GEMM reads; its backward writes the stream's gradient and the sublayer's,
    each in its own dtype, in one pass too. Under autocast the stream stays fp32 as in
    the model's own forward, and the values are the same; the final norm's output is in
    the stream's dtype, as the model's is.

    A sublayer may also leave its last bias add to the norm after it (`deferring_bias`).

    `parts`: per block (norm_1, attention, norm_2, mlp), attention and mlp callables on
    the normalised input that return (output, a bias still to add or None);
    `norm(module, x, x_bias, residual, out_dtype)` runs one norm module on okto's kernel.
    """
    norms = [final_norm, *(n for norm_1, _, norm_2, _ in parts for n in (norm_1, norm_2))]
    if not _plain_blocks(model, blocks, norms):
        return None
    dtype = compute_dtype(hidden)
    x = norm(parts[0][0], hidden, None, None, dtype)
    next_norms = [norm_1 for norm_1, *_ in parts[1:]] + [final_norm]
    for (_, attention, norm_2, mlp), next_norm in zip(parts, next_norms, strict=True):
        x, hidden = norm(norm_2, *attention(x), hidden, dtype)
        out_dtype = dtype if next_norm is not final_norm else None
        x, hidden = norm(next_norm, *mlp(x), hidden, out_dtype)
    return x


def _plain_blocks(model, blocks, norms) -> bool:
    """Whether the blocks may be run step by step here, bypassing their own calls: there are
    some, no block or norm has hooks, and nothing checkpoints activations (that lives in a
    block's call)."""
    return (
        len(blocks) > 0
        and not any(
            _hooked(m) or getattr(m, "gradient_checkpointing", False) for m in (*blocks, *norms)
        )
        and not getattr(model, "gradient_checkpointing", False)
    )


def _layer_norm(ln, x, x_bias, residual, out_dtype):
    options = {"residual": residual, "out_dtype": out_dtype, "x_bias": x_bias}
    return kernels.layer_norm(x, ln.weight, ln.bias, ln.eps, **options)


def _rms_norm(norm, x, x_bias, residual, out_dtype):
    options = {"residual": residual, "out_dtype": out_dtype, "x_bias": x_bias}
    return kernels.rms_norm(x, norm.weight, norm.variance_epsilon, **options)


def llama_model_forward(self, *args, residual_norms: bool, **kwargs):
    """LlamaModel for a plain training call, for the reason `gpt2_model_forward` gives:
    the layers get no mask, so attention reaches okto's kernel through the attention
    hook (causal, grouped-query heads as they are) under torch.compile too. The rotary
    embeddings come from the model's own positions, `arange` over one sequence per row.
    With `residual_norms` each residual add runs inside the RMSNorm after it
    (`residual_norm_blocks`). Every other call runs the class's forward."""
    ids = _plain_call_ids(self.config, args, kwargs)
    if ids is None:
        return type(self).forward(self, *args, **kwargs)
    hidden = self.embed_tokens(ids)
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    rotary = self.rotary_emb(hidden, position_ids=positions)
    layers = self.layers[: self.config.num_hidden_layers]
    if residual_norms:
        parts = [
            (
                layer.input_layernorm,
                functools.partial(_llama_attention, layer.self_attn, rotary, positions),
                layer.post_attention_layernorm,
                functools.partial(deferring_bias, layer.mlp),
            )
            for layer in layers
        ]
        out = residual_norm_blocks(self, hidden, layers, parts, self.norm, _rms_norm)
        if out is not None:
            return BaseModelOutputWithPast(last_hidden_state=out)
    for layer in layers:
        hidden = _hidden(
            layer(hidden, position_embeddings=rotary, position_ids=positions, use_cache=False)
        )
    return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden))


def _llama_attention(attn, rotary, positions, x):
    """The attention sublayer's (output, None): its o_proj keeps its bias, if any."""
    out = attn(
        hidden_states=x,
        attention_mask=None,
        position_ids=positions,
        position_embeddings=rotary,
        use_cache=False,
    )
    return _hidden(out), None


@defers_bias
def gpt2_attention_forward(
    self,
    hidden_states,
    past_key_values=None,
    attention_mask=None,
    encoder_hidden_states=None,
    encoder_attention_mask=None,
    output_attentions=False,
    defer_bias=False,
    **kwargs,
):
    """GPT2Attention's causal self-attention with c_attn's output handed whole to okto's
    packed kernel, so the backward writes one gradient for it instead of three that
    autograd concatenates (see okto.kernels.ops.packed_attention). Calls it cannot take (a
    mask, a cache, cross-attention, attention dropout, attention weights) run the class's
    forward, which reaches okto's kernel through the attention hook where it can.
    With `defer_bias` it returns (output, c_proj's bias still to add, or None)."""
    if (
        past_key_values is not None
        or attention_mask is not None
        or encoder_hidden_states is not None
        or output_attentions
        or (self.training and self.attn_dropout.p > 0)
        or compute_dtype(hidden_states) not in ATTENTION_DTYPES
        or not hasattr(self, "scaling")  # transformers before 5 computed the scale inline
    ):
        out = type(self).forward(
            self,
            hidden_states,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            output_attentions=output_attentions,
            **kwargs,
        )
        return (_hidden(out), None) if defer_bias else out
    qkv = self.c_attn(hidden_states)
    out = kernels.packed_attention(qkv, self.num_heads, causal=True, scale=self.scaling)
    if defer_bias and not _dropping(self.resid_dropout):
        return deferring_bias(self.c_proj, out)
    # The class's return, (output, no attention weights), reads as a kept bias too.
    return self.resid_dropout(self.c_proj(out)), None


def use_okto_attention(model: torch.nn.Module, patches: Patches) -> None:
    """Point transformers' attention hook (`config._attn_implementation`) at okto.

    The hook is read from the config, and one config object is shared by every
    model built from it, so this model first gets its own copy, set on each of
    its modules that held the original.
    """
    original = model.config
    own = copy.deepcopy(original)
    own._attn_implementation = hf_attention.register()
    for module in model.modules():
        if module.__dict__.get("config") is original:
            patches.set(module, "config", own)


def install_loss(model: torch.nn.Module, patches: Patches, fused: bool) -> None:
    """Replace the LM's forward for calls with `labels`: okto's loss on the LM head."""
    signature = inspect.signature(type(model).forward)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = tuple(p.name for p in list(signature.parameters.values())[1:] if p.kind in positional)
    forward = with_keywords(causal_lm_forward, {"okto_names": names, "okto_fused": fused})
    forward.__signature__ = signature  # generate() and trainers read the forward's parameters
    patches.set(model, "forward", types.MethodType(forward, model))


def causal_lm_forward(self, *args, okto_names: tuple[str, ...], okto_fused: bool, **kwargs):
    """With `labels`: the base model, then okto's loss on the shifted labels, the logits
    never materialised when `okto_fused` (`logits=None`) and the head has no hooks.
    Otherwise the class's forward.

    The loss matches transformers' causal-LM loss: labels shifted left with -100
    padding (or `shift_labels`), mean over the counted tokens, or a sum divided by
    `num_items_in_batch` when given. Unless the caller asks for one, no KV cache is
    built: transformers' default copies every layer's keys and values into one.
    """
    named = dict(zip(okto_names, args, strict=False)) | kwargs
    labels = named.pop("labels", None)
    keep = named.pop("logits_to_keep", 0)
    if labels is None or not (isinstance(keep, int) and keep == 0):
        return type(self).forward(self, *args, **kwargs)
    if "use_cache" in okto_names and named.get("use_cache") is None:
        named["use_cache"] = False  # a loss needs no KV cache (transformers' default builds one)
    return_dict = named.pop("return_dict", None)
    shift_labels = named.pop("shift_labels", None)
    items = named.get("num_items_in_batch")
    outputs = self.base_model(**named)
    hidden = outputs[0]
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    target = shift_labels.reshape(-1).to(hidden.device)
    reduction = "mean" if items is None else "sum"
    head = self.get_output_embeddings()
    logits = None
    if okto_fused and not _hooked(head):
        h = hidden.reshape(-1, hidden.shape[-1])
        h, weight, bias = _as(compute_dtype(h), h, head.weight, head.bias)
        loss = kernels.fused_linear_cross_entropy(h, weight, target, bias, reduction=reduction)
    else:
        logits = head(hidden)
        loss = kernels.cross_entropy(logits.flatten(0, -2), target, reduction=reduction)
    loss = loss.float()
    if items is not None:
        loss = loss / (items.to(loss.device) if torch.is_tensor(items) else items)
    output = CausalLMOutputWithPast(
        loss=loss,
        logits=logits,
        past_key_values=getattr(outputs, "past_key_values", None),
        hidden_states=getattr(outputs, "hidden_states", None),
        attentions=getattr(outputs, "attentions", None),
    )
    return (
        output
        if (self.config.return_dict if return_dict is None else return_dict)
        else output.to_tuple()
    )
