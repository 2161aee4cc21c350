"""`okto chat`: talk to a model turn by turn, its replies streamed as they come.

Each turn is rendered with the INFERENCE block's `format` template when one is
set, else with the tokenizer's chat template, else as "User: ... /
Assistant:" lines. The oldest turns are dropped when the conversation and the
reply would no longer fit in the context window. `exit_command` (default
"exit") or end of input ends the session.
"""

from __future__ import annotations

import sys

from okto.cli.infer import GENERATE_FIELDS, add_generation_arguments, load, requested, write

PLAIN_TEMPLATE = "User: {input}\nAssistant:"
PLAIN_STOP = "\nUser:"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="an interactive conversation with a model",
        description="Chat with a model; type the exit command (default: exit) or end input to leave.",
    )
    add_generation_arguments(p)
    p.add_argument("--exit-command", help="the line that ends the session (default: exit)")
    p.set_defaults(run=run)


class Conversation:
    """The turns so far, rendered into one prompt that fits the model's context window."""

    def __init__(self, model, settings):
        self.model, self.settings = model, settings
        self.turns: list[tuple[str, str]] = []
        custom = settings.template != "{input}"
        self.use_chat_template = not custom and bool(
            getattr(model.tokenizer, "chat_template", None)
        )
        self.plain = not custom and not self.use_chat_template
        self.template = PLAIN_TEMPLATE if self.plain else settings.template

    def render(self, user: str, turns: list[tuple[str, str]]) -> str:
        if self.use_chat_template:
            messages = []
            for asked, answered in turns:
                messages += [
                    {"role": "user", "content": asked},
                    {"role": "assistant", "content": answered},
                ]
            messages.append({"role": "user", "content": user})
            return self.model.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        past = "".join(self.template.replace("{input}", a) + " " + b + "\n" for a, b in turns)
        return past + self.template.replace("{input}", user)

    def prompt(self, user: str) -> str | None:
        """The prompt for this turn with as much history as fits, or None when even the turn alone does not."""
        window = self.model.context_window
        room = window - min(self.settings.max_tokens, window // 2)
        for start in range(len(self.turns) + 1):
            text = self.render(user, self.turns[start:])
            if len(self.model.encode(text)) <= room:
                return text
        return None


def run(args) -> int:
    values = requested(args)
    if args.exit_command:
        values["exit_command"] = args.exit_command
    model = load(args, values)
    settings = model.settings(**{k: v for k, v in values.items() if k != "model"})
    chat = Conversation(model, settings)
    options = {k: getattr(settings, k) for k in GENERATE_FIELDS}
    options.update(template="{input}", batch_size=1)
    if chat.plain:
        options["stop"] = (*settings.stop, PLAIN_STOP)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {values['model']}; type {settings.exit_command!r} to leave")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == settings.exit_command:
            break
        user = line.strip()
        if not user:
            continue
        prompt = chat.prompt(user)
        if prompt is None:
            print("that message is too long for the model's context window", file=sys.stderr)
            continue
        (reply,) = model.generate(prompt, **options, stream=write)
        print(flush=True)
        chat.turns.append((user, reply.text.strip()))
    return 0
