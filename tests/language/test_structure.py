"""Structure (spec section 2): header statements, blocks and labels, bodies
with fields, sub-blocks, words, conditions and statements, and values."""

from __future__ import annotations

from tests.language.util import error, program, warnings


def test_header_statements():
    p = program(
        """
        PROJECT "demo"
        DESCRIPTION "What it is for"
        VERSION "1.0.0"
        AUTHOR "Ada"
        TAGS ["a", "b"]
        """
    )
    project = p.config.project
    assert (project.name, project.description, project.version, project.author) == (
        "demo",
        "What it is for",
        "1.0.0",
        "Ada",
    )
    assert project.tags == ["a", "b"]


def test_a_single_tag_is_a_list():
    assert program('TAGS "solo"').config.project.tags == ["solo"]


def test_statements_come_in_any_order():
    first = program('TRAIN { epochs: 2 }\nPROJECT "x"\nENV { seed: 1 }')
    second = program('ENV { seed: 1 }\nPROJECT "x"\nTRAIN { epochs: 2 }')
    assert first.to_dict() == second.to_dict()


def test_a_label_on_an_executed_block_is_a_warning():
    p = program('MODEL "small" { base: "gpt2" }')
    assert p.config.model.base == "gpt2"
    assert [w[:2] for w in warnings('MODEL "small" { base: "gpt2" }')] == [(1, 7)]


def test_commas_are_optional_and_may_trail():
    a = program("TRAIN { epochs: 2, batch_size: 4, }")
    b = program("TRAIN { epochs: 2 batch_size: 4 }")
    c = program("TRAIN {\n  epochs: 2\n  batch_size: 4\n}")
    assert a.to_dict() == b.to_dict() == c.to_dict()


def test_multi_line_lists_with_trailing_commas_and_comments():
    p = program(
        """
        INFERENCE {
          stop_sequences: [
            "User:",      # one
            "\\n\\n",     # two
          ]
        }
        """
    )
    assert p.config.inference.stop_sequences == ["User:", "\n\n"]


def test_inline_objects_inside_lists():
    p = program(
        """
        DATASET {
          mix_datasets: [
            { path: "a.jsonl", weight: 60 },
            { path: "b.jsonl"  weight: 40 }
          ]
        }
        """
    )
    mix = p.config.dataset.mix_datasets
    assert [(m.path, m.weight) for m in mix] == [("a.jsonl", 60), ("b.jsonl", 40)]
    assert p.source_map["dataset.mix_datasets"].line == 3


def test_a_sub_block_is_an_object_field():
    as_block = program("MODEL { ADAPTER { rank: 4 } }")
    as_field = program("MODEL { adapter: { rank: 4 } }")
    assert as_block.to_dict() == as_field.to_dict()
    assert as_block.config.model.adapter.rank == 4


def test_free_form_sub_block():
    p = program("MODEL { pretrained: false architecture: gpt2 config { n_layer: 2 n_embd: 64 } }")
    assert p.config.model.config == {"n_layer": 2, "n_embd": 64}


def test_counts_in_model_config_are_numbers_and_other_quantities_errors():
    """`n_positions: 1K` was 'input was not a valid JSON value'; a count is its number, as
    in integer fields, and a size or percent (whose unit the config does not state) is an
    error that says so, at the value."""
    p = program("MODEL { config { n_positions: 1K  sizes: [1.5K, 2]  rope { f: 2M } } }")
    assert p.config.model.config == {"n_positions": 1000, "sizes": [1500, 2], "rope": {"f": 2e6}}
    assert error("MODEL { config { resid_pdrop: 10% } }") == (
        1,
        31,
        "10% is a percent: MODEL.config takes plain numbers, as config.json holds them",
    )


def test_params_sub_block_holds_inference_fields():
    p = program("INFERENCE { mode: chat params { temperature: 0.2 max_length: 50 } }")
    assert p.config.inference.temperature == 0.2
    assert p.config.inference.max_tokens == 50


def test_params_and_inference_control_written_as_object_fields():
    """`params: { ... }` was 'unknown field params' though a sub-block is an object field."""
    as_block = program("INFERENCE { params { top_k: 5 } CONTROL { IF loss > 1 { RETRY } } }")
    as_field = program("INFERENCE { params: { top_k: 5 } CONTROL: { IF loss > 1 { RETRY } } }")
    assert as_field.to_dict() == as_block.to_dict()
    assert as_field.config.inference.top_k == 5
    assert [w.message for w in as_field.warnings] == [w.message for w in as_block.warnings]


def test_a_field_in_params_and_outside_is_set_twice():
    assert error("INFERENCE {\n  temperature: 1\n  params { temperature: 0.2 }\n}") == (
        3,
        12,
        "temperature is set twice in INFERENCE; the first is at line 2",
    )


def test_bare_words_and_strings_in_a_list_block():
    assert program('METRICS { loss, "perplexity" mfu }').config.metrics == [
        "loss",
        "perplexity",
        "mfu",
    ]


def test_conditions_and_statements_parse_in_any_body():
    # MONITOR is not executed, but its body must parse: conditions as items,
    # statements followed by fields on the same line.
    p = program(
        """
        MONITOR { notify_if { loss > 2.0  gpu_usage > 90% } }
        GUARD {
          on_violation { REPLACE with_message: "no" }
          on_other { REPLACE WITH "no"  STOP  ALERT }
        }
        """
    )
    assert len(p.warnings) == 2


def test_values_of_every_kind():
    p = program(
        """
        MONITOR {
          text: "s"  number: 1.5  quantity: 2s  flag: true  name: bare
          list: [1, "a", [true], { k: v }]  object: { a: 1 }
        }
        """
    )
    assert p.config.project.name is None  # parsed; MONITOR only warns
