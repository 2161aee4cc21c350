"""The `.okt` grammar, shipped as package data of `okto.grammar`."""

from pathlib import Path

GRAMMAR_PATH = Path(__file__).with_name("oktoscript.lark")
