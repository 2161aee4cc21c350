"""Library calls leave the process as they found it.

A training run changes process-wide state while it runs: the hub libraries' offline
switches (`HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE` for ENV network "offline"), TF32 and
cuDNN autotuning on a GPU, the Ctrl-C and SIGTERM handlers, and the random generators it
seeds with TRAIN.seed (Python's, NumPy's, torch's). The `okto` command exits
after one run; a notebook or a script goes on, and its next `okto.train` (of a file that
may download) or its own fp32 matmuls would inherit them. `okto.train` is therefore
`training.run.train` inside `kept_process_state`, which puts them back on return and on
raise alike.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from okto.training.run import train as run_training

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def kept_process_state() -> Iterator[None]:
    """Environment variables, working directory, signal handlers, the root logger's
    handlers and level, torch's process-wide switches and the random generators' states
    as they were on entry."""
    environ = dict(os.environ)
    cwd = os.getcwd()
    handlers = {number: signal.getsignal(number) for number in SIGNALS}
    root = list(logging.root.handlers), logging.root.level
    switches = _torch_switches()
    generators = _random_states()
    try:
        yield
    finally:
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)
        if os.getcwd() != cwd:
            os.chdir(cwd)
        for number, handler in handlers.items():
            # None: a handler not set from Python, which Python cannot set back.
            if handler is not None and signal.getsignal(number) != handler:
                signal.signal(number, handler)
        logging.root.handlers[:] = root[0]
        logging.root.setLevel(root[1])
        _set_torch_switches(switches)
        _set_random_states(generators)


@functools.wraps(run_training)
def train(*args: Any, **kwargs: Any):
    with kept_process_state():
        return run_training(*args, **kwargs)


def _torch_switches() -> dict[str, Any]:
    import torch

    return {
        "tf32_matmul": _tf32_switch(torch.backends.cuda.matmul),
        "tf32_cudnn": _tf32_switch(torch.backends.cudnn),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "default_dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
    }


def _set_torch_switches(switches: dict[str, Any]) -> None:
    import torch

    for backend, (name, value) in (
        (torch.backends.cuda.matmul, switches["tf32_matmul"]),
        (torch.backends.cudnn, switches["tf32_cudnn"]),
    ):
        setattr(backend, name, value)
    torch.backends.cudnn.benchmark = switches["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = switches["cudnn_deterministic"]
    torch.set_default_dtype(switches["default_dtype"])
    torch.set_num_threads(switches["threads"])


def _tf32_switch(backend) -> tuple[str, Any]:
    """A backend's TF32 switch as (attribute, value), read through the API the caller set it
    with: once `fp32_precision` (PyTorch's newer API) turned TF32 on, reading `allow_tf32`
    raises, and setting it back through the other API would leave the caller a mix."""
    try:
        return "allow_tf32", backend.allow_tf32
    except RuntimeError:
        return "fp32_precision", backend.fp32_precision


def _random_states() -> dict[str, Any]:
    """The generators a run seeds. CUDA's are taken only once CUDA is initialized: before,
    the caller has drawn nothing from them, and reading them would initialize CUDA."""
    import random

    import numpy as np
    import torch

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def _set_random_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state_all(states["cuda"])
