"""Turning a record's turns into the text the model sees, and the characters that carry loss.

Chat-like records (chat turns; instruction and qa pairs) go through a chat
template: the tokenizer's own when it has one, else okto's plain template,
which trained tokenizers also carry as theirs:

    <|system|>\\n{content}\\n
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}{eos}

with `<|assistant|>\\n` as the generation prompt. The loss covers each
assistant turn's content and the EOS that ends it; role tags, system and user
turns are masked. With the tokenizer's own template, an assistant turn's span
is what rendering the turn adds after the generation prompt (so its end-of-turn
marker is trained too); a template that does not render prefixes consistently
falls back to locating each assistant turn's text, and its end-of-turn marker
after it.

Tool use (LLaMA-Factory's ShareGPT roles, OpenAI's `tool_calls`): a `tool_call` turn is
the assistant's and trained, `<|assistant|>\\n<tool_call>\\n{call}\\n</tool_call>{eos}` in
the plain template; a `tool` turn (the call's result) is masked; a `tools` turn (the
record's definitions) joins the system turn as `<tools>\\n{definitions}\\n</tools>`.
The tokenizer's own template gets them its way (`tool_calls`, role `tool`, `tools=`)
where a probe shows it renders each; otherwise as that same text, and a result as a user
turn in `<tool_response>` tags, as LLaMA-Factory formats templates without a tool role.

Other records (text; generation pairs; pairs of `type: text`) are their turns
joined by newlines, with no template. `train_all` (type text) trains every
character.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import NamedTuple

from jinja2 import TemplateError

from okto.data.errors import JSON_ERRORS
from okto.data.fields import Unusable, decoded_arguments

ROLE_TAGS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
TRAINED_RAW_ROLES = ("assistant", "text")
TOOL_ROLES = {"tool_call", "tool", "tools"}
# What a template may raise on messages it does not expect (a tool call's `arguments`
# indexed as a string, a missing key): the record is dropped, never the run.
TEMPLATE_ERRORS = (TemplateError, ValueError, TypeError, KeyError, IndexError, AttributeError)
PROBE = "okto_probe"

Span = tuple[int, int]


class Renderer:
    """Renders turns for one tokenizer; picklable, so it runs in `datasets.map` workers."""

    def __init__(self, tokenizer):
        self.eos = tokenizer.eos_token
        template = getattr(tokenizer, "chat_template", None)
        # Okto's own template is rendered directly: same text, no Jinja per record.
        self.tokenizer = tokenizer if template and template != PLAIN_CHAT_TEMPLATE else None

    def render(
        self, roles: list[str], texts: list[str], templated: bool, train_all: bool
    ) -> tuple[str, list[Span]]:
        """The text and the sorted, disjoint character spans that carry labels."""
        if not templated:
            text, spans = _raw(roles, texts)
        elif self.tokenizer is None:
            text, spans = _plain(roles, texts, self.eos)
        else:
            text, spans = self._own(roles, texts, need_spans=not train_all)
        return (text, [(0, len(text))]) if train_all else (text, spans)

    def _own(
        self, roles: list[str], texts: list[str], need_spans: bool, calls: bool | None = None
    ) -> tuple[str, list[Span]]:
        messages, tools = self._messages(roles, texts, calls)
        try:
            full = self._apply(messages, generation_prompt=False, tools=tools)
        except TEMPLATE_ERRORS as error:
            raise Unusable(f"the chat template rejected it ({error})") from None
        if not need_spans:
            return full, []
        try:
            return full, self._prefix_spans(messages, full, tools)
        except (*TEMPLATE_ERRORS, _NotPrefix):
            if any("tool_calls" in message for message in messages):
                # A call rendered the template's way cannot be located in the text: as text.
                return self._own(roles, texts, need_spans, calls=False)
            ends = [
                self._turn_end(messages[: k + 1], tools) if m["role"] == "assistant" else ""
                for k, m in enumerate(messages)
            ]
            own_roles = [m["role"] for m in messages]
            return full, _find_spans(own_roles, [m["content"] for m in messages], full, ends)

    def _messages(
        self, roles: list[str], texts: list[str], calls: bool | None
    ) -> tuple[list[dict], list[dict] | None]:
        """The messages (and tools) the template gets: tool turns its way where it renders
        them, else as the text okto's plain template gives them."""
        if TOOL_ROLES.isdisjoint(roles):
            return [{"role": r, "content": t} for r, t in zip(roles, texts, strict=True)], None
        renders = self._renders
        calls = renders.calls if calls is None else calls
        tools = None
        if "tools" in roles and renders.tools:
            tools = _parse_tools(texts[roles.index("tools")])
        if tools is None:
            roles, texts = _merge_tools(roles, texts)
        messages = []
        for role, text in zip(roles, texts, strict=True):
            if role == "tool_call":
                parsed = _parse_calls(text) if calls else None
                messages.append(
                    {"role": "assistant", "content": "", "tool_calls": parsed}
                    if parsed
                    else {"role": "assistant", "content": _call_text(text)}
                )
            elif role == "tool" and not renders.tool_role:
                messages.append(
                    {"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"}
                )
            elif role != "tools":
                messages.append({"role": role, "content": text})
        return messages, tools

    @cached_property
    def _renders(self) -> _ToolSupport:
        """Which tool messages the template renders, probed once: one that ignores them
        would drop the call or its result from the text without a word."""
        user = {"role": "user", "content": "okto probe question"}
        function = {"name": PROBE, "arguments": {}}
        call = {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": function}],
        }
        calls = PROBE in self._probe([user, call])
        said = call if calls else {"role": "assistant", "content": "okto probe call"}
        result = {"role": "tool", "content": "okto probe result"}
        answer = {"role": "assistant", "content": "okto probe answer"}
        tool_role = result["content"] in self._probe([user, said, result, answer])
        tool = {
            "type": "function",
            "function": {"name": PROBE, "description": "", "parameters": {}},
        }
        tools = PROBE in self._probe([user], tools=[tool])
        return _ToolSupport(calls, tool_role, tools)

    def _probe(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        try:
            return self._apply(messages, generation_prompt=False, tools=tools)
        except TEMPLATE_ERRORS:
            return ""

    def _prefix_spans(
        self, messages: list[dict], full: str, tools: list[dict] | None
    ) -> list[Span]:
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._apply(messages[:k], generation_prompt=True, tools=tools)
            after = self._apply(messages[: k + 1], generation_prompt=False, tools=tools)
            if not (after.startswith(before) and full.startswith(after)):
                raise _NotPrefix
            spans.append((len(before), len(after)))
        return spans

    def _turn_end(self, messages: list[dict], tools: list[dict] | None) -> str:
        """What the template renders after the last message's content (its end-of-turn
        marker, `<|im_end|>\\n`), so the located turn can be trained up to the marker."""
        content = messages[-1]["content"].strip()
        try:
            text = self._apply(messages, generation_prompt=False, tools=tools)
        except TEMPLATE_ERRORS:
            return ""
        at = text.rfind(content)
        return text[at + len(content) :] if at >= 0 else ""

    def _apply(
        self, messages: list[dict], generation_prompt: bool, tools: list[dict] | None = None
    ) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
        )


class _ToolSupport(NamedTuple):
    calls: bool  # renders an assistant message's `tool_calls`
    tool_role: bool  # renders a `tool` message's content
    tools: bool  # renders the `tools` it is given


def _call_text(call: str) -> str:
    return f"<tool_call>\n{call}\n</tool_call>"


def _merge_tools(roles: list[str], texts: list[str]) -> tuple[list[str], list[str]]:
    """The turns with a `tools` turn's definitions as text in the system turn (one made
    first where there is none)."""
    if "tools" not in roles:
        return roles, texts
    at = roles.index("tools")
    tools = f"<tools>\n{texts[at]}\n</tools>"
    roles, texts = roles[:at] + roles[at + 1 :], texts[:at] + texts[at + 1 :]
    if roles and roles[0] == "system":
        return roles, [f"{texts[0]}\n\n{tools}", *texts[1:]]
    return ["system", *roles], [tools, *texts]


def _parse_calls(text: str) -> list[dict] | None:
    """A `tool_call` turn's call(s) as `tool_calls`, or None where the text is not calls
    (JSON objects of `name` and `arguments` alone: another key would be lost)."""
    try:
        value = json.loads(text)
    except JSON_ERRORS:
        return None
    calls = []
    for item in value if isinstance(value, list) else [value]:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)):
            return None
        if not set(item) <= {"name", "arguments"}:
            return None
        arguments = decoded_arguments(item.get("arguments", {}))
        calls.append(
            {"type": "function", "function": {"name": item["name"], "arguments": arguments}}
        )
    return calls or None


def _parse_tools(text: str) -> list[dict] | None:
    """A `tools` turn's definitions as the template's `tools` (a bare definition wrapped
    as a function, as transformers expects), or None where they are not JSON objects."""
    try:
        value = json.loads(text)
    except JSON_ERRORS:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    return [
        item if "function" in item else {"type": "function", "function": item} for item in items
    ]


class _NotPrefix(Exception):
    """The template renders a conversation's start differently from a shorter one."""


def _find_spans(roles: list[str], texts: list[str], full: str, ends: list[str]) -> list[Span]:
    """Each assistant turn's text, found in order, with the spaces before it (`] answer`
    is one token, ` answer`, which starts at the space) and its end-of-turn marker (`ends`,
    per turn) where the marker follows it: without one the model never learns to end a
    turn. The cursor also passes every other turn found, so an answer quoted in the prompt
    before it is not taken for the answer."""
    spans, cursor = [], 0
    for role, text, end in zip(roles, texts, ends, strict=True):
        content = text.strip()
        start = full.find(content, cursor)
        if role != "assistant":
            cursor = cursor if start < 0 else start + len(content)
            continue
        if start < 0:
            raise Unusable("the chat template changed an assistant turn")
        begin = start
        while begin > cursor and full[begin - 1] in " \t":
            begin -= 1
        cursor = start + len(content)
        if end and full.startswith(end, cursor):
            cursor += len(end)
        spans.append((begin, cursor))
    return spans


def _plain(roles: list[str], texts: list[str], eos: str) -> tuple[str, list[Span]]:
    pieces, spans, pos = [], [], 0
    roles, texts = _merge_tools(roles, texts)
    for role, text in zip(roles, texts, strict=True):
        if role == "tool_call":
            role, text = "assistant", _call_text(text)
        head, tail = f"<|{role}|>\n", eos if role == "assistant" else "\n"
        pieces += (head, text, tail)
        if role == "assistant":
            spans.append((pos + len(head), pos + len(head) + len(text) + len(tail)))
        pos += len(head) + len(text) + len(tail)
    return "".join(pieces), spans


def _raw(roles: list[str], texts: list[str]) -> tuple[str, list[Span]]:
    spans, pos = [], 0
    for role, text in zip(roles, texts, strict=True):
        if role in TRAINED_RAW_ROLES:
            spans.append((pos, pos + len(text)))
        pos += len(text) + 1
    return "\n".join(texts), spans
