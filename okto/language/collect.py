"""What resolution records as it walks a syntax tree: where each value came
from (by its path in the config) and the diagnostics found on the way."""

from __future__ import annotations

from dataclasses import dataclass, field

from okto.language.diagnostics import Diagnostic, Severity, Source, Span

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Location:
    source: Source
    span: Span


@dataclass
class Collector:
    source: Source
    locations: dict[Path, Location] = field(default_factory=dict)
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)

    def locate(self, path: Path, span: Span) -> None:
        self.locations[path] = Location(self.source, span)

    def report(self, severity: Severity, span: Span, message: str, hint: str | None = None):
        diagnostic = Diagnostic(severity, message, self.source, span, hint)
        (self.errors if severity == "error" else self.warnings).append(diagnostic)

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.report("error", span, message, hint)

    def warn(self, span: Span, message: str, hint: str | None = None) -> None:
        self.report("warning", span, message, hint)
