"""A chat reply ends at the template's end-of-turn marker, which is not printed.

A model whose end of turn is not an EOS id (ChatML's `<|im_end|>` beside `<|endoftext|>`,
a template's text marker) went on past it into the next turn's header and a user's line
of its own making, on okto's engine and on Hugging Face generate alike.
"""

import io
from types import SimpleNamespace

import pytest
import torch

from okto.cli import main
from okto.data.templates import PLAIN_CHAT_TEMPLATE
from okto.inference.chat import Conversation
from okto.inference.settings import Settings
from tests.inference import models

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT_MARKER = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n[END]\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
FORMAT = "Q: {input}\nA:"
LINES = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def chatml_tokenizer():
    tok = models.tokenizer("gpt2")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def scripted(path, tok, texts: list[str]):
    """A GPT-2 that writes the tokens of `texts` in a loop, each token fixing the next (its
    blocks add nothing, so the last token alone picks the next): a bigram chain."""
    chain = [i for text in texts for i in tok(text, add_special_tokens=False)["input_ids"]]
    assert len(set(chain)) == len(chain), "a token twice in the chain has two successors"
    model = models.model("gpt2", tok, tie_word_embeddings=False)
    with torch.no_grad():
        for block in model.transformer.h:
            for layer in (block.attn.c_proj, block.mlp.c_proj):
                layer.weight.zero_()
                layer.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight.zero_()
        model.lm_head.weight.zero_()
        for slot, (token, following) in enumerate(zip(chain, chain[1:] + chain[:1], strict=True)):
            model.transformer.wte.weight[token, slot] = 1.0
            model.lm_head.weight[following, slot] = 10.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    """After the generation prompt's "\\n": "Hel", `<|im_end|>`, "\\n", "Hel", ..."""
    path = tmp_path_factory.mktemp("chatml") / "m"
    return scripted(path, chatml_tokenizer(), ["\n", "Hel", "<|im_end|>"])


@pytest.fixture(scope="module")
def text_marker(tmp_path_factory):
    """After the generation prompt's ":": "Hel\\n[END]:Hel\\n[END]:...", its marker plain text."""
    tok = models.tokenizer("gpt2")
    tok.chat_template = TEXT_MARKER
    return scripted(tmp_path_factory.mktemp("text") / "m", tok, [":", "Hel", "\n[END]"])


@pytest.fixture(scope="module")
def format_lines(tmp_path_factory):
    """After `FORMAT`'s ":": "Hel\\nQ:Hel\\nQ:...", the next turn's line."""
    path = tmp_path_factory.mktemp("format") / "m"
    return scripted(path, models.tokenizer("gpt2"), [":", "Hel", "\nQ"])


@pytest.mark.parametrize("backend", ["native", "hf"])
@pytest.mark.parametrize(
    ("kind", "template"),
    [("chatml", None), ("text_marker", None), ("format_lines", FORMAT)],
)
def test_a_chat_reply_ends_at_the_end_of_turn_marker(kind, template, backend, request):
    """It ran on to max_tokens ("Hel\\nHel\\nHel..." with `<|im_end|>`, "Hel\\n[END]:Hel..."
    with a text marker, "Hel\\nQ:Hel..." with a `format`); it stops at the marker (a `format`'s:
    a line that starts the next turn), which the text leaves out."""
    from okto.inference import load_model

    model = load_model(request.getfixturevalue(kind), device="cpu", backend=backend)
    streamed = []
    (g,) = model.generate(
        "hi",
        mode="chat",
        template=template,
        max_tokens=12,
        temperature=0,
        stream=lambda _, t: streamed.append(t),
    )
    assert (g.text, g.finish_reason) == ("Hel", "stop")
    assert "".join(streamed) == "Hel"


@pytest.mark.parametrize("kind", ["chatml", "text_marker"])
def test_okto_chat_prints_each_reply_up_to_its_marker(kind, request, monkeypatch, capsys):
    """`okto chat` printed the reply, the marker's text and the turns the model went on to
    write; each turn's reply is printed up to its marker, no part of the marker streamed."""
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\nagain\n"))
    argv = ["chat", "-m", str(request.getfixturevalue(kind)), "--max-tokens", "12"]
    assert main([*argv, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "Hel\nHel\n"


def test_a_stop_sequence_that_is_a_special_token_stops_there(chatml):
    """`--stop '<|im_end|>'` never matched: decoding skips special tokens, so the text never
    held it. A stop that is one special token's text stops at that token."""
    from okto.inference import load_model

    model = load_model(chatml, device="cpu")
    ids = model.encode("<|im_start|>assistant\n")
    (plain,) = model.generate([ids], max_tokens=6, temperature=0)
    (stopped,) = model.generate([ids], max_tokens=6, temperature=0, stop="<|im_end|>")
    assert (plain.text, plain.finish_reason) == ("Hel\nHel\n", "length")
    assert (stopped.text, stopped.finish_reason) == ("Hel", "stop")


def tokenizer_with(template: str, eos: bool = True):
    tok = chatml_tokenizer() if template == CHATML else models.tokenizer("gpt2")
    tok.chat_template = template
    if not eos:
        tok.eos_token = None
    return tok


@pytest.mark.parametrize(
    ("template", "eos", "end"),
    [
        (CHATML, True, "<|im_end|>"),  # a special token: generate stops at its id
        (PLAIN_CHAT_TEMPLATE, True, "<|endoftext|>"),  # okto's own: the EOS
        (PLAIN_CHAT_TEMPLATE, False, "<|user|>"),  # no EOS to end a turn: the next role tag
        (TEXT_MARKER, True, "\n[END]"),
        (LINES, True, "\nUser:"),  # only a line end after a reply: the next turn's start
        ("{% for m in messages %}{{ m['content'] }}{% endfor %}", True, None),
    ],
    ids=["chatml", "plain", "plain-without-eos", "text-marker", "lines", "nothing-between"],
)
def test_the_end_of_a_turn_is_read_from_the_template(template, eos, end):
    tokenizer = tokenizer_with(template, eos)
    chat = Conversation(SimpleNamespace(tokenizer=tokenizer), Settings(stop=("!",)))
    assert chat.stop == (("!", end) if end else ("!",))


@pytest.mark.parametrize(
    ("template", "end"),
    [
        ("{input}", "\nUser:"),  # no chat template: okto's "User: / Assistant:" lines
        (FORMAT, "\nQ:"),
        ("  Q:  {input}\nA:", "\nQ:"),
        ("<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>"),
        ("{input}\nA:", None),
    ],
)
def test_a_format_stops_where_the_next_turn_starts(template, end):
    """A `format` (or no template at all) had no stop but "User: / Assistant:" lines' own; a
    reply ends where `render` would start the next turn, its first token where that is special."""
    tokenizer = chatml_tokenizer()
    tokenizer.chat_template = None
    chat = Conversation(SimpleNamespace(tokenizer=tokenizer), Settings(template=template))
    assert chat.stop == ((end,) if end else ())
