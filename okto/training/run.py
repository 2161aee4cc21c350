"""`okto.train`: from a `.okt` file to a trained model in runs/<project>/.

The order is chosen so that mistakes surface early and cheap: the file and
the machine are checked (plan), the model source located, the tokenizer
and the data prepared (cached after the first run), and only then is the
model built and trained. Bad input raises an `OktoError` with a message
(exit 2); a machine that lacks what is asked raises exit 4; a run that
went wrong (NaN, divergence) saves a checkpoint and raises `TrainingFailed`
(exit 3); Ctrl-C or SIGTERM saves a checkpoint and raises
`TrainingInterrupted` (exit 130 or 143).

In a process a launcher (torchrun) started, the same steps run in every
process of the job (okto.training.distributed): rank 0 prepares the tokenizer
and the data first and the others read them from the caches, the model is
wrapped (DDP or FSDP2) once the planner patched it, and only rank 0 prints,
writes the log, the metrics, the final model and the exports.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from okto.errors import OktoError, RunError, UsageError
from okto.language.diagnostics import counted
from okto.training.display import Display, human, percent, perplexity
from okto.training.outputs import (
    RunPaths,
    left_from_earlier,
    make_folder,
    products,
    save_model,
    write_config,
)

DEFAULT_LENGTH_CAP = 2048


class TrainingFailed(RunError):
    """The loss went NaN or diverged; a checkpoint was saved."""


class TrainingInterrupted(OktoError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the exit code is 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    outcome: str  # completed, stopped or early_stopping
    steps: int
    first_loss: float | None
    last_loss: float | None
    best_loss: float | None
    val_loss: float | None
    test_loss: float | None
    final: Path | None
    checkpoint: Path | None
    metrics_file: Path
    exports: list[Path] = field(default_factory=list)


def train(
    source,
    *,
    max_steps: int | None = None,
    overrides: str | tuple[str, ...] | list[str] = (),
    resume: str | None = None,
    verbose: bool = False,
    show_tflops: bool = False,
    console=None,
) -> TrainResult:
    """Train what a `.okt` file (a path or an `okto.Program`) describes.

    `overrides` is one `BLOCK.field=value` string (`--set`) or a list of them, `max_steps`
    replaces TRAIN's epochs or max_steps, `resume` is "auto" or a checkpoint
    folder (default: TRAIN.resume_from_checkpoint). `console` is the rich Console the
    tables and log lines go to (default: a new one on stdout), `verbose` adds detail to
    the log lines, `show_tflops` TFLOP/s and MFU.

    Returns a `TrainResult`: the run folder, how it ended, the steps, the losses, the final
    model's folder, the last checkpoint, the metrics file and the exports written. Raises an `okto.OktoError` (with the exit code
    `okto train` would give) on bad input or a failed run.
    """
    from rich.console import Console

    from okto.training.distributed import ranks_from_environment

    program = load_program(source, overrides, max_steps)
    if resume is not None and (
        not isinstance(resume, str | os.PathLike) or not os.fspath(resume).strip()
    ):  # "" read as no resume started afresh, setting the run's checkpoints aside
        raise UsageError(f'resume: "auto" or a checkpoint folder, not {resume!r}')
    config = program.config
    ranks = ranks_from_environment()
    if not ranks.is_main:  # rank 0 speaks for the job
        from transformers.utils import logging as hf_logging

        console = Console(quiet=True)
        hf_logging.disable_progress_bar()
    asked = reported_metrics(config)
    display = Display(
        console,
        verbose,
        show_tflops or bool(asked & {"tflops", "mfu"}),
        config.logging.log_level,
        show_memory="gpu_memory" in asked,
    )
    try:
        return _train(program, config, display, resume, ranks)
    finally:
        display.close_log()


def reported_metrics(config) -> set[str]:
    """What METRICS and OUTPUT.metrics ask the run to report: tflops and mfu add the TFLOP/s
    and MFU columns to the log lines (as --show-tflops), gpu_memory the memory column."""
    return set(config.metrics) | set(config.output.metrics)


def load_program(source, overrides=(), max_steps: int | None = None):
    """The `okto.Program` a run trains: `source` (a path or a Program) with `overrides`
    and `max_steps` applied, and a PROJECT name checked.

    Errors name the parameters as a Python caller passed them; `okto train` checks its
    flags before calling, so its messages stay in flag terms.
    """
    from okto.language import with_overrides
    from okto.language.program import with_max_steps

    program = with_overrides(source, overrides)
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise UsageError(f"max_steps must be a whole number of at least 1, not {max_steps!r}")
        program = with_max_steps(program, max_steps)  # the caller's Program stays as it was
    if not program.config.project.name:
        raise UsageError('okto train needs a PROJECT name: add a line like PROJECT "my-model"')
    return program


def _train(program, config, display: Display, resume: str | None, ranks) -> TrainResult:
    from okto.planner import build_plan
    from okto.planner.model_config import check_adapter, check_new_model, model_config
    from okto.training.distributed import Parallel
    from okto.training.plan import run_settings

    plan = build_plan(program)  # the machine's checks, before anything else
    name = program.source.name
    hf_config, _ = model_config(program.config.model, Path(name).parent if name else None)
    check_new_model(program.config.model, hf_config)
    check_adapter(program.config.model, hf_config)  # its targets, before the data is read
    settings = run_settings(plan)
    if settings.processes > 1 and ranks.world == 1:
        processes = plan.settings["processes"]
        raise UsageError(
            f"{_where(processes)} asks for {settings.processes} training processes: "
            "`okto train` starts them through torchrun; from Python, run under torchrun"
        )
    parallel, settings = Parallel.start(ranks, settings)
    result = _run(program, config, display, resume, settings, parallel)
    # Only on the way out of a run that went well: after a failure a clean shutdown could
    # wait on peers that wait for this process, which is about to exit anyway.
    parallel.close()
    return result


def _where(setting) -> str:
    """Where a planner setting came from: `ENV.gpus (file.okt:3:7)`, or its origin."""
    from okto.planner.sources import display

    return f"{display(setting.field)} ({setting.origin})" if setting.field else setting.origin


def _run(program, config, display: Display, resume, settings, parallel) -> TrainResult:
    from okto.data import cache as data_cache
    from okto.planner import build_plan
    from okto.training.checkpoint import set_aside
    from okto.training.hub import go_offline
    from okto.training.lora import check_lora_reached
    from okto.training.plan import apply_switches

    started = time.perf_counter()
    base_dir = Path(program.source.name).parent if program.source.name else Path.cwd()
    paths = RunPaths.resolve(config)
    paths.create()
    make_folder(data_cache_dir(), "OKTO_CACHE_DIR")
    data_cache.size_limit()  # a bad OKTO_DATA_CACHE_SIZE stops the run here, not after the data
    choice = resume or config.train.resume_from_checkpoint
    # in a Python caller's terms: `okto train` checks its --resume folder before calling
    asked_by = f"resume={resume!r}" if resume else f"TRAIN.resume_from_checkpoint {choice!r}"
    fresh = choice is None and parallel.is_main
    moved = set_aside(paths.checkpoints, (paths.metrics, paths.log)) if fresh else None
    # Kept in place (a MODEL.base may name final/), but not this run's until it replaces them.
    earlier = products(paths) if fresh else {}
    resume_from = _resume_point(choice, asked_by, paths)
    if paths.log is not None and parallel.is_main:
        display.keep_log(paths.log, append=resume_from is not None)
    # said once the new log is open, so that train.log has it too
    if moved:
        count, target = moved
        display.note(
            f"kept {count} checkpoint(s) of an earlier run in {target}, with its metrics "
            "and log (--resume auto continues a run instead; delete that folder when done "
            "with it)"
        )
    if earlier:
        display.note(
            f"kept in place from an earlier run: {', '.join(map(str, earlier))} (replaced "
            "as this run writes its own at its end; the summary names any left)"
        )
    if choice is not None and resume_from is None:
        display.note(f"no checkpoint in {paths.checkpoints} to resume from: starting afresh")
    for diagnostic in program.warnings:
        display.text(
            diagnostic.render(), level="warning" if diagnostic.severity == "warning" else "info"
        )
    _seed_everything(settings.seed)
    if config.env.network == "offline":
        go_offline()

    source, tokenizer, splits = parallel.main_first(
        lambda: _prepare_data(
            config, base_dir, paths, settings.seed, display, parallel.is_main, resume_from
        )
    )
    model, adapted = _build_model(config, source, tokenizer, splits, settings, display)
    plan = build_plan(program, model=model)
    display.print(plan.table())
    for note in plan.notes:
        display.note(note)
    if not parallel.sharded:  # FSDP moves each parameter as it shards it
        model.to(settings.device)
    plan.apply(model)
    if adapted:
        check_lora_reached(model)
    forward = parallel.wrap(model, settings)
    if parallel.distributed:
        # each process its own dropout masks; numpy takes seeds below 2**32 only
        _seed_everything((settings.seed + parallel.rank) % 2**32)
    apply_switches(settings)
    if parallel.is_main:
        write_config(paths.run, program.to_dict())
    job = (program, settings, parallel)
    trainer = _trainer(job, model, forward, adapted, splits, display, paths, tokenizer, resume_from)
    try:  # the metrics file is open: closed also when the checkpoint is refused
        state = _resume(trainer, resume_from, display) if resume_from is not None else None
        if parallel.distributed:  # said after a resume, which may regroup the batch
            live = trainer.live
            display.text(
                f"parallel {parallel.describe()}; global batch {live.batch_size} x "
                f"{parallel.world} x {live.gradient_accumulation} sequences"
            )
        trainer.metrics.write(
            "start",
            project=config.project.name,
            device=str(settings.device),
            precision=settings.precision,  # the autocast dtype (fp32: none)
            weights=settings.weights,
            matmul_precision=settings.matmul_precision,
            **(
                {"processes": parallel.world, "strategy": parallel.strategy}
                if parallel.distributed
                else {}
            ),
            parameters=sum(p.numel() for p in model.parameters()),
            trainable=sum(p.numel() for p in trainer.trained),
            rows=trainer.train_stream.rows,
            seq_len=trainer.train_stream.seq_len,
            total_steps=trainer.total,
            resumed_from=str(resume_from) if resume_from else None,
        )
        if state is not None:  # its `set` events follow the `start` of the run they change
            _resumed_with_other_settings(program, trainer, state, display)
        outcome = trainer.fit()
        run = (program, paths, tokenizer, adapted, earlier)
        return _wrap_up(trainer, outcome, run, display, started)
    finally:
        trainer.metrics.close()


def _resume(trainer, checkpoint: Path, display: Display) -> dict:
    """Restore `checkpoint` into the trainer, saying where the run goes on and whether its data
    changed; its trainer state."""
    state = trainer.restore(checkpoint)
    if state["step"] > trainer.total:
        raise UsageError(
            f"{checkpoint} is at step {state['step']:,}, past this run's "
            f"{trainer.total:,} step{'s' if trainer.total != 1 else ''}: there is nothing "
            "left to train; resume with more "
            "steps (--max-steps, TRAIN.max_steps or epochs), or from an earlier checkpoint"
        )
    display.text(f"resuming from {checkpoint} (step {state['step']} of {trainer.total})")
    _resumed_with_other_data(trainer, state, display)
    return state


def _resumed_with_other_data(trainer, state: dict, display: Display) -> None:
    """Rows other than the checkpoint's (other files, tokenizer, DATASET settings or seed,
    which orders them) do not continue the run as it would have gone: said, not refused."""
    rows = trainer.train_stream.rows
    if state["rows"] != rows:
        what = f"{state['rows']:,} rows then, {rows:,} now"
    elif state.get("data_key", trainer.data_key) != trainer.data_key:
        what = "its files, the tokenizer, DATASET settings, the seed or okto's data code"
    else:
        return
    display.warn(
        f"the training data changed since the checkpoint ({what}): the run continues, "
        "but not as it would have"
    )


def _resumed_with_other_settings(program, trainer, state: dict, display: Display) -> None:
    """The command line and the file win over the checkpoint: each live TRAIN value given
    with --set, or changed in the file since the checkpoint's run started (which its
    `configured` record tells from a value CONTROL moved), is applied as the run resumes, as
    a CONTROL SET would be. A different step count remakes the learning-rate schedule for
    the new length, or for schedule fields edited in the file (its position comes from the
    checkpoint), which is said, since the rate jumps to where the new schedule is at this
    step."""
    from okto.language.control import LIVE_FIELDS  # what a checkpoint restores as it was left
    from okto.language.program import COMMAND_LINE

    started_with = state.get("configured", {})  # the file's values then; older checkpoints: none
    for name in LIVE_FIELDS:
        if program.source_map[f"train.{name}"].kind == COMMAND_LINE:
            value, by = getattr(program.config.train, name), "--set"
        elif name in started_with and started_with[name] != trainer.configured[name]:
            value, by = trainer.configured[name], "file"
        else:
            continue
        # unset (no clipping, no eval_steps or save_steps) compares as unset
        current = getattr(trainer.live, name) if value is None else trainer.get(name)
        if value != current:
            trainer.set(name, value, by=by)
    changed = trainer.schedule_changed(state)
    if changed and trainer.step < trainer.total:
        display.warn(
            f"{'; '.join(changed)}: from step {trainer.step + 1:,} on, the learning rate "
            f"follows a {trainer.total:,}-step schedule (the rate a fresh {trainer.total:,}-step "
            "run would have), not the saved one"
        )


def _resume_point(choice: str | None, asked_by: str, paths: RunPaths) -> Path | None:
    """The checkpoint to resume from: None for a fresh run, or for `auto` finding none."""
    from okto.training.checkpoint import latest_checkpoint, read_trainer_state

    if choice is None:
        return None
    if str(choice).lower() == "auto":
        return latest_checkpoint(paths.checkpoints)
    path = Path(choice).expanduser()
    if path.is_file():
        raise UsageError(f"{asked_by}: a file; it takes a checkpoint folder ({path.parent})")
    if not path.is_dir():
        raise UsageError(f"{asked_by}: no such checkpoint folder")
    found = latest_checkpoint(path) or path  # a folder of checkpoints: its latest
    read_trainer_state(found)  # no checkpoint: said before the data and the model
    return found


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_cache_dir() -> Path:
    """Where tokenized data is cached: $OKTO_CACHE_DIR/data, default ~/.cache/okto/data."""
    root = os.environ.get("OKTO_CACHE_DIR") or Path.home() / ".cache" / "okto"
    return Path(root) / "data"


def _prepare_data(
    config, base_dir: Path, paths: RunPaths, seed: int, display: Display, main, resume_from
):
    """The model's source, the tokenizer and the rows. In a job of several processes rank 0
    runs this first; the others then read its tokenizer from the run folder and the rows
    from the cache. A resumed run keeps the run's trained tokenizer, which its checkpoint
    fits."""
    from okto.data import DataWarning, build_datasets
    from okto.data.progress import reporting_stages

    started = time.perf_counter()
    caught: list = []
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            display.working("preparing the data") as show_stage,
            reporting_stages(show_stage),
        ):
            warnings.simplefilter("always", DataWarning)
            source, tokenizer, max_length = _tokenizer(
                config, base_dir, paths, seed, main, resuming=resume_from is not None
            )
            splits = build_datasets(
                config.dataset,
                tokenizer,
                seed=seed,
                cache_dir=data_cache_dir(),
                base_dir=base_dir,
                max_length=max_length,
            )
    finally:  # also before a DataError, which may point at them
        _show_warnings(caught, display)
    stats = splits.stats
    validation = (
        f"validation {stats.validation.examples:,} rows ({stats.validation_from})"
        if stats.validation
        else "no validation data"
    )
    if stats.test:
        validation += f"; test {stats.test.examples:,} rows"
    display.text(
        f"data     {stats.train.records:,} records -> {stats.train.examples:,} rows of "
        f"{max_length} tokens ({human(stats.train.tokens)} tokens, "
        f"{100 * (1 - stats.train.masked_fraction):.0f}% trained); {validation}; "
        f"tokenizer {len(tokenizer):,} entries; "
        f"{'from the cache' if stats.cache_hit else 'prepared'} in {time.perf_counter() - started:.1f}s"
    )
    if splits.validation is None and main:
        _unevaluated(config, display)
    return source, tokenizer, splits


def _tokenizer(config, base_dir: Path, paths: RunPaths, seed: int, main: bool, resuming: bool):
    """The model's source, the run's tokenizer and the rows' length."""
    from transformers import AutoTokenizer

    from okto.data import resolve_tokenizer
    from okto.training import models

    with tempfile.TemporaryDirectory() as scratch:
        offline = config.env.network == "offline"
        source = models.locate(config.model, base_dir, offline, Path(scratch))
        if main:
            tokenizer = resolve_tokenizer(
                config.dataset,
                model_path=source.tokenizer_path,
                run_dir=paths.run,
                seed=seed,
                base_dir=base_dir,
                resuming=resuming,
            )
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(paths.run / "tokenizer"))
    window = source.context_window or DEFAULT_LENGTH_CAP
    max_length = (
        config.dataset.max_length or config.model.context_window or min(window, DEFAULT_LENGTH_CAP)
    )
    return source, tokenizer, max_length


def _show_warnings(caught: list, display: Display) -> None:
    """The warnings data preparation recorded: okto's data warnings on the console, each
    once (the tokenizer and the data read the same files), others passed on."""
    from okto.data import DataWarning

    shown = set()
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            if str(warning.message) not in shown:
                shown.add(str(warning.message))
                display.warn(str(warning.message))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


EVAL_METRICS = {"val_loss", "accuracy"}  # perplexity falls back to exp(loss)


def _unevaluated(config, display: Display) -> None:
    """Without validation data nothing is evaluated: say which settings that leaves idle."""
    from okto.training.control import metric_names

    train, rules = config.train, config.control
    idle = [f"TRAIN.{name}" for name in ("eval_steps", "early_stopping") if getattr(train, name)]
    events = sorted({r.event for r in rules if r.event in ("on_eval", "on_plateau")})
    idle += [f"CONTROL {event} rules" for event in events]
    idle += [f"CONTROL conditions on {m}" for m in sorted(metric_names(rules) & EVAL_METRICS)]
    if config.stability.min_improvement is not None:
        idle.append("STABILITY.min_improvement")
    if idle:
        verb = "never acts" if len(idle) == 1 else "never act"
        display.warn(f"there is no validation data, so {', '.join(idle)} {verb}")
    unreported = sorted(reported_metrics(config) & (EVAL_METRICS | {"perplexity"}))
    if unreported:
        display.warn(
            f"there is no validation data, so the metrics {', '.join(unreported)} that "
            "METRICS or OUTPUT.metrics ask for are never reported"
        )


def _too_few_evaluations(config, total: int, per_step: int, rows: int, display) -> None:
    """Early stopping and on_plateau rules need `patience + 1` evaluations; a run that goes
    by epochs and ends before its epochs do may make a single one, at its end."""
    from okto.training.loop import DEFAULT_PATIENCE
    from okto.training.stability import planned_evaluations

    train = config.train
    idle = ["TRAIN.early_stopping"] if train.early_stopping else []
    if any(rule.event == "on_plateau" for rule in config.control):
        idle.append("CONTROL on_plateau rules")
    needed = (train.early_stopping or DEFAULT_PATIENCE) + 1
    made = planned_evaluations(total, per_step, rows, train.eval_steps)
    if idle and made < needed:
        when, fix = (
            (f"every {train.eval_steps} steps", "lower")
            if train.eval_steps
            else ("at epoch ends", "set")
        )
        one = len(idle) == 1
        display.warn(
            f"{' and '.join(idle)} need{'s' if one else ''} {needed} evaluations, and this run "
            f"of {counted(total, 'step')} makes {made} ({when} and at the end): "
            f"{'it never acts' if one else 'they never act'}; {fix} TRAIN.eval_steps"
        )


def _divergence_watch(total: int, display: Display) -> None:
    """Say when stop_if_diverges starts to act: the loss's first steps are all noise, so
    the guard watches only after `WARMUP` finite steps, and a shorter run is never watched."""
    from okto.training.stability import FACTOR, WARMUP

    if total <= WARMUP:
        display.warn(
            f"STABILITY.stop_if_diverges acts after {WARMUP} steps, and this run has {total}: "
            "it never acts"
        )
    else:
        display.note(
            f"STABILITY.stop_if_diverges acts after {WARMUP} steps: from step {WARMUP + 1} on, "
            f"a loss whose moving average rises above {FACTOR:g}x its lowest stops the run"
        )


def _build_model(config, source, tokenizer, splits, settings, display: Display):
    from okto.training import models
    from okto.training.lora import apply_lora, unmatched_warning

    seq_len = len(splits.train[0]["input_ids"])
    adapter = config.model.adapter
    model = models.build(source, config.model, tokenizer, seq_len, settings.weights_dtype)
    warning = models.size_warning(model, config.model.parameters)
    if warning:
        display.warn(warning)
    adapted = apply_lora(model, adapter) if adapter else []  # on a new model: check warns
    warning = unmatched_warning(adapter, adapted) if adapter else None
    if warning:
        display.warn(warning)
    if settings.memory_efficient:
        if model.supports_gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # its new name; the old warns
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:  # transformers before 5.2x
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            display.warn(f"a {model.config.model_type} model cannot checkpoint activations")
    total = models.parameters(model)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = f", LoRA on {len(adapted)} layers" if adapted else ""
    share = "" if trained == total else f" ({100 * trained / total:.3g}%)"
    display.text(
        f"model    {source.where}: {human(total)} parameters, {human(trained)} trained{share}{lora}"
    )
    return model, adapted


def _trainer(job, model, forward, adapted, splits, display, paths, tokenizer, resume_from):
    """The Trainer over `model` (as the planner patched it), with `forward` what the loop
    calls (the model, or DDP around it; compiled when the plan says so). `job` is
    (program, settings, parallel)."""
    import torch

    from okto.language.program import COMMAND_LINE
    from okto.training.flops import flops_model, peak_tflops
    from okto.training.loop import Live, Trainer
    from okto.training.metrics import MetricsFile
    from okto.training.optim import build_optimizer, build_scheduler
    from okto.training.outputs import slug
    from okto.training.plan import compiled

    program, settings, parallel = job
    config = program.config
    train = config.train
    flops = flops_model(model)
    if flops.note:
        display.note(flops.note)
    live = Live(
        batch_size=train.batch_size,
        gradient_accumulation=train.gradient_accumulation,
        weight_decay=train.weight_decay,
        gradient_clip=train.gradient_clip,
        logging_steps=_logging_steps(program),
        eval_steps=train.eval_steps,
        save_steps=train.save_steps,
    )
    from_file = {
        name: value
        for name, value in {"learning_rate": train.learning_rate, **asdict(live)}.items()
        if program.source_map[f"train.{name}"].kind != COMMAND_LINE
    }
    rows = len(splits.train)
    per_step = live.batch_size * live.gradient_accumulation * parallel.world
    total = train.max_steps or math.ceil(train.epochs * rows / per_step)
    optimizer = build_optimizer(
        model, train.optimizer, train.learning_rate, train.weight_decay, settings.optimizer_kernel
    )
    scheduler = build_scheduler(
        optimizer,
        train.scheduler,
        train.warmup_steps,
        total,
        num_cycles=train.num_cycles,
        power=train.power,
    )
    if train.warmup_steps >= total and parallel.is_main:
        decay = (
            "" if train.scheduler == "constant" else f"; the {train.scheduler} decay never starts"
        )
        display.warn(
            f"TRAIN.warmup_steps ({train.warmup_steps}) is not below the run's "
            f"{counted(total, 'step')}: "
            f"the learning rate never reaches {train.learning_rate:g}{decay}"
        )
    if splits.validation is not None and parallel.is_main:
        _too_few_evaluations(config, total, per_step, rows, display)
    if config.stability.stop_if_diverges and parallel.is_main:
        _divergence_watch(total, display)
    scaler = torch.amp.GradScaler(settings.device.type) if settings.loss_scaling else None
    forward = compiled(forward, settings)
    resolved = program.to_dict()

    def save(label: str) -> Path:
        folder = paths.saved / slug(label)
        _save_final(parallel, model, adapted, tokenizer, resolved, folder)
        return folder

    return Trainer(
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        settings=settings,
        config=config,
        train_rows=splits.train,
        data_key=splits.stats.cache_key,
        val_rows=splits.validation,
        test_rows=splits.test,
        total_steps=total,
        live=live,
        flops=flops,
        peak=peak_tflops(settings.device, settings.matmul_precision, settings.tf32),
        display=display,
        metrics=MetricsFile(
            paths.metrics if parallel.is_main else None, append=resume_from is not None
        ),
        checkpoints=paths.checkpoints,
        save_model=save,
        parallel=parallel,
        configured=from_file,
    )


def _save_final(parallel, model, adapted, tokenizer, config: dict, folder: Path) -> None:
    """The model as a Hugging Face folder, LoRA merged, written by rank 0 (under FSDP every
    process takes part in gathering the shards)."""
    from okto.training.lora import merged_state_dict

    whole = parallel.model_to_save(model)
    if whole is not None:
        state = merged_state_dict(whole) if adapted else None
        save_model(whole, tokenizer, config, folder, state)


def _logging_steps(program) -> int:
    """TRAIN.logging_steps, or LOGGING.log_every when only that is set."""
    config = program.config
    train_set = str(program.source_map.get("train.logging_steps", "default")) != "default"
    if not train_set and config.logging.log_every is not None:
        return config.logging.log_every
    return config.train.logging_steps


def _wrap_up(trainer, outcome, run, display, started):
    """Final model, adapter and exports for a run that ended well; the summary in any case.
    `run`: the program, run paths, tokenizer, whether LoRA adapted the model, and the
    earlier run's models and exports found at a fresh run's start."""
    program, paths, tokenizer, adapted, earlier = run
    final, exports, failed = None, [], None
    if outcome.reason in ("completed", "stopped", "early_stopping"):
        try:
            final, exports = _save_outputs(trainer, program, paths, tokenizer, adapted)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as `Terminated`
            outcome = _interrupted_saving(trainer, stop)
        except ExportFailed as error:
            failed, final = error, paths.final
        except FinalNotWritten as error:  # the adapter's or the final model's
            failed = error
    from okto.training.loop import peak_memory

    rates = trainer.throughput()
    totals = trainer.totals
    last_eval = totals.last_eval
    last = _last_loss(totals)
    finite = last is None or math.isfinite(last)
    memory = peak_memory(trainer.device)
    left = left_from_earlier(earlier)
    trainer.metrics.write(
        "summary",
        outcome=outcome.reason,
        steps=trainer.step,
        total_steps=trainer.total,
        epoch=trainer.epoch,
        seconds=time.perf_counter() - started,
        train_seconds=trainer.wall_seconds,
        first_loss=totals.first_loss,
        last_loss=last,
        last_finite_loss=None if finite else totals.last_loss,
        best_loss=totals.best_loss if math.isfinite(totals.best_loss) else None,
        val_loss=last_eval.get("val_loss"),
        perplexity=last_eval.get("perplexity"),
        accuracy=last_eval.get("accuracy"),
        test_loss=trainer.test_result.get("loss"),
        test_perplexity=trainer.test_result.get("perplexity"),
        test_accuracy=trainer.test_result.get("accuracy"),
        peak_memory_gb=memory[0],
        final=str(final) if final else None,
        checkpoint=str(trainer.last_checkpoint) if trainer.last_checkpoint else None,
        exports=[str(p) for p in exports],
        earlier_outputs=[str(p) for p in left],
        **rates,
    )
    outputs = (final, exports, left)
    _summary(trainer, outcome, rates, memory, outputs, paths, display, started)
    if failed is not None:
        raise failed
    if outcome.reason in ("nan", "diverged"):
        raise TrainingFailed(outcome.message)
    if outcome.reason == "interrupted":
        raise TrainingInterrupted(outcome.message, outcome.signal_exit_code)
    return TrainResult(
        run_dir=paths.run,
        outcome=outcome.reason,
        steps=trainer.step,
        first_loss=totals.first_loss,
        last_loss=last,
        best_loss=totals.best_loss if math.isfinite(totals.best_loss) else None,
        val_loss=last_eval.get("val_loss"),
        test_loss=trainer.test_result.get("loss"),
        final=final,
        checkpoint=trainer.last_checkpoint,
        metrics_file=paths.metrics,
        exports=exports,
    )


def _save_outputs(trainer, program, paths, tokenizer, adapted) -> tuple[Path | None, list]:
    """A LoRA run's adapter (what the run made: kept whatever OUTPUT.save_model says), the
    final model (with its optimizer state when asked) and the EXPORT outputs: (the final
    folder or None, the exports)."""
    import torch

    from okto.training.checkpoint import disk_errors
    from okto.training.lora import save_adapter
    from okto.training.outputs import export

    config, model, parallel = program.config, trainer.model, trainer.parallel
    if adapted and parallel.is_main:
        try:
            save_adapter(model, config.model.adapter, model.name_or_path, paths.adapter)
        except OSError as error:  # a full disk: adapter/ is as it was before (written staged)
            raise FinalNotWritten(paths.adapter, error, trainer.last_checkpoint) from None
    keep = config.output.save_model
    # an EXPORT block in the file, empty or not, or an EXPORT field on the command line
    asked = str(program.source_map.get("export", "default")) != "default"
    if not (keep or asked):
        return None, []
    # With OUTPUT.save_model: false the exports are made from a folder removed after.
    final = paths.final if keep else paths.run / ".tmp-final-for-export"
    try:
        _save_final(parallel, model, adapted, tokenizer, program.to_dict(), final)
        if keep and config.output.save_optimizer:
            optimizer = parallel.optimizer_state_to_save(model, trainer.optimizer)
            if optimizer is not None:
                with disk_errors(final):
                    torch.save(optimizer, final / "optimizer.pt")
        exports = (
            export(final, config.export, paths.export, paths.name)
            if asked and parallel.is_main
            else []
        )
    except OktoError as error:  # an EXPORT the model cannot take (fp16 past its range, ...)
        if not keep and parallel.is_main and final.is_dir():
            _keep_unexported(final, paths.final)
        raise ExportFailed(error, paths) from None
    except OSError as error:  # a full disk: final/ is as it was before (written staged)
        raise FinalNotWritten(final, error, trainer.last_checkpoint) from None
    finally:
        if not keep and parallel.is_main:
            shutil.rmtree(final, ignore_errors=True)
    return (final if keep else None), exports


class ExportFailed(OktoError):
    """EXPORT failed after training: raised once the summary is shown, with the export
    error's exit code, saying where the trained model is."""

    def __init__(self, error: OktoError, paths: RunPaths):
        super().__init__(
            f"training ended, but EXPORT failed: {error}\nthe trained model is in "
            f"{paths.final}; export it again with okto export --model {paths.final}"
        )
        self.exit_code = error.exit_code


class FinalNotWritten(OktoError):
    """The final model or the adapter could not be written (a full disk): raised once the
    summary is shown."""

    def __init__(self, final: Path, error: OSError, checkpoint: Path | None):
        where = (
            f"the last checkpoint, {checkpoint}, holds the trained weights"
            if checkpoint
            else "no checkpoint holds the trained weights"
        )
        super().__init__(
            f"training ended, but the trained model could not be written to {final} "
            f"({error.strerror or error}); {where}"
        )


def _keep_unexported(scratch: Path, final: Path) -> None:
    """With OUTPUT.save_model: false the model was only staged for the exports; when they
    fail it is all the run made, so it moves to final/ instead of being removed."""
    if final.exists():
        shutil.rmtree(final)
    scratch.rename(final)


def _interrupted_saving(trainer, stop: KeyboardInterrupt):
    """The outcome of a run stopped while its final model or exports were being written:
    they are incomplete, and the last checkpoint, when there is one, holds every step."""
    from okto.training.loop import Outcome
    from okto.training.signals import Terminated

    checkpoint = trainer.last_checkpoint
    resume = (
        f"the checkpoint {checkpoint} holds every step: --resume auto writes them"
        if checkpoint is not None and checkpoint.name == f"step-{trainer.step:07d}"
        else "no checkpoint holds the last step (save_strategy), so they are lost"
    )
    exit_code = Terminated.exit_code if isinstance(stop, Terminated) else 130
    return Outcome(
        "interrupted", f"interrupted while saving the final model and exports; {resume}", exit_code
    )


def _summary(trainer, outcome, rates, memory, outputs, paths, display, started) -> None:
    """The summary table: the figures of the metrics file's `summary` record. `memory` is
    (peak GB, what was measured); `outputs` (final model, exports, an earlier run's left)."""
    final, exports, left = outputs
    totals, last_eval = trainer.totals, trainer.totals.last_eval
    rows = [
        ("outcome", outcome.message),
        ("steps", f"{trainer.step:,} of {trainer.total:,} (epoch {trainer.epoch:.2f})"),
        (
            "time",
            f"{_duration(trainer.wall_seconds)} training, "
            f"{_duration(time.perf_counter() - started)} in all",
        ),
    ]
    if _last_loss(totals) is not None:
        rows.append(("loss", _loss_row(totals)))
    if last_eval:
        rows.append(
            (
                "validation",
                f"loss {last_eval['val_loss']:.4f}, perplexity {perplexity(last_eval['perplexity'])}, "
                f"accuracy {100 * last_eval['accuracy']:.1f}% (step {last_eval['step']})",
            )
        )
    if trainer.test_result:
        test = trainer.test_result
        rows.append(
            (
                "test",
                f"loss {test['loss']:.4f}, perplexity {perplexity(test['perplexity'])}, "
                f"accuracy {100 * test['accuracy']:.1f}% (step {test['step']})",
            )
        )
    if rates:
        left_out = len(trainer.session) - rates["steady_steps"]
        gpus = rates.get("processes")
        each = f"per {trainer.worker}"
        per_gpu = f" ({human(rates['tokens_per_second_per_gpu'])} {each} x {gpus})" if gpus else ""
        tflops = f" ({rates['tflops_per_gpu']:.3g} {each})" if gpus else ""
        rows += [
            (
                "throughput",
                f"{human(rates['tokens_per_second'])} tokens/s{per_gpu} over "
                f"{rates['steady_steps']} steps"
                + (f" (the first {left_out}, with any compilation, left out)" if left_out else ""),
            ),
            (
                "compute",
                f"{rates['tflops']:.3g} TFLOP/s{tflops}, "
                f"MFU {percent(rates['mfu'], trainer.peak_note)}",
            ),
            ("data wait", f"{rates['data_wait_percent']:.2f}% of step time"),
        ]
    rows.append(("peak memory", f"{memory[0]:.2f} GB ({memory[1]})"))
    if final is not None:
        rows.append(("final model", str(final)))
    if trainer.last_checkpoint is not None:
        rows.append(("checkpoint", str(trainer.last_checkpoint)))
    rows += [("export", str(path)) for path in exports]
    if left:
        rows.append(("earlier run", f"{', '.join(map(str, left))}: not this run's"))
    rows.append(("metrics", str(paths.metrics)))
    display.table("summary", rows, level="error")  # the run's result, at every log level


def _last_loss(totals) -> float | None:
    """The loss of the run's last step as it came: NaN, infinite, or a diverging step's. A run
    resumed at its end has run no step here: then the checkpoint's last finite loss."""
    return totals.last_loss if totals.step_loss is None else totals.step_loss


def _loss_row(totals) -> str:
    """first -> last (best); a last step whose loss is not finite is shown as it was, with the
    last finite loss beside it, never passed off as the last."""
    last = _last_loss(totals)
    if math.isfinite(last):
        return f"first {totals.first_loss:.4f} -> last {last:.4f} (best {totals.best_loss:.4f})"
    if totals.last_loss is None:
        return f"last {last} (no step had a finite loss)"
    return (
        f"first {totals.first_loss:.4f} -> last {last} ({totals.nan_steps} non-finite steps; "
        f"last finite {totals.last_loss:.4f}, best {totals.best_loss:.4f})"
    )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"
