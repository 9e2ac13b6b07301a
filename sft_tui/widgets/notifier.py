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

from pathlib import Path
from typing import Any

from textual.message import Message

from sft_tui.core.notify import Notification, RunWatch, TerminalSupport, escapes, terminal_support

TOAST_SECONDS = 15.0


class RunNotifications(Message):
    """Notable events found by a read, for the app's thread to show."""

    def __init__(self, notes: list[Notification]) -> None:
        super().__init__()
        self.notes = notes


class AppNotifier:
    """Owned by the app: ``start()`` on mount, ``show()`` for each ``RunNotifications`` message."""

    POLL_S = 2.0

    def __init__(self, app: Any) -> None:
        self.app = app
        self.watches: dict[Path, Any] = {}  # a RunDir until its RunWatch is made (in the reading thread)
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
            self.watches[run.path] = run  # its watch (which reads the file) is made in the thread
        if self.watches and not self._reading:
            self._reading = True
            self.app.run_worker(self._read, thread=True, group="run-notify", exit_on_error=False,
                                description="watching runs for notifications")

    def _read(self) -> RunNotifications | None:
        """In a thread: every watch's new notable events. Never raises: a bad read only means no ping."""
        notes: list[Notification] = []
        try:
            for path, watch in list(self.watches.items()):
                try:
                    if not isinstance(watch, RunWatch):
                        watch = self.watches[path] = RunWatch(watch)  # watched from now on
                        continue
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
