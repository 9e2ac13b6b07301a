"""Errors a person can act on, and the translation of library exceptions into them.

The CLI prints a UserError as "error: message / hint" with no traceback; the worker writes it as an
``error`` event; the TUI shows it in a panel. One classifier serves all three so the hints agree.
"""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """Something the user can fix: bad input, missing file, unsupported choice."""

    def __init__(self, message: str, hint: str = "", kind: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


@dataclass
class Explained:
    kind: str
    message: str
    hint: str


def explain(exc: BaseException) -> Explained:
    """Turn any exception into (kind, message, hint) for people; unknown ones keep their text."""
    from sft_tui.core.config import ConfigError  # local: config imports nothing from here

    if isinstance(exc, UserError):
        return Explained(exc.kind, exc.message, exc.hint)
    if isinstance(exc, ConfigError):
        return Explained("config", str(exc), "fix the fields above; `sft-tui config validate FILE` checks a file")
    text = str(exc) or exc.__class__.__name__
    low = text.lower()
    name = exc.__class__.__name__
    if "out of memory" in low or name == "OutOfMemoryError":
        return Explained(
            "oom",
            "The GPU ran out of memory.",
            "lower training.batch_size or data.max_length, turn on training.gradient_checkpointing, "
            "or use method.type: qlora",
        )
    if isinstance(exc, FileNotFoundError):
        path = getattr(exc, "filename", None) or text
        return Explained("missing_file", f"File not found: {path}", "check the path in your config")
    if "nan" in low and "loss" in low:
        return Explained("nan_loss", text, "lower training.learning_rate (try 10× smaller) or use precision: fp32")
    if name in ("OSError", "HFValidationError", "RepositoryNotFoundError", "LocalEntryNotFoundError") and (
        "does not appear to have" in low or "is not a local folder" in low or "offline" in low or "repository" in low
    ):
        return Explained(
            "model_not_found",
            text.splitlines()[0],
            "give a local model folder, 'demo', or a hub id while online (see `sft-tui models`)",
        )
    if isinstance(exc, KeyboardInterrupt):
        return Explained("interrupted", "Interrupted.", "")
    return Explained("internal", f"{name}: {text.splitlines()[0] if text else ''}",
                     "see worker.log in the run directory for details")


class NanLossError(RuntimeError):
    """Raised by the training callback when the loss stops being a number."""
