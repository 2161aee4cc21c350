"""Every executed block with its fields, defaults, aliases and cross-field
checks (spec section 3)."""

from __future__ import annotations

import pytest

from okto.language import OktoConfig, architectures
from okto.language.config import NEW_MODEL_ADAPTER
from okto.language.quantities import Quantity
from tests.language.util import error, errors, program, warnings


def test_defaults_when_blocks_are_absent():
    config = program('PROJECT "empty"').config
    assert config == OktoConfig(project={"name": "empty"})
    assert config.env.accelerator == "auto"
    assert config.train.epochs == 1
    assert config.train.batch_size == 8
    assert config.dataset.packing is True
    assert config.export.format == ["safetensors"]
    assert config.metrics == ["loss"]
    assert config.control == []


def test_env():
    env = program(
        """
        ENV {
          accelerator: "gpu"  precision: "bf16"  min_memory: "16GB"  seed: 3
          network: "offline"  platform: "linux"
        }
        """
    ).config.env
    assert (env.accelerator, env.precision, env.seed, env.network, env.platform) == (
        "gpu",
        "bf16",
        3,
        "offline",
        "linux",
    )
    assert env.min_memory.base == 16e9


@pytest.mark.parametrize("field", ["install_missing: true", 'backend: "oktoseek"'])
def test_env_fields_from_other_tools_warn(field):
    (found,) = warnings(f"ENV {{ {field} }}")
    assert found[:2] == (1, 7)
    assert found[2].endswith("is accepted but has no effect here")


def test_dataset():
    d = program(
        """
        DATASET {
          train: "data/*.jsonl"  validation: "v.jsonl"  test: "t.jsonl"
          format: "jsonl"  type: "instruction"
          text_field: "text"  input_field: "q"  output_field: "a"  context_fields: ["menu"]
          dataset_percent: 50%  shuffle: false  max_length: 512  packing: false
          tokenizer: "train"  vocab_size: 4096
        }
        """
    ).config.dataset
    assert (d.train, d.validation, d.test, d.format, d.type) == (
        "data/*.jsonl",
        "v.jsonl",
        "t.jsonl",
        "jsonl",
        "instruction",
    )
    assert (d.text_field, d.input_field, d.output_field, d.context_fields) == (
        "text",
        "q",
        "a",
        ["menu"],
    )
    assert d.dataset_percent.fraction == 0.5
    assert (d.shuffle, d.max_length, d.packing, d.tokenizer, d.vocab_size) == (
        False,
        512,
        False,
        "train",
        4096,
    )


def test_trained_tokenizer_defaults_to_8192_tokens():
    assert program('DATA { tokenizer: "train" }').config.dataset.vocab_size == 8192


def test_model_from_scratch_as_the_gpt2_example_needs_it():
    p = program(
        """
        MODEL {
          architecture: "gpt2"  pretrained: false
          config { n_layer: 12 n_head: 12 n_embd: 768 }
          context_window: 1024  parameters: 124M  name: "gpt2-124m"  device: "cuda:1"
        }
        DATASET { tokenizer: "train" vocab_size: 8192 format: "sharegpt" }
        """
    )
    m = p.config.model
    assert (m.architecture, m.pretrained, m.context_window, m.name, m.device) == (
        "gpt2",
        False,
        1024,
        "gpt2-124m",
        "cuda:1",
    )
    assert m.config == {"n_layer": 12, "n_head": 12, "n_embd": 768}
    assert m.parameters == Quantity(124, "M")
    assert p.config.dataset.format == "sharegpt"


def test_model_adapter():
    a = program(
        'MODEL { base: "gpt2" ADAPTER { type: lora rank: 16 alpha: 32 dropout: 0.1 '
        'target_modules: "c_attn" } }'
    ).config.model.adapter
    assert (a.type, a.rank, a.alpha, a.dropout, a.target_modules) == (
        "lora",
        16,
        32,
        0.1,
        ["c_attn"],
    )


def test_train():
    t = program(
        """
        TRAIN {
          max_steps: 1000  batch_size: 32  gradient_accumulation: 2  learning_rate: 6e-4
          optimizer: "adam"  weight_decay: 0.1  scheduler: "cosine_with_restarts"
          warmup_steps: 100  gradient_clip: 0.5  mixed_precision: true  precision: "bf16"
          device: "cuda"  seed: 1  logging_steps: 20  eval_steps: 200  save_steps: 500
          save_strategy: "steps"  checkpoint_path: "ckpt"  resume_from_checkpoint: true
          early_stopping: 5  loss: "cross_entropy"
        }
        """
    ).config.train
    assert t.epochs is None and t.max_steps == 1000
    assert (t.batch_size, t.gradient_accumulation, t.learning_rate, t.optimizer) == (
        32,
        2,
        6e-4,
        "adam",
    )
    assert (t.weight_decay, t.scheduler, t.warmup_steps, t.gradient_clip) == (
        0.1,
        "cosine_with_restarts",
        100,
        0.5,
    )
    assert (t.mixed_precision, t.precision, t.device, t.seed) == (True, "bf16", "cuda", 1)
    assert (t.logging_steps, t.eval_steps, t.save_steps, t.save_strategy) == (20, 200, 500, "steps")
    assert (t.checkpoint_path, t.resume_from_checkpoint, t.early_stopping) == ("ckpt", "auto", 5)


def test_train_flags_read_as_values():
    t = program("TRAIN { early_stopping: true resume_from_checkpoint: false }").config.train
    assert (t.early_stopping, t.resume_from_checkpoint) == (3, None)


def test_gradient_clip_false_turns_clipping_off():
    assert program("TRAIN { gradient_clip: false }").config.train.gradient_clip is None
    assert program("TRAIN { max_grad_norm: false }").config.train.gradient_clip is None
    assert program("").config.train.gradient_clip == 1.0
    line, column, message = error("TRAIN { gradient_clip: true }")
    assert (line, column) == (1, 24) and "false for no clipping" in message


def test_save_steps_implies_the_steps_strategy():
    assert program("TRAIN { save_steps: 10 }").config.train.save_strategy == "steps"


def test_blas_accelerate_tensor_cores_optimize():
    c = program(
        """
        BLAS { backend: "oktoblas" precision: "tf32" streams: 4 kernel: "champion" autotune: true }
        ACCELERATE { gemm: oktoblas attention: native layernorm: auto softmax: oktoblas
                     cross_entropy: oktoblas activation: native fused_ops: true }
        TENSOR_CORES { enabled: false precision: "fp8" min_matrix_size: 128 }
        OPTIMIZE { tf32: true cudnn_benchmark: true compile: true cuda_graphs: true
                   memory_efficient: true }
        """
    ).config
    assert (c.blas.backend, c.blas.precision, c.blas.streams, c.blas.kernel, c.blas.autotune) == (
        "oktoblas",
        "tf32",
        4,
        "champion",
        True,
    )
    a = c.accelerate
    assert (a.gemm, a.attention, a.layernorm, a.softmax, a.cross_entropy, a.activation) == (
        "oktoblas",
        "native",
        "auto",
        "oktoblas",
        "oktoblas",
        "native",
    )
    assert a.fused_ops is True
    assert (c.tensor_cores.enabled, c.tensor_cores.precision, c.tensor_cores.min_matrix_size) == (
        False,
        "fp8",
        128,
    )
    assert all(c.optimize.model_dump().values())


def test_inference():
    i = program(
        """
        INFERENCE {
          model: "runs/x"  mode: "chat"  format: "Q: {input}\\nA:"  max_tokens: 64
          temperature: 0.5  top_p: 0.8  top_k: 10  do_sample: false  repetition_penalty: 1.2
          stop_sequences: ["\\n"]  batch_size: 2  precision: "fp16"  backend: "cublas"
          exit_command: "/quit"
        }
        """
    ).config.inference
    assert (i.model, i.mode, i.format, i.max_tokens) == ("runs/x", "chat", "Q: {input}\nA:", 64)
    assert (i.temperature, i.top_p, i.top_k, i.do_sample, i.repetition_penalty) == (
        0.5,
        0.8,
        10,
        False,
        1.2,
    )
    assert (i.stop_sequences, i.batch_size, i.precision, i.backend, i.exit_command) == (
        ["\n"],
        2,
        "fp16",
        "cublas",
        "/quit",
    )


def test_inference_control_sub_block_is_not_executed():
    p = program("INFERENCE {\n  CONTROL { IF confidence < 0.3 { RETRY } }\n}")
    assert [(d.line, d.column) for d in p.warnings] == [(2, 3)]
    assert "CONTROL inside INFERENCE is recognised but not executed" in p.warnings[0].message


def test_export_output_logging_metrics_stability():
    c = program(
        """
        EXPORT { format: ["okm", "hf"] path: "out" quantization: "bf16" }
        OUTPUT { dir: "runs/x" save_model: false save_optimizer: true metrics: ["loss"] }
        LOGGING { save_logs: false metrics_file: "m.json" training_file: "t.json"
                  log_level: "debug" log_every: 7 }
        METRICS { loss perplexity accuracy tokens_per_second examples_per_second tflops mfu }
        STABILITY { stop_if_nan: false stop_if_diverges: true min_improvement: 0.01 }
        """
    ).config
    assert (c.export.format, c.export.path, c.export.quantization) == (["okm", "hf"], "out", "bf16")
    assert (c.output.dir, c.output.save_model, c.output.save_optimizer, c.output.metrics) == (
        "runs/x",
        False,
        True,
        ["loss"],
    )
    lg = c.logging
    assert (lg.save_logs, lg.metrics_file, lg.training_file, lg.log_level, lg.log_every) == (
        False,
        "m.json",
        "t.json",
        "debug",
        7,
    )
    assert c.metrics[-1] == "mfu"
    assert (c.stability.stop_if_nan, c.stability.stop_if_diverges) == (False, True)


# ---- aliases -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ('DATA { train: "a" }', ("dataset", "train"), "a"),
        ('DATASET { val: "v" }', ("dataset", "validation"), "v"),
        ('DATASET { target_field: "t" }', ("dataset", "output_field"), "t"),
        ("TRAIN { log_interval: 5 }", ("train", "logging_steps"), 5),
        ("TRAIN { log_every: 6 }", ("train", "logging_steps"), 6),
        ("TRAIN { checkpoint_steps: 7 }", ("train", "save_steps"), 7),
        ("TRAIN { lr: 0.1 }", ("train", "learning_rate"), 0.1),
        ("TRAIN { gradient_accumulation_steps: 3 }", ("train", "gradient_accumulation"), 3),
        ("TRAIN { max_grad_norm: 2.0 }", ("train", "gradient_clip"), 2.0),
        ("INFERENCE { max_length: 9 }", ("inference", "max_tokens"), 9),
        ("INFERENCE { max_new_tokens: 10 }", ("inference", "max_tokens"), 10),
        ('MODEL { dtype: "bf16" }', ("model", "precision"), "bf16"),
        ('EXPORT { dtype: "fp16" }', ("export", "quantization"), "fp16"),
        (
            "MODEL { adapter { r: 2 lora_alpha: 3 lora_dropout: 0.5 } }",
            ("model", "adapter", "rank"),
            2,
        ),
    ],
)
def test_aliases(text, path, value):
    node = program(text).config
    for part in path:
        node = getattr(node, part)
    assert node == value


def test_an_alias_and_its_field_together_are_set_twice():
    assert error("TRAIN {\n  logging_steps: 1\n  log_interval: 2\n}") == (
        3,
        3,
        "logging_steps is set twice in TRAIN; the first is at line 2",
    )


def test_data_and_dataset_together_are_a_repeated_block():
    assert error('DATASET { train: "a" }\nDATA { train: "b" }') == (
        2,
        1,
        "DATA appears twice; the first is at line 1",
    )


# ---- cross-field checks --------------------------------------------------------


def test_epochs_and_max_steps_conflict():
    assert error("TRAIN {\n  epochs: 2\n  max_steps: 10\n}") == (
        3,
        14,
        "set either epochs or max_steps, not both",
    )


def test_mix_weights_must_sum_to_100():
    assert error(
        'DATASET {\n  mix_datasets: [{ path: "a", weight: 60 }, { path: "b", weight: 30 }]\n}'
    ) == (2, 17, "the weights in mix_datasets sum to 90, not 100")


@pytest.mark.parametrize("weight", ["30%", '"30%"', "30", '"30"'])
def test_mix_weights_take_percent_signs(weight):
    """The weights are percents; `weight: 30%` was refused ("expected a number")."""
    text = f'DATASET {{ mix_datasets: [{{ path: "a", weight: {weight} }}, {{ path: "b", weight: 70 }}] }}'
    mix = program(text).config.dataset.mix_datasets
    assert [entry.weight for entry in mix] == [30.0, 70.0]


def test_train_and_mix_conflict():
    assert error('DATASET { train: "x" mix_datasets: [{ path: "a", weight: 100 }] }') == (
        1,
        36,
        "set either train or mix_datasets, not both",
    )


def test_the_data_pipelines_lower_bounds_are_check_time_errors():
    """okto check said valid and okto train refused, with no line to point at."""
    assert error('DATASET { tokenizer: "train" vocab_size: 5 }') == (
        1,
        42,
        "vocab_size: must be at least 300, got 5",
    )
    assert error("DATASET { max_length: 1 }") == (1, 23, "max_length: must be at least 2, got 1")


def test_dataset_percent_range():
    assert error("DATASET { dataset_percent: 120% }")[2] == (
        "dataset_percent must be above 0% and at most 100%"
    )


def test_save_strategy_steps_needs_save_steps():
    assert error('TRAIN { save_strategy: "steps" }') == (
        1,
        24,
        "save_strategy: steps needs save_steps",
    )


def test_mixed_precision_contradicts_fp32():
    assert error('TRAIN { mixed_precision: true precision: "fp32" }')[2] == (
        "mixed_precision: true contradicts precision: fp32"
    )


def test_from_scratch_needs_an_architecture_okto_can_build():
    assert error("MODEL { pretrained: false }")[2] == (
        "pretrained: false needs an architecture (or a base to copy)"
    )
    line, column, message = error('MODEL { pretrained: false architecture: "gtp2" }')
    assert (line, column) == (1, 41)
    assert message == (
        "cannot build a new 'gtp2' model: transformers has no causal LM of that model type "
        "(did you mean 'gpt2'?)"
    )


@pytest.mark.parametrize("architecture", ["qwen3", "mixtral", "falcon", "Gemma2", "gpt_bigcode"])
def test_any_causal_lm_of_transformers_builds_from_scratch(architecture):
    """Only ten model types were accepted (gpt2, llama, ...): qwen3 or mixtral was an error."""
    text = f'MODEL {{ pretrained: false architecture: "{architecture}" }}'
    assert program(text).config.model.architecture == architecture.lower()


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        ("lamma", "(did you mean 'llama', "),  # not 'mllama': okto check refuses it
        ("LlamaForCausalLM", 'LlamaForCausalLM is a class: write its model type, "llama"'),
        ("my-own-net", "like gpt2, llama, qwen3 or mistral"),
        ("t5", "like gpt2, llama, qwen3 or mistral"),  # a seq2seq model: no causal LM
    ],
)
def test_an_unknown_architecture_names_close_model_types(architecture, expected):
    message = error(f'MODEL {{ pretrained: false architecture: "{architecture}" }}')[2]
    assert message.startswith(f"cannot build a new '{architecture}' model: transformers has no")
    assert expected in message
    assert "mllama" not in message


def test_the_model_types_read_from_source_are_transformers_own():
    """okto check reads AutoModelForCausalLM's table from transformers' source (importing it
    imports torch); the imported mappings say the same."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    expected = {
        t: c for t, c in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if t in CONFIG_MAPPING_NAMES
    }
    assert architectures.causal_lms() == expected


def test_the_model_types_come_from_the_mappings_when_the_source_changes(monkeypatch):
    monkeypatch.setattr(architectures, "_TABLE", "NO_SUCH_TABLE")
    architectures.causal_lms.cache_clear()
    try:
        assert architectures.causal_lms()["qwen3"] == "Qwen3ForCausalLM"
    finally:
        monkeypatch.undo()
        architectures.causal_lms.cache_clear()


@pytest.mark.parametrize(
    "env", ['ENV { accelerator: "cpu" precision: "fp16" }', 'ENV { accelerator: "cpu" }']
)
def test_fp16_on_a_cpu_only_env_is_a_warning(env):
    text = f'{env}\nMODEL {{ precision: "fp16" }}'
    found = warnings(text)
    assert all(
        w[2] == "fp16 on a CPU is slow and poorly supported; use bf16 or fp32" for w in found
    )
    assert (2, 20) in [w[:2] for w in found]


def test_fp16_on_a_gpu_is_fine():
    assert warnings('ENV { accelerator: "gpu" precision: "fp16" }') == []


@pytest.mark.parametrize("spelling", ["train", "Train", "TRAIN"])
def test_vocab_size_goes_with_train_in_any_case(spelling):
    """okto.data trains a tokenizer for "Train" too, so check must not call vocab_size idle."""
    assert warnings(f'DATASET {{ tokenizer: "{spelling}" vocab_size: 1000 }}') == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("DATASET { vocab_size: 1000 }", 'vocab_size only applies with tokenizer: "train"'),
        (
            'DATASET { text_field: "text" output_field: "answer" }',
            "text_field is not used: with input_field or output_field set, each record is read "
            "as a prompt and its answer",
        ),
        (
            'LOGGING { save_logs: false training_file: "x.log" }',
            "training_file has no effect with save_logs: false",
        ),
        ("MODEL { config { n_layer: 2 } }", "config overrides apply only with pretrained: false"),
        ('INFERENCE { format: "Q:" }', "the prompt format has no {input} placeholder"),
        (
            'TRAIN { save_steps: 5 save_strategy: "epoch" }',
            "save_steps has no effect with save_strategy: epoch",
        ),
        (
            "METRICS { loss perplexty }",
            "metric 'perplexty' is not computed here and is ignored (did you mean 'perplexity'?)",
        ),
        # Settings that used to be accepted and silently do nothing, or nothing new.
        (
            'TRAIN { scheduler: "cosine_with_restarts" }',
            "cosine_with_restarts with one cycle (TRAIN.num_cycles unset) is the same schedule "
            "as cosine; set num_cycles (e.g. num_cycles: 3)",
        ),
        (
            'TRAIN { scheduler: "polynomial" }',
            "polynomial with power 1 (TRAIN.power unset) is the same schedule as linear; set "
            "power (e.g. power: 2)",
        ),
        (
            'TRAIN { scheduler: "cosine" lr_num_cycles: 2 }',
            "num_cycles has no effect with scheduler: cosine (only cosine_with_restarts)",
        ),
        ("TRAIN { power: 2 }", "power has no effect with scheduler: linear (only polynomial)"),
        (
            "OUTPUT { save_model: false save_optimizer: true }",
            "save_optimizer has no effect with save_model: false (the optimizer state is saved "
            "beside the final model; checkpoints hold it either way)",
        ),
        (
            "STABILITY { min_improvement: 0.01 }",
            "min_improvement has no effect without TRAIN.early_stopping or a CONTROL "
            "on_plateau rule (it decides what counts as a plateau)",
        ),
        (
            "TRAIN { precision: bf16 mixed_precision: false }",
            "mixed_precision: false has no effect with precision: bf16 (bf16 math on fp32 "
            "weights is mixed precision; MODEL.precision: bf16 trains the weights in it too)",
        ),
        (
            "INFERENCE { temperature: 0 top_k: 5 }",
            "top_k has no effect with temperature: 0, which decodes greedily (the likeliest "
            "token each step)",
        ),
        (
            "INFERENCE { do_sample: false top_p: 0.5 }",
            "top_p has no effect with do_sample: false, which decodes greedily (the likeliest "
            "token each step)",
        ),
    ],
)
def test_advice_warnings(text, message):
    assert [w[2] for w in warnings(text)] == [message]


@pytest.mark.parametrize(
    "text",
    [
        'TRAIN { scheduler: "cosine_with_restarts" num_cycles: 3 }',
        'TRAIN { scheduler: "polynomial" power: 2 }',
        "STABILITY { min_improvement: 0.01 }\nTRAIN { early_stopping: 2 }",
        'STABILITY { min_improvement: 0.01 }\nCONTROL { on_plateau { LOG "flat" } }',
        "MODEL { precision: bf16 }\nTRAIN { precision: bf16 mixed_precision: false }",
        "INFERENCE { temperature: 0.7 top_k: 5 top_p: 0.9 }",
        "TRAIN { mixed_precision: false }",
    ],
)
def test_settings_that_act_are_not_warned(text):
    assert warnings(text) == []


def test_all_errors_of_a_file_come_together():
    found = errors(
        """
        TRAIN { epoch: 3 batch_size: "big" }
        MODEL { base: 12 }
        EXPORT { format: ["onnx"] }
        """
    )
    assert [(line, column) for line, column, _ in found] == [(2, 9), (2, 30), (3, 15), (4, 19)]


@pytest.mark.parametrize(
    ("formats", "message"),
    [
        ('["okm", "OKM"]', "'okm' is listed more than once"),
        ("[]", "the list is empty"),
    ],
)
def test_export_formats_name_something_once(formats, message):
    """`[]` exported nothing without a word and a repeat wrote one file twice."""
    assert message in error(f"EXPORT {{ format: {formats} }}")[2]


def test_model_config_takes_lists_and_blocks():
    """rope_scaling { ... } and layer_types [...] were errors ('expected a number, a string or
    true or false, got a block'), so such a config could not be written."""
    config = program(
        """
        MODEL {
          architecture: "qwen3"  pretrained: false
          config {
            num_hidden_layers: 2
            layer_types: ["full_attention", "sliding_attention"]
            rope_scaling { rope_type: "linear"  factor: 2.0 }
          }
        }
        """
    ).config.model.config
    assert config == {
        "num_hidden_layers": 2,
        "layer_types": ["full_attention", "sliding_attention"],
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    }


def test_a_key_set_twice_in_model_config_is_an_error():
    """The second n_layer silently won."""
    text = 'MODEL { architecture: "gpt2" pretrained: false config { n_layer: 2 n_layer: 3 } }'
    assert error(text) == (1, 68, "n_layer is set twice in config; the first is at line 1")


def test_errors_in_a_list_item_name_the_list_and_the_index():
    """They read 'weight is set twice in 0'."""
    text = 'DATASET { mix_datasets: [{ path: "a" weight: 100 weight: 100 }] }'
    assert error(text)[2] == "weight is set twice in mix_datasets[0]; the first is at line 1"


def test_an_architecture_without_a_base_builds_a_new_model_and_says_so():
    """pretrained: true (the default) with no base built a random model, silently, and its
    config {} was called ignored although it applied."""
    text = 'MODEL { architecture: "llama" config { num_hidden_layers: 2 } }'
    assert warnings(text) == [
        (
            1,
            23,
            "no base to load pretrained weights from: this builds a new model with random "
            "weights; write pretrained: false to say so",
        )
    ]
    assert program(text).config.model.builds_from_architecture


def test_an_architecture_without_a_base_is_checked():
    """MODEL { architecture: "lamma" } passed okto check and failed in okto train."""
    assert error('MODEL { architecture: "lamma" }')[2].startswith("cannot build a new 'lamma'")


def test_an_architecture_beside_a_pretrained_base_has_no_effect():
    """Public files write architecture: "transformer" next to a base: a warning, no error."""
    assert warnings('MODEL { base: "org/model" architecture: "transformer" }') == [
        (1, 41, "architecture has no effect: the pretrained base brings its own")
    ]


@pytest.mark.parametrize(
    "model",
    [
        'base: "gpt2" pretrained: false',
        'architecture: "gpt2" pretrained: false',
        'architecture: "gpt2"',  # no base: a new model too
    ],
)
def test_an_adapter_on_a_new_model_warns(model):
    """okto train warned that LoRA over random weights fits no base; okto check did not."""
    found = program(f"MODEL {{ {model} ADAPTER {{ rank: 4 }} }}").warnings
    adapter = [d for d in found if d.message.startswith("ADAPTER")]
    assert [d.message for d in adapter] == [NEW_MODEL_ADAPTER]
    assert adapter[0].column == len(f"MODEL {{ {model} ") + 1
    assert program('MODEL { base: "gpt2" ADAPTER { rank: 4 } }').warnings == []
