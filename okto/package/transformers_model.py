"""Weights as a checkpoint stores them, loaded into a transformers causal LM by transformers' own loader.

A checkpoint's keys are not always the model's: transformers 5 renames and
repacks some on load (GPT-NeoX's `embed_out` is `lm_head` in memory; Mixtral's
and Qwen2-MoE's per-expert `w1`/`w2`/`w3` or `gate/up/down_proj` become one
stacked tensor per layer) and reverses that on save. `load_state_dict` with the
file's keys skips the conversion, so such a model came out with its head or its
experts missing. `from_pretrained` with the tensors as `state_dict` runs it.
"""

from __future__ import annotations


def causal_lm(config, state: dict, dtype=None):
    """(model, missing keys, unexpected keys) for `config` holding `state` (keys as stored);
    keys that tying fills (a tied LM head) are not missing. ValueError for a config that has
    no causal-LM class, or weights whose shapes are not the config's (named in one line, where
    transformers logs a table and raises a RuntimeError pointing at it)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils import logging as hf_logging

    from okto.data.progress import quiet_transformers

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None:
        raise ValueError(f"transformers has no causal-LM class for {type(config).__name__}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: the callers say what is wrong
    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(
                None,
                config=config,
                state_dict=state,
                dtype=dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    mismatched = sorted(info.get("mismatched_keys") or (), key=str)
    if mismatched:
        key, *shapes = mismatched[0]
        stored, built = (list(s) for s in shapes)
        raise ValueError(
            f"the weights do not fit the config: {key} is {stored} in the weights, {built} by "
            f"the config ({len(mismatched)} such tensors)"
        )
    return model, sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
