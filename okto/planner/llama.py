"""Llama (`LlamaForCausalLM`): every linear layer on okto's GEMM, RMSNorm on okto's
kernel with each residual add inside the norm after it, attention on okto's kernel
after the model's own rotary embeddings.

The SwiGLU MLP keeps its three GEMMs separate: fusing gate and up would need a
concatenated weight (a copy), and the GEMM epilogue fuses GELU only, so the
SiLU-times-up product stays a framework op. Grouped-query attention goes to the
kernel as it is. For a plain training call the model's own forward is replaced by
one that builds no attention mask (see `forwards.llama_model_forward`), so that
attention stays on okto's kernel under torch.compile.
"""

from __future__ import annotations

from okto.planner.architecture import Architecture


def _patch(model, choices, patches) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from okto.planner import forwards

    if choices["layernorm"].impl == "okto":
        forwards.patch_each(model, LlamaRMSNorm, patches, forwards.rms_norm_forward)
    residual_norms = choices["layernorm"].impl == "okto"
    if choices["attention"].impl == "okto" or residual_norms:
        forwards.install(
            patches, model.base_model, forwards.llama_model_forward, residual_norms=residual_norms
        )


LLAMA = Architecture(
    model_type="llama",
    lm_class="LlamaForCausalLM",
    okto={
        "gemm": "okto linear: q/k/v/o_proj, gate/up/down_proj, lm_head",
        "attention": "okto flash attention after the model's rotary embeddings (GQA in the kernel)",
        "layernorm": "okto rms_norm: input_layernorm, post_attention_layernorm, norm, each "
        "with the residual add before it (training calls)",
    },
    gelu={},
    mlp_in=None,
    patch=_patch,
    compiled_norms=False,  # 468k against inductor's 470k tokens/s (H100)
)
