"""Which fields of a record hold the text, and turning a record into turns.

Every record becomes turns (role, text): chat data keeps its turns; an
input/output pair becomes a user turn and an assistant turn; plain text is one
`text` turn. Chat turns may call tools (a `function_call` turn, or the calls of an
OpenAI assistant message, is role `tool_call`, the assistant's; its result is a `tool`
turn); a chat record's `tools` field becomes a first `tools` turn holding the definitions,
and its `system` field a first system turn. Detection follows the spec's order when no
field is named:
chat turns (`conversations` / `messages`), input+output, input+target, then
okto's additions (instruction+output, instruction+response,
prompt+completion, prompt+response, question+answer), then `text`, then the
first string field; known names match in any case (`Instruction`). With
input+output, an `instruction` field (Alpaca) is put before the input; for `qa`
data a `context` field is put before the question unless `context_fields` says
otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from okto.data.errors import JSON_ERRORS, DataError
from okto.data.settings import DataSettings

CHAT_FIELDS = ("conversations", "messages")
PAIR_FIELDS = (
    ("input", "output"),
    ("input", "target"),
    ("instruction", "output"),
    ("instruction", "response"),
    ("prompt", "completion"),
    ("prompt", "response"),
    ("question", "answer"),
)
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "developer": "system",  # OpenAI's name for system messages since its o1 models
    "function_call": "tool_call",  # LLaMA-Factory's ShareGPT: the assistant calls a tool
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
# Turns that carry the loss when it is masked to the assistant.
TRAINED_ROLES = ("assistant", "tool_call")
ROLE_KEYS = ("from", "role")
CONTENT_KEYS = ("value", "content", "text")
# A chat record's tool definitions (LLaMA-Factory's ShareGPT), as JSON text or a list.
TOOLS_FIELD = "tools"
# A chat record's system prompt beside its turns (LLaMA-Factory's ShareGPT `system` column).
SYSTEM_FIELD = "system"
# OpenAI's calls an assistant message makes (`tool_calls`, or the legacy `function_call`).
CALL_KEYS = ("tool_calls", "function_call")
# Types whose data must have a prompt and a response (pairs or turns).
NEEDS_TURNS = ("instruction", "chat", "qa")


@dataclass(frozen=True)
class FieldPlan:
    """The fields one file's records are read from."""

    shape: str  # "chat", "pair" or "text"
    source: str  # the turns field (chat), the output field (pair) or the text field
    prompt: str = ""  # pair: the input field
    before: tuple[str, ...] = ()  # pair: fields joined before the input
    guessed: bool = False  # text from the first string field: no field had a known name
    passed_over: tuple[str, ...] = ()  # guessed: the other fields of text or lists

    def describe(self) -> str:
        if self.shape == "chat":
            return f"chat turns in {self.source!r}"
        if self.shape == "pair":
            prompt = " + ".join(repr(f) for f in (*self.before, self.prompt))
            return f"input {prompt}, output {self.source!r}"
        return f"text in {self.source!r}"

    def default_type(self) -> str:
        return {"chat": "chat", "pair": "instruction", "text": "text"}[self.shape]


class Unusable(Exception):
    """A record okto skips; the message is the reason counted in the statistics."""


def detect(record: dict, settings: DataSettings) -> FieldPlan | None:
    """The plan for a record's fields, or None when this record has none usable."""
    if settings.input_field or settings.output_field:
        prompt = settings.input_field or _first_present(record, (i for i, _ in PAIR_FIELDS))
        output = settings.output_field or _first_present(record, (o for _, o in PAIR_FIELDS))
        if prompt not in record or output not in record:
            return None
        return _pair(record, prompt, output, settings)
    if settings.text_field:
        value = record.get(settings.text_field)
        if isinstance(value, list):
            return FieldPlan("chat", settings.text_field)
        return FieldPlan("text", settings.text_field) if value is not None else None
    for name in CHAT_FIELDS:
        if isinstance(_turns_value(record.get(key := _key(record, name))), list):
            return FieldPlan("chat", key)
    for names in PAIR_FIELDS:
        prompt, output = (_key(record, name) for name in names)
        if prompt and output:
            return _pair(record, prompt, output, settings)
    if isinstance(record.get(key := _key(record, "text")), str):
        return FieldPlan("text", key)
    name = next((k for k, v in record.items() if isinstance(v, str)), None)
    if name is None:
        return None
    others = (k for k, v in record.items() if k != name and isinstance(v, (str, list, dict)))
    return FieldPlan("text", name, guessed=True, passed_over=tuple(others))


def _key(record: dict, name: str) -> str | None:
    """The record's spelling of a known field name: exact, else in another case
    (`Instruction`, `Output`), which would otherwise fall through to the first string
    field and train the instruction alone as text."""
    if name in record:
        return name
    return next((k for k in record if isinstance(k, str) and k.lower() == name), None)


def _first_present(record: dict, names) -> str | None:
    return next((key for n in names if (key := _key(record, n))), None)


def _pair(record: dict, prompt: str, output: str, settings: DataSettings) -> FieldPlan:
    before = list(settings.context_fields)
    if not before and settings.type == "qa" and (context := _key(record, "context")):
        before.append(context)
    if prompt.lower() == "input" and (instruction := _key(record, "instruction")):
        before.insert(0, instruction)
    return FieldPlan("pair", output, prompt=prompt, before=tuple(before))


def check_type(plan: FieldPlan, kind: str, path, fields: list[str]) -> None:
    """Refuse a type the detected fields cannot serve, saying which fields to set."""
    if kind in NEEDS_TURNS and plan.shape == "text":
        raise DataError(
            f"{path}: DATASET type {kind!r} needs input and output fields or chat turns, "
            f"but okto found only {plan.describe()} (fields: {', '.join(fields)}); "
            f"set input_field and output_field"
        )


def no_fields_error(path, fields: list[str], settings: DataSettings) -> DataError:
    found = ", ".join(fields) or "none"
    if settings.input_field or settings.output_field:
        # A side not named is looked up among the pair names: say which were looked for.
        sides = [
            f"{key} {value!r}"
            if value
            else f"an {side} field ({', '.join(dict.fromkeys(names))}; or set {key})"
            for key, value, side, names in (
                ("input_field", settings.input_field, "input", (i for i, _ in PAIR_FIELDS)),
                ("output_field", settings.output_field, "output", (o for _, o in PAIR_FIELDS)),
            )
        ]
        return DataError(
            f"{path}: no record has both {sides[0]} and {sides[1]} (fields found: {found})"
        )
    if settings.text_field:
        return DataError(
            f"{path}: no record has text_field {settings.text_field!r} (fields found: {found})"
        )
    return DataError(
        f"{path}: no usable text field (fields found: {found}); "
        f"set DATASET text_field, or input_field and output_field"
    )


def to_turns(record: dict, plan: FieldPlan, assistant_only: bool) -> tuple[list[str], list[str]]:
    """(roles, texts) of one record; `assistant_only` trims turns no label will cover."""
    if plan.shape == "text":
        text = _text(record, plan.source)
        if not text.strip():
            raise Unusable("empty text")
        return ["text"], [text]
    if plan.shape == "pair":
        # A null or absent prompt part is empty, as "" is: only the output must be there.
        parts = [_text(record, f, optional=True) for f in (*plan.before, plan.prompt)]
        prompt = "\n\n".join(p for p in parts if p.strip())
        response = _text(record, plan.source)
        if not response.strip():
            raise Unusable(f"empty {plan.source!r}")
        return (
            (["user", "assistant"], [prompt, response]) if prompt else (["assistant"], [response])
        )
    roles, texts = _chat_turns(_turns_value(record.get(plan.source)), plan.source, assistant_only)
    # A system turn the conversation starts with wins, as in LLaMA-Factory: two system
    # prompts would contradict each other, and most templates take one, first.
    system = _text(record, _key(record, SYSTEM_FIELD), optional=True)
    if system.strip() and roles[0] != "system":
        roles, texts = ["system", *roles], [system, *texts]
    if tools := _tools(record):
        return ["tools", *roles], [tools, *texts]
    return roles, texts


def _tools(record: dict) -> str:
    """The record's tool definitions as text ("" when it has none): the model learns which
    tools it may call from them, so a call is trained beside what it calls."""
    value = record.get(_key(record, TOOLS_FIELD))
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False) if value else ""
    if isinstance(value, str):
        return "" if value.strip() in ("", "[]") else value.strip()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    raise Unusable(f"{TOOLS_FIELD!r} is not a list of tools")


def _turns_value(value):
    """Chat turns as given, or decoded from the JSON text of a list: a CSV cell cannot
    hold a list, so chat data in CSV (or Parquet from it) carries its turns as JSON, which
    was trained as text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except JSON_ERRORS:
            return value
    return value


def _text(record: dict, name: str, optional: bool = False) -> str:
    value = record.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if optional:
            return ""
        raise Unusable(f"missing {name!r}")
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):  # bool included: CSV and Parquet cells
        return str(value)
    raise Unusable(f"{name!r} is not text")


def _chat_turns(turns, name: str, assistant_only: bool) -> tuple[list[str], list[str]]:
    if not isinstance(turns, list):
        raise Unusable(f"{name!r} is not a list of turns")
    roles, texts = [], []
    for message in turns:
        if not isinstance(message, dict):
            raise Unusable(f"a turn in {name!r} is not an object")
        speaker = _first_set(message, ROLE_KEYS)
        if speaker is None:
            raise Unusable(f"a turn in {name!r} has no role ({' or '.join(ROLE_KEYS)})")
        role = ROLES.get(str(speaker).strip().lower())  # "Human", "gpt "
        if role is None:
            raise Unusable(f"unknown role {speaker!r}")
        value = _first_set(message, CONTENT_KEYS)
        if role == "tool_call" and isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)  # the call as an object, not its text
        content = _content(value)
        if content.strip():
            roles.append(role)
            texts.append(content)
        if calls := _first_set(message, CALL_KEYS):
            # The calls are the assistant's turn: skipped with the null content beside them,
            # the answer would train after a tool result nothing had asked for.
            roles.append("tool_call")
            texts.append(_calls_text(calls))
    if assistant_only:
        while roles and roles[-1] not in TRAINED_ROLES:
            roles.pop()
            texts.pop()
        if not roles:
            raise Unusable("no assistant turn")
    if not roles:
        raise Unusable("empty conversation")
    return roles, texts


def _calls_text(calls) -> str:
    """An OpenAI message's `tool_calls` (or legacy `function_call`) as a `function_call`
    turn holds them: `{"name", "arguments"}` JSON, a list for parallel calls (one turn, as
    the model emits them), arguments decoded from the JSON text OpenAI gives them as."""
    items = []
    for call in calls if isinstance(calls, list) else [calls]:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
            raise Unusable("a turn's tool call has no function name")
        arguments = decoded_arguments(function.get("arguments"))
        items.append({"name": function["name"], "arguments": arguments or {}})
    return json.dumps(items[0] if len(items) == 1 else items, ensure_ascii=False)


def decoded_arguments(arguments):
    """A call's arguments as an object where they are its JSON text (OpenAI's way), else
    as given."""
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except JSON_ERRORS:
            return arguments
        return decoded if isinstance(decoded, dict) else arguments
    return arguments


def _first_set(message: dict, keys: tuple[str, ...]):
    """The first of `keys` the turn sets, in any case (`From`, `Value`). A null one counts
    as unset: a Parquet column of turns has every key any turn uses (`from` and `role`),
    null where a turn lacks it."""
    values = (message.get(_key(message, k)) for k in keys)
    return next((value for value in values if value is not None), None)


def _content(value) -> str:
    """A turn's text; OpenAI-style lists of parts keep their text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [
            p if isinstance(p, str) else p.get("text") for p in value if isinstance(p, (str, dict))
        ]
        return "\n".join(p for p in parts if isinstance(p, str))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, float)):  # {"from": "gpt", "value": 4}: text, as in pairs
        return str(value)
    raise Unusable("a turn's content is not text")
