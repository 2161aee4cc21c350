"""Files in the style other OktoScript projects publish: everything parses,
and what okto does not do is a warning or a clear, positioned error."""

from __future__ import annotations

import pytest

import okto
from okto.language import InvalidProgram
from tests.language.util import program

OTHER_TOOL_STYLE = """\
# Written the way public OktoScript projects write their files.
# okto_version: "1.2"
PROJECT "ShopAssistant"
DESCRIPTION "Answers questions about a shop"
VERSION "1.0"
AUTHOR "someone"

ENV {
  accelerator: "gpu"
  min_memory: "8GB"
  precision: "fp16"
  backend: "oktoseek"
  install_missing: true
}

DATASET {
  train: "dataset/train.jsonl"
  validation: "dataset/val.jsonl"
  format: "jsonl"
  type: "chat"
  language: "en"
  input_field: "input"
  output_field: "target"
}

MODEL {
  base: "some/base-model"
  architecture: "transformer"
  parameters: 120M
  context_window: 2048
}

TRAIN {
  epochs: 5
  batch_size: 32
  learning_rate: 0.0001
  optimizer: "adamw"
  scheduler: "cosine"
  device: "auto"
  checkpoint_steps: 100
  early_stopping: true
}

METRICS {
  loss
  perplexity
  custom "answer_quality"
}

MONITOR {
  metrics: ["loss", "val_loss"]
  notify_if {
    loss > 2.0
    gpu_usage > 90%
  }
  log_to: "logs/training.log"
}

CONTROL {
  on_step_end {
    LOG loss
  }
  on_epoch_end {
    SAVE model
    LOG "Epoch completed"
    IF loss > 2.0 {
      SET LR = 0.00005
      WHEN gpu_usage > 90% {
        SET batch_size = 16
      }
    }
    EVERY 2 epochs {
      SAVE "checkpoint_epoch_{epoch}"
    }
  }
  IF accuracy < 0.4 {
    DECREASE LR BY 0.5
  }
  WHEN gpu_memory < 12GB {
    SET batch_size = 16
  }
  EVERY 500 steps {
    SAVE checkpoint
  }
}

INFERENCE {
  mode: "chat"
  format: "User: {input}\\nAssistant:"
  exit_command: "/exit"
  params {
    max_length: 120
    temperature: 0.7
    top_p: 0.9
    do_sample: true
  }
  CONTROL {
    IF confidence < 0.3 { RETRY }
    IF toxic == true { REPLACE WITH "Not allowed." }
  }
}

GUARD {
  prevent {
    toxicity
    bias
  }
  detect_using: ["classifier", "regex"]
  on_violation {
    REPLACE
    with_message: "Sorry, this request is not allowed."
  }
}

EXPLORER {
  try {
    lr: [0.0003, 0.0001]
    batch_size: [16, 32]
  }
  max_tests: 4
  pick_best_by: "val_loss"
}

STABILITY {
  stop_if_nan: true
  stop_if_diverges: true
  min_improvement: 0.001
}

EXPORT {
  format: ["okm", "safetensors"]
  path: "export/"
}
"""


def test_a_file_in_the_public_style_is_valid_with_warnings():
    p = okto.parse(OTHER_TOOL_STYLE, "shop.okt")
    assert p.config.project.name == "ShopAssistant"
    assert p.config.train.save_steps == 100
    assert p.config.train.early_stopping == 3
    assert p.config.inference.max_tokens == 120
    assert len(p.config.control) == 5
    messages = [d.message for d in p.warnings if d.severity == "warning"]
    assert "backend is accepted but has no effect here" in messages
    assert "install_missing is accepted but has no effect here" in messages
    assert "language is accepted but has no effect here" in messages
    assert "CONTROL inside INFERENCE is recognised but not executed" in messages
    for block in ("MONITOR", "GUARD", "EXPLORER"):
        assert f"{block} is recognised but okto does not execute it; the block has no effect" in (
            messages
        )
    assert "metric 'custom' is not computed here and is ignored" in messages
    assert any(m.startswith("DECREASE learning_rate BY 0.5 subtracts") for m in messages)


@pytest.mark.parametrize(
    ("replace", "by", "culprit", "message"),
    [
        ('format: "jsonl"', 'format: "instruction"', '"instruction"', "format: 'instruction' is not allowed here"),
        ('format: ["okm", "safetensors"]', 'format: ["gguf", "okm"]', '"gguf"', "format[0]: 'gguf' is not allowed here"),
        ("  early_stopping: true\n", "  early_stopping: true\n  gpu: true\n", "gpu:", "unknown field 'gpu' in TRAIN"),
        ("CONTROL {\n  on_step_end", "CONTROL {\n  validate_every: 200\n  on_step_end", "validate_every", "CONTROL holds rules, not fields: 'validate_every' is not one"),
        ('  backend: "oktoseek"\n', '  blas_backend: "oktoblas"\n', "blas_backend", "unknown field 'blas_backend' in ENV"),
        ("  params {\n", "  beams: 2\n  params {\n", "beams", "unknown field 'beams' in INFERENCE"),
    ],
)  # fmt: skip
def test_what_okto_does_not_do_is_a_positioned_error(replace, by, culprit, message):
    assert replace in OTHER_TOOL_STYLE
    text = OTHER_TOOL_STYLE.replace(replace, by, 1)
    offset = text.index(culprit)
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    with pytest.raises(InvalidProgram) as caught:
        okto.parse(text, "shop.okt")
    (diagnostic,) = caught.value.errors
    assert (diagnostic.line, diagnostic.column) == (line, column)
    assert diagnostic.message.startswith(message)


def test_repeated_model_blocks_with_labels_are_an_error_not_inheritance():
    with pytest.raises(InvalidProgram) as caught:
        program('MODEL "base" { context_window: 2048 }\nMODEL { base: "x" }')
    assert caught.value.errors[0].message == "MODEL appears twice; the first is at line 1"


def test_ft_lora_points_to_the_adapter_okto_trains():
    """FT_LORA is how public files ask for LoRA; here it is skipped (a full fine-tune runs),
    so the warning says how to ask for the adapter."""
    p = program("FT_LORA { lora_rank: 8 }\nVALIDATE { frequency: 1 }")
    hints = {d.message.split()[0]: d.hint for d in p.warnings}
    assert hints["FT_LORA"].startswith("to train a LoRA adapter write MODEL { ADAPTER {")
    assert hints["VALIDATE"] == "evaluation runs at each epoch end, or every TRAIN.eval_steps steps"
    adapter = program("MODEL { ADAPTER { rank: 8  alpha: 32 } }").config.model.adapter
    assert (adapter.rank, adapter.alpha) == (8, 32)
