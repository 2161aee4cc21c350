"""`okto train`: train what a `.okt` file describes.

Exit codes: 0 trained (also when a CONTROL rule or early stopping ended the
run), 2 invalid file, arguments or data, 3 training failed (NaN or divergent
loss; a checkpoint was saved), 4 the machine lacks what the file asks for,
130 / 143 stopped by Ctrl-C / SIGTERM (a checkpoint was saved; `--resume
auto` continues).

With `--gpus N` (or ENV.gpus) this command starts N processes through
torchrun, each running `okto train` with the same arguments, and exits with
the code of the process that failed first (docs/distributed.md). In a process
a launcher started, a failure is said with the process's rank and recorded for
torchrun; what every process meets alike (a NaN, a stop signal, rank 0 failing
to prepare the data) rank 0 alone says.
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the model a .okt file describes",
        description="Train the model a .okt file describes; outputs go to runs/<project>/.",
        epilog="exit codes: 0 trained, 2 invalid file, arguments or data, 3 training failed "
        "(NaN or divergence; a checkpoint was saved), 4 the machine lacks what the file asks "
        "for, 130/143 stopped by Ctrl-C/SIGTERM (a checkpoint was saved; --resume auto goes on)",
    )
    p.add_argument("-f", "--file", required=True, help="the .okt file")
    p.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop after N optimizer steps (replaces epochs)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="BLOCK.field=value",
        help="override a setting, e.g. TRAIN.batch_size=32 (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue from the run's latest checkpoint (auto), a checkpoint folder, "
        "or the latest checkpoint in a folder of them",
    )
    p.add_argument("--verbose", action="store_true", help="more detail in the log lines")
    p.add_argument(
        "--show-tflops", action="store_true", help="achieved TFLOP/s and MFU in every log line"
    )
    p.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="train in N processes, one per GPU, started through torchrun (sets ENV.gpus; "
        "with TRAIN.device cpu, N CPU processes over gloo)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from okto.errors import UsageError
    from okto.training.launch import processes_to_start, torchrun
    from okto.training.run import load_program

    for flag, value in (("--max-steps", args.max_steps), ("--gpus", args.gpus)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, not {value}")
    resume = args.resume
    if resume is not None and not resume.strip():  # Path("") is the working folder
        raise UsageError("--resume takes auto or a checkpoint folder, not an empty name")
    if resume is not None and resume.lower() != "auto":
        path = Path(resume).expanduser()
        if path.is_file():  # trainer.json, say: its folder is the checkpoint
            raise UsageError(
                f"--resume {resume}: a file; --resume takes its checkpoint folder ({path.parent})"
            )
        if not path.is_dir():
            raise UsageError(f"--resume {resume}: no such checkpoint folder")
    gpus = [f"ENV.gpus={args.gpus}"] if args.gpus is not None else []
    program = load_program(args.file, [*args.set, *gpus], args.max_steps)
    processes = processes_to_start(program)
    if processes:
        return torchrun(processes, ["okto", *_arguments(args)], module=True)
    return _train_here(program, args)


def _arguments(args) -> list[str]:
    """This command's arguments, for the processes it starts."""
    argv = ["train", "-f", args.file]
    if args.max_steps is not None:
        argv += ["--max-steps", str(args.max_steps)]
    for override in args.set:
        argv += ["--set", override]
    if args.resume is not None:
        argv += ["--resume", args.resume]
    argv += [
        flag
        for flag, on in (("--verbose", args.verbose), ("--show-tflops", args.show_tflops))
        if on
    ]
    if args.gpus is not None:
        argv += ["--gpus", str(args.gpus)]
    return argv


def _train_here(program, args) -> int:
    import contextlib

    from okto.errors import OktoError
    from okto.training import TrainingFailed, TrainingInterrupted, train
    from okto.training.distributed import (
        PeerFailed,
        peer_lost,
        ranks_from_environment,
        record_failure,
    )
    from okto.training.signals import Terminated, terminate_at_once

    ranks = ranks_from_environment()
    # One process: a SIGTERM before or after the loop ends it with a word and exit 143 (its
    # default kills it silently). Under torchrun, which stops a job's processes with
    # SIGTERM when one fails, the signal keeps its default there.
    stops = terminate_at_once() if ranks.world == 1 else contextlib.nullcontext()
    try:
        with stops:
            train(program, resume=args.resume, verbose=args.verbose, show_tflops=args.show_tflops)
    except BaseException as error:
        if isinstance(error, Terminated) and ranks.world == 1:
            print("terminated (SIGTERM)", file=sys.stderr)
            return Terminated.exit_code
        if ranks.world == 1:
            raise
        record_failure(error)
        if isinstance(error, (TrainingFailed, TrainingInterrupted, PeerFailed)):
            if ranks.is_main:
                raise  # every process ends so; rank 0 says it
            return error.exit_code
        if isinstance(error, OktoError):
            print(f"[rank {ranks.rank}] {error.render()}", file=sys.stderr)
            return error.exit_code
        if peer_lost(error):
            print(
                f"[rank {ranks.rank}] stopped: another process of the job failed", file=sys.stderr
            )
            return 1
        raise
    return 0
