"""The one summary of a dataset that the CLI prints, the TUI draws and the worker logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .conversation import ProblemLog


@dataclass
class DataReport:
    paths: list[str]
    format: str = "unknown"
    confidence: float = 0.0
    reason: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    tokenizer: str | None = None
    line_kind: str = "line"
    rows: int = 0  # rows read
    rows_ok: int = 0  # rows that will be trained on
    examples: int | None = None  # training rows made from them (more than rows_ok with multi_turn: expand)
    roles: dict[str, str] = field(default_factory=dict)  # role -> where its text comes from after the mapping
    template_notes: list[str] = field(default_factory=list)  # what the chat template cannot show, and what we do
    train_rows: int | None = None
    eval_rows: int | None = None
    problems: ProblemLog = field(default_factory=ProblemLog)
    stats: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0

    @property
    def rows_bad(self) -> int:
        return self.rows - self.rows_ok

    @property
    def unreadable(self) -> int:
        """Lines the loader could not parse: never among ``rows``, but read and left out all the same."""
        return self.problems.counts.get("bad_json", 0)

    @property
    def read(self) -> int:
        """Rows and unreadable lines: what a person counts in the file."""
        return self.rows + self.unreadable

    @property
    def left_out(self) -> int:
        """Everything read that will not be trained on, unreadable lines included."""
        return self.rows_bad + self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {
            "paths": self.paths, "format": self.format, "confidence": round(self.confidence, 3),
            "reason": self.reason, "columns": self.columns, "template": self.template,
            "tokenizer": self.tokenizer, "line_kind": self.line_kind, "rows": self.rows,
            "rows_ok": self.rows_ok, "rows_bad": self.rows_bad, "read": self.read, "left_out": self.left_out, "examples": self.examples, "roles": self.roles,
            "template_notes": self.template_notes, "train_rows": self.train_rows,
            "eval_rows": self.eval_rows, "problems": self.problems.to_dict(), "stats": self.stats,
            "samples": self.samples, "warnings": self.warnings, "from_cache": self.from_cache,
            "seconds": round(self.seconds, 3),
        }
