"""What README.md and docs/*.md promise a new user, checked against the code: links that
lead somewhere, flags that exist, and the values the examples' comments show."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch

import okto
from okto import kernels
from okto.cli import COMMANDS, build_parser
from okto.training.run import TrainResult

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _prose(path: Path) -> str:
    """The page without its code blocks, where `[x](y)` is code, not a link."""
    return re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", _prose(path), flags=re.MULTILINE)}


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no such heading")
    assert broken == []


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: sub.choices[name] for name in COMMANDS}


@pytest.mark.parametrize(
    "page", [*PAGES, *sorted((ROOT / "examples").glob("*.okt"))], ids=lambda p: p.name
)
def test_every_flag_an_okto_command_is_shown_with_exists(page):
    """`okto train -f FILE --max-steps 2 --set ...` in a page or an example's comment: each
    flag is one its command takes."""
    parsers = _subcommands()
    missing = []
    text = page.read_text(encoding="utf-8")
    for command, rest in re.findall(r"(?:^|`|\s)okto (\w+)((?: [^`\n#|]*)?)", text, re.M):
        if command in parsers:
            flags = {o for a in parsers[command]._actions for o in a.option_strings}
            shown = re.findall(r"(?<![\w-])--?[a-z][\w-]*", rest)
            missing += [f"okto {command} {flag}" for flag in shown if flag not in flags]
    assert missing == []


def test_the_readme_library_example_shows_what_load_returns():
    """`program.config.train.max_steps  # 200`, the source map's `FILE:LINE:COLUMN`."""
    readme = README.read_text(encoding="utf-8")
    code = re.search(
        r'```python\nimport okto\n\nprogram = okto.load\("(.*?)"\)\n(.*?)```', readme, re.DOTALL
    )
    path, lines = code.group(1), code.group(2)
    program = okto.load(ROOT / path)
    steps = re.search(r"max_steps  # (\d+)", lines).group(1)
    assert program.config.train.max_steps == int(steps)
    position = re.search(r'source_map\["train.max_steps"\]  # \S+?:(\d+:\d+)', lines).group(1)
    assert str(program.source_map["train.max_steps"]).endswith(f":{position}")


def test_the_kernel_error_the_readme_names_is_raised():
    """README said a *softmax* `scale` is refused; softmax takes none, attention does."""
    section = _section(README.read_text(encoding="utf-8"), "## Kernels")
    op = re.search(r"an? (\w+) `scale` that is not\s+positive and finite", section).group(1)
    assert "scale" in inspect.signature(getattr(kernels, op)).parameters
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(kernels.KernelError, match="scale"):
        kernels.attention(q, q, q, scale=-1.0)


def test_training_md_lists_every_field_of_train_result():
    page = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    listed = re.search(r"returns a `TrainResult` \((.*?)\)\.", page, re.DOTALL).group(1)
    documented = re.findall(r"`(\w+)`", listed)
    assert documented == [f.name for f in dataclasses.fields(TrainResult)]


@pytest.mark.parametrize(
    ("page", "name", "module"),
    [
        ("training.md", "TrainingFailed", "okto.training.run"),
        ("training.md", "TrainingInterrupted", "okto.training.run"),
        ("inference.md", "RunError", "okto.errors"),
        ("inference.md", "UsageError", "okto.errors"),
    ],
)
def test_the_docs_say_where_to_import_the_errors_they_name(page, name, module):
    """They named the errors to catch but not where they live (okto exports neither)."""
    import importlib

    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert f"`{name}`" in text and f"`{module}`" in text
    assert hasattr(importlib.import_module(module), name)


def test_the_step_schedule_drops_where_training_md_says():
    """training.md put the drops at half and three quarters of the steps; with a warmup
    they come at half and three quarters of the steps after it (60 and 80 of 20 + 80)."""
    from okto.training.optim import build_scheduler

    page = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "three quarters of the steps after the warmup" in " ".join(page.split())
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, "step", warmup_steps=20, total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [s for s in range(21, 100) if rates[s] < rates[s - 1]] == [60, 80]


def _trains_a_tokenizer_on_shipped_data(path: Path) -> bool:
    dataset = okto.load(path).config.dataset
    return dataset.tokenizer == "train" and not str(dataset.train).startswith("pkg:")


def _readme_okt() -> str:
    """The README's `.okt` example, whose data paths are examples/' own."""
    return re.search(r"```okt\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL).group(1)


def test_the_readme_okt_example_checks_without_a_warning():
    """Its `IF ... step > 100` rule never held in its 30-step run: okto check warned."""
    program = okto.parse(_readme_okt())
    assert [d.message for d in program.warnings if d.severity == "warning"] == []


@pytest.mark.parametrize(
    ("dataset", "base_dir"),
    [
        *(
            pytest.param(okto.load(p).config.dataset, p.parent, id=p.name)
            for p in sorted((ROOT / "examples").glob("*.okt"))
            if _trains_a_tokenizer_on_shipped_data(p)
        ),
        pytest.param(okto.parse(_readme_okt()).config.dataset, ROOT / "examples", id="README.md"),
    ],
)
def test_an_example_asks_for_a_vocabulary_its_data_can_fill(dataset, base_dir, tmp_path):
    """tiny-from-scratch asked for 1,024 tokens and cpu-smoke for 512 from 30 short stories,
    which hold 445: every run of them warned that the tokenizer came out smaller (and the
    README's example, on the same stories, still asked for 1,024)."""
    import warnings

    from okto.data import resolve_tokenizer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenizer = resolve_tokenizer(dataset, run_dir=tmp_path, base_dir=base_dir)
    assert len(tokenizer) == dataset.vocab_size, [str(w.message) for w in caught]
