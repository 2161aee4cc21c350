"""The training loop.

One optimizer step: `gradient_accumulation` micro-batches forward and
backward under autocast (bf16, or fp16 with a gradient scaler), the gradient
norm taken (and clipped when TRAIN.gradient_clip is set), then the update,
unless the loss or the norm is NaN or infinite (STABILITY).

With a fused Adam or AdamW (and no fp16 scaler) the loop looks one step ahead:
the device itself skips a non-finite update, and the next step's forward and
backward are queued before this step's loss and norm are read, so the GPU
never idles while the host logs, fires rules or launches the next step. What
follows a step still sees the state right after it (the next step's update is
queued only afterwards); a checkpoint records the random generators as they
were before the queued passes, and a rule that changes the batch size or the
accumulation has them computed again. Other optimizers read the loss and the
norm before the update, and the host decides (one synchronisation a step).

After the step, in this order: CONTROL's
`on_step_end` rules, the log line, epoch ends (`on_epoch_end`, and evaluation
and checkpoint when they go by epochs), evaluation every `eval_steps`
(`on_eval`, early stopping, `on_plateau`), and a checkpoint every
`save_steps`. A checkpoint is written last, so it holds the state the next
step starts from, and resuming from it reproduces the uninterrupted run. A stop
signal abandons an evaluation at its next batch; the checkpoint then taken
records the events from that evaluation on as due, and the resumed run does
them before its first step.

Epochs are turned into a step count at the start: ceil(epochs x rows /
(batch_size x gradient_accumulation x processes)).

In a job of several processes (okto.training.distributed) each process runs
this loop on its slice of every batch; the loss is averaged over them, the
throughput counts the whole job's tokens, and only rank 0 shows and writes
what the run reports.
"""

from __future__ import annotations

import contextlib
import functools
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from okto.errors import OktoError, UsageError
from okto.language.diagnostics import counted
from okto.training import checkpoint as ckpt
from okto.training import distributed_checkpoint as dckpt
from okto.training.batches import Batch, Batches, ExampleStream
from okto.training.control import Controller, metric_names
from okto.training.display import perplexity
from okto.training.distributed import Parallel
from okto.training.evaluation import IGNORE_INDEX, batch_sums
from okto.training.flops import FlopsModel
from okto.training.optim import current_lr, folds_clipping, reschedule, set_lr
from okto.training.signals import StopSignals
from okto.training.stability import LossGuard, Plateau


class EvaluationAbandoned(Exception):
    """A stop signal came while an evaluation ran: it is given up at the next batch."""

    def __init__(self, signal: int):
        super().__init__(signal)
        self.signal = signal


DEFAULT_PATIENCE = 3
SCHEDULE_FIELDS = ("scheduler", "warmup_steps", "num_cycles", "power")
# Steps left out of the summary's throughput: compilation and CUDA-graph capture happen there.
WARMUP_STEPS = 3
# CONTROL metrics each process measures for itself: rules on them read rank 0's values.
PER_PROCESS_METRICS = ("tokens_per_second", "gpu_memory", "gpu_usage", "gpu_temperature")


@dataclass
class Live:
    """TRAIN values CONTROL may change while the run goes (the learning rate lives in the optimizer)."""

    batch_size: int
    gradient_accumulation: int
    weight_decay: float
    gradient_clip: float | None
    logging_steps: int
    eval_steps: int | None
    save_steps: int | None


@dataclass
class Window:
    """Sums since the last log line. The loss and the norm are averaged over the steps whose
    loss was finite; the rates and the step time over every step."""

    steps: int = 0
    finite: int = 0
    loss: float = 0.0
    grad_norm: float = 0.0
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    wait: float = 0.0


@dataclass
class Totals:
    """Sums over the run (kept across resumes) and over this session's steady state."""

    tokens: int = 0
    examples: int = 0
    first_loss: float | None = None
    best_loss: float = math.inf
    last_loss: float | None = None  # the last finite step loss: what CONTROL's `loss` reads
    # The latest step's loss as it came: NaN or infinite, or a diverging step's, which
    # STABILITY keeps out of `last_loss`; what the summary reports as the last loss.
    step_loss: float | None = None
    best_val: float | None = None
    last_eval: dict = field(default_factory=dict)
    nan_steps: int = 0
    evals: int = 0
    plateaus: int = 0


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    finite: bool
    examples: int
    tokens: int
    signal: int  # the largest stop signal any process had received when the step reduced its loss


@dataclass
class Gradients:
    """One step's forward and backward passes, queued: the loss (on the device), what the
    step took from the data, and the state a checkpoint taken before it must record (the
    random generators' states before it, when the loop looks ahead)."""

    loss: torch.Tensor
    examples: int
    tokens: int
    position: int  # the data position after the step's batches
    rng: dict | None
    shape: tuple[int, int]  # (batch_size, gradient_accumulation) it was computed with


class Values:
    """A step's (loss, gradient norm, signal) on the device and their copy to the host,
    started as soon as they are computed: `read` waits for that copy only."""

    def __init__(self, values: torch.Tensor):
        self.on_device = values
        if values.is_cuda:
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()
        else:
            self.host, self.copied = values, None

    def read(self) -> list[float]:
        if self.copied is not None:
            self.copied.synchronize()
        return self.host.tolist()


@dataclass
class Outcome:
    """How the run ended: completed, stopped, early_stopping, nan, diverged or interrupted."""

    reason: str
    message: str
    signal_exit_code: int | None = None


def _paused(method):
    """A Trainer method whose time is left out of the step times (`Trainer._pause`)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._pause():
            return method(self, *args, **kwargs)

    return run


class Trainer:
    def __init__(
        self,
        *,
        model,
        forward,
        optimizer,
        scheduler,
        scaler,
        settings,
        config,
        train_rows,
        val_rows,
        total_steps: int,
        live: Live,
        flops: FlopsModel,
        peak: tuple[float | None, str],
        display,
        metrics,
        checkpoints: Path,
        save_model,
        parallel: Parallel | None = None,
        test_rows=None,
        data_key: str = "",
        configured: dict | None = None,
    ):
        self.model, self.forward = model, forward
        self.parallel = parallel or Parallel(device=settings.device)
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.settings, self.config = settings, config
        self.device, self.seed = settings.device, settings.seed
        self.train_stream = ExampleStream(train_rows, self.seed, config.dataset.shuffle)
        self.val_stream = ExampleStream(val_rows, self.seed, shuffle=False) if val_rows else None
        self.test_stream = ExampleStream(test_rows, self.seed, shuffle=False) if test_rows else None
        self.test_result: dict = {}  # DATASET.test's figures, measured once at the end
        self.data_key = data_key  # the rows' cache key: what they were made of
        self.total, self.live = total_steps, live
        # The live values this run's file gives (not those --set gave): a checkpoint records
        # them, so that a resumed run can tell a value edited since from one CONTROL moved.
        self.configured = configured or {}
        # What shapes the learning-rate schedule besides its length.
        self.schedule = {name: getattr(config.train, name) for name in SCHEDULE_FIELDS}
        self.flops, (self.peak, self.peak_note) = flops, peak
        self.display, self.metrics = display, metrics
        self.checkpoints, self.save_model = checkpoints, save_model
        # save_steps checkpoints, as in the file (where it implies save_strategy: steps), also
        # when a CONTROL rule sets it, unless the file chose another save_strategy
        strategy = config.train.save_strategy
        self.saves_by_steps = strategy == "steps" or "save_strategy" not in (
            config.train.model_fields_set
        )
        self.trained = [p for p in model.parameters() if p.requires_grad]
        self.step, self.position = 0, 0
        self.totals, self.window = Totals(), Window()
        self.guard = LossGuard()
        patience = config.train.early_stopping
        self.early_stopping = patience is not None
        self.plateau = Plateau(patience or DEFAULT_PATIENCE, config.stability.min_improvement or 0)
        self.controller = Controller(config.control, self)
        read = metric_names(config.control)
        self.device_metrics = any(n.startswith("gpu_") for n in read)
        self.rank_zero_metrics = self.parallel.distributed and any(
            n in PER_PROCESS_METRICS for n in read
        )
        self.batches: Batches | None = None
        self.stop_reason: str | None = None
        self.finishing = False  # past the last step: the final evaluation and checkpoint
        self.evaluating = False
        # The events after a step's log line while they run ({"epochs_before", "epoch_ends"}):
        # a checkpoint taken when an evaluation is abandoned records them, and the resumed
        # run does them first.
        self.due: dict | None = None
        self.due_when_saved = False  # the last checkpoint recorded events still due
        self.signals: StopSignals | None = None
        self.checkpoint_wanted = False
        self.last_checkpoint: Path | None = None
        self.last_grad_norm: float | None = None
        self.last_rate: float | None = None  # tokens/s of the last logged window
        # This session's steps: (seconds, tokens, seconds waiting for data).
        self.session: list[tuple[float, int, float]] = []
        self.wall_seconds = 0.0
        # Look ahead where the optimizer can skip a non-finite update on the device: the
        # next step's passes are queued before this step's loss is read, so the device
        # never waits for the host between steps.
        self.looks_ahead = (
            queues_work(self.device)
            and scaler is None
            and folds_clipping(optimizer)
            and not self.parallel.sharded
        )
        self.ahead: Gradients | None = None  # the next step's gradients, while queued
        self._clock, self._carried, self._pauses = time.perf_counter(), 0.0, 0

    # ---- the loop ---------------------------------------------------------------

    def fit(self) -> Outcome:
        started = time.perf_counter()
        self.batches = Batches(
            self.train_stream,
            self.device,
            self.live.batch_size,
            self.position,
            copy_streams=self.settings.streams,
            rank=self.parallel.rank,
            world=self.parallel.world,
        )
        self.model.train()
        self.display.start(self.total, self.step)
        try:
            with StopSignals(self._on_signal) as signals:
                self.signals = signals
                outcome = self._run(signals)
        finally:
            self.display.close()
            self.batches.close()
            self.wall_seconds = time.perf_counter() - started
        return outcome

    def _run(self, signals: StopSignals) -> Outcome:
        self._clock = time.perf_counter()
        try:
            if self.due is not None:
                outcome = self._events_due()
                if outcome is not None:
                    return outcome
            while self.step < self.total and self.stop_reason is None:
                epochs_before = self.completed_epochs
                wait_before = self.batches.wait_seconds
                gradients = self.ahead or self._gradients()
                values = self._update(gradients, signals)
                # The next step's passes, queued while this step's values come back.
                self.ahead = (
                    self._gradients() if self.looks_ahead and self.step + 1 < self.total else None
                )
                result = self._result(gradients, values.read())
                self.step += 1
                self.position = gradients.position
                self._count(result, self._lap(), self.batches.wait_seconds - wait_before)
                outcome = self._handle(result, epochs_before, signals)
                if outcome is not None:
                    return outcome
                self._recompute_if_stale()
            return self._finish(signals)
        finally:
            if self.ahead is not None:  # computed for a step that will not run
                self.optimizer.zero_grad(set_to_none=True)
                self.ahead = None

    def _handle(self, result: StepResult, epochs_before: int, signals) -> Outcome | None:
        """What follows a step: STABILITY's checks, then the logs, rules, evaluation and
        checkpoints; an outcome when the run ends here."""
        self.totals.step_loss = result.loss
        if not result.finite:
            failed = self._nan_step(result)
            if failed is not None:
                return failed
        elif self.config.stability.stop_if_diverges and self.guard.diverged(result.loss):
            return self._fail(
                "diverged",
                f"the loss diverged at step {self.step} (its moving average rose above "
                f"1.5x its lowest; this step's loss is {result.loss:.4g})",
            )
        else:
            self._record(result)
        try:
            self._after_step(result, epochs_before)
        except EvaluationAbandoned as abandoned:
            return self._abandoned(abandoned.signal)
        # A signal stops the run after this step. Processes of a job agree on it through
        # the step's own reduction, so one arriving after that stops them after the next.
        received = result.signal if self.parallel.distributed else signals.received
        if received:
            self._checkpoint()
            return Outcome(
                "interrupted",
                f"interrupted at step {self.step}; resume with --resume auto",
                128 + received,
            )
        return None

    def _gradients(self) -> Gradients:
        """One step's forward and backward passes over its micro-batches, queued."""
        rng = ckpt.rng_state() if self.looks_ahead else None
        accumulation = self.live.gradient_accumulation
        if accumulation > 1 and self.settings.cuda_graphs:
            self._own_gradients()
        batches = [self.batches.next() for _ in range(accumulation)]
        loss_sum = torch.zeros((), device=self.device)
        examples = tokens = 0
        for index, (batch, weight) in enumerate(zip(batches, self._weights(batches), strict=True)):
            with self.parallel.micro_step(last=index == accumulation - 1):
                with self._autocast():
                    # no KV cache: transformers builds one by default, of no use to a loss
                    loss = self.forward(
                        input_ids=batch.input_ids, labels=batch.labels, use_cache=False
                    ).loss
                loss = loss.float() if weight is None else loss.float() * weight
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += loss.detach()
            examples += batch.input_ids.shape[0]
            tokens += batch.tokens
        shape = (self.live.batch_size, accumulation)
        return Gradients(loss_sum, examples, tokens, self.batches.position, rng, shape)

    def _update(self, gradients: Gradients, signals: StopSignals) -> Values:
        """The update from `gradients`, unless the loss or the gradient norm is NaN or
        infinite; the step's (loss, norm, signal). Looking ahead, the device itself skips
        such an update (the fused optimizer's `found_inf`) and nothing here waits for it;
        otherwise the values are read first and the host decides."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.live.gradient_clip
        # Under fp16 loss scaling GradScaler drives the optimizer's grad_scale itself.
        folding = self.optimizer if self.scaler is None else None
        norm = self.parallel.clip_grad_norm(self.trained, clip if clip else math.inf, folding)
        loss = self.parallel.mean(gradients.loss)  # the job's loss, the same in every process
        signal = self.parallel.largest(signals.received or 0)
        values = Values(torch.stack([loss, norm.float(), signal]))
        if self.looks_ahead:
            self.optimizer.found_inf = (~torch.isfinite(values.on_device[:2]).all()).float()
            self.optimizer.step()
            self.optimizer.found_inf = None
        elif self._finite(*values.read()[:2]):
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return values

    def _weights(self, batches: list[Batch]) -> list:
        """What each micro-batch's mean loss is multiplied by, so that the step's loss is the
        mean over the counted tokens of all its micro-batches in every process, as one batch
        of them all would give: its share of those tokens (x processes, whose gradients are
        averaged). One micro-batch in one process keeps its own mean (None)."""
        if len(batches) == 1 and self.parallel.world == 1:
            return [None]
        counted = [(batch.labels[:, 1:] != IGNORE_INDEX).sum() for batch in batches]
        total = self.parallel.sum(torch.stack(counted).sum().float())
        return [count * self.parallel.world / total for count in counted]

    def _own_gradients(self) -> None:
        """Give every trainable parameter a zero `.grad` of its own. Autograd keeps the first
        gradient it hands a parameter as its `.grad`; under CUDA graphs that tensor is the
        graph's output buffer, which the next micro-batch's replay overwrites before adding
        to it (torch's "accessing tensor output of CUDAGraphs that has been overwritten")."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)

    def _finite(self, loss: float, norm: float) -> bool:
        # Under fp16 loss scaling an infinite norm is an overflow the scaler handles.
        return math.isfinite(loss) and (self.scaler is not None or math.isfinite(norm))

    def _result(self, gradients: Gradients, values: list[float]) -> StepResult:
        loss, norm, received = values
        world = self.parallel.world
        return StepResult(
            loss,
            norm,
            self._finite(loss, norm),
            gradients.examples * world,
            gradients.tokens * world,
            int(received),
        )

    def _recompute_if_stale(self) -> None:
        """Compute the queued step's gradients again if CONTROL changed the batch size or
        the accumulation after they were queued: from the same data position and the
        same random state, so the step is the one the new values give."""
        ahead = self.ahead
        if ahead is None or ahead.shape == (self.live.batch_size, self.live.gradient_accumulation):
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.batches.rewind(self.position)
        ckpt.set_rng_state(ahead.rng)
        self.ahead = self._gradients()

    def _lap(self) -> float:
        """Seconds since the last step was counted, pauses (evaluation, checkpoints) left out."""
        now = time.perf_counter()
        seconds = self._carried + now - self._clock
        self._clock, self._carried = now, 0.0
        return seconds

    @contextlib.contextmanager
    def _pause(self):
        """Leave what runs inside (evaluation, checkpoints, saves) out of the step times.
        The device first finishes what is queued, which belongs to the next step."""
        self._pauses += 1
        if self._pauses == 1:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._carried += time.perf_counter() - self._clock
        try:
            yield
        finally:
            self._pauses -= 1
            if self._pauses == 0:
                self._clock = time.perf_counter()

    def _autocast(self):
        dtype = self.settings.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _count(self, result: StepResult, seconds: float, wait: float) -> None:
        for sums in (self.window, self.totals):
            sums.examples += result.examples
            sums.tokens += result.tokens
        self.window.seconds += seconds
        self.window.wait += wait
        self.session.append((seconds, result.tokens, wait))

    def _nan_step(self, result: StepResult) -> Outcome | None:
        self.totals.nan_steps += 1
        # null where not finite: which of the loss and the norm it was
        self.metrics.write(
            "nan", step=self.step, epoch=self.epoch, loss=result.loss, grad_norm=result.grad_norm
        )
        # on_nan rules read the bad step's own loss and norm, so a LOG shows which went bad
        bad = {"loss": result.loss, "grad_norm": result.grad_norm}
        self.controller.fire("on_nan", self.totals.nan_steps, {**self._metric_values(), **bad})
        if self.config.stability.stop_if_nan:
            return self._fail(
                "nan",
                f"the loss is NaN or infinite at step {self.step}; the update was not applied",
            )
        self.display.warn(f"step {self.step}: the loss is not finite; the update was skipped")
        return None

    def _record(self, result: StepResult) -> None:
        """A finite step's loss and norm, in the run's totals and the logging window."""
        loss, grad_norm = result.loss, result.grad_norm
        self.totals.last_loss = loss
        if self.totals.first_loss is None:
            self.totals.first_loss = loss
        self.totals.best_loss = min(self.totals.best_loss, loss)
        self.window.finite += 1
        self.window.loss += loss
        self.window.grad_norm += grad_norm
        self.last_grad_norm = grad_norm

    def _after_step(self, result: StepResult, epochs_before: int) -> None:
        """The events of every step that did not end the run, a skipped non-finite one
        included: it still counts, so the rules, logs, epoch ends, evaluations and
        checkpoints due at it happen."""
        self.window.steps += 1
        self.display.advance(
            self.step, self.total, result.loss, current_lr(self.optimizer), self._window_rate()
        )
        self.controller.fire("on_step_end", self.step, self._metric_values())
        if self.step % self.live.logging_steps == 0 or self.step == self.total:
            self._log_window()
        self._events(epochs_before)

    def _events(self, epochs_before: int, epoch_ends: bool = True) -> None:
        """What follows a step's log line: epoch ends, evaluation and checkpoint. While they
        run, `due` says which are left from the evaluation in progress on (`epoch_ends`:
        those of the epochs that ended at this step, which the step's `eval_steps`
        evaluation follows)."""
        self.due = {"epochs_before": epochs_before, "epoch_ends": epoch_ends}
        ended = range(epochs_before + 1, self.completed_epochs + 1) if epoch_ends else ()
        if ended and self.live.eval_steps is None:
            self._evaluate()  # once, first, so on_epoch_end rules see this val_loss
        for epoch in ended:  # more than one: tiny data
            self.controller.fire("on_epoch_end", epoch, {**self._metric_values(), "epoch": epoch})
            if self.config.train.save_strategy == "epoch":
                self.checkpoint_wanted = True
        self.due["epoch_ends"] = False
        if self.live.eval_steps is not None and self.step % self.live.eval_steps == 0:
            self._evaluate()
        self.due = None
        save_steps = self.live.save_steps
        if self.saves_by_steps and save_steps and self.step % save_steps == 0:
            self.checkpoint_wanted = True
        if self.checkpoint_wanted:
            self._checkpoint()

    def _events_due(self) -> Outcome | None:
        """On resuming from a checkpoint taken when an evaluation was abandoned: that
        evaluation and the events after it, as the uninterrupted run had them."""
        self.display.text(
            f"resume   step {self.step}: evaluating again (the run stopped during it)"
        )
        try:
            self._events(**self.due)
        except EvaluationAbandoned as abandoned:
            return self._abandoned(abandoned.signal)
        return None

    def _abandoned(self, received: int) -> Outcome:
        """A stop signal during an evaluation between steps: a checkpoint of the last step,
        which records the evaluation as still due."""
        path = self._checkpoint()
        return Outcome(
            "interrupted",
            f"interrupted during the evaluation at step {self.step}; {path.name} holds the "
            "step: --resume auto evaluates again and goes on",
            128 + received,
        )

    def _finish(self, signals: StopSignals) -> Outcome:
        """The final evaluation, the test split and the last checkpoint. A stop signal
        abandons the evaluation in progress (at its next batch) and ends the run as
        interrupted, with a checkpoint of the last step, from which --resume auto does what
        is left."""
        self.finishing = True
        try:
            if self.val_stream is not None and self.totals.last_eval.get("step") != self.step:
                self._evaluate()
            if self.test_stream is not None and self.test_result.get("step") != self.step:
                self._test()
            received = self._received(signals)
        except EvaluationAbandoned as abandoned:
            received = abandoned.signal
        if self.config.train.save_strategy != "no" or self.checkpoint_wanted or received:
            self._checkpoint()
        self._log_window()  # after the checkpoint, which keeps the window for a resumed run
        if received:
            return Outcome(
                "interrupted",
                f"interrupted after the last step ({self.step}), before the final model was "
                "saved; --resume auto finishes the run",
                128 + received,
            )
        if self.stop_reason == "early_stopping":
            return Outcome("early_stopping", f"early stopping at step {self.step}")
        if self.stop_reason is not None and self.step < self.total:  # at the end, none left
            return Outcome("stopped", f"stopped at step {self.step}: {self.stop_reason}")
        return Outcome("completed", f"finished {counted(self.step, 'step')}")

    def _fail(self, reason: str, message: str) -> Outcome:
        path = self._checkpoint()
        return Outcome(reason, f"{message}. Saved a checkpoint: {path}")

    def _received(self, signals: StopSignals) -> int:
        """The stop signal received so far (0: none); in a job, the largest any process
        received, so that every process stops at the same point."""
        if not self.parallel.distributed:
            return signals.received or 0
        return int(self.parallel.largest(signals.received or 0).item())

    def _on_signal(self, name: str) -> None:
        if self.evaluating:
            when = "now, leaving the evaluation (--resume auto does it again)"
        elif self.finishing:
            when = "before the final model is saved"
        else:
            when = "after this step"
        self.display.print(
            f"[yellow]{name}: stopping {when}, with a checkpoint "
            "(press Ctrl-C again to quit at once)[/yellow]"
        )

    # ---- epochs, evaluation, metrics ---------------------------------------------

    @property
    def epoch(self) -> float:
        return self.position / self.train_stream.rows

    @property
    def completed_epochs(self) -> int:
        return self.position // self.train_stream.rows

    @torch.no_grad()
    def _score(self, stream: ExampleStream) -> dict:
        """Loss, perplexity and next-token accuracy over every row of `stream`. Each process
        takes its `batch_size` of every `batch_size` x processes rows, all of them as many
        batches (one past the end counts nothing), since a sharded model's forward is a
        collective. A stop signal (in a job: any process's) abandons it before the next
        batch, raising `EvaluationAbandoned`."""
        batch_size = self.live.batch_size
        rank, world = self.parallel.rank, self.parallel.world
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss, correct, tokens
        self.model.eval()
        self.evaluating = True
        try:
            for start in range(
                rank * batch_size, stream.rows + rank * batch_size, batch_size * world
            ):
                received = self._received(self.signals) if self.signals is not None else 0
                if received:
                    raise EvaluationAbandoned(received)
                count = min(batch_size, stream.rows - start)
                batch = stream.host_batch(start if count > 0 else 0, max(count, 1), pin=False)
                labels = batch.labels if count > 0 else torch.full_like(batch.labels, -100)
                batch = Batch(batch.input_ids.to(self.device), labels.to(self.device))
                with self._autocast():
                    sums += batch_sums(self.model, batch.input_ids, batch.labels)
        finally:
            self.evaluating = False
            self.model.train()
        loss, correct, tokens = self.parallel.sum(sums).tolist()
        count = max(int(tokens), 1)
        return {
            "loss": loss / count,
            "perplexity": math.exp(min(loss / count, 700)),
            "accuracy": int(correct) / count,
        }

    @_paused
    def _test(self) -> None:
        """DATASET.test, scored once with the final weights (never used to steer training)."""
        score = self._score(self.test_stream)
        self.test_result = {"step": self.step, **score}
        self.metrics.write(
            "test",
            step=self.step,
            epoch=self.epoch,
            test_loss=score["loss"],
            perplexity=score["perplexity"],
            accuracy=score["accuracy"],
        )
        self.display.print(
            f"test   step {self.step}  test_loss {score['loss']:.4f}  "
            f"perplexity {perplexity(score['perplexity'])}  accuracy {100 * score['accuracy']:.1f}%"
        )

    @_paused
    def _evaluate(self) -> None:
        """Validation loss, perplexity and accuracy; the rules and early stopping that read
        them."""
        if self.val_stream is None:
            return
        score = self._score(self.val_stream)
        val_loss = score["loss"]
        self.totals.evals += 1
        self.totals.last_eval = {
            "step": self.step,
            "val_loss": val_loss,
            "perplexity": score["perplexity"],
            "accuracy": score["accuracy"],
        }
        if self.totals.best_val is None or val_loss < self.totals.best_val:
            self.totals.best_val = val_loss
        self.metrics.write("eval", epoch=self.epoch, **self.totals.last_eval)
        self.display.print(
            f"eval   step {self.step}  val_loss {val_loss:.4f}  "
            f"perplexity {perplexity(self.totals.last_eval['perplexity'])}  "
            f"accuracy {100 * self.totals.last_eval['accuracy']:.1f}%"
        )
        self.controller.fire("on_eval", self.totals.evals, self._metric_values())
        if self.plateau.update(val_loss):
            self.totals.plateaus += 1
            self.controller.fire("on_plateau", self.totals.plateaus, self._metric_values())
            if self.early_stopping and self.step < self.total:  # at the end nothing is left
                self.stop_reason = "early_stopping"
                self.display.print(
                    f"early stopping: no improvement in {self.plateau.patience} evaluations"
                )

    def _metric_values(self) -> dict:
        """The values CONTROL conditions read, by the names of `okto.language.control.METRICS`."""
        values = {
            "step": self.step,
            "epoch": self.completed_epochs,
            "loss": self.totals.last_loss,
            "lr": current_lr(self.optimizer),
            "learning_rate": current_lr(self.optimizer),
            "grad_norm": self.last_grad_norm,
            # A log line just emptied the window: the rate it logged (rules at on_eval and
            # on_epoch_end come after the step's log line).
            "tokens_per_second": self._window_rate() or self.last_rate,
        }
        last = self.totals.last_eval
        values["val_loss"] = last.get("val_loss")
        values["accuracy"] = last.get("accuracy")
        if "perplexity" in last:
            values["perplexity"] = last["perplexity"]
        elif self.val_stream is None and self.totals.last_loss is not None:
            # exp(loss) stands in only where no evaluation will ever come
            values["perplexity"] = math.exp(min(self.totals.last_loss, 700))
        if self.device_metrics and self.device.type == "cuda":
            values.update(_device_metrics(self.device))
        return self.parallel.agree(values) if self.rank_zero_metrics else values

    def _window_rate(self) -> float:
        return self.window.tokens / self.window.seconds if self.window.seconds else 0.0

    def _log_window(self) -> None:
        window = self.window
        if not window.steps:
            return
        finite = window.finite or math.nan  # every step of the window non-finite: nan (null)
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": window.loss / finite,
            "lr": current_lr(self.optimizer),
            "grad_norm": window.grad_norm / finite,
            "examples_per_second": window.examples / window.seconds,
            **self._rates(self._window_rate()),
            "step_ms": 1000 * window.seconds / window.steps,
            "data_wait_percent": 100 * window.wait / window.seconds,
            "memory_gb": _memory_gb(self.device),
        }
        self.last_rate = record["tokens_per_second"]
        self.metrics.write("step", **record)
        self.display.step_line(
            {**record, "mfu_note": self.peak_note, "worker": self.worker}, self.total
        )
        self.window = Window()

    def throughput(self) -> dict:
        """This session's rates, leaving out the first steps (compilation, graph capture)."""
        steps = (
            self.session[WARMUP_STEPS:] if len(self.session) > 2 * WARMUP_STEPS else self.session
        )
        seconds = sum(s for s, _, _ in steps)
        if not seconds:
            return {}
        return {
            "steady_steps": len(steps),
            **self._rates(sum(t for _, t, _ in steps) / seconds),
            "data_wait_percent": 100 * sum(w for _, _, w in steps) / seconds,
        }

    @property
    def worker(self) -> str:
        """What each process of a job runs on, to label its share of the figures."""
        return "GPU" if self.device.type == "cuda" else "process"

    def _rates(self, tokens_per_s: float) -> dict:
        """The whole job's tokens/s and TFLOP/s, and with several processes each GPU's
        share; MFU is the same either way (the job's rate over the job's GPUs' peak)."""
        world = self.parallel.world
        tflops = tokens_per_s * self.flops.per_token(self.train_stream.seq_len) / 1e12
        rates = {
            "tokens_per_second": tokens_per_s,
            "tflops": tflops,
            "mfu": tflops / (self.peak * world) if self.peak else None,
        }
        if world > 1:
            rates["processes"] = world
            rates["tokens_per_second_per_gpu"] = tokens_per_s / world
            rates["tflops_per_gpu"] = tflops / world
        return rates

    # ---- CONTROL actions (okto.training.control.Actions) ----------------------------

    def get(self, name: str) -> float:
        """A live value; unset ones read as what they mean: no clipping is an infinite
        threshold, no eval_steps or save_steps is 0."""
        if name == "learning_rate":
            return current_lr(self.optimizer)
        value = getattr(self.live, name)
        if value is None:
            return math.inf if name == "gradient_clip" else 0
        return value

    def set(self, name: str, value: float, by: str = "CONTROL") -> None:
        """Change a live TRAIN value from the next step on; `by` says who asked (CONTROL, or
        on resume the command line or the edited file; these may also unset one: None)."""
        before = self.get(name)
        if name == "learning_rate":
            set_lr(self.optimizer, self.scheduler, value)
        else:
            setattr(self.live, name, value)
        if name == "weight_decay":
            for group in self.optimizer.param_groups:
                if group["params"][0].ndim >= 2:
                    group["weight_decay"] = value
        if name == "batch_size" and self.batches is not None:
            self.batches.resize(int(value))
        self.metrics.write("set", step=self.step, field=name, before=before, after=value, by=by)
        self.display.text(f"{by:<8} step {self.step}: {name} {before:g} -> {self.get(name):g}")
        if name == "save_steps" and not self.saves_by_steps:
            self.display.warn(
                f"save_steps has no effect with save_strategy: {self.config.train.save_strategy}"
            )

    def log(self, text: str) -> None:
        self.metrics.write("log", step=self.step, message=text)
        self.display.text(f"LOG      step {self.step}: {text}")

    @_paused
    def save(self, target: str, label: str | None) -> None:
        if target == "checkpoint":
            self.checkpoint_wanted = True
            return
        path = self.save_model(label or f"step-{self.step:07d}")
        self.metrics.write("save", step=self.step, what="model", path=str(path))
        self.display.text(f"SAVE     step {self.step}: model -> {path}")

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    # ---- checkpoints --------------------------------------------------------------

    @_paused
    def _checkpoint(self) -> Path:
        self.checkpoint_wanted = False
        if (
            self.last_checkpoint is not None
            and self.last_checkpoint.name == f"step-{self.step:07d}"
            and (self.due is not None or not self.due_when_saved)
        ):
            return self.last_checkpoint
        states = {"scheduler": self.scheduler.state_dict()}
        # The next step's passes may be queued already: the generators as they were before.
        rng = self.ahead.rng if self.ahead is not None else None
        if self.scaler is not None:
            states["scaler"] = self.scaler.state_dict()
        try:
            if self.parallel.distributed:
                path = dckpt.save_checkpoint(
                    self.checkpoints,
                    self.step,
                    self.model,
                    self.optimizer,
                    states,
                    self.state_dict(),
                    self.parallel,
                    rng,
                )
            else:
                states["optimizer"] = self.optimizer.state_dict()
                path = ckpt.save_checkpoint(
                    self.checkpoints, self.step, self.model, states, self.state_dict(), rng
                )
        except OSError as error:  # a full disk, a folder gone: said, not a traceback
            try:
                earlier = ckpt.latest_checkpoint(self.checkpoints)
            except UsageError as damaged:  # a step-* folder spoilt by hand: say so, not mask
                before = f"and {damaged}"
            else:
                before = (
                    f"the earlier ones are whole: --resume auto continues from {earlier}"
                    if earlier
                    else "there is no earlier one"
                )
            raise OktoError(
                f"could not write the checkpoint of step {self.step} in {self.checkpoints} "
                f"({error.strerror or error}); {before}"
            ) from error
        self.last_checkpoint, self.due_when_saved = path, self.due is not None
        self.metrics.write("save", step=self.step, what="checkpoint", path=str(path))
        self.display.text(f"save     step {self.step}: checkpoint -> {path}")
        return path

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "position": self.position,
            "total_steps": self.total,
            "schedule": self.schedule,
            "rows": self.train_stream.rows,
            "data_key": self.data_key,
            "seed": self.seed,
            "optimizer": self.config.train.optimizer,
            "adapter_alpha": self._adapter_alpha(),
            "configured": self.configured,
            "live": asdict(self.live),
            "window": asdict(self.window),
            "totals": asdict(self.totals),
            "last_grad_norm": self.last_grad_norm,
            "guard": self.guard.state_dict(),
            "plateau": self.plateau.state_dict(),
            "controller": self.controller.state_dict(),
            "stop_reason": self.stop_reason,
            "world": self.parallel.world,
            "due": self.due,
            "test_result": self.test_result,
        }

    def restore(self, path: Path) -> dict:
        """Continue from a checkpoint; its trainer state (for the caller's messages).

        A checkpoint of several processes loads on any number of them (one included); one
        written by a single process loads where the parameters are whole (one process, or
        DDP's replicas). When the number of processes changed, each process's batch is
        resized to keep the global batch, and the random generators go on from the seed.
        """
        self._check_fits(path)
        if dckpt.is_distributed(path):
            states, state, rng = dckpt.load_checkpoint(
                path, self.model, self.optimizer, self.parallel
            )
        elif self.parallel.sharded:
            raise UsageError(
                f"{path} was written by a run in one process, whose checkpoints fsdp cannot "
                "shard: resume it in one process, or with strategy ddp"
            )
        else:
            weights, states, state = ckpt.read_checkpoint(path)
            ckpt.load_trainable(self.model, weights, path)
            self.optimizer.load_state_dict(states["optimizer"])
            rng = states["rng"] if self.parallel.world == 1 else {}
        self.scheduler.load_state_dict(states["scheduler"])
        if self.schedule_changed(state):
            reschedule(self.optimizer, self.scheduler)  # the rate of this run's schedule
        if self.scaler is not None and "scaler" in states:
            self.scaler.load_state_dict(states["scaler"])
        if rng:
            ckpt.set_rng_state(rng)
        self.step, self.position = state["step"], state["position"]
        self.live = Live(**state["live"])
        self._regroup(state.get("world", 1))
        # Checkpoints written before Window.finite counted only the finite steps as steps.
        self.window = Window(**{"finite": state["window"]["steps"], **state["window"]})
        self.totals = Totals(**state["totals"])
        self.last_grad_norm = state["last_grad_norm"]
        self.guard.load_state_dict(state["guard"])
        self.plateau.load_state_dict(state["plateau"])
        self.controller.load_state_dict(state["controller"])
        self.due = state.get("due")  # checkpoints from before abandoned evaluations: none
        if state.get("data_key") == self.data_key:  # the same test rows: scored already
            self.test_result = state.get("test_result", {})
        self.last_checkpoint, self.due_when_saved = path, self.due is not None
        return state

    def schedule_changed(self, state: dict) -> list[str]:
        """How this run's learning-rate schedule differs from that of the checkpoint whose
        trainer state is `state` (its step count, TRAIN's schedule fields), in words."""
        before = state.get("schedule", self.schedule)  # checkpoints from before it: the same
        changed = [
            f"TRAIN.{name} is {value} (it was {before[name]})"
            for name, value in self.schedule.items()
            if before[name] != value
        ]
        written_for = state.get("total_steps", self.total)
        if written_for != self.total:
            changed.insert(
                0,
                f"the checkpoint's run was planned for {written_for:,} steps, this one for "
                f"{self.total:,}",
            )
        return changed

    def _check_fits(self, path: Path) -> None:
        """Another optimizer's state does not fit this one (SGD stopped with a KeyError on
        Adam's; Adam took AdamW's decoupled weight decay with it), and an adapter trained
        under another alpha would have its update rescaled mid-run (another rank does not
        load at all): refused, before loading."""
        state = ckpt.read_trainer_state(path)
        written = state.get("optimizer")
        wanted = self.config.train.optimizer
        if written is not None and written != wanted:
            raise UsageError(
                f"{path} was written by a run with optimizer {written}, this one has {wanted}: "
                f"its state does not fit; resume with optimizer {written}, or start afresh "
                "without --resume"
            )
        written, wanted = state.get("adapter_alpha"), self._adapter_alpha()
        if written is not None and wanted is not None and written != wanted:
            raise UsageError(
                f"{path} trained its adapter with alpha {written:g}, this run has {wanted:g}: "
                f"the adapter's update would be rescaled {wanted / written:g}x mid-run; resume "
                f"with MODEL.adapter.alpha {written:g}, or start afresh without --resume"
            )

    def _adapter_alpha(self) -> float | None:
        adapter = self.config.model.adapter
        return None if adapter is None else float(adapter.alpha)

    def _regroup(self, written_by: int) -> None:
        """After a checkpoint of `written_by` processes, keep the global batch when the number
        of processes changed: through the accumulation where it divides (every micro-batch
        then holds the rows it held, and the steps compute what they would have), else
        through each process's batch."""
        world, live = self.parallel.world, self.live
        if written_by == world:
            return
        before = (live.batch_size, live.gradient_accumulation)
        micro_steps = live.gradient_accumulation * written_by  # micro-batches of a step, in all
        rows = live.batch_size * written_by  # rows of a micro-step, in all
        if micro_steps % world == 0:
            live.gradient_accumulation = micro_steps // world
        elif rows % world == 0:
            live.batch_size = rows // world
        what = (
            f"the checkpoint was written by {counted(written_by, 'process')}, this run has "
            f"{world}: "
            f"batch_size x gradient_accumulation {before[0]} x {before[1]} -> "
            f"{live.batch_size} x {live.gradient_accumulation} per process"
        )
        if live.batch_size * live.gradient_accumulation * world == rows * before[1]:
            self.display.note(
                f"{what} keeps the global batch of {rows * before[1]} sequences; the random "
                "generators start again from the seed"
            )
        else:
            self.display.warn(f"{what}: the global batch of {rows * before[1]} cannot be kept")


def queues_work(device: torch.device) -> bool:
    """Whether the host queues work for `device` and goes on (CUDA). Only then does looking
    ahead overlap anything; on the CPU, which runs each op as it is called, it would only
    move each step's passes into the time of the step before."""
    return device.type == "cuda"


def _memory_gb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 1e9
    return None


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GB, what was measured): the GPU's peak allocation, or the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9, "GPU, peak allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "process peak RSS"


def _device_metrics(device: torch.device) -> dict:
    values = {"gpu_memory": torch.cuda.mem_get_info(device)[0]}
    for name, read in (
        ("gpu_usage", torch.cuda.utilization),
        ("gpu_temperature", torch.cuda.temperature),
    ):
        with contextlib.suppress(Exception):  # needs NVML (pynvml); without it, absent
            values[name] = read(device)
    return values
