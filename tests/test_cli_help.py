"""Every command's --help reads as written English: values named by a metavar its help
text uses, not argparse's upper-cased flag names."""

from __future__ import annotations

import argparse

import pytest

from okto.cli import COMMANDS, build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: subparsers.choices[name] for name in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_value_is_named_in_words_and_explained(command):
    """`okto train --help` showed `--max-steps MAX_STEPS` beside "stop after N"; infer showed
    `--max-tokens MAX_TOKENS`, `--batch-size BATCH_SIZE`, and `--top-p TOP_P` with no help."""
    takes_value = [
        action
        for action in _commands()[command]._actions
        if action.nargs != 0 and not action.choices and action.dest != "help"
    ]
    shown = {action.metavar or action.dest.upper(): action.help for action in takes_value}
    assert [name for name in shown if "_" in name] == []
    assert [name for name, words in shown.items() if not words] == []


def test_max_steps_is_the_n_its_help_names():
    (action,) = [a for a in _commands()["train"]._actions if a.dest == "max_steps"]
    assert action.metavar == "N" and "after N " in action.help


def test_export_help_lists_its_three_outputs():
    """It read "to an .okm file a Hugging Face directory": an "or" was missing."""
    description = " ".join(_commands()["export"].description.split())
    assert "to an .okm file, a Hugging Face directory or one safetensors file" in description
