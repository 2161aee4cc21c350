"""The library API: parse, load, Program (config, warnings, source_map,
to_dict) and apply_overrides."""

from __future__ import annotations

import pytest

import okto
from okto.language import (
    OktoConfig,
    OktoValidationError,
    Origin,
    Program,
    apply_overrides,
)
from okto.language.program import with_max_steps
from okto.language.quantities import Quantity
from tests.language.util import program

TEXT = """\
PROJECT "api"
TRAIN {
  epochs: 2
  log_interval: 5
}
MODEL { base: "gpt2" ADAPTER { rank: 4 } }
"""


def test_okto_exports_the_language_api():
    assert okto.parse is okto.language.parse
    assert okto.load is okto.language.load
    assert okto.Program is Program


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "train.okt"
    path.write_text(TEXT, encoding="utf-8")
    p = okto.load(path)
    assert p.config.train.epochs == 2
    assert p.source.name == str(path)
    assert str(p.source_map["train.epochs"]) == f"{path}:3:11"


def test_source_map_gives_positions_and_defaults():
    p = okto.parse(TEXT, "api.okt")
    assert p.source_map["train.epochs"] == Origin("file", "api.okt", 3, 11)
    assert str(p.source_map["train.logging_steps"]) == "api.okt:4:17"  # via the alias
    assert str(p.source_map["train.batch_size"]) == "default"
    assert str(p.source_map["model.adapter"]) == "api.okt:6:22"
    assert str(p.source_map["model.adapter.rank"]) == "api.okt:6:38"
    assert str(p.source_map["model.adapter.alpha"]) == "default"
    assert str(p.source_map["project.name"]) == "api.okt:1:9"
    assert str(p.source_map["env"]) == "default"
    assert str(p.source_map["train"]) == "api.okt:2:1"
    assert p.source_map["train.epochs"].line == 3


def test_a_string_without_a_filename():
    p = okto.parse("TRAIN { epochs: 2 }")
    assert str(p.source_map["train.epochs"]) == "<string>:1:17"


def test_to_dict_round_trips():
    p = program(TEXT)
    data = p.to_dict()
    assert data["train"]["logging_steps"] == 5
    assert data["model"]["adapter"]["rank"] == 4
    assert OktoConfig.model_validate(data) == p.config


def test_to_dict_writes_quantities_as_text():
    p = program("ENV { min_memory: 16GB }\nMODEL { parameters: 124M }")
    data = p.to_dict()
    assert (data["env"]["min_memory"], data["model"]["parameters"]) == ("16GB", "124M")
    assert OktoConfig.model_validate(data).env.min_memory == Quantity(16, "GB")


def test_config_accepts_block_keywords_and_aliases_as_input():
    config = OktoConfig.model_validate({"TRAIN": {"log_interval": 3}, "DATA": {"val": "v"}})
    assert (config.train.logging_steps, config.dataset.validation) == (3, "v")


def test_warnings_are_diagnostics():
    p = program("ENV { install_missing: true }\nMONITOR { }")
    assert [(w.severity, w.line) for w in p.warnings] == [("warning", 1), ("warning", 2)]
    assert p.warnings[1].render().startswith("t.okt:2:1: warning: MONITOR is recognised")


# ---- overrides -----------------------------------------------------------------


def test_apply_overrides_revalidates_and_records_the_command_line():
    p = apply_overrides(program(TEXT), ["TRAIN.batch_size=32", "train.lr=1e-4"])
    assert (p.config.train.batch_size, p.config.train.learning_rate) == (32, 1e-4)
    assert str(p.source_map["train.batch_size"]) == "command line"
    assert str(p.source_map["train.learning_rate"]) == "command line"
    assert str(p.source_map["train.epochs"]) == "t.okt:3:11"


@pytest.mark.parametrize(
    ("override", "path", "value"),
    [
        ("MODEL.adapter.rank=16", ("model", "adapter", "rank"), 16),
        ("MODEL.ADAPTER.r=2", ("model", "adapter", "rank"), 2),
        ("DATA.train=data/other.jsonl", ("dataset", "train"), "data/other.jsonl"),
        ('DATASET.train="x y.jsonl"', ("dataset", "train"), "x y.jsonl"),
        ("ENV.min_memory=8GB", ("env", "min_memory"), Quantity(8, "GB")),
        ("EXPORT.format=[okm, hf]", ("export", "format"), ["okm", "hf"]),
        ("INFERENCE.max_new_tokens=20", ("inference", "max_tokens"), 20),
        ("PROJECT=renamed", ("project", "name"), "renamed"),
    ],
)
def test_override_forms(override, path, value):
    node = apply_overrides(program(TEXT), [override]).config
    for part in path:
        node = getattr(node, part)
    assert node == value


def test_an_override_replaces_a_whole_sub_block():
    p = apply_overrides(program(TEXT), ["MODEL.adapter={ rank: 2, alpha: 8 }"])
    assert (p.config.model.adapter.rank, p.config.model.adapter.alpha) == (2, 8)


def test_an_override_sets_or_adds_a_key_of_model_config():
    text = 'MODEL { architecture: "gpt2" pretrained: false config { n_layer: 2 n_head: 4 } }'
    p = apply_overrides(
        program(text),
        [
            "MODEL.config.n_layer=3",
            "MODEL.config.resid_pdrop=0.1",
            'MODEL.config.activation_function="gelu"',
            "MODEL.config.scale_attn_weights=false",
        ],
    )
    assert p.config.model.config == {
        "n_layer": 3,
        "n_head": 4,
        "resid_pdrop": 0.1,
        "activation_function": "gelu",
        "scale_attn_weights": False,
    }
    assert type(p.config.model.config["n_layer"]) is int
    assert str(p.source_map["model.config"]) == f"t.okt:1:{text.index('config') + 1}"
    assert str(p.source_map["model.config.n_head"]) == f"t.okt:1:{text.index('4 }') + 1}"
    assert str(p.source_map["model.config.n_layer"]) == "command line"
    assert str(p.source_map["model.config.resid_pdrop"]) == "command line"


def test_an_override_of_a_model_config_key_the_file_lacks():
    p = apply_overrides(program(TEXT), ["MODEL.config.n_layer=3"])
    assert p.config.model.config == {"n_layer": 3}
    assert str(p.source_map["model.config"]) == "command line"
    assert str(p.source_map["model.config.n_layer"]) == "command line"


def test_override_makes_a_conflict_visible():
    with pytest.raises(OktoValidationError) as caught:
        apply_overrides(program(TEXT), ["TRAIN.max_steps=10"])
    (diagnostic,) = caught.value.errors
    assert diagnostic.message == "set either epochs or max_steps, not both"
    assert diagnostic.render().splitlines() == [
        "override 'TRAIN.max_steps=10': error: set either epochs or max_steps, not both",
        "  TRAIN.max_steps=10",
        "                  ^^",
        "  = okto train --max-steps N replaces the file's epochs for one run",
    ]


@pytest.mark.parametrize("steps_in_file", ["epochs: 2", "max_steps: 30"])
def test_max_steps_replaces_the_files_count_and_its_warnings(steps_in_file):
    """okto train --max-steps 200 kept the file's warnings: 'step > 100 never holds: the run
    ends at step 30', about a run that now went to step 200."""
    text = f'PROJECT "api"\nTRAIN {{ {steps_in_file} }}\nCONTROL {{ IF step > 100 {{ LOG "late" }} }}\n'
    longer = with_max_steps(program(text), 200)
    assert longer.config.train.max_steps == 200 and longer.config.train.epochs is None
    assert not [w for w in longer.warnings if "never holds" in w.message]
    assert str(longer.source_map["train.max_steps"]) == "command line"
    shorter = with_max_steps(program(text), 5)
    assert [w.message for w in shorter.warnings if "never holds" in w.message] == [
        "step > 100 never holds: the run ends at step 5 (TRAIN.max_steps)"
    ]
    assert program(text).config.train.max_steps == (30 if "max" in steps_in_file else None)


@pytest.mark.parametrize(
    ("override", "message", "caret"),
    [
        ("TRAIN.batch_size=many", "batch_size: expected a whole number, got 'many'", "many"),
        (
            "TRAIN.batch_sise=3",
            "unknown field 'batch_sise' in TRAIN (did you mean 'batch_size'?)",
            "batch_sise",
        ),
        ("TRAN.epochs=3", "cannot set 'TRAN.epochs' (did you mean 'TRAIN'?)", "TRAN"),
        ("TRAIN=3", "name a field of TRAIN: TRAIN.field=value", "TRAIN"),
        ("CONTROL.x=1", "cannot set 'CONTROL.x'", "CONTROL"),
        ("TRAIN.epochs", "expected BLOCK.field=value, like TRAIN.batch_size=32", "TRAIN.epochs"),
        ("TRAIN.epochs.x=1", "TRAIN.epochs has no fields", "x"),
        ("MODEL.config.n_layer.x=1", "MODEL.config.n_layer has no fields", "x"),
        ("MODEL.config.=1", "name a key of MODEL.config: MODEL.config.KEY=value", "="),
        ("TRAIN.learning_rate=[1, 2]", "learning_rate: expected a number, got a list", "[1, 2]"),
        (
            "MODEL.adapter={ rnk: 2 }",
            "unknown field 'rnk' in adapter (did you mean 'rank'?)",
            "rnk",
        ),
        (
            "MODEL.adapter.rnk=2",
            "unknown field 'rnk' in MODEL.adapter (did you mean 'rank'?)",
            "rnk",
        ),
    ],
)
def test_override_errors_name_the_override_and_point_at_its_fault(override, message, caret):
    with pytest.raises(OktoValidationError) as caught:
        apply_overrides(program(TEXT), [override])
    error = caught.value.errors[0]
    assert error.message == message
    head, shown, marks = error.render().splitlines()[:3]
    # No "command line:1:24": a library user wrote no command line.
    assert head == f"override '{override}': error: {message}"
    assert shown == f"  {override}"
    start = marks.index("^") - 2
    assert override[start : start + len(marks.strip())] == caret
    assert str(caught.value).startswith(f"override '{override}': error:")


def test_overrides_keep_the_original_program():
    original = program(TEXT)
    apply_overrides(original, ["TRAIN.epochs=9"])
    assert original.config.train.epochs == 2
