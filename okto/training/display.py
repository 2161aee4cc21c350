"""What the user sees while a run trains: the plan, a live progress bar, log lines, a summary.

Everything goes through one `rich` console. The progress bar (loss, learning
rate, tokens/s, ETA) only draws on a terminal; the log lines every
`logging_steps` and the tables are printed either way, so logs and CI output
keep them. Off a terminal (a CI log, `| tee`, a file) a line of text is never
broken at the console's width: each stays one line to read and grep.
LOGGING.log_level `warning` leaves only warnings and the summary on the
console, `error` only the summary (the run's log file keeps every line);
`debug` adds detail, as `--verbose` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

LEVELS = ("debug", "info", "warning", "error")


class Display:
    def __init__(
        self,
        console: Console | None,
        verbose: bool,
        show_tflops: bool,
        level: str = "info",
        show_memory: bool = False,
    ):
        self.console = console or Console()
        self.verbose, self.show_tflops = verbose or level == "debug", show_tflops
        self.show_memory = show_memory or self.verbose
        self.level = LEVELS.index(level)
        self._progress: Progress | None = None
        self._task = None
        self._log: Console | None = None

    def keep_log(self, path: Path, append: bool) -> None:
        """Copy everything printed from now on, as plain text, to `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        self._log = Console(file=handle, width=120, color_system=None, soft_wrap=True)

    def print(self, *items, markup: bool = True, level: str = "info") -> None:
        """Tables, and okto's own lines with rich markup; on the console only at or above
        LOGGING.log_level. Lines of text are wrapped by a terminal only, never in a file."""
        if LEVELS.index(level) >= self.level:
            whole = not self.console.is_terminal and all(isinstance(i, str) for i in items)
            with _whole_width(self.console, items):
                self.console.print(*items, highlight=False, markup=markup, soft_wrap=whole)
        if self._log is not None:
            with _whole_width(self._log, items):
                self._log.print(*items, highlight=False, markup=markup)

    def text(self, line: str, level: str = "info") -> None:
        """A line as it is: brackets in messages, paths and source lines are not markup."""
        self.print(line, markup=False, level=level)

    def note(self, text: str) -> None:
        self.print(f"[dim]{escape(text)}[/dim]")

    def warn(self, text: str) -> None:
        self.print(f"[yellow]warning:[/yellow] {escape(text)}", level="warning")

    def table(self, title: str, rows: list[tuple[str, ...]], level: str = "info") -> None:
        table = Table(title=title, show_header=False, title_justify="left", box=None)
        for index in range(len(rows[0]) if rows else 0):
            table.add_column(style="bold" if index == 0 else ("dim" if index == 2 else None))
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        self.print(table, level=level)

    @contextmanager
    def working(self, what: str) -> Iterator[Callable[[str], None]]:
        """A spinner naming long work, its current stage and the time so far, on a terminal
        only (the line that reports the work says what it took). Yields the stage setter."""
        spinner = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.console.is_terminal or self.level > LEVELS.index("info"),
            transient=True,
        )
        task = spinner.add_task(what, total=None)
        with spinner:
            yield lambda stage: spinner.update(task, description=f"{what}: {stage}")

    def start(self, total: int, done: int) -> None:
        self._progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal or self.level > LEVELS.index("info"),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=total, completed=done, loss="-", lr="-", speed="-"
        )

    def advance(self, step: int, total: int, loss: float, lr: float, tokens_per_s: float) -> None:
        self._progress.update(
            self._task,
            completed=step,
            total=total,
            loss=f"{loss:.4f}",
            lr=f"{lr:.2e}",
            speed=human(tokens_per_s),
        )

    def step_line(self, record: dict, total: int) -> None:
        parts = [
            f"step {record['step']:>{len(str(total))}}/{total}",
            f"loss {record['loss']:.4f}",
            f"lr {record['lr']:.2e}",
            f"grad {record['grad_norm']:.3g}",
            f"{record['examples_per_second']:.1f} ex/s",
            f"{human(record['tokens_per_second'])} tok/s",
        ]
        # Several processes: the job's figure, then each process's (a GPU's) share.
        per_gpu = "tokens_per_second_per_gpu" in record
        if per_gpu:
            parts[-1] += f" ({human(record['tokens_per_second_per_gpu'])}/{record['worker']})"
        if self.show_tflops:
            tflops = f" ({record['tflops_per_gpu']:.3g}/{record['worker']})" if per_gpu else ""
            parts.append(f"{record['tflops']:.3g} TFLOP/s{tflops}")
            parts.append(f"MFU {percent(record.get('mfu'), record['mfu_note'])}")
        if self.verbose:
            parts.append(f"epoch {record['epoch']:.2f}")
            parts.append(f"step {record['step_ms']:.0f} ms")
            parts.append(f"data wait {record['data_wait_percent']:.1f}%")
        if self.show_memory and record.get("memory_gb") is not None:
            parts.append(f"mem {record['memory_gb']:.2f} GB")
        self.print("  ".join(parts))

    def close(self) -> None:
        """Stop the progress bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close_log(self) -> None:
        if self._log is not None:
            self._log.file.close()
            self._log = None


@contextmanager
def _whole_width(console: Console, items) -> Iterator[None]:
    """Off a terminal, tables at their full width: a CI log or train.log got the plan's and
    the summary's rows broken at 80 (or 120) columns, a setting's name cut in two. (Console.print
    takes no width above the console's own, so the console's is widened while it prints.)"""
    if console.is_terminal:
        yield
        return
    unbounded = console.options.update_width(1_000_000)
    widths = [
        console.measure(i, options=unbounded).maximum for i in items if not isinstance(i, str)
    ]
    width = console.width
    console.width = max([width, *widths])
    try:
        yield
    finally:
        console.width = width


def human(number: float) -> str:
    """1234567 -> 1.23M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= size:
            return f"{number / size:.3g}{unit}"
    return f"{number:.3g}"


def percent(value: float | None, note: str) -> str:
    return f"{100 * value:.1f}%" if value is not None else note


def perplexity(value: float) -> str:
    """Two decimals, or three significant digits past a million: exp(loss) of a run that blew
    up has up to 305 digits (exp(700), where it is capped)."""
    return f"{value:.2f}" if value < 1e6 else f"{value:.3g}"
