"""`okto train`: train what a `.okt` file describes.

Exit codes: 0 trained (also when a CONTROL rule or early stopping ended the
run), 2 invalid file, arguments or data, 3 training failed (NaN or divergent
loss; a checkpoint was saved), 4 the machine lacks what the file asks for,
130 / 143 stopped by Ctrl-C / SIGTERM (a checkpoint was saved; `--resume
auto` continues).
"""

from __future__ import annotations


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
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps (replaces epochs)")
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
    p.set_defaults(run=run)


def run(args) -> int:
    from okto.training import train

    train(
        args.file,
        max_steps=args.max_steps,
        overrides=args.set,
        resume=args.resume,
        verbose=args.verbose,
        show_tflops=args.show_tflops,
    )
    return 0
