"""Chat turns rendered into prompts: a `format` template, the tokenizer's chat template, or plain lines.

Used by `okto chat` (a conversation) and by `okto infer` when the INFERENCE
block's `mode` is chat (each prompt a one-turn conversation). The turns' text is
tokenized as plain text, the template's markers as special tokens.
"""

from __future__ import annotations

from functools import cached_property

from okto.errors import RunError
from okto.inference.sampling import row_keys

PLAIN_TEMPLATE = "User: {input}\nAssistant:"
# stand-ins for a conversation's texts, found again in its rendering (see Conversation.turn_end)
ASKED, ANSWERED, NEXT = "OKTOASKED", "OKTOANSWERED", "OKTONEXT"


class Conversation:
    """The turns so far, rendered into one prompt that fits the model's context window.

    A `format` template (settings.template) wins; else the tokenizer's chat
    template; else "User: ... / Assistant:" lines. Each has a stop where a reply
    ends: the chat template's end-of-turn marker, else a line that starts the next
    turn ("\\nUser:").
    """

    def __init__(self, model, settings):
        self.model, self.settings = model, settings
        self.turns: list[tuple[str, str]] = []
        custom = settings.template != "{input}"
        has_chat_template = bool(getattr(model.tokenizer, "chat_template", None))
        self.use_chat_template = not custom and has_chat_template
        self.plain = not custom and not has_chat_template
        self.template = PLAIN_TEMPLATE if self.plain else settings.template

    @cached_property
    def stop(self) -> tuple[str, ...]:
        """The settings' stop sequences and what ends a reply in this rendering: without it a
        reply runs on into the next turn's header and a user's line of the model's making."""
        end = self.turn_end() if self.use_chat_template else self.next_line()
        return (*self.settings.stop, end) if end else self.settings.stop

    def next_line(self) -> str | None:
        """Where the next turn starts after a reply in `template`'s lines: a line that opens
        with the template's text before `{input}` (`\\nUser:`), as `render` writes past turns;
        None when the template opens with `{input}`."""
        head = self.template.partition("{input}")[0].strip()
        return self._as_stop("\n" + head) if head else None

    def turn_end(self) -> str | None:
        """What the chat template writes after a reply: its end-of-turn marker (`<|im_end|>`;
        an added token, which generate stops at as the token, or text such as `\\n### End`),
        else, where it writes only spaces there, the text that opens the next user turn
        (`\\nUser:`); None when it writes nothing or cannot render a reply and a turn after."""
        from jinja2 import TemplateError

        tokenizer = self.model.tokenizer
        turns = [("user", ASKED), ("assistant", ANSWERED), ("user", NEXT)]
        messages = [{"role": role, "content": content} for role, content in turns]
        try:
            closed, followed = (
                tokenizer.apply_chat_template(messages[:n], tokenize=False) for n in (2, 3)
            )
        except TemplateError:
            return None  # the turn's own rendering says what is wrong
        if ANSWERED not in closed or NEXT not in followed.partition(ANSWERED)[2]:
            return None
        between = followed.partition(ANSWERED)[2].partition(NEXT)[0].rstrip()
        marker = closed.partition(ANSWERED)[2].rstrip()
        end = marker if marker.strip() and between.startswith(marker) else between
        return self._as_stop(end) if end.strip() else None

    def _as_stop(self, end: str) -> str:
        """`end` as a stop sequence: its first token where that is an added token (generate
        stops at a special token's text as the token; what follows it may never come), else
        the text."""
        tokenizer = self.model.tokenizer
        first = tokenizer.convert_ids_to_tokens(
            tokenizer(end.lstrip(), add_special_tokens=False)["input_ids"][0]
        )
        return first if first in getattr(tokenizer, "get_added_vocab", dict)() else end

    def turn_seed(self) -> int | None:
        """The next turn's seed, from the session's and the turn number: every turn its own
        noise (one seed for all would give a weak model the same reply to every line), and
        a session replays alike from the same seed and lines. None without a seed."""
        if self.settings.seed is None:
            return None
        return row_keys(self.settings.seed, [len(self.turns)])[0]

    def render(self, user: str, turns: list[tuple[str, str]]) -> str:
        if self.use_chat_template:
            messages = []
            for asked, answered in turns:
                messages += [
                    {"role": "user", "content": asked},
                    {"role": "assistant", "content": answered},
                ]
            messages.append({"role": "user", "content": user})
            return self._apply_chat_template(messages)
        past = "".join(self.template.replace("{input}", a) + " " + b + "\n" for a, b in turns)
        return past + self.template.replace("{input}", user)

    def _apply_chat_template(self, messages: list[dict]) -> str:
        """The tokenizer's chat template over `messages`; a template that does not render (a
        syntax error, or one that insists on a system turn) is a RunError saying what to do."""
        from jinja2 import TemplateError

        try:
            return self.model.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as e:
            raise RunError(
                f"the model's chat template cannot render this conversation "
                f"({type(e).__name__}: {e}); set INFERENCE format (a template with {{input}}) "
                "to render each turn yourself"
            ) from None

    def encode(self, user: str, turns: list[tuple[str, str]]) -> list[int]:
        """The rendering's tokens, every turn's text read as plain text: a user who types
        `<|im_end|>` or `<|im_start|>` writes those characters, not the turn markers, which
        only the template writes."""
        texts = [text for turn in turns for text in turn] + [user]

        def render(texts: list[str]) -> str:
            return self.render(texts[-1], list(zip(texts[:-1:2], texts[1:-1:2], strict=True)))

        return self.model.encode_filled(render, texts)

    def prompt(self, user: str) -> list[int] | None:
        """The tokens of this turn with as much history as fits, or None when even the turn
        alone does not."""
        window = self.model.context_window
        room = window - min(self.settings.max_tokens, window // 2)
        for start in range(len(self.turns) + 1):
            ids = self.encode(user, self.turns[start:])
            if len(ids) <= room:
                return ids
        return None
