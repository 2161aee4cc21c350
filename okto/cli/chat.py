"""`okto chat`: talk to a model turn by turn, its replies streamed as they come.

Turns are rendered by `okto.inference.chat.Conversation` (the `format`
template, else the tokenizer's chat template, else "User: / Assistant:"
lines); the oldest turns are dropped when the conversation and the reply
would no longer fit in the context window. `exit_command` (default "exit") or
end of input ends the session. At a terminal, Ctrl-C during a reply stops the
reply and returns to the prompt (as llama.cpp and ollama do), and Ctrl-C at
the prompt ends the session. A reply is per-call state only (the engine's
buffers are rewritten by the next prefill), so stopping one anywhere is safe.
"""

from __future__ import annotations

import io
import sys

from okto.cli.infer import GENERATE_FIELDS, add_generation_arguments, load, requested, write
from okto.errors import UsageError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="an interactive conversation with a model",
        description="Chat with a model; type the exit command (default: exit) or end input to leave.",
    )
    add_generation_arguments(p)
    p.add_argument(
        "--exit-command", metavar="TEXT", help="the line that ends the session (default: exit)"
    )
    p.set_defaults(run=run)


def run(args) -> int:
    values = requested(args)
    from okto.inference.chat import Conversation
    from okto.inference.settings import not_utf8

    model = load(args, values)
    settings = model.settings(**{k: v for k, v in values.items() if k != "model"})
    chat = Conversation(model, settings)
    options = {k: getattr(settings, k) for k in GENERATE_FIELDS}
    # the conversation is rendered and tokenized here: generate takes its token ids as they are
    options.update(template="{input}", mode="completion", batch_size=1, stop=chat.stop)
    lines = sys.stdin or io.StringIO()  # None when the process was started with stdin closed
    interactive = lines.isatty()
    if hasattr(lines, "reconfigure"):  # a line that is not UTF-8 is skipped with a word
        lines.reconfigure(errors="surrogateescape")
    if interactive:
        print(
            f"chatting with {values['model']}; type {settings.exit_command!r} or press Ctrl-D "
            "to leave; Ctrl-C stops a reply"
        )
    while True:
        if interactive:
            print("> ", end="", flush=True)
        try:
            line = lines.readline()
        except KeyboardInterrupt:
            if not interactive:
                raise
            print()  # Ctrl-C at the prompt leaves, on a line of its own
            break
        if not line and interactive:
            print()  # Ctrl-D at the "> " prompt: the shell's prompt starts on a line of its own
        if not line or line.strip() == settings.exit_command:
            break
        user = line.strip()
        if not user:
            continue
        problem = not_utf8(user)
        if problem:
            print(f"that line is {problem}; skipped", file=sys.stderr)
            continue
        try:
            prompt = chat.prompt(user)
        except UsageError as e:  # text okto cannot keep apart from the special tokens
            print(f"that line cannot be tokenized: {e}; skipped", file=sys.stderr)
            continue
        if prompt is None:
            print("that message is too long for the model's context window", file=sys.stderr)
            continue
        options["seed"] = chat.turn_seed()
        try:
            (reply,) = model.generate([prompt], **options, stream=write)
        except KeyboardInterrupt:
            if not interactive:  # no one at a prompt to come back to: the session ends
                raise
            print(flush=True)
            print("(reply stopped; not kept in the conversation)", file=sys.stderr)
            continue
        print(flush=True)
        chat.turns.append((user, reply.text.strip()))
    return 0
