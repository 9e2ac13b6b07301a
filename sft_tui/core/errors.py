"""Errors a person can act on, and the translation of library exceptions into them.

The CLI prints a UserError as "error: message / hint" with no traceback; the worker writes it as an
``error`` event; the TUI shows it in a panel. One classifier serves all three so the hints agree.
Hints name config keys (``data.skip_bad_rows: true``); the app shows them through
``sft_tui.core.hints.screen_hint``, which names the on-screen field instead.
"""

from __future__ import annotations

import errno
import re
import shutil
from dataclasses import dataclass
from pathlib import Path


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


LOW_DISK_BYTES = 64 * 2**20


def disk_full(exc: BaseException, disk: str | Path | None = None) -> bool:
    """ENOSPC, however the library reported it (torch and safetensors wrap it in RuntimeError)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    low = str(exc).lower()
    if "no space left" in low or "enospc" in low:
        return True
    if disk is not None and ("write failed" in low or "failed writing" in low or isinstance(exc, OSError)):
        try:
            return shutil.disk_usage(disk).free < LOW_DISK_BYTES
        except OSError:
            return False
    return False


WORKER_DETAILS = "see worker.log in the run directory for details"


def explain(exc: BaseException, disk: str | Path | None = None, details: str = WORKER_DETAILS) -> Explained:
    """Turn any exception into (kind, message, hint) for people; unknown ones keep their text.

    ``disk`` is the folder being written (a run directory): a write error there while its disk is
    nearly full is reported as a full disk. ``details`` is the hint for an unexpected error: where
    the full story is (the worker's log, or for the app, what to do about a bug).
    """
    from sft_tui.core.config import ConfigError  # local: config imports nothing from here

    if isinstance(exc, UserError):
        return Explained(exc.kind, exc.message, exc.hint)
    if isinstance(exc, ConfigError):
        return Explained("config", str(exc), "fix the fields above; `sft-tui config validate FILE` checks a file")
    if disk_full(exc, disk):
        where = getattr(exc, "filename", None) or disk or "the run directory"
        return Explained("disk_full", f"The disk is full: writing {where} failed (no space left on device).",
                         "free disk space, or lower training.save_total_limit (fewer checkpoints kept) or put "
                         "runs on a bigger disk (output.runs_dir); then resume the run — every complete "
                         "checkpoint is kept")
    text = str(exc) or exc.__class__.__name__
    low = text.lower()
    name = exc.__class__.__name__
    if "trust_remote_code" in low or "contains custom code" in low:
        return Explained("remote_code", text.splitlines()[0],
                         "this model ships its own Python code; set model.trust_remote_code: true only if you "
                         "trust its authors (the code runs with your permissions)")
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
    if re.search(r"\bnan\b", low) and "loss" in low:  # not "maintenance", "nano", "nanosecond"
        return Explained("nan_loss", text,
                         "lower training.learning_rate (try 10× smaller) or set training.precision: fp32")
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
    return Explained("internal", f"{name}: {text.splitlines()[0] if text else ''}", details)


class NanLossError(RuntimeError):
    """Raised by the training callback when the loss stops being a number."""
