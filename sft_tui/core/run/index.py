"""Statuses of every run in a runs dir, kept current incrementally.

``RunDir.status()`` re-reads a run's whole events.jsonl; the runs screen refreshes every couple of
seconds, so it keeps one tail per run instead and folds only the lines appended since the last
refresh. The derived state goes through the same ``with_liveness`` rule as ``RunDir.status``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from sft_tui.core.run.events import EventTail
from sft_tui.core.run.rundir import RunDir, RunStatus, fold_event, list_runs, with_checkpoint, with_liveness


class TrackedRun:
    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.tail = EventTail(run.events_path, thin=True)
        self.folded = run.status(events=[])  # model and method from the config, state "new"
        self.folded.state = "new"

    def refresh(self) -> RunStatus:
        if self.run.events_unreadable():  # the same rule as RunDir.status
            return RunStatus(name=self.run.name, state="unreadable", model=self.folded.model,
                             method=self.folded.method)
        for ev in self.tail.read_new():
            fold_event(self.folded, ev)
        st = with_liveness(copy.copy(self.folded), self.run.pid())
        st.unreadable = self.tail.unreadable
        return with_checkpoint(st, self.run)  # the disk decides, as for RunDir.status and --resume


class RunIndex:
    """``refresh()`` → [(RunDir, RunStatus)] for every run, oldest first."""

    def __init__(self, runs_dir: str | Path | None = None) -> None:
        self.runs_dir = runs_dir
        self._tracked: dict[Path, TrackedRun] = {}

    def refresh(self) -> list[tuple[RunDir, RunStatus]]:
        runs = list_runs(self.runs_dir)
        seen = {run.path for run in runs}
        for path in list(self._tracked):
            if path not in seen:
                del self._tracked[path]  # deleted on disk
        out = []
        for run in runs:
            try:
                tracked = self._tracked.get(run.path)
                if tracked is None:
                    tracked = self._tracked[run.path] = TrackedRun(run)
                out.append((run, tracked.refresh()))
            except Exception:  # noqa: BLE001 - one damaged run must not hide the others
                out.append((run, RunStatus(name=run.name, state="unreadable")))
        return out
