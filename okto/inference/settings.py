"""Generation settings: okto's defaults, a model's own defaults, an INFERENCE block, flags.

Each layer overrides the one before (flags win), so this module only knows
names and values; it imports no torch, because the package writer and the CLI
use it before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from okto.errors import UsageError

# INFERENCE-block spellings (and HF generation_config names) -> settings fields.
_ALIASES = {
    "max_length": "max_tokens",
    "max_new_tokens": "max_tokens",
    "stop_sequences": "stop",
    "format": "template",
    "precision": "dtype",
}
# What a model carries as its own defaults: how to generate, not how to run (batch, device).
MODEL_DEFAULTS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "template",
    "mode",
    "exit_command",
)
# INFERENCE `precision` and `backend` values -> load_model's
_PRECISIONS = {"auto": None}
_BACKENDS = {"oktoblas": "okto", "cublas": "native"}


@dataclass(frozen=True)
class Settings:
    """Everything that shapes one generate call; `None` / empty means 'not set here'."""

    max_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    batch_size: int | None = None
    template: str = "{input}"
    mode: str = "completion"
    exit_command: str = "exit"
    model: str | None = None
    dtype: str | None = None
    backend: str = "auto"

    def merged(self, values: dict) -> Settings:
        """These settings with `values` (field names; None values skipped) laid over them."""
        known = {f.name for f in dataclasses.fields(self)}
        updates = {k: v for k, v in values.items() if v is not None and k in known}
        if "stop" in updates:
            stop = updates["stop"]
            if not isinstance(stop, str | list | tuple):
                raise UsageError(f"stop: a string or a list of strings, not {stop!r}")
            updates["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return dataclasses.replace(self, **updates).checked()

    def checked(self) -> Settings:
        """These settings, or a UsageError for the first bad one: a NaN temperature or penalty
        would sample garbage (argmax of NaNs) without a word, a float top_k or seed fail deep
        inside the sampler."""
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if not _is_number(value, float) or not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number, got {value!r}")
        for name in ("max_tokens", "top_k", "seed", "batch_size"):
            value = getattr(self, name)
            if value is None and name in ("seed", "batch_size"):  # unset: random, automatic
                continue
            if not _is_number(value, int):
                raise UsageError(f"{name} must be an integer, got {value!r}")
        if self.max_tokens < 1:
            raise UsageError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise UsageError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"top_k must be 0 (off) or more, got {self.top_k}")
        # below fp32's smallest normal, dividing a seen logit by it overflows to infinity
        if self.repetition_penalty < 1.2e-38:
            raise UsageError(
                f"repetition_penalty must be above 0 (1.2e-38 at least), got "
                f"{self.repetition_penalty}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {self.batch_size}")
        for name in ("template", "mode", "exit_command"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise UsageError(f"{name} must be a string, got {value!r}")
        if any(not isinstance(s, str) for s in self.stop):
            raise UsageError(f"stop sequences must be strings, got {list(self.stop)!r}")
        if self.mode not in ("completion", "chat"):
            raise UsageError(f"mode must be completion or chat, got {self.mode!r}")
        if "{input}" not in self.template:
            raise UsageError(f"the prompt format {self.template!r} has no {{input}} placeholder")
        if any(not s for s in self.stop):
            raise UsageError("a stop sequence is empty")
        if not self.exit_command.strip():
            raise UsageError("exit_command is empty: an empty line would end the chat")
        return self

    def apply_template(self, text: str) -> str:
        return self.template.replace("{input}", text)


def _kind(value) -> str:
    """What `value` is, for a message: `None`, or its type with its article (`an int`)."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def checked_prompts(prompts, vocab_size: int | None = None) -> list[str | list[int]]:
    """One prompt or a list of them, as a list; a UsageError names the first that a tokenizer
    or the model cannot take: not a string or a list of token ids, text holding lone surrogates
    (bytes that were not UTF-8, as argv and a C-locale stdin pass them on), which failed deep
    inside the tokenizer, or an id outside the model's vocabulary of `vocab_size`."""
    wrong = f"prompts: a string or a list of strings, not {_kind(prompts)}"
    if isinstance(prompts, bytes | bytearray):  # iterable, but as numbers
        raise UsageError(f"{wrong} (decode them to a string first)")
    try:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    except TypeError:  # not iterable
        raise UsageError(wrong) from None
    checked: list[str | list[int]] = []
    for number, prompt in enumerate(prompts, 1):
        if isinstance(prompt, list | tuple):
            checked.append(_checked_ids(number, prompt, vocab_size))
            continue
        if not isinstance(prompt, str):
            raise UsageError(f"prompt {number} is {_kind(prompt)}, not text or token ids")
        problem = not_utf8(prompt)
        if problem:
            raise UsageError(f"prompt {number}: {problem}")
        checked.append(prompt)
    return checked


def _checked_ids(number: int, ids, vocab_size: int | None) -> list[int]:
    """A prompt given as token ids, as a list; a UsageError for an id the embedding has no row
    for, which failed deep inside the model (or, on a GPU, as a device-side assert)."""
    for token in ids:
        if not _is_number(token, int):
            raise UsageError(f"prompt {number}: token ids are integers, not {_kind(token)}")
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            limit = f" (0 to {vocab_size - 1})" if vocab_size else ""
            raise UsageError(f"prompt {number}: token id {token} is not in the vocabulary{limit}")
    return list(ids)


def not_utf8(text: str) -> str | None:
    """What is wrong with `text` as a prompt's text (lone surrogates), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"not UTF-8 text (at position {e.start})"
    return None


def _is_number(value, kind: type) -> bool:
    """An int (for `int`) or an int or float (for `float`); never a bool."""
    kinds = (int,) if kind is int else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def from_block(block: dict | None) -> dict:
    """An INFERENCE block (or a manifest's generation defaults) as settings field names.

    `params { ... }` is flattened, aliases are renamed, and `do_sample: false`
    means greedy decoding (temperature 0).
    """
    if not block:
        return {}
    flat = {k: v for k, v in block.items() if k != "params"}
    flat.update(block.get("params") or {})
    out = {_ALIASES.get(k, k): _plain(v) for k, v in flat.items()}
    if out.pop("do_sample", None) is False:
        out["temperature"] = 0.0
    out["dtype"] = _PRECISIONS.get(out.get("dtype"), out.get("dtype"))
    out["backend"] = _BACKENDS.get(out.get("backend"), out.get("backend"))
    return {k: v for k, v in out.items() if v is not None}


def _plain(value):
    """Typed quantities from the language front end (number + unit) become their number."""
    if hasattr(value, "value") and not isinstance(value, str | int | float | bool):
        return value.value
    return value


def from_generation_config(config: dict) -> dict:
    """What a Hugging Face generation_config.json explicitly asks for, as settings names."""
    out = {}
    if config.get("do_sample") is False:
        out["temperature"] = 0.0
    elif config.get("do_sample") is True:
        for key in ("temperature", "top_p", "top_k"):
            if config.get(key) is not None:
                out[key] = config[key]
    if config.get("repetition_penalty") is not None:
        out["repetition_penalty"] = config["repetition_penalty"]
    if config.get("max_new_tokens"):
        out["max_tokens"] = config["max_new_tokens"]
    if config.get("stop_strings"):  # a string or a list, as Hugging Face generate takes it
        stop = config["stop_strings"]
        out["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return out


def model_defaults(values: dict) -> dict:
    """The part of settings values a model keeps as its own defaults (see MODEL_DEFAULTS)."""
    return {k: v for k, v in values.items() if k in MODEL_DEFAULTS}
