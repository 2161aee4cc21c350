"""GPT-2 (`GPT2LMHeadModel`): Conv1D GEMMs read in place, GELU in the first MLP
GEMM's epilogue, LayerNorm on okto's kernel with each residual add (and the c_proj
bias before it) inside the norm after it, attention on c_attn's packed output.
With the GEMMs on cuBLAS the MLP runs as okto's gelu_mlp op: GELU in cuBLASLt's
epilogues, forward in c_fc's GEMM and backward in c_proj's input-gradient GEMM.

Conv1D keeps its weight as [in, out], which okto's `linear` takes as it is
(`weight_layout="in_out"`), so nothing is transposed or copied. Dropout stays
where GPT-2 puts it: the MLP's own dropout module runs after the projection,
and attention dropout keeps attention native (see `layers`).
"""

from __future__ import annotations

from okto.planner.architecture import Architecture


def _patch(model, choices, patches) -> None:
    from torch import nn
    from transformers.models.gpt2 import modeling_gpt2  # its Conv1D, wherever that lives

    from okto.planner import forwards

    if choices["gemm"].impl == "okto":
        forwards.patch_each(
            model, modeling_gpt2.Conv1D, patches, forwards.gemm_forward, layout="in_out"
        )
    activation = choices["activation"]
    # okto runs the activation only where it is a GELU (a relu GPT-2 keeps it native)
    approximate = GPT2.gelu.get(model.config.activation_function)
    if activation.impl == "okto" and activation.fused and choices["gemm"].impl != "okto":
        forwards.patch_each(
            model,
            modeling_gpt2.GPT2MLP,
            patches,
            forwards.gpt2_gelu_mlp_forward,
            approximate=approximate,
        )
    elif activation.impl == "okto":
        forwards.patch_each(
            model,
            modeling_gpt2.GPT2MLP,
            patches,
            forwards.gpt2_mlp_forward,
            approximate=approximate,
            fused=activation.fused,
        )
    if choices["layernorm"].impl == "okto":
        forwards.patch_each(model, nn.LayerNorm, patches, forwards.layer_norm_forward)
    if choices["attention"].impl == "okto":
        forwards.patch_each(
            model, modeling_gpt2.GPT2Attention, patches, forwards.gpt2_attention_forward
        )
    residual_norms = choices["layernorm"].impl == "okto"
    if choices["attention"].impl == "okto" or residual_norms:
        forwards.install(
            patches,
            model.base_model,
            forwards.gpt2_model_forward,
            residual_norms=residual_norms,
        )


GPT2 = Architecture(
    model_type="gpt2",
    lm_class="GPT2LMHeadModel",
    okto={
        "gemm": "okto linear: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj (Conv1D, "
        "weights read in place), lm_head",
        "attention": "okto flash attention on c_attn's packed output (masked or cached "
        'calls: attn_implementation "okto")',
        "layernorm": "okto layer_norm: ln_1, ln_2, ln_f, each with the residual add and the "
        "c_proj bias before it (training calls)",
    },
    gelu={"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"},
    mlp_in="mlp.c_fc",
    patch=_patch,
    compiled_norms=True,  # 520k against 498k tokens/s (H100, docs/benchmarks.md)
)
