"""A drop-down of runs that have something trained, shared by the Evaluate and Export screens."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from textual.widgets import Select

from sft_tui.core.run.rundir import RunDir, list_runs


class RunPicker(Select):
    """Lists the runs ``accept`` admits, newest first; follows the session's run when it changes.

    The session's run is selected when it is new to this picker (the user just trained it);
    otherwise the user's own choice is kept across refreshes.
    """

    def __init__(self, accept: Callable[[RunDir], bool], *, id: str, prompt: str = "no trained run yet") -> None:
        super().__init__([], prompt=prompt, id=id, allow_blank=True)
        self.accept = accept
        self._session_seen: str | None = None

    def refresh_runs(self, session: Any) -> tuple[str | None, Any]:
        """Re-list the runs; returns (the value now selected or None, the value selected before)."""
        runs = [r for r in reversed(list_runs(getattr(session, "runs_dir", None))) if self.accept(r)]
        current = getattr(session, "run", None)
        current_path = str(current.path) if current is not None and self.accept(current) else None
        if current_path and all(str(r.path) != current_path for r in runs):
            runs.insert(0, current)
        options = [(r.name, str(r.path)) for r in runs]
        previous = self.value
        if current_path and current_path != self._session_seen:
            wanted = current_path
        elif previous in {value for _, value in options}:
            wanted = previous
        else:
            wanted = current_path or (options[0][1] if options else None)
        self._session_seen = current_path
        with self.prevent(Select.Changed):
            self.set_options(options)
            if wanted is not None:
                self.value = wanted
        return wanted, previous

    @property
    def run(self) -> RunDir | None:
        value = self.value
        if value is Select.NULL or value is None:
            return None
        return RunDir(Path(str(value)))
