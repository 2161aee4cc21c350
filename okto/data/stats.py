"""What the data pipeline read, kept, dropped and produced, for the run's report.

Plain dataclasses so the statistics travel as JSON: they are cached with the
tokenized data and written into the run's metrics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

BROKEN_LINE = "broken JSON line"
CUT_RECORD = "incomplete record at the cut"


@dataclass
class FileStats:
    path: str
    format: str
    fields: str = ""  # what field detection chose, in words
    type: str = ""
    records: int = 0  # records read, usable or not
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # unusable records by reason
    first_dropped: str = ""  # where the first unusable record is
    broken_lines: int = 0  # JSON lines skipped
    truncated: bool = False  # a JSON array cut off before its end
    cut_line: int | None = None  # where the cut is
    cut_chars: int = 0  # size of the incomplete record dropped at the cut

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.first_dropped = self.first_dropped or where


@dataclass
class SplitStats:
    records: int = 0  # records that went in
    examples: int = 0  # fixed-length rows that came out
    tokens: int = 0  # real tokens (padding excluded)
    trained_tokens: int = 0  # targets: labelled tokens past their row's first
    truncated: int = 0  # records cut at max_length (without packing)
    templated: int = 0  # records rendered through a chat template
    dropped: dict[str, int] = field(default_factory=dict)
    # records holding a special token's text (tokenized as ordinary text), by token
    special_text: dict[str, int] = field(default_factory=dict)

    @property
    def masked_fraction(self) -> float:
        """Share of real tokens whose label is -100 (prompts, user turns, templates)."""
        return 1.0 - self.trained_tokens / self.tokens if self.tokens else 0.0


@dataclass
class DataStats:
    files: list[FileStats] = field(default_factory=list)
    train: SplitStats = field(default_factory=SplitStats)
    validation: SplitStats | None = None
    test: SplitStats | None = None
    validation_from: str = ""  # "file", "split of the training data" or "none"
    mix: list[dict] = field(default_factory=list)  # per training source: paths, weight, records
    warnings: list[str] = field(default_factory=list)
    cache_key: str = ""
    cache_hit: bool = False
    cache_path: str = ""  # the entry's directory; empty when nothing is cached
    cache_bytes: int = 0  # the entry's size on disk
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def records_read(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def dropped(self) -> dict[str, int]:
        """Dropped records by reason, over all files and splits."""
        total: Counter[str] = Counter()
        for part in [*self.files, self.train, self.validation, self.test]:
            if part is not None:
                total.update(part.dropped)
        total[BROKEN_LINE] += sum(f.broken_lines for f in self.files)
        total[CUT_RECORD] += sum(1 for f in self.files if f.cut_chars)
        return {reason: count for reason, count in total.items() if count}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataStats:
        splits = {
            name: None if data[name] is None else SplitStats(**data[name])
            for name in ("train", "validation", "test")
        }
        files = [FileStats(**f) for f in data["files"]]
        return cls(**{**data, **splits, "files": files})
