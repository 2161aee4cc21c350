"""The configuration a `.okt` file describes: one pydantic model per block,
gathered in `OktoConfig`, which the planner and the runtime consume.

Field names are the canonical snake_case spellings; `validation_alias` lists
the other spellings public files use (`val`, `log_interval`, `dtype`, ...).
Every block has a default, so `OktoConfig()` is a complete configuration.
Checks that span fields raise `FieldConflict` naming the field to blame;
checks that only deserve a warning append `(path, message, hint)` to the list given
as `context={"warnings": [...]}` to `model_validate`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from okto.language.architectures import causal_lms, not_text_only, unknown_architecture
from okto.language.control import AdjustAction, Comparison, Rule, SetAction, fixed_truth
from okto.language.diagnostics import suggestion
from okto.language.fieldtypes import (
    NO_EFFECT,
    Device,
    Integer,
    Name,
    NonNegativeInt,
    Number,
    PercentNumber,
    PositiveInt,
    Precision,
    aliases,
    choice,
    distinct,
    one_or_many,
)
from okto.language.quantities import Count, Percent, Quantity, Size

LANGUAGE_VERSIONS = ("1.0", "1.1", "1.2", "1.3")

REPORTED_METRICS = (
    "loss",
    "val_loss",
    "perplexity",
    "accuracy",
    "lr",
    "grad_norm",
    "tokens_per_second",
    "examples_per_second",
    "tflops",
    "mfu",
    "gpu_memory",
)
"""What METRICS and OUTPUT.metrics may ask the runtime to report."""

Bool = StrictBool
DEFAULT_PATIENCE = 3
# Seeds go to numpy's legacy generator too, which takes 0 to 2**32 - 1.
SEED_MAX = 2**32 - 1


class FieldConflict(ValueError):
    """A cross-field check failed; `field` is the field the error points at (a path below
    the model that raised it, for a check across blocks)."""

    def __init__(self, field: str | tuple[str, ...], message: str, hint: str | None = None):
        super().__init__(message)
        self.path = field if isinstance(field, tuple) else (field,)
        self.hint = hint


class BlockModel(BaseModel):
    """Base of the block models. `flattened` sub-blocks hold fields of the
    block itself (`INFERENCE { params { ... } }`); `not_executed` sub-blocks
    parse and warn."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)
    flattened: ClassVar[tuple[str, ...]] = ()
    not_executed: ClassVar[tuple[str, ...]] = ()


def _warn(info: ValidationInfo, path: tuple, message: str, hint: str | None = None) -> None:
    if info.context is not None:
        info.context.setdefault("warnings", []).append((path, message, hint))


# ---- header statements ---------------------------------------------------------


class ProjectConfig(BlockModel):
    """The header statements: PROJECT, DESCRIPTION, VERSION, AUTHOR, TAGS."""

    name: str | None = Field(
        None, description="PROJECT: the project's name; `okto train` needs it."
    )
    description: str | None = Field(None, description="DESCRIPTION: what the project is for.")
    version: str | None = Field(None, description="VERSION: the project's own version.")
    author: str | None = Field(None, description="AUTHOR: who wrote it.")
    tags: Annotated[list[str], BeforeValidator(one_or_many)] = Field(
        [], description="TAGS: a list of keywords."
    )

    @field_validator("name")
    @classmethod
    def _named(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("PROJECT is empty: it names the run folder, runs/<PROJECT>/")
        return name


# ---- blocks --------------------------------------------------------------------


class EnvConfig(BlockModel):
    """Where to run: device, precision, memory, network."""

    accelerator: choice("auto", "cpu", "gpu", "cuda") = Field(
        "auto", description="Device family; `gpu` and `cuda` both mean an NVIDIA GPU."
    )
    precision: Precision = Field(
        "auto", description="Default numeric precision; TRAIN and MODEL may override it."
    )
    min_memory: Size | None = Field(
        None, description="Memory the device must have; checked before training starts."
    )
    seed: Integer | None = Field(
        None, ge=0, le=SEED_MAX, description="Random seed; TRAIN.seed overrides it."
    )
    gpus: PositiveInt | None = Field(
        None,
        description="Training processes, one per GPU, started through torchrun "
        "(`okto train --gpus N`); with the device set to cpu, N CPU processes (gloo). "
        "Unset: one, or as many as an outside torchrun started.",
    )
    network: choice("online", "offline") = Field(
        "online", description="`offline` sets the hub libraries offline: no downloads."
    )
    platform: choice("any", "linux", "windows", "mac") = Field(
        "any",
        description="Operating system the project expects; on another, the plan warns.",
    )
    install_missing: Bool = Field(
        False,
        description="Accepted from other OktoScript tools; okto installs nothing.",
        json_schema_extra=NO_EFFECT,
    )
    backend: str | None = Field(
        None,
        description="Accepted from other OktoScript tools; use BLAS and ACCELERATE here.",
        json_schema_extra=NO_EFFECT,
    )


class MixEntry(BlockModel):
    """One dataset of `mix_datasets` and its share of the mix."""

    path: Name = Field(description="A file, a directory or a glob.")
    weight: PercentNumber = Field(
        gt=0, description="Percent of the mix (`30` or `30%`); the weights sum to 100."
    )


class DatasetConfig(BlockModel):
    """Training data: files, format, fields, tokenizer."""

    train: Name | None = Field(None, description="Training data: a file, a directory or a glob.")
    validation: Name | None = Field(
        None, validation_alias=aliases("validation", "val"), description="Validation data."
    )
    test: Name | None = Field(
        None, description="Test data, scored once with the final weights at the end of training."
    )
    format: choice("auto", "jsonl", "json", "csv", "tsv", "txt", "parquet", "sharegpt") = Field(
        "auto", description="File format; `auto` goes by the file extension."
    )
    type: choice("text", "instruction", "chat", "qa", "generation") | None = Field(
        None, description="What the records are; unset, it is detected from the fields."
    )
    text_field: Name | None = Field(None, description="Field holding plain text.")
    input_field: Name | None = Field(None, description="Field holding the prompt.")
    output_field: Name | None = Field(
        None,
        validation_alias=aliases("output_field", "target_field"),
        description="Field holding the answer.",
    )
    context_fields: list[str] = Field(
        [], description="Extra fields added to the prompt, e.g. a menu or a document."
    )
    mix_datasets: list[MixEntry] | None = Field(
        None, description="Several datasets, each `{ path, weight }`; replaces `train`."
    )
    dataset_percent: Percent = Field(
        Quantity(100, "%"), description="Share of the training data to use, up to 100%."
    )
    shuffle: Bool = Field(True, description="Shuffle the training data each epoch.")
    # The bounds okto.data.settings also checks, for configs built without the language.
    max_length: Integer | None = Field(
        None, ge=2, description="Sequence length in tokens; unset, the model's context window."
    )
    packing: Bool = Field(True, description="Pack several short records into each sequence.")
    tokenizer: Name | None = Field(
        None,
        description='A tokenizer directory, or "train" to train a byte-level BPE on the data.',
    )
    vocab_size: Integer | None = Field(
        None,
        ge=300,
        description='Vocabulary size for `tokenizer: "train"` (default 8192; at least 300: '
        "the 256 byte symbols and the special tokens).",
    )
    language: str | None = Field(
        None,
        description="Accepted from other OktoScript tools; the language is not used.",
        json_schema_extra=NO_EFFECT,
    )

    @field_validator("tokenizer")
    @classmethod
    def _train_in_any_case(cls, value: str | None) -> str | None:
        """okto.data takes "Train" for "train"; spelling it one way here keeps the checks
        below (the default vocab_size, vocab_size's warning) in step with it."""
        return "train" if value is not None and value.lower() == "train" else value

    @field_validator("dataset_percent", mode="before")
    @classmethod
    def _bare_fraction(cls, value: Any, info: ValidationInfo) -> Any:
        """A bare number is percent points (documented), but `0.5` is more likely meant as a
        half than as 0.5%: say how it reads. A written `0.5%` is taken at its word."""
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
            _warn(
                info,
                ("dataset", "dataset_percent"),
                f"dataset_percent: {value:g} keeps {value:g}% of the training data, "
                "not a fraction of it",
                f"for a half write 50 (or 50%); write {value:g}% to mean {value:g} percent",
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        if self.train is not None and self.mix_datasets is not None:
            raise FieldConflict("mix_datasets", "set either train or mix_datasets, not both")
        if self.mix_datasets == []:
            raise FieldConflict(
                "mix_datasets", "mix_datasets is empty: list { path, weight } entries, or use train"
            )
        if self.mix_datasets is not None:
            total = sum(entry.weight for entry in self.mix_datasets)
            if abs(total - 100) > 1e-6:
                raise FieldConflict(
                    "mix_datasets", f"the weights in mix_datasets sum to {total:g}, not 100"
                )
        if not 0 < self.dataset_percent.value <= 100:
            raise FieldConflict(
                "dataset_percent", "dataset_percent must be above 0% and at most 100%"
            )
        if self.tokenizer == "train" and self.vocab_size is None:
            self.vocab_size = 8192
        return self


class AdapterConfig(BlockModel):
    """A LoRA adapter: train small low-rank matrices instead of the whole model."""

    type: choice("lora") = Field("lora", description="The adapter kind.")
    rank: PositiveInt = Field(
        8, validation_alias=aliases("rank", "r", "lora_rank"), description="Rank of the matrices."
    )
    alpha: Number = Field(
        16, gt=0, validation_alias=aliases("alpha", "lora_alpha"), description="Scaling factor."
    )
    dropout: Number = Field(
        0.0,
        ge=0,
        lt=1,
        validation_alias=aliases("dropout", "lora_dropout"),
        description="Dropout on the adapter's input.",
    )
    target_modules: Annotated[list[str], BeforeValidator(one_or_many)] | None = Field(
        None, description="Module names to adapt; unset, the attention projections."
    )


def _config_value(value: Any) -> Any:
    """A MODEL.config value as transformers takes it: a count is its number (`n_positions:
    2K` is 2000, as for integer fields); a size, duration or percent is refused in words,
    not as 'not a valid JSON value', since the config's own unit is not known here."""
    if isinstance(value, list):
        return [_config_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _config_value(v) for k, v in value.items()}
    if not isinstance(value, Quantity):
        return value
    if value.kind == "count":
        return int(value.base) if float(value.base).is_integer() else value.base
    raise ValueError(
        f"{value} is a {value.kind}: MODEL.config takes plain numbers, as config.json holds them"
    )


class ModelConfig(BlockModel):
    """The model to train or run."""

    base: Name | None = Field(
        None, description="A local Hugging Face checkpoint, an .okm package or a hub name."
    )
    pretrained: Bool = Field(
        True, description="`false` builds a new model from `architecture` and `config`."
    )
    architecture: str | None = Field(
        None,
        description="Model type for a new model: any text-only causal LM of transformers "
        "(gpt2, llama, qwen3, mistral, mixtral, phi3, gemma2, falcon, ...).",
    )
    config: dict[str, Annotated[JsonValue, BeforeValidator(_config_value)]] = Field(
        {}, description="Overrides for a new model's config, e.g. `{ n_layer: 12 }`."
    )
    context_window: PositiveInt | None = Field(
        None,
        description="Positions the model handles: a new model's position table; rows default "
        "to it and may not be longer.",
    )
    precision: Precision = Field(
        "auto",
        validation_alias=aliases("precision", "dtype"),
        description="Weights' precision; fp16 trains only under an ADAPTER (okto check, "
        "plan and train refuse it without one).",
    )
    device: Device = Field("auto", description="Device to load the model on.")
    parameters: Count | None = Field(
        None, description="Expected size, e.g. 124M; a warning if the model differs by over 10%."
    )
    name: str | None = Field(None, description="Name of the trained model.")
    adapter: AdapterConfig | None = Field(
        None,
        validation_alias=aliases("adapter", "ADAPTER"),
        description="An `ADAPTER { ... }` sub-block: train a LoRA adapter.",
    )

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        written = self.architecture
        if written is not None:
            self.architecture = written.lower()
        if not self.pretrained and self.architecture is None and self.base is None:
            raise FieldConflict(
                "pretrained", "pretrained: false needs an architecture (or a base to copy)"
            )
        if self.builds_from_architecture and self.architecture not in causal_lms():
            raise FieldConflict("architecture", unknown_architecture(written))
        if self.builds_from_architecture and not_text_only(self.architecture):
            raise FieldConflict("architecture", not_text_only(self.architecture))
        return self

    @property
    def builds_from_architecture(self) -> bool:
        """Whether the model is new and `architecture` gives its type: with pretrained: false,
        or with no base at all (nothing to load weights from)."""
        return self.architecture is not None and (not self.pretrained or self.base is None)


class TrainConfig(BlockModel):
    """The training loop."""

    epochs: PositiveInt | None = Field(
        None, description="Passes over the data; 1 when neither this nor max_steps is set."
    )
    max_steps: PositiveInt | None = Field(
        None, description="Optimizer steps to run, instead of epochs."
    )
    batch_size: PositiveInt = Field(
        8, description="Sequences per batch in each process (each GPU)."
    )
    gradient_accumulation: PositiveInt = Field(
        1,
        validation_alias=aliases("gradient_accumulation", "gradient_accumulation_steps"),
        description="Batches per optimizer step.",
    )
    learning_rate: Number = Field(
        5e-5,
        gt=0,
        validation_alias=aliases("learning_rate", "lr"),
        description="Peak learning rate.",
    )
    optimizer: choice("adamw", "adam", "sgd", "rmsprop", "adafactor") = Field(
        "adamw", description="Optimizer, as torch ships it."
    )
    weight_decay: Number = Field(0.0, ge=0, description="Weight decay.")
    scheduler: choice(
        "constant",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant_with_warmup",
        "step",
    ) = Field("linear", description="Learning-rate schedule after warmup.")
    warmup_steps: NonNegativeInt = Field(0, description="Steps of linear warmup from 0.")
    num_cycles: PositiveInt | None = Field(
        None,
        validation_alias=aliases("num_cycles", "lr_num_cycles"),
        description="okto's own field (not in the OktoScript spec): cosine cycles of "
        "`scheduler: cosine_with_restarts`, each restarting from the peak rate; unset, one "
        "(the same as cosine, with a warning); with another scheduler, a warning.",
    )
    power: Number | None = Field(
        None,
        gt=0,
        validation_alias=aliases("power", "lr_power"),
        description="okto's own field (not in the OktoScript spec): exponent of `scheduler: "
        "polynomial`, whose rate falls as (1 - progress)^power to 0; unset, 1 (the same as "
        "linear, with a warning); with another scheduler, a warning.",
    )
    gradient_clip: Annotated[
        Number | None,
        WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": False}]}),
    ] = Field(
        1.0,
        gt=0,
        validation_alias=aliases("gradient_clip", "max_grad_norm"),
        description="Clip the gradient norm to this; false for no clipping.",
    )
    mixed_precision: Bool = Field(
        False,
        description="Train in bf16/fp16 autocast with fp32 master weights; `false`, when "
        "written, trains without autocast (in fp32, where a GPU would default to bf16).",
    )
    precision: Precision = Field("auto", description="Training precision; overrides ENV.precision.")
    device: Device = Field("auto", description="Training device; overrides ENV.accelerator.")
    strategy: choice("ddp", "fsdp") = Field(
        "ddp",
        description="How several processes share the model: `ddp` (a full replica each, "
        "gradients all-reduced) or `fsdp` (parameters, gradients and optimizer state "
        "sharded, FSDP2).",
    )
    seed: Integer | None = Field(
        None, ge=0, le=SEED_MAX, description="Random seed; overrides ENV.seed."
    )
    logging_steps: PositiveInt = Field(
        10,
        validation_alias=aliases("logging_steps", "log_interval", "log_every"),
        description="Steps between log lines.",
    )
    eval_steps: PositiveInt | None = Field(
        None, description="Steps between evaluations; unset, at each epoch end."
    )
    save_steps: PositiveInt | None = Field(
        None,
        validation_alias=aliases("save_steps", "checkpoint_steps"),
        description="Steps between checkpoints (implies save_strategy: steps).",
    )
    save_strategy: choice("steps", "epoch", "no") = Field(
        "epoch", description="When to save checkpoints."
    )
    checkpoint_path: Name | None = Field(
        None, description="Checkpoint folder; unset, `checkpoints` under OUTPUT.dir."
    )
    resume_from_checkpoint: Annotated[
        Name | None, WithJsonSchema({"type": ["string", "boolean", "null"]})
    ] = Field(None, description='A checkpoint to resume from, "auto" (or true) for the latest.')
    early_stopping: Annotated[
        PositiveInt | None,
        WithJsonSchema(
            {"anyOf": [{"type": "integer", "minimum": 1}, {"type": ["boolean", "null"]}]}
        ),
    ] = Field(
        None,
        description=f"Evaluations without improvement before stopping; true means {DEFAULT_PATIENCE}.",
    )
    loss: choice("cross_entropy") = Field("cross_entropy", description="Loss function.")

    @model_validator(mode="before")
    @classmethod
    def _flags(cls, data: Any) -> Any:
        """`resume_from_checkpoint: true|false`, `early_stopping: true|false` and
        `gradient_clip: false` (no clipping)."""
        if isinstance(data, dict):
            data = dict(data)
            for key in ("gradient_clip", "max_grad_norm"):
                if data.get(key) is True:
                    raise FieldConflict(
                        "gradient_clip",
                        "gradient_clip takes the norm to clip to (default 1.0), or false for no clipping",
                    )
                if data.get(key) is False:
                    data[key] = None
            for key, on in (
                ("resume_from_checkpoint", "auto"),
                ("early_stopping", DEFAULT_PATIENCE),
            ):
                if data.get(key) is True:
                    data[key] = on
                elif data.get(key) is False:
                    data[key] = None
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.epochs is not None and self.max_steps is not None:
            raise FieldConflict(
                "max_steps",
                "set either epochs or max_steps, not both",
                "okto train --max-steps N replaces the file's epochs for one run",
            )
        if self.epochs is None and self.max_steps is None:
            self.epochs = 1
        if self.save_steps is not None and "save_strategy" not in self.model_fields_set:
            self.save_strategy = "steps"
        if self.save_strategy == "steps" and self.save_steps is None:
            raise FieldConflict("save_strategy", "save_strategy: steps needs save_steps")
        if self.mixed_precision and self.precision == "fp32":
            raise FieldConflict(
                "mixed_precision", "mixed_precision: true contradicts precision: fp32"
            )
        return self


OpBackend = choice("auto", "oktoblas", "native")


class BlasConfig(BlockModel):
    """Matrix-multiply backend: this project's Triton kernels or the framework's."""

    backend: choice("auto", "oktoblas", "cublas") = Field(
        "auto", description="`oktoblas` = okto's Triton kernels, `cublas` = the framework's own."
    )
    precision: choice("auto", "fp32", "fp16", "bf16", "tf32") = Field(
        "auto", description="Precision of the matrix multiplies."
    )
    streams: PositiveInt = Field(1, description="CUDA streams the runtime may use to overlap work.")
    kernel: str = Field("auto", description="`auto`, or a named kernel configuration.")
    autotune: Bool = Field(False, description="Benchmark kernel configurations on first use.")


class AccelerateConfig(BlockModel):
    """Backend per operation; `auto` follows BLAS.backend."""

    gemm: OpBackend = Field("auto", description="Matrix multiplies.")
    attention: OpBackend = Field("auto", description="Attention.")
    layernorm: OpBackend = Field("auto", description="LayerNorm and RMSNorm.")
    softmax: OpBackend = Field("auto", description="Softmax.")
    cross_entropy: OpBackend = Field("auto", description="Cross-entropy loss.")
    activation: OpBackend = Field("auto", description="Activations (GELU, SiLU).")
    fused_ops: Bool = Field(
        True, description="Fused epilogues: bias+GELU in the GEMM, linear+cross-entropy in one op."
    )


class TensorCoresConfig(BlockModel):
    """Tensor-core use on GPUs that have them."""

    enabled: Bool = Field(True, description="Use tensor cores.")
    precision: choice("fp16", "bf16", "tf32", "fp8") | None = Field(
        None, description="Tensor-core precision; unset, the training precision."
    )
    min_matrix_size: NonNegativeInt = Field(
        0, description="Smallest matrix dimension sent to tensor cores; 0 = no minimum."
    )


class OptimizeConfig(BlockModel):
    """Framework switches that trade start-up time or memory for speed."""

    tf32: Bool = Field(False, description="Allow TF32 matrix multiplies on fp32 data.")
    cudnn_benchmark: Bool = Field(False, description="Let cuDNN pick the fastest algorithms.")
    compile: Bool = Field(False, description="Compile the model with torch.compile.")
    cuda_graphs: Bool = Field(False, description="Capture steps as CUDA graphs.")
    memory_efficient: Bool = Field(
        False, description="Activation checkpointing: recompute instead of storing."
    )


class InferenceConfig(BlockModel):
    """Text generation with a trained model. A `params { ... }` sub-block may
    hold the sampling fields."""

    flattened: ClassVar[tuple[str, ...]] = ("params",)
    not_executed: ClassVar[tuple[str, ...]] = ("CONTROL",)

    model: Name | None = Field(None, description="Model to load; unset, the trained one.")
    mode: choice("completion", "chat") = Field(
        "completion", description="Plain completion or chat turns."
    )
    format: str | None = Field(None, description="Prompt template with `{input}`.")
    max_tokens: PositiveInt = Field(
        128,
        validation_alias=aliases("max_tokens", "max_length", "max_new_tokens"),
        description="New tokens to generate at most.",
    )
    temperature: Number = Field(0.8, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: Number = Field(0.95, gt=0, le=1, description="Nucleus sampling threshold.")
    top_k: NonNegativeInt = Field(0, description="Sample from the k likeliest tokens; 0 = off.")
    do_sample: Bool = Field(True, description="Sample; false decodes greedily.")
    repetition_penalty: Number = Field(1.0, gt=0, description="Penalty on repeated tokens.")
    stop_sequences: Annotated[list[str], BeforeValidator(one_or_many)] = Field(
        [], description="Stop when any of these is generated."
    )
    batch_size: PositiveInt | None = Field(
        None, description="Prompts generated together; unset, up to 16."
    )
    precision: Precision = Field("auto", description="Inference precision.")
    backend: choice("auto", "oktoblas", "cublas") = Field("auto", description="As BLAS.backend.")
    exit_command: str = Field("exit", description="What ends an interactive chat.")


class ExportConfig(BlockModel):
    """What to write after training."""

    format: Annotated[
        list[choice("okm", "safetensors", "hf")],
        BeforeValidator(one_or_many),
        AfterValidator(distinct),
    ] = Field(["safetensors"], description="One format or a list: okm, safetensors, hf.")
    path: Name = Field(
        "export", description="Folder to write to; a relative one is inside the run folder."
    )
    quantization: choice("fp32", "fp16", "bf16") | None = Field(
        None,
        validation_alias=aliases("quantization", "dtype"),
        description="Convert the weights to this precision; unset, keep them.",
    )


class OutputConfig(BlockModel):
    """The run folder."""

    dir: Name = Field(
        "runs",
        description="Where run folders go: a run writes its checkpoints, logs and model to "
        "`dir/<PROJECT>/`.",
    )
    save_model: Bool = Field(
        True,
        description="Keep the final model in the run folder (EXPORT writes its files, and a "
        "LoRA run its adapter/, either way).",
    )
    save_optimizer: Bool = Field(False, description="Save the optimizer state with the model.")
    metrics: Annotated[list[str], BeforeValidator(one_or_many)] = Field(
        [],
        description="Metrics the run must report, as METRICS: `tflops` and `mfu` add the "
        "TFLOP/s and MFU columns to the log lines (as --show-tflops), `gpu_memory` the memory "
        "column. Every metric okto computes is written to the metrics file anyway; a name it "
        "does not compute gets a warning.",
    )


class LoggingConfig(BlockModel):
    """Log files."""

    save_logs: Bool = Field(
        True,
        description="Keep the plain-text log of the run (training_file); the metrics file is "
        "written either way.",
    )
    metrics_file: Name | None = Field(
        None,
        description="Where the metrics go, as JSON lines (one object per line, whatever the "
        "file's extension); default runs/<project>/metrics.jsonl.",
    )
    training_file: Name | None = Field(
        None,
        description="Where the plain-text copy of the run's output goes (with save_logs); "
        "default runs/<project>/train.log.",
    )
    log_level: choice("debug", "info", "warning", "error") = Field(
        "info",
        description="Console output: `debug` adds detail (as --verbose), `warning` leaves "
        "warnings and the summary, `error` the summary alone.",
    )
    log_every: PositiveInt | None = Field(
        None, description="Steps between log lines; TRAIN.logging_steps overrides it."
    )


class StabilityConfig(BlockModel):
    """Guards against runs that went wrong."""

    stop_if_nan: Bool = Field(True, description="Stop when the loss is NaN or infinite.")
    stop_if_diverges: Bool = Field(
        False,
        description="Stop when the loss's moving average rises above 1.5x its lowest, "
        "checked from step 11 on (a run of 10 steps or fewer is never stopped).",
    )
    min_improvement: Number | None = Field(
        None, ge=0, description="Smallest drop in validation loss that counts as improvement."
    )


# ---- the whole file ------------------------------------------------------------


class OktoConfig(BaseModel):
    """Everything a `.okt` file says, with defaults for what it leaves out."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    language_version: str = Field("1.0", description='From the `# okto_version: "x"` header.')
    project: ProjectConfig = Field(default_factory=ProjectConfig, description="Header statements.")
    env: EnvConfig = Field(
        default_factory=EnvConfig, validation_alias=aliases("env", "ENV"), description="ENV block."
    )
    dataset: DatasetConfig = Field(
        default_factory=DatasetConfig,
        validation_alias=aliases("dataset", "DATASET", "DATA"),
        description="DATASET block (alias DATA).",
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        validation_alias=aliases("model", "MODEL"),
        description="MODEL block.",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        validation_alias=aliases("train", "TRAIN"),
        description="TRAIN block.",
    )
    blas: BlasConfig = Field(
        default_factory=BlasConfig,
        validation_alias=aliases("blas", "BLAS"),
        description="BLAS block.",
    )
    accelerate: AccelerateConfig = Field(
        default_factory=AccelerateConfig,
        validation_alias=aliases("accelerate", "ACCELERATE"),
        description="ACCELERATE block.",
    )
    tensor_cores: TensorCoresConfig = Field(
        default_factory=TensorCoresConfig,
        validation_alias=aliases("tensor_cores", "TENSOR_CORES"),
        description="TENSOR_CORES block.",
    )
    optimize: OptimizeConfig = Field(
        default_factory=OptimizeConfig,
        validation_alias=aliases("optimize", "OPTIMIZE"),
        description="OPTIMIZE block.",
    )
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig,
        validation_alias=aliases("inference", "INFERENCE"),
        description="INFERENCE block.",
    )
    export: ExportConfig = Field(
        default_factory=ExportConfig,
        validation_alias=aliases("export", "EXPORT"),
        description="EXPORT block.",
    )
    output: OutputConfig = Field(
        default_factory=OutputConfig,
        validation_alias=aliases("output", "OUTPUT"),
        description="OUTPUT block.",
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig,
        validation_alias=aliases("logging", "LOGGING"),
        description="LOGGING block.",
    )
    metrics: Annotated[list[str], BeforeValidator(one_or_many)] = Field(
        ["loss"],
        validation_alias=aliases("metrics", "METRICS"),
        description="METRICS block: metric names, written as bare words; as OUTPUT.metrics.",
    )
    stability: StabilityConfig = Field(
        default_factory=StabilityConfig,
        validation_alias=aliases("stability", "STABILITY"),
        description="STABILITY block.",
    )
    control: list[Rule] = Field(
        [], validation_alias=aliases("control", "CONTROL"), description="CONTROL block: rules."
    )

    @model_validator(mode="after")
    def _rows_fit(self) -> OktoConfig:
        """Rows longer than the context window the file gives the model cannot be trained."""
        length, window = self.dataset.max_length, self.model.context_window
        if length is not None and window is not None and length > window:
            raise FieldConflict(
                ("dataset", "max_length"),
                f"rows of {length} tokens do not fit MODEL.context_window ({window}): "
                "lower max_length or raise context_window",
            )
        return self

    @model_validator(mode="after")
    def _advice(self, info: ValidationInfo) -> OktoConfig:
        """Warnings about combinations that work but are probably not meant."""
        cpu_only = self.env.accelerator == "cpu" or self.train.device == "cpu"
        if cpu_only:
            for path, value in (
                (("env", "precision"), self.env.precision),
                (("train", "precision"), self.train.precision),
                (("model", "precision"), self.model.precision),
            ):
                if value == "fp16":
                    _warn(
                        info, path, "fp16 on a CPU is slow and poorly supported; use bf16 or fp32"
                    )
        data = self.dataset
        if data.text_field and (data.input_field or data.output_field):
            _warn(
                info,
                ("dataset", "text_field"),
                "text_field is not used: with input_field or output_field set, each record "
                "is read as a prompt and its answer",
            )
        if self.dataset.vocab_size is not None and self.dataset.tokenizer != "train":
            _warn(
                info, ("dataset", "vocab_size"), 'vocab_size only applies with tokenizer: "train"'
            )
        model = self.model
        if model.config and model.pretrained and not model.builds_from_architecture:
            _warn(info, ("model", "config"), "config overrides apply only with pretrained: false")
        if model.architecture is not None and model.pretrained:
            _warn(
                info,
                ("model", "architecture"),
                "architecture has no effect: the pretrained base brings its own"
                if model.base is not None
                else "no base to load pretrained weights from: this builds a new model with "
                "random weights; write pretrained: false to say so",
            )
        if self.inference.format is not None and "{input}" not in self.inference.format:
            _warn(info, ("inference", "format"), "the prompt format has no {input} placeholder")
        if self.logging.training_file is not None and not self.logging.save_logs:
            _warn(
                info,
                ("logging", "training_file"),
                "training_file has no effect with save_logs: false",
            )
        _schedule_advice(self.train, info)
        _idle_advice(self, info)
        if self.train.save_steps is not None and self.train.save_strategy != "steps":
            _warn(
                info,
                ("train", "save_steps"),
                f"save_steps has no effect with save_strategy: {self.train.save_strategy}",
            )
        for path, names in (
            (("metrics",), self.metrics),
            (("output", "metrics"), self.output.metrics),
        ):
            for index, name in enumerate(names):
                if name not in REPORTED_METRICS:
                    _warn(
                        info,
                        (*path, index),
                        f"metric '{name}' is not computed here and is ignored"
                        + suggestion(name, REPORTED_METRICS),
                    )
        return self


def _greedy_sampling_fields(inference: InferenceConfig, info: ValidationInfo) -> None:
    """top_k and top_p pick among sampled tokens: greedy decoding takes the likeliest."""
    greedy = (
        "do_sample: false" if not inference.do_sample
        else "temperature: 0" if inference.temperature == 0
        else None
    )
    for name in ("top_k", "top_p"):
        if greedy and name in inference.model_fields_set:
            _warn(
                info,
                ("inference", name),
                f"{name} has no effect with {greedy}, which decodes greedily (the likeliest "
                "token each step)",
            )


def _idle_advice(config: OktoConfig, info: ValidationInfo) -> None:
    """Fields that another field leaves without effect."""
    train = config.train
    weights = "fp32" if config.model.precision == "auto" else config.model.precision
    if (
        "mixed_precision" in train.model_fields_set
        and not train.mixed_precision
        and train.precision in ("fp16", "bf16")
        and weights != train.precision
    ):
        _warn(
            info,
            ("train", "mixed_precision"),
            f"mixed_precision: false has no effect with precision: {train.precision} "
            f"({train.precision} math on {weights} weights is mixed precision; "
            f"MODEL.precision: {train.precision} trains the weights in it too)",
        )
    if config.output.save_optimizer and not config.output.save_model:
        _warn(
            info,
            ("output", "save_optimizer"),
            "save_optimizer has no effect with save_model: false (the optimizer state is "
            "saved beside the final model; checkpoints hold it either way)",
        )
    if config.model.adapter is not None and (
        not config.model.pretrained or config.model.base is None
    ):
        _warn(info, ("model", "adapter"), NEW_MODEL_ADAPTER)
    _greedy_sampling_fields(config.inference, info)
    _idle_rules(config, info)
    _past_the_end(config, info)
    if config.stability.min_improvement is not None and not (
        train.early_stopping or any(r.event == "on_plateau" for r in config.control)
    ):
        _warn(
            info,
            ("stability", "min_improvement"),
            "min_improvement has no effect without TRAIN.early_stopping or a CONTROL "
            "on_plateau rule (it decides what counts as a plateau)",
        )


_UNSET_STEPS = ("eval_steps", "save_steps")


def _idle_rules(config: OktoConfig, info: ValidationInfo) -> None:
    """CONTROL actions on a live field that do nothing, or not what they say: save_steps
    under another save_strategy; INCREASE or DECREASE of a field TRAIN leaves unset and no
    rule SETs (the run leaves an unset eval_steps or save_steps unset under a percentage or a
    DECREASE, and no clipping stays no clipping)."""
    train = config.train
    actions = [
        found
        for index, rule in enumerate(config.control)
        for found in _actions_of(rule, ("control", index))
    ]
    assigned = {action.field for _, action in actions if isinstance(action, SetAction)}
    other_strategy = "save_strategy" in train.model_fields_set and train.save_strategy != "steps"
    for path, action in actions:
        if not isinstance(action, SetAction | AdjustAction):
            continue
        field, verb = action.field, action.kind.upper()
        unset = getattr(train, field) is None and field not in assigned
        if field == "save_steps" and other_strategy:
            message = f"{verb} save_steps has no effect with save_strategy: {train.save_strategy}"
            _warn(info, path, message)
        elif isinstance(action, SetAction) or not unset:
            continue
        elif field == "gradient_clip":
            _warn(info, path, f"{verb} gradient_clip has no effect: gradient_clip is false")
        elif field in _UNSET_STEPS and (action.relative or action.kind == "decrease"):
            _warn(
                info,
                path,
                f"{verb} {field} has no effect: TRAIN does not set {field}, so there is "
                "nothing to move (SET it first, or give it in TRAIN)",
            )


def _past_the_end(config: OktoConfig, info: ValidationInfo) -> None:
    """Warn about a rule whose condition needs more epochs or steps than TRAIN runs
    (`IF epoch > 5` with `epochs: 3`): it never fires."""
    train = config.train
    limits = {"epoch": ("epochs", train.epochs), "step": ("max_steps", train.max_steps)}
    for index, top in enumerate(config.control):
        nested = [
            found for found in _actions_of(top, ("control", index)) if isinstance(found[1], Rule)
        ]
        for path, rule in [(("control", index), top), *nested]:
            for comparison in _comparisons(rule.condition):
                field, limit = limits.get(comparison.metric, (None, None))
                value = comparison.value
                threshold = value.base if isinstance(value, Quantity) else value
                if limit is None or fixed_truth(comparison.op, threshold, 0, limit) is not False:
                    continue
                written = value if isinstance(value, Quantity) else f"{value:g}"
                _warn(
                    info,
                    path,
                    f"{comparison.metric} {comparison.op} {written} never holds: the run ends "
                    f"at {comparison.metric} {limit} (TRAIN.{field})",
                )


def _comparisons(condition) -> list[Comparison]:
    """The comparisons of a condition, however nested."""
    if condition is None:
        return []
    if isinstance(condition, Comparison):
        return [condition]
    return [c for part in condition.conditions for c in _comparisons(part)]


def _actions_of(rule: Rule, path: tuple):
    """(path, action) for every action of `rule`, its nested rules' included, under the
    paths the CONTROL block's positions are recorded with."""
    for number, action in enumerate(rule.actions):
        at = (*path, "actions", number)
        yield at, action
        if isinstance(action, Rule):
            yield from _actions_of(action, at)


def _schedule_advice(train: TrainConfig, info: ValidationInfo) -> None:
    """The schedules whose shape a field sets: without it they equal a simpler one; with
    another schedule the field does nothing."""
    for name, scheduler, default, same, example in (
        ("num_cycles", "cosine_with_restarts", "one cycle", "cosine", 3),
        ("power", "polynomial", "power 1", "linear", 2),
    ):
        value = getattr(train, name)
        if train.scheduler == scheduler and value is None:
            _warn(
                info,
                ("train", "scheduler"),
                f"{scheduler} with {default} (TRAIN.{name} unset) is the same schedule as "
                f"{same}; set {name} (e.g. {name}: {example})",
            )
        elif train.scheduler != scheduler and value is not None:
            _warn(
                info,
                ("train", name),
                f"{name} has no effect with scheduler: {train.scheduler} (only {scheduler})",
            )


# ---- what training refuses ---------------------------------------------------------

FP16_WEIGHTS = (
    "makes the trained weights fp16, whose gradients need loss scaling that fp16 parameters "
    "cannot take; use bf16 weights (MODEL.precision: bf16), fp16 math over fp32 weights "
    "(TRAIN.precision: fp16, MODEL.precision unset), or a LoRA ADAPTER over the fp16 base"
)


def training_refusals(config: OktoConfig) -> list[tuple[str, str]]:
    """What `okto train` and `okto plan` refuse in a valid file, whatever the machine, as
    (dotted field path, what is wrong, said after the field's name). Not validation errors:
    these fields only shape training, so the file still serves `okto infer`. fp16 weights
    get fp16 gradients, which torch's GradScaler refuses to unscale; a LoRA adapter trains
    in fp32 over a frozen fp16 base, so that stays allowed."""
    if config.model.precision == "fp16" and config.model.adapter is None:
        return [("model.precision", FP16_WEIGHTS)]
    return []


# ---- keywords ------------------------------------------------------------------

NEW_MODEL_ADAPTER = (
    "ADAPTER on a new model (pretrained: false): LoRA trains over frozen random weights "
    "that no file keeps but the merged final model, so adapter/ fits no base anyone "
    "has; remove the ADAPTER block to train the whole model"
)
"""The warning for a LoRA adapter on a model built with random weights (okto check's and
the run's)."""

NOT_EXECUTED_BLOCKS = (
    "MONITOR",
    "GUARD",
    "BEHAVIOR",
    "EXPLORER",
    "DEPLOY",
    "SECURITY",
    "HOOKS",
    "VALIDATE",
    "FT_LORA",
    "BENCHMARK",
)
"""Blocks other OktoScript tools execute: they parse here and warn."""


def spellings(model: type[BaseModel]) -> dict[str, str]:
    """Every accepted spelling of `model`'s fields -> the canonical name."""
    names = {}
    for name, info in model.model_fields.items():
        names[name] = name
        if info.validation_alias is not None:
            for alias in info.validation_alias.choices:
                names[alias] = name
    return names


BLOCK_KEYWORDS: dict[str, str] = {
    spelling: name
    for spelling, name in spellings(OktoConfig).items()
    if spelling.isupper() and name not in ("language_version", "project")
}
"""Block keyword (`TRAIN`, `DATA`, ...) -> attribute of `OktoConfig`."""

HEADER_KEYWORDS: dict[str, str] = {
    ("PROJECT" if name == "name" else name.upper()): name for name in ProjectConfig.model_fields
}
"""Header keyword (`PROJECT`, `TAGS`, ...) -> field of `ProjectConfig`."""
