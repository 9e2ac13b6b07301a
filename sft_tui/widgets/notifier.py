"""The app's ear on its runs: a toast and a desktop notification when a watched run ends, fails or stalls.

The app watches the run it is showing (``session.run``) and every run it showed before, even while
another screen is up: a person who started a run and went to the Evaluate screen still wants to hear
that it finished. Each watch reads only lines appended after it began (its tail starts at the end of
the file), so a resumed run's old ``stopped`` never fires; the worker, not the app, runs the
``notify_command`` hook, so closing the app loses no hook and an open app sends none twice.

Reads happen in a thread every ``POLL_S`` seconds; what they find comes back as a ``RunNotifications``
message, which the app hands to ``show`` on its own thread. A Textual app owns the terminal, so the
escape sequences go out through its driver, the same way ``App.bell`` and ``App.copy_to_clipboard``
write theirs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from textual.message import Message

from sft_tui.core.notify import (
    Notification,
    RunNotifier,
    TerminalSupport,
    escapes,
    terminal_support,
)
from sft_tui.core.run.events import EventTail
from sft_tui.core.run.rundir import RunDir

TOAST_SECONDS = 15.0


class RunNotifications(Message):
    """Notable events found by a read, for the app's thread to show."""

    def __init__(self, notes: list[Notification]) -> None:
        super().__init__()
        self.notes = notes


def end_of_complete_lines(path: Path) -> int:
    """The offset just past the file's last newline: where 'new lines only' starts.

    A line still being written when the watch begins is read in full once its newline arrives.
    """
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            at = size
            while at > 0:
                step = min(at, 1 << 16)
                fh.seek(at - step)
                block = fh.read(step)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    return at - step + newline + 1
                at -= step
            return 0
    except OSError:
        return 0  # not written yet: everything that comes is new


class RunWatch:
    """One watched run: a tail from where the watch began, and the notifier it feeds."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.tail = EventTail(run.events_path, offset=end_of_complete_lines(run.events_path), thin=True)
        self.notifier = RunNotifier(run, since=None)  # the tail already sees new lines only

    def read(self) -> list[Notification]:
        notes = self.notifier.feed_all(self.tail.read_new())
        if self.run.pid() is not None and not self.run.is_alive():
            note = self.notifier.finish()  # killed without a final status: 'died'
            if note is not None:
                notes.append(note)
        return notes


class AppNotifier:
    """Owned by the app: ``start()`` on mount, ``show()`` for each ``RunNotifications`` message."""

    POLL_S = 2.0

    def __init__(self, app: Any) -> None:
        self.app = app
        self.watches: dict[Path, RunWatch] = {}
        self.support = TerminalSupport()
        self._reading = False

    def start(self) -> None:
        settings = getattr(self.app, "settings", None)
        # The app draws on a terminal, so a tty is a given; headless test apps write nothing (see write).
        self.support = terminal_support(getattr(settings, "notify", "auto"), tty=True)
        self.app.set_interval(self.POLL_S, self.poll)

    def poll(self) -> None:
        run = getattr(getattr(self.app, "session", None), "run", None)
        if run is not None and run.path not in self.watches:
            self.watches[run.path] = RunWatch(run)
        if self.watches and not self._reading:
            self._reading = True
            self.app.run_worker(self._read, thread=True, group="run-notify", exit_on_error=False,
                                description="watching runs for notifications")

    def _read(self) -> RunNotifications | None:
        """In a thread: every watch's new notable events. Never raises: a bad read only means no ping."""
        notes: list[Notification] = []
        try:
            for watch in list(self.watches.values()):
                try:
                    notes.extend(watch.read())
                except Exception:  # noqa: BLE001 - one damaged run must not silence the others
                    continue
        finally:
            self._reading = False
        return RunNotifications(notes) if notes else None

    def show(self, message: RunNotifications) -> None:
        """On the app's thread: a toast in the app, and the escapes for the desktop."""
        for note in message.notes:
            self.app.notify(note.body, title=note.title, severity=note.severity, timeout=TOAST_SECONDS)
            data = escapes(note.title, note.body, self.support)
            if data:
                self.write(data)

    def write(self, data: str) -> None:
        """Raw bytes to the terminal the app draws on (Textual has no public call for this)."""
        driver = getattr(self.app, "_driver", None)
        if driver is None or self.app.is_headless:
            return
        driver.write(data)
