"""Tool use in ShareGPT data (LLaMA-Factory's `function_call` and `observation` turns, a
record's `tools`) and in OpenAI messages (`tool_calls`, role `tool`): the call is trained,
its result is not, and both templates render them. Such records were dropped as having an
unknown role, or as making calls okto did not render."""

from __future__ import annotations

import json

from okto.data import build_datasets
from okto.data.fields import FieldPlan, to_turns
from okto.data.templates import PLAIN_CHAT_TEMPLATE, Renderer
from tests.data.helpers import config, real_text, trained_runs, write_jsonl
from tests.data.test_fields import OPENAI_TOOL_TURNS
from tests.data.test_masking import CHATML, _with_template

CALL = '{"name": "weather", "arguments": {"city": "paris"}}'
TOOLS = '[{"name": "weather", "description": "the weather", "parameters": {}}]'
RECORD = {
    "conversations": [
        {"from": "human", "value": "hello world"},
        {"from": "function_call", "value": CALL},
        {"from": "observation", "value": "three tokens"},
        {"from": "gpt", "value": "answer one"},
    ],
    "tools": TOOLS,
}
# Qwen2.5's way with tools, cut down: definitions in the system turn, calls in tags and
# results as user turns in tags, each the template's own rendering.
TOOL_CHATML = (
    "{% if tools %}<|im_start|>system\n<tools>"
    "{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools><|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.tool_calls %}<|im_start|>assistant"
    "{% for call in message.tool_calls %}{{ '\\n<tool_call>' + call.function.name }} "
    "{{ call.function.arguments | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>{{ message.content }}"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Turns must alternate user and assistant, as Llama 2's and Mistral's templates demand.
ALTERNATING = (
    "{% for message in messages %}"
    "{% if (message.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}"
    "{% endfor %}" + CHATML
)


def _build(tmp_path, tokenizer, records):
    path = write_jsonl(tmp_path / "tools.jsonl", records)
    cfg = config(train=str(path), validation=str(path), packing=False, max_length=256)
    return build_datasets(cfg, tokenizer)


def test_plain_template_trains_the_call_and_masks_its_result(tmp_path, tokenizer):
    row = _build(tmp_path, tokenizer, [RECORD]).train[0]
    assert real_text(tokenizer, row) == (
        f"<|system|>\n<tools>\n{TOOLS}\n</tools>\n<|user|>\nhello world\n"
        f"<|assistant|>\n<tool_call>\n{CALL}\n</tool_call><|endoftext|>"
        "<|tool|>\nthree tokens\n<|assistant|>\nanswer one<|endoftext|>"
    )
    assert trained_runs(tokenizer, row) == [
        f"<tool_call>\n{CALL}\n</tool_call><|endoftext|>",
        "answer one<|endoftext|>",
    ]


def test_a_template_with_tools_renders_them_its_own_way(tmp_path, tokenizer):
    own = _with_template(tokenizer, TOOL_CHATML, "<|im_start|>", "<|im_end|>")
    row = _build(tmp_path, own, [RECORD]).train[0]
    tool = {"type": "function", "function": json.loads(TOOLS)[0]}
    assert real_text(own, row) == (
        f"<|im_start|>system\n<tools>{json.dumps(tool)}</tools><|im_end|>\n"
        "<|im_start|>user\nhello world<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>weather {"city": "paris"}</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>three tokens</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nanswer one<|im_end|>\n<|endoftext|>"
    )
    assert trained_runs(own, row) == [
        '<tool_call>weather {"city": "paris"}</tool_call><|im_end|>\n',
        "answer one<|im_end|>\n<|endoftext|>",
    ]


def test_a_template_without_tools_gets_them_as_text(tmp_path, tokenizer):
    """ChatML that knows no `tool_calls` would render the call as an empty assistant turn,
    trained, and silently drop the definitions: the call goes in as text instead."""
    chatml = _with_template(tokenizer, CHATML, "<|im_start|>", "<|im_end|>")
    row = _build(tmp_path, chatml, [RECORD]).train[0]
    assert real_text(chatml, row) == (
        f"<|im_start|>system\n<tools>\n{TOOLS}\n</tools><|im_end|>\n"
        "<|im_start|>user\nhello world<|im_end|>\n"
        f"<|im_start|>assistant\n<tool_call>\n{CALL}\n</tool_call><|im_end|>\n"
        "<|im_start|>tool\nthree tokens<|im_end|>\n"
        "<|im_start|>assistant\nanswer one<|im_end|>\n<|endoftext|>"
    )
    assert trained_runs(chatml, row) == [
        f"<tool_call>\n{CALL}\n</tool_call><|im_end|>\n",
        "answer one<|im_end|>\n<|endoftext|>",
    ]


def test_a_template_refusing_a_tool_role_gets_the_result_as_a_user_turn(tmp_path, tokenizer):
    strict = _with_template(tokenizer, ALTERNATING, "<|im_start|>", "<|im_end|>")
    record = {"conversations": RECORD["conversations"]}
    row = _build(tmp_path, strict, [record]).train[0]
    assert "<|im_start|>user\n<tool_response>\nthree tokens\n</tool_response><|im_end|>" in (
        real_text(strict, row)
    )
    assert trained_runs(strict, row)[0] == f"<tool_call>\n{CALL}\n</tool_call><|im_end|>\n"


def test_records_that_still_cannot_be_used_are_counted(tmp_path, tokenizer):
    """A record whose definitions make a system turn the template refuses is dropped and
    counted, as are a call nobody made and a role okto does not know."""
    strict = _with_template(tokenizer, ALTERNATING, "<|im_start|>", "<|im_end|>")
    unanswered = {
        "conversations": [{"from": "human", "value": "hi"}, {"from": "observation", "value": "x"}]
    }
    unknown = {"conversations": [{"from": "wizard", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    usable = {"conversations": RECORD["conversations"]}
    splits = _build(tmp_path, strict, [RECORD, unanswered, unknown, usable])
    # Twice each: the file is read as the training and as the validation data.
    assert splits.stats.dropped == {
        "the chat template rejected it (roles must alternate)": 2,
        "no assistant turn": 2,
        "unknown role 'wizard'": 2,
    }
    assert any("1 no assistant turn, 1 unknown role 'wizard'" in w for w in splits.stats.warnings)
    assert splits.stats.train.examples == 1


def test_a_call_ends_a_conversation_and_may_be_an_object():
    """A conversation may stop at the call (the model's turn ends there), and some dumps
    hold the call as an object rather than its JSON text."""
    turns = [{"from": "human", "value": "hi"}, {"from": "function_call", "value": {"name": "w"}}]
    record = {"conversations": [*turns, {"from": "observation", "value": "sunny"}]}
    assert to_turns(record, FieldPlan("chat", "conversations"), assistant_only=True) == (
        ["user", "tool_call"],
        ["hi", '{"name": "w"}'],
    )


def test_the_jinja_plain_template_renders_tool_turns_as_the_direct_renderer(tokenizer):
    """Okto's template through Jinja (which knows no `tool_calls`) gives the same text and
    masks as okto's direct rendering of it."""
    roles = ["tools", "system", "user", "tool_call", "tool", "assistant"]
    texts = [TOOLS, "be brief", "hi", CALL, "sunny", "it is sunny"]
    direct = Renderer(tokenizer)
    jinja = Renderer(_with_template(tokenizer, PLAIN_CHAT_TEMPLATE + "{# through Jinja #}"))
    assert jinja.render(roles, texts, True, False) == direct.render(roles, texts, True, False)


def test_openai_tool_calls_train_as_the_call_and_mask_the_result(tmp_path, tokenizer):
    """The same record in OpenAI's form: plain text where the template knows no tools, the
    template's own `tool_calls` rendering where it does."""
    record = {"messages": OPENAI_TOOL_TURNS, "tools": TOOLS}
    call = '{"name": "weather", "arguments": {"c": 1}}'
    splits = _build(tmp_path, tokenizer, [record])
    assert splits.stats.dropped == {}
    row = splits.train[0]
    assert real_text(tokenizer, row) == (
        f"<|system|>\n<tools>\n{TOOLS}\n</tools>\n<|user|>\nweather?\n"
        f"<|assistant|>\n<tool_call>\n{call}\n</tool_call><|endoftext|>"
        "<|tool|>\nsunny\n<|assistant|>\nit is sunny<|endoftext|>"
    )
    assert trained_runs(tokenizer, row) == [
        f"<tool_call>\n{call}\n</tool_call><|endoftext|>",
        "it is sunny<|endoftext|>",
    ]
    own = _with_template(tokenizer, TOOL_CHATML, "<|im_start|>", "<|im_end|>")
    row = _build(tmp_path, own, [record]).train[0]
    assert trained_runs(own, row) == [
        '<tool_call>weather {"c": 1}</tool_call><|im_end|>\n',
        "it is sunny<|im_end|>\n<|endoftext|>",
    ]
    assert "<|im_start|>user\n<tool_response>sunny</tool_response>" in real_text(own, row)
