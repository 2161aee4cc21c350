"""`okto --help`'s one-line summaries say what README's command table says each command does."""

import argparse

from okto.cli import build_parser


def _summaries() -> dict[str, str]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {action.dest: action.help for action in subparsers._choices_actions}


def test_export_summary_names_its_three_outputs():
    """It read "package a model as .okm, or write an .okm back as a Hugging Face directory":
    no word of a Hugging Face folder or run exported as one, nor of --format safetensors."""
    summary = _summaries()["export"]
    assert all(word in summary for word in (".okm", "Hugging Face directory", "weights alone"))
