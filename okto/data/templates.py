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

Other records (text; generation pairs; pairs of `type: text`) are their turns
joined by newlines, with no template. `train_all` (type text) trains every
character.
"""

from __future__ import annotations

from jinja2 import TemplateError

from okto.data.fields import Unusable

ROLE_TAGS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
TRAINED_RAW_ROLES = ("assistant", "text")

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

    def _own(self, roles: list[str], texts: list[str], need_spans: bool) -> tuple[str, list[Span]]:
        messages = [{"role": r, "content": t} for r, t in zip(roles, texts, strict=True)]
        try:
            full = self._apply(messages, generation_prompt=False)
        except (TemplateError, ValueError) as error:
            raise Unusable(f"the chat template rejected it ({error})") from None
        if not need_spans:
            return full, []
        try:
            return full, self._prefix_spans(messages, full)
        except (TemplateError, ValueError, _NotPrefix):
            ends = [
                self._turn_end(messages[: k + 1]) if r == "assistant" else ""
                for k, r in enumerate(roles)
            ]
            return full, _find_spans(roles, texts, full, ends)

    def _prefix_spans(self, messages: list[dict], full: str) -> list[Span]:
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._apply(messages[:k], generation_prompt=True)
            after = self._apply(messages[: k + 1], generation_prompt=False)
            if not (after.startswith(before) and full.startswith(after)):
                raise _NotPrefix
            spans.append((len(before), len(after)))
        return spans

    def _turn_end(self, messages: list[dict]) -> str:
        """What the template renders after the last message's content (its end-of-turn
        marker, `<|im_end|>\\n`), so the located turn can be trained up to the marker."""
        content = messages[-1]["content"].strip()
        try:
            text = self._apply(messages, generation_prompt=False)
        except (TemplateError, ValueError):
            return ""
        at = text.rfind(content)
        return text[at + len(content) :] if at >= 0 else ""

    def _apply(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )


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
    for role, text in zip(roles, texts, strict=True):
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
