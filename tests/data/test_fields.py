"""Field detection order, explicit fields, types, and records that do not fit."""

from __future__ import annotations

import re
import warnings

import pytest

from okto.data import DataWarning, build_datasets
from okto.data.fields import FieldPlan, Unusable, detect, to_turns
from okto.data.settings import DataSettings
from tests.data.helpers import config, real_text, trained_runs, write_jsonl


def _detect(record: dict, **fields) -> str | None:
    plan = detect(record, DataSettings.from_config(config(train="x", **fields)))
    return plan and plan.describe()


@pytest.mark.parametrize(
    ("record", "found"),
    [
        # The spec's order: chat turns, input+output, input+target, text, first string field.
        (
            {"text": "t", "input": "i", "output": "o", "messages": [], "conversations": []},
            "chat turns in 'conversations'",
        ),
        ({"text": "t", "input": "i", "output": "o", "messages": []}, "chat turns in 'messages'"),
        (
            {"text": "t", "target": "g", "input": "i", "output": "o"},
            "input 'input', output 'output'",
        ),
        ({"text": "t", "target": "g", "input": "i"}, "input 'input', output 'target'"),
        ({"title": "x", "text": "t"}, "text in 'text'"),
        ({"n": 3, "title": "x", "body": "t"}, "text in 'title'"),
        # okto's additions, after the spec's pairs and before text.
        (
            {"instruction": "do", "input": "", "output": "o"},
            "input 'instruction' + 'input', output 'output'",
        ),
        (
            {"instruction": "do", "response": "o", "text": "t"},
            "input 'instruction', output 'response'",
        ),
        ({"prompt": "p", "completion": "c"}, "input 'prompt', output 'completion'"),
        ({"question": "q", "answer": "a"}, "input 'question', output 'answer'"),
        ({"n": 3, "tags": ["x"]}, None),
        # Known names in another case; before, these fell through to the first string field.
        (
            {"Instruction": "do", "Input": "x", "Output": "o"},
            "input 'Instruction' + 'Input', output 'Output'",
        ),
        ({"Question": "q", "Answer": "a"}, "input 'Question', output 'Answer'"),
        ({"id": "7", "Messages": []}, "chat turns in 'Messages'"),
        ({"id": "7", "TEXT": "a", "text": "b"}, "text in 'text'"),
    ],
)
def test_detection_order(record, found):
    assert _detect(record) == found


def test_named_fields_win():
    record = {
        "text": "t",
        "body": "b",
        "q": "x",
        "a": "y",
        "turns": [{"role": "user", "content": "hi"}],
    }
    assert _detect(record, text_field="body") == "text in 'body'"
    assert _detect(record, text_field="turns") == "chat turns in 'turns'"
    assert _detect(record, input_field="q", output_field="a") == "input 'q', output 'a'"
    assert _detect(record, text_field="missing") is None


def test_context_fields_go_before_the_input():
    record = {"question": "Why?", "context": "Because.", "answer": "So."}
    qa = DataSettings.from_config(config(train="x", type="qa"))
    plan = detect(record, qa)
    assert plan.describe() == "input 'context' + 'question', output 'answer'"
    assert to_turns(record, plan, True) == (["user", "assistant"], ["Because.\n\nWhy?", "So."])
    menu = DataSettings.from_config(config(train="x", context_fields=["menu"]))
    plan = detect({"menu": "soup", "input": "order", "output": "ok"}, menu)
    assert plan.before == ("menu",)


def test_chat_turns_roles_and_trimming():
    plan = FieldPlan("chat", "messages")
    record = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, "there"]},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "   "},
            {"role": "user", "content": "bye"},
        ]
    }
    roles, texts = to_turns(record, plan, assistant_only=True)
    assert roles == ["system", "user", "assistant"]
    assert texts == ["be brief", "hi\nthere", "hello"]
    assert to_turns(record, plan, assistant_only=False)[0][-1] == "user"
    # Turn keys in another case were 'a turn without a role' (before: 'unknown role None').
    capitalized = {"messages": [{"From": "Human", "Value": "hi"}, {"Role": "GPT ", "Text": "yo"}]}
    assert to_turns(capitalized, plan, True) == (["user", "assistant"], ["hi", "yo"])
    # OpenAI's developer messages are its system messages (they dropped the record).
    developer = {"messages": [{"role": "developer", "content": "be brief"}, *record["messages"]]}
    assert to_turns(developer, plan, True)[0][:2] == ["system", "system"]
    # A number is text in a turn as in a pair (it dropped the record as 'not text').
    numeric = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "gpt", "content": 4}]}
    assert to_turns(numeric, plan, True) == (["user", "assistant"], ["2+2?", "4"])


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": []}, "no assistant turn"),
        ({"messages": "hi"}, "'messages' is not a list of turns"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "unknown role 'wizard'"),
        ({"messages": [{"role": "user", "content": {"a": 1}}]}, "a turn's content is not text"),
        ({"messages": ["hi"]}, "a turn in 'messages' is not an object"),
        ({"messages": [{"content": "hi"}]}, r"a turn in 'messages' has no role \(from or role\)"),
    ],
)
def test_unusable_turns(record, reason):
    with pytest.raises(Unusable, match=reason):
        to_turns(record, FieldPlan("chat", "messages"), assistant_only=True)


OPENAI_CALL = {"type": "function", "function": {"name": "weather", "arguments": '{"c": 1}'}}
OPENAI_TOOL_TURNS = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", **OPENAI_CALL}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "assistant", "content": "it is sunny"},
]


def test_openai_tool_calls_are_tool_call_turns():
    """An OpenAI assistant turn with `tool_calls` and null content was skipped as empty
    (the answer trained after a result nothing had asked for), then dropped the record:
    its calls are now a `tool_call` turn, as a ShareGPT `function_call` turn is."""
    plan = FieldPlan("chat", "messages")
    call = '{"name": "weather", "arguments": {"c": 1}}'
    expected = (
        ["user", "tool_call", "tool", "assistant"],
        ["weather?", call, "sunny", "it is sunny"],
    )
    assert to_turns({"messages": OPENAI_TOOL_TURNS}, plan, True) == expected
    # The legacy function_call form, role "function" answering it.
    legacy = [
        OPENAI_TOOL_TURNS[0],
        {"role": "assistant", "content": None, "function_call": OPENAI_CALL["function"]},
        {"role": "function", "name": "weather", "content": "sunny"},
        OPENAI_TOOL_TURNS[3],
    ]
    assert to_turns({"messages": legacy}, plan, True) == expected
    # Parallel calls are one turn (one list, as the model emits them); text beside the
    # calls is the assistant's turn before them.
    both = {"type": "function", "function": {"name": "time", "arguments": {}}}
    parallel = {"role": "assistant", "content": "checking", "tool_calls": [OPENAI_CALL, both]}
    assert to_turns({"messages": [OPENAI_TOOL_TURNS[0], parallel]}, plan, True) == (
        ["user", "assistant", "tool_call"],
        [
            "weather?",
            "checking",
            '[{"name": "weather", "arguments": {"c": 1}}, {"name": "time", "arguments": {}}]',
        ],
    )
    nameless = {"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}
    with pytest.raises(Unusable, match="a turn's tool call has no function name"):
        to_turns({"messages": [OPENAI_TOOL_TURNS[0], nameless]}, plan, True)
    # No calls (Parquet gives every turn the key, null or empty): the turns are read.
    plain = [
        {**OPENAI_TOOL_TURNS[0], "tool_calls": None},
        {"role": "assistant", "content": "hi", "tool_calls": []},
    ]
    assert to_turns({"messages": plain}, plan, True) == (["user", "assistant"], ["weather?", "hi"])


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"text": None}, "missing 'text'"),
        ({"text": float("nan")}, "missing 'text'"),
        ({"text": {"a": 1}}, "'text' is not text"),
        ({"text": "  \n"}, "empty text"),
    ],
)
def test_unusable_text(record, reason):
    with pytest.raises(Unusable, match=reason):
        to_turns(record, FieldPlan("text", "text"), assistant_only=False)


def test_numbers_in_cells_are_text():
    assert to_turns({"q": "2+2?", "a": 4}, FieldPlan("pair", "a", prompt="q"), True)[1] == [
        "2+2?",
        "4",
    ]


def _first_row(tmp_path, tokenizer, records, **fields):
    path = write_jsonl(tmp_path / "data.jsonl", records)
    cfg = config(train=str(path), validation=str(path), packing=False, max_length=64, **fields)
    splits = build_datasets(cfg, tokenizer)
    return splits, splits.train[0]


PAIR = {"input": "hello world", "output": "answer one"}
PAIR_TURNS = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "one"}]


@pytest.mark.parametrize(
    ("kind", "text", "trained"),
    [
        # instruction (the default for pairs) and qa: chat template, answer trained.
        (
            None,
            "<|user|>\nhello world\n<|assistant|>\nanswer one<|endoftext|>",
            ["answer one<|endoftext|>"],
        ),
        (
            "qa",
            "<|user|>\nhello world\n<|assistant|>\nanswer one<|endoftext|>",
            ["answer one<|endoftext|>"],
        ),
        (
            "chat",
            "<|user|>\nhello world\n<|assistant|>\nanswer one<|endoftext|>",
            ["answer one<|endoftext|>"],
        ),
        # generation: no template, the continuation trained.
        ("generation", "hello world\nanswer one<|endoftext|>", ["answer one<|endoftext|>"]),
        # text: no template, everything trained.
        ("text", "hello world\nanswer one<|endoftext|>", ["hello world\nanswer one<|endoftext|>"]),
    ],
)
def test_types_of_pair_data(tmp_path, tokenizer, kind, text, trained):
    _, row = _first_row(tmp_path, tokenizer, [PAIR], type=kind)
    assert real_text(tokenizer, row) == text
    assert trained_runs(tokenizer, row) == trained


def test_the_first_string_field_names_the_fields_it_leaves_out(tmp_path, tokenizer):
    """An id before the text trained the ids, and nothing said so."""
    records = [{"id": f"a{i}", "n": i, "body": "hello world"} for i in range(3)]
    with pytest.warns(DataWarning, match=r"first string field, 'id', and leaves out 'body'"):
        splits, row = _first_row(tmp_path, tokenizer, records, shuffle=False)
    assert real_text(tokenizer, row) == "a0<|endoftext|>"
    assert any("leaves out 'body'" in note for note in splits.stats.warnings)
    turns = [{"id": "a", "n": 1, "conversation": [{"from": "human", "value": "hi"}]}] * 2
    with pytest.warns(DataWarning, match=r"first string field, 'id', and leaves out 'conv"):
        _first_row(tmp_path, tokenizer, turns)


def test_chat_typed_text_trains_everything(tmp_path, tokenizer):
    record = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    }
    _, row = _first_row(tmp_path, tokenizer, [record], type="text")
    assert trained_runs(tokenizer, row) == ["<|user|>\nhi\n<|assistant|>\nyo<|endoftext|>"]


def test_alpaca_instruction_and_input(tmp_path, tokenizer):
    records = [
        {"instruction": "answer", "input": "hello world", "output": "one"},
        {"instruction": "answer", "input": "", "output": "two"},
        # A null or absent input is empty like "" (these were dropped as "missing 'input'").
        {"instruction": "answer", "input": None, "output": "three"},
        {"instruction": "answer", "output": "four"},
    ]
    splits, row = _first_row(tmp_path, tokenizer, records, shuffle=False)
    assert real_text(tokenizer, row).startswith("<|user|>\nanswer\n\nhello world\n<|assistant|>")
    for other in splits.train.select(range(1, 4)):
        assert real_text(tokenizer, other).startswith("<|user|>\nanswer\n<|assistant|>")
    assert splits.stats.files[0].dropped == {}


@pytest.mark.parametrize(
    ("records", "warning"),
    [
        # Text and chat turns have no prompt to join a context to.
        ([{"text": "hello world", "menu": "soup"}], "okto found text in 'text': they are not"),
        ([{"messages": PAIR_TURNS, "menu": "soup"}], "found chat turns in 'messages': they are"),
        # A misspelt field was read as an empty context in every record.
        ([{"menu": "soup", **PAIR}], r"no record has context_fields 'menus', so they add"),
    ],
)
def test_context_fields_that_add_nothing_are_named(tmp_path, tokenizer, records, warning):
    """context_fields on text or chat data, or naming a field no record has, were ignored
    without a word: the prompts lacked the context the user asked for."""
    with pytest.warns(DataWarning, match=warning):
        splits, row = _first_row(tmp_path, tokenizer, records * 2, context_fields=["menus"])
    assert "soup" not in real_text(tokenizer, row)
    assert any("context_fields 'menus'" in note for note in splits.stats.warnings)


def test_context_fields_some_records_have_are_used_quietly(tmp_path, tokenizer):
    records = [{"menu": "soup", **PAIR}, PAIR]
    splits, row = _first_row(tmp_path, tokenizer, records, context_fields=["menu"], shuffle=False)
    assert real_text(tokenizer, row).startswith("<|user|>\nsoup\n\nhello world")
    assert not [note for note in splits.stats.warnings if "context_fields '" in note]


def test_records_that_do_not_fit_are_dropped_and_counted(tmp_path, tokenizer):
    records = [{"input": "a", "output": "one"}] * 30 + [
        {"input": "a"},
        {"input": "a", "output": ""},
        {"input": "a", "output": ["x"]},
        7,
    ]
    with pytest.warns(DataWarning, match=r"dropped 4 of 34 records .*the first at line 31"):
        splits, _ = _first_row(tmp_path, tokenizer, records)
    assert splits.stats.files[0].dropped == {
        "missing 'output'": 1,
        "empty 'output'": 1,
        "'output' is not text": 1,
        "not an object": 1,
    }
    assert splits.stats.train.records == 30


def test_a_records_system_field_is_its_first_system_turn(tmp_path, tokenizer):
    """LLaMA-Factory's ShareGPT keeps the system prompt beside the turns; it was ignored,
    and the model trained without it. A system turn the conversation starts with wins."""
    plan = FieldPlan("chat", "conversations")
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    record = {"system": "be brief", "conversations": turns}
    assert to_turns(record, plan, True) == (
        ["system", "user", "assistant"],
        ["be brief", "hi", "yo"],
    )
    own = {"System": "be brief", "conversations": [{"from": "system", "value": "mine"}, *turns]}
    assert to_turns(own, plan, True)[1] == ["mine", "hi", "yo"]
    for none in ("", None, float("nan")):
        assert to_turns({"system": none, "conversations": turns}, plan, True)[0][0] == "user"
    with pytest.raises(Unusable, match="'system' is not text"):
        to_turns({"system": {"a": 1}, "conversations": turns}, plan, True)
    # The tools join it, as they join a system turn of the conversation's.
    _, row = _first_row(tmp_path, tokenizer, [{**record, "tools": "[1]"}])
    assert real_text(tokenizer, row) == (
        "<|system|>\nbe brief\n\n<tools>\n[1]\n</tools>\n<|user|>\nhi\n"
        "<|assistant|>\nyo<|endoftext|>"
    )


@pytest.mark.parametrize(
    ("records", "fields", "warning"),
    [
        # A lone string field of an unknown name trained without a word.
        (
            [{"content": "hello world"}] * 2,
            {},
            r"first string field, 'content'; set DATASET text_field "
            r'\(text_field: "content" to keep it\)',
        ),
        # A prompt without its completion is no pair: the prompts alone would train.
        ([{"n": 1, "prompt": "hello world"}] * 2, {}, "first string field, 'prompt';"),
        ([{"text": "hello world"}] * 2, {}, None),
        ([{"content": "hello world"}] * 2, {"text_field": "content"}, None),
    ],
)
def test_a_guessed_text_field_is_named(tmp_path, tokenizer, records, fields, warning):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits, row = _first_row(tmp_path, tokenizer, records, **fields)
    guesses = [str(w.message) for w in caught if "no known text field" in str(w.message)]
    assert real_text(tokenizer, row) == "hello world<|endoftext|>"
    if warning is None:
        assert guesses == []
    else:
        assert len(guesses) == 2  # the training file and the validation file
        assert re.search(warning, guesses[0])
        assert any(re.search(warning, note) for note in splits.stats.warnings)
