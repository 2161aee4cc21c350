"""Which implementation runs each layer kind, and why.

Two steps. `requests` reads the configuration and the machine alone:
ACCELERATE.<kind> when it is not auto, else BLAS.backend, else okto (but under
OPTIMIZE.compile, auto leaves GEMMs to cuBLAS, puts a tanh GELU into cuBLASLt's
GEMM epilogues and keeps the norm on okto's, the residual adds inside it, where
that measured faster: docs/benchmarks.md); then okto falls back to native
when the machine cannot run Triton kernels.
`choose` then meets the model: an architecture the planner does not patch, a
dtype, a head dim or a dropout the kernels lack turns a kind native, and the
fused epilogues (ACCELERATE.fused_ops) decide how GELU and the loss run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from okto.planner.architecture import Architecture, ModelFacts
from okto.planner.machine import Machine
from okto.planner.models import ARCHITECTURES, SUPPORTED
from okto.planner.settings import Setting
from okto.planner.sources import DEFAULT, Sources, display

KINDS = ("gemm", "attention", "layernorm", "softmax", "cross_entropy", "activation")
OKTO, NATIVE = "okto", "native"
KERNEL_DTYPES = ("float32", "float16", "bfloat16")
FUSED_LOSS = "LM head + loss as one op"

NATIVE_RUNS = {
    "gemm": "torch matmul",
    "attention": "the model's attention (SDPA)",
    "layernorm": "torch",
    "softmax": "inside the model's attention",
    "cross_entropy": "transformers' loss on the full logits",
    "activation": "torch",
}


@dataclass(frozen=True)
class LayerChoice:
    """One layer kind: okto or native, what runs it, why, and the field that decided."""

    kind: str
    impl: str
    runs: str
    reason: str
    field: str | None = None
    origin: str = DEFAULT
    fused: bool = False  # GELU in the GEMM epilogue / linear + cross-entropy in one op

    def to_dict(self) -> dict[str, Any]:
        return {
            "impl": self.impl,
            "runs": self.runs,
            "reason": self.reason,
            "fused": self.fused,
            "field": display(self.field) if self.field else None,
            "origin": self.origin,
        }


# Kinds that auto leaves to the framework when the step is compiled: inductor fuses
# what lies around cuBLAS's GEMMs, and on an H100 that step ran 1.19x faster than the
# same step with okto's GEMM and plain norm kernels. The activation stays okto's: with
# cuBLAS GEMMs a tanh GELU goes into cuBLASLt's epilogues (okto gelu_mlp), which beat
# inductor's GELU passes; any other GELU is left to inductor. The norm stays okto's,
# each residual add inside it, where that measured faster (`Architecture.compiled_norms`:
# GPT-2, whose step writes the stream, the norm and, backward, both gradients in one
# pass each); elsewhere inductor fuses the norm with the adds.
COMPILED_NATIVE = ("gemm",)
COMPILED_AUTO = "auto under OPTIMIZE.compile"


def requests(
    sources: Sources, machine: Machine, device: Setting, compiled: Setting
) -> dict[str, LayerChoice]:
    """What the configuration asks for each kind, given what this machine can run."""
    blocked = _machine_blocks(machine, device)
    out = {}
    for kind in KINDS:
        asked = _asked(sources, kind, compiled)
        if asked.impl == OKTO and blocked:
            asked = replace(asked, impl=NATIVE, reason=_although(blocked, asked))
        elif asked.impl == OKTO and device.value == "cpu":
            asked = replace(asked, reason=f"{asked.reason}; Triton's interpreter (OKTO_KERNELS)")
        out[kind] = asked
    return out


def _although(blocked: str, asked: LayerChoice) -> str:
    """Why okto does not run a kind, and the field that asked for it outright, if one did."""
    if asked.field is None or asked.field == "optimize.compile":  # auto asked, not the file
        return blocked
    return f"{blocked}, although {display(asked.field)}: {_written(asked)}"


def _written(asked: LayerChoice) -> str:
    """The value of the field that asked for `asked.impl`, as a file writes it."""
    return "oktoblas" if asked.impl == OKTO else "native"


def _asked(sources: Sources, kind: str, compiled: Setting) -> LayerChoice:
    path = f"accelerate.{kind}"
    value = sources.value(path)
    if value != "auto":
        impl = OKTO if value == "oktoblas" else NATIVE
        return LayerChoice(kind, impl, "", f"{display(path)}: {value}", path, sources.origin(path))
    backend = sources.value("blas.backend")
    if backend != "auto":
        impl = OKTO if backend == "oktoblas" else NATIVE
        return LayerChoice(
            kind,
            impl,
            "",
            f"BLAS.backend: {backend}, {display(path)} auto",
            "blas.backend",
            sources.origin("blas.backend"),
        )
    if compiled.value and kind in COMPILED_NATIVE:
        reason = f"{COMPILED_AUTO}: cuBLAS and inductor's fusion (faster compiled)"
        return LayerChoice(kind, NATIVE, "", reason, compiled.field, compiled.origin)
    if compiled.value and kind == "activation":
        reason = f"{COMPILED_AUTO}: GELU in cuBLASLt's GEMM epilogues where it fits"
        return LayerChoice(kind, OKTO, "", reason, compiled.field, compiled.origin)
    if compiled.value and kind == "layernorm":
        reason = f"{COMPILED_AUTO}: okto's, the residual adds inside, where measured faster"
        return LayerChoice(kind, OKTO, "", reason, compiled.field, compiled.origin)
    return LayerChoice(kind, OKTO, "", "auto: okto where its kernels run")


def _machine_blocks(machine: Machine, device: Setting) -> str | None:
    """Why this machine runs no okto kernel at all, or None."""
    if machine.kernel_mode == "native":
        return "OKTO_KERNELS=native"
    if not machine.triton:
        return "Triton is not installed (pip install 'okto[triton]')"
    if device.value == "cpu" and not (machine.kernel_mode == "triton" and machine.interpreter):
        # OKTO_KERNELS=triton asked for the kernels: say what the CPU lacks for them
        forced = " (OKTO_KERNELS=triton needs TRITON_INTERPRET=1 there)"
        hint = forced if machine.kernel_mode == "triton" else ""
        if not machine.cuda:
            return "no CUDA" + hint
        where = display(device.field) if device.field else device.origin
        return f"the device is the CPU ({where}){hint}"
    return None


OPTIMIZER_KERNEL, OPTIMIZER_TORCH = "okto", "torch"


def optimizer(sources: Sources, machine: Machine, settings: dict[str, Setting]) -> Setting:
    """Which implementation runs the optimizer's update: okto's multi-tensor AdamW kernel
    where it applies (AdamW, fp32 parameters, a machine that runs okto's kernels,
    BLAS.backend not cublas, parameters not sharded), else torch's own."""
    path = "train.optimizer"
    name = sources.value(path)
    origin = sources.origin(path)
    torch_fused = f"torch's fused {name}" if name in ("adam", "adamw") else f"torch's {name}"
    if name != "adamw":
        return Setting(OPTIMIZER_TORCH, path, origin, f"{torch_fused}; okto's kernel is AdamW's")
    blocked = _machine_blocks(machine, settings["device"])
    weights, strategy = settings["weights"], settings["strategy"]
    if blocked:
        return Setting(OPTIMIZER_TORCH, path, origin, f"{torch_fused}: {blocked}")
    if sources.value("blas.backend") == "cublas":
        why = f"{torch_fused}: {display('blas.backend')}: cublas"
        return Setting(OPTIMIZER_TORCH, "blas.backend", sources.origin("blas.backend"), why)
    if weights.value != "fp32":
        why = f"{torch_fused}: {weights.value} weights (okto's kernel updates fp32 ones)"
        return Setting(OPTIMIZER_TORCH, weights.field, weights.origin, why)
    if settings["processes"].value > 1 and strategy.value == "fsdp":
        why = f"{torch_fused}: FSDP shards the parameters"
        return Setting(OPTIMIZER_TORCH, strategy.field, strategy.origin, why)
    return Setting(OPTIMIZER_KERNEL, path, origin, "AdamW in one Triton launch over every tensor")


def choose(
    asked: dict[str, LayerChoice], fused_ops: Setting, facts: ModelFacts | None
) -> dict[str, LayerChoice]:
    """The final choice per kind for this model (None: not known yet, the requests stand)."""
    if facts is None:  # softmax goes where attention goes in any model
        asked = {**asked, "softmax": _softmax(asked["softmax"], asked["attention"])}
        return {
            k: replace(c, runs=NATIVE_RUNS[k] if c.impl == NATIVE else "") for k, c in asked.items()
        }
    arch = ARCHITECTURES[facts.architecture] if facts.supported else None
    out: dict[str, LayerChoice] = {}
    for kind in ("gemm", "attention", "layernorm", "cross_entropy", "activation"):
        choice = asked[kind]
        blocked = _model_blocks(kind, facts, arch) if choice.impl == OKTO else None
        if choice.impl == NATIVE or blocked:
            reason = _although(blocked, choice) if blocked else choice.reason
            out[kind] = replace(choice, impl=NATIVE, runs=NATIVE_RUNS[kind], reason=reason)
        else:
            out[kind] = _okto(kind, choice, arch, facts, fused_ops, out)
    out["softmax"] = _softmax(asked["softmax"], out["attention"])
    return {kind: out[kind] for kind in KINDS}


def fused_effect(fused_ops: Setting, chosen: dict[str, LayerChoice]) -> Setting:
    """ACCELERATE.fused_ops as it turns out: what it fuses in this model, or no effect where
    neither the loss nor GELU runs on okto's kernels (their choices say why)."""
    if not fused_ops.value:
        return fused_ops
    if any(c.fused for c in chosen.values()):  # say which (Llama's MLP fuses no GELU)
        parts = {"activation": "GELU in the MLP's first GEMM", "cross_entropy": FUSED_LOSS}
        return replace(fused_ops, reason="; ".join(w for k, w in parts.items() if chosen[k].fused))
    native = [chosen[k] for k in ("cross_entropy", "activation") if chosen[k].impl == NATIVE]
    if len(native) < 2:
        return fused_ops  # the model decides (not known yet), or nothing to fuse with
    reasons = "; ".join(dict.fromkeys(c.reason for c in native if c.reason))
    why = "no effect: the loss and GELU run natively" + (f" ({reasons})" if reasons else "")
    return replace(fused_ops, reason=why)


def _model_blocks(kind: str, facts: ModelFacts, arch: Architecture | None) -> str | None:
    """Why this model keeps `kind` native although okto was asked for, or None."""
    family = ARCHITECTURES.get(facts.architecture)
    if arch is None and family is not None:  # GPT2ForSequenceClassification, a subclass, ...
        return (
            f"class {facts.class_name}: the planner patches {facts.architecture}'s causal LM, "
            f"{family.lm_class}, only; layers run natively"
        )
    if arch is None:
        return f"architecture {facts.name}: the planner patches {SUPPORTED}; layers run natively"
    if facts.dtype is not None and facts.dtype not in KERNEL_DTYPES:
        return f"parameters are {facts.dtype}; okto's kernels take fp32, fp16 and bf16"
    if kind == "attention":
        from okto.kernels.ops.attention import MAX_HEAD_DIM

        if facts.head_dim is not None and facts.head_dim > MAX_HEAD_DIM:
            return f"head dim {facts.head_dim} > {MAX_HEAD_DIM}, the kernel's limit"
        if facts.attention_dropout > 0:
            return (
                f"attention dropout {facts.attention_dropout:g}: okto's kernel has none "
                "(a dropout of 0 puts attention on it)"
            )
    if kind == "activation" and facts.activation not in arch.gelu:
        if arch.mlp_in is None:  # a gated MLP, act(gate_proj(x)) * up_proj(x): GELU too
            return (
                f"{facts.activation} has no okto kernel in a gated MLP (okto fuses GELU into "
                "a plain MLP's GEMM only)"
            )
        return f"{facts.activation} has no okto kernel (okto has GELU only)"
    return None


def _okto(
    kind: str,
    choice: LayerChoice,
    arch: Architecture,
    facts: ModelFacts,
    fused_ops: Setting,
    decided: dict[str, LayerChoice],
) -> LayerChoice:
    unfused = f"{display('accelerate.fused_ops')} is false ({fused_ops.origin})"
    if kind == "activation":
        return _activation(choice, arch, facts, fused_ops, decided["gemm"], unfused)
    if kind == "layernorm" and choice.reason.startswith(COMPILED_AUTO) and not arch.compiled_norms:
        reason = f"{COMPILED_AUTO}: inductor fuses the norm with the residual adds (as fast)"
        return replace(choice, impl=NATIVE, runs=NATIVE_RUNS[kind], reason=reason)
    if kind == "cross_entropy":
        if fused_ops.value:
            runs = "okto fused_linear_cross_entropy: lm_head + loss, logits never materialised"
            return replace(choice, runs=runs, fused=True)
        return replace(
            choice,
            runs="okto cross_entropy on lm_head's logits",
            reason=f"{choice.reason}; logits materialised: {unfused}",
        )
    return replace(choice, runs=arch.okto[kind])


def _activation(
    choice: LayerChoice,
    arch: Architecture,
    facts: ModelFacts,
    fused_ops: Setting,
    gemm: LayerChoice,
    unfused: str,
) -> LayerChoice:
    """GELU in okto's GEMM epilogue, in cuBLASLt's (GEMMs on cuBLAS, tanh form), or alone."""
    form = "tanh" if arch.gelu[facts.activation] == "tanh" else "erf"
    if fused_ops.value and gemm.impl == OKTO:
        runs = f"GELU ({form}) fused into {arch.mlp_in}'s GEMM epilogue"
        return replace(choice, runs=runs, fused=True)
    if fused_ops.value and form == "tanh":
        runs = (
            f"okto gelu_mlp: GELU ({form}) in {arch.mlp_in}'s cuBLASLt GEMM epilogue, its "
            "backward in the next GEMM's, bias gradients in the weight-gradient GEMMs"
        )
        return replace(choice, runs=runs, fused=True)
    why = unfused if not fused_ops.value else "cuBLASLt's GELU epilogue has the tanh form only"
    if choice.reason.startswith(COMPILED_AUTO):
        return replace(
            choice, impl=NATIVE, runs=NATIVE_RUNS["activation"], reason=f"{COMPILED_AUTO}: {why}"
        )
    return replace(
        choice, runs=f"okto gelu ({form}) after {arch.mlp_in}", reason=f"{choice.reason}; {why}"
    )


def _softmax(asked: LayerChoice, attention: LayerChoice) -> LayerChoice:
    """Softmax lives inside attention in GPT-2 and Llama: it goes where attention goes; an
    ACCELERATE.softmax that asked for the other says it has no effect."""
    inside_okto = attention.impl == OKTO
    reason = "part of the attention kernel" if inside_okto else "attention is native"
    if asked.field == "accelerate.softmax" and asked.impl != attention.impl:
        reason += f"; {display(asked.field)}: {_written(asked)} has no effect there"
    runs = "inside okto flash attention" if inside_okto else NATIVE_RUNS["softmax"]
    return replace(attention, kind="softmax", runs=runs, reason=reason)
