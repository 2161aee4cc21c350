"""`okto train --gpus N`: start the job's processes through torchrun and say how it ended.

The launcher is torch's own, the code behind `torchrun` (torch.distributed.run),
run in this process: one node, a `--standalone` rendezvous on a free local port,
N processes each running `python -m okto train` with this command's arguments.
Each of them finds its rank in the environment torchrun sets
(okto.training.distributed). torchrun watches them: when one fails it stops the
others (SIGTERM, then SIGKILL after its shutdown timeout, 30 s), and this
reports the process that failed first, with its message, and exits with its
exit code. Ctrl-C or SIGTERM reaches torchrun, which passes it on to every
process; they finish the step, save a checkpoint together and exit, and so does
this, with 130 or 143. Jobs across several machines are started with `torchrun`
itself on each (docs/distributed.md).
"""

from __future__ import annotations

import os
import signal
import sys

from okto.planner.settings import LAUNCHER


def processes_to_start(program) -> int:
    """How many processes this command must start: ENV.gpus (or --gpus) when more than one
    and no launcher started this process; else 0, and it trains here. The machine is
    checked here, once, before any process starts."""
    from okto.planner import build_plan

    processes = build_plan(program).settings["processes"]
    return processes.value if processes.value > 1 and processes.origin != LAUNCHER else 0


def torchrun(nproc: int, target: list[str], *, module: bool) -> int:
    """Run `target` (a module's name and its arguments with `module`, else a script's path
    and its arguments) in `nproc` processes on this machine; the job's exit code."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # What torchrun sets for several processes, without its banner saying so.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc)]
    argv += ["--module", *target] if module else target
    try:
        run.run(run.parse_args(argv))
    except ChildFailedError as failed:
        rank, code, message = first_failure(failed.failures)
        print(
            f"okto: rank {rank} of {nproc} stopped the job (exit {code}): {message}",
            file=sys.stderr,
        )
        return code
    except SignalException as stopped:  # passed on to the processes, which saved and stopped
        return 128 + int(stopped.sigval)
    return 0


def first_failure(failures: dict) -> tuple[int, int, str]:
    """(rank, exit code, message) of the process that failed first: the job's cause. The
    others fail after it, as their collectives lose a peer (their error files say so) or
    torchrun stops them (SIGTERM); they count only when no process failed on its own."""

    def order(rank: int) -> tuple[bool, float]:
        failure = failures[rank]
        extra = written(failure).get("extraInfo", {})
        stopped = extra.get("okto_peer_lost", False) or failure.exitcode == -signal.SIGTERM
        return stopped, float(extra.get("okto_time", failure.timestamp))

    rank = min(failures, key=order)
    failure = failures[rank]
    if failure.exitcode < 0:
        name = signal.Signals(-failure.exitcode).name
        return rank, 128 - failure.exitcode, f"killed by {name}"
    return rank, failure.exitcode, written(failure).get("message") or "its output above says why"


def written(failure) -> dict:
    """What an okto process wrote to its error file (okto.training.distributed.record_failure);
    {} for one that wrote none (torchrun's placeholder then is the message "<NONE>")."""
    message = failure.error_file_data.get("message")
    return message if isinstance(message, dict) else {}
