"""The exceptions okto raises for bad input, and the exit codes they map to.

Exit codes (spec section 6): 0 success, 1 other failure, 2 invalid `.okt` or
arguments, 3 training or inference failed, 4 the machine lacks what the file
asks for, 141 stdout closed by its reader (`okto infer ... | head`).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2
EXIT_RUN_FAILED = 3
EXIT_MACHINE = 4
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader left


class OktoError(Exception):
    """Base of every error okto reports to a user without a traceback."""

    exit_code = EXIT_FAILURE

    def render(self) -> str:
        """The message as the CLI prints it."""
        return str(self)


class UsageError(OktoError):
    """Bad command-line arguments or a missing input file."""

    exit_code = EXIT_INVALID


class RunError(OktoError):
    """Training or inference failed."""

    exit_code = EXIT_RUN_FAILED


class MachineError(OktoError):
    """The machine lacks what was asked for (a GPU, memory)."""

    exit_code = EXIT_MACHINE


class MissingFileError(UsageError):
    """A file named on the command line or given to `okto.load` cannot be read."""
