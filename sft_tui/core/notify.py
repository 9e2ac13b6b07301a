"""Hearing about a run over SSH: which events are news, their words, and who sends them, once each.

Someone who starts a run on a shared GPU server and walks away wants to hear about a handful of
moments only: the run ended (done, failed, stopped), it failed the two ways that need a config change
(the GPU ran out of memory, the loss became NaN), it stalled, or its worker vanished without a word.
Everything else in ``events.jsonl`` (steps, memory, progress, an input-bound warning) is routine.

Who sends what, so nothing arrives twice:

* the **worker** (alive whenever its run's events happen, TUI open or not) runs the ``notify_command``
  hook (``notify_hook``): ``install_worker_hook()`` registers ``worker_hook(settings)`` as an
  ``EventWriter`` observer;
* the **clients that are watching** (the TUI, ``sft-tui train`` while it follows, ``sft-tui logs
  --follow``) write the terminal escapes (``notify_terminal``), since only they hold the terminal.

Both feed events to a ``RunNotifier``, which fires each notable event once. Which events count as new
is explicit, because a client re-reads a resumed run's whole history, earlier ``stopped`` included:

* ``since=<time>`` (the default: the moment the notifier was made): events stamped earlier are
  history, never fired. ``sft-tui train`` and ``sft-tui logs --follow`` read from the start of the
  file and rely on this.
* ``since=None``: every event fed is new. For callers that only ever see new lines: the worker's
  observer (it sees each event as it is written) and the TUI (its tail starts at the end of the file).
* Either way an event fed twice fires once, and a ``failed`` status right after a fired out-of-memory
  or NaN-loss error is the same failure: it is not announced again.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from sft_tui.core.notify_hook import HOOK_TIMEOUT_S, CommandHook
from sft_tui.core.notify_terminal import (
    MODES,
    TerminalSupport,
    escapes,
    osc9,
    osc777,
    screen_passthrough,
    terminal_support,
    tmux_passthrough,
    write_raw,
)
from sft_tui.core.run.events import ACTIVE_STATES, FINAL_STATES, EventWriter
from sft_tui.core.run.rundir import RunDir, RunStatus
from sft_tui.core.settings import load_settings

__all__ = [
    "HOOK_TIMEOUT_S", "MODES", "CommandHook", "Notification", "RunNotifier", "RunWatch", "TerminalOutput", "TerminalSupport",
    "describe", "escapes", "install_worker_hook", "notable_kind", "osc9", "osc777", "screen_passthrough",
    "terminal_notifier", "terminal_support", "tmux_passthrough", "worker_hook", "write_raw",
]

# --------------------------------------------------------------------------- what is news, in words

# The error kinds of ``errors.explain`` worth a ping of their own: each needs the config changed.
NOTABLE_ERRORS = {"oom": "out of memory", "nan_loss": "loss became NaN"}

# Toast severities (Textual's names; the core only passes the word along).
SEVERITY = {"done": "information", "stopped": "information", "stall": "warning"}


@dataclass(frozen=True)
class Notification:
    """One thing to tell the person: what happened to which run, in a title and a one-line body."""

    run: str
    kind: str  # done | failed | stopped | oom | nan_loss | stall | died
    title: str
    body: str
    event: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.kind, "error")

    def payload(self) -> dict[str, Any]:
        """What a ``notify_command`` hook reads on its stdin, as JSON."""
        return {"run": self.run, "run_dir": self.run_dir, "kind": self.kind, "title": self.title,
                "body": self.body, "severity": self.severity, "event": self.event}


def notable_kind(event: dict[str, Any]) -> str | None:
    """The kind of notification ``event`` deserves, or None for a routine event."""
    kind = event.get("type")
    if kind == "status" and event.get("state") in FINAL_STATES:
        return str(event["state"])
    if kind == "error" and event.get("kind") in NOTABLE_ERRORS:
        return str(event["kind"])
    if kind == "stall":
        return "stall"
    return None


def describe(run: str, kind: str, event: dict[str, Any], status: RunStatus | None = None,
             run_dir: str = "") -> Notification:
    """Title and body for ``kind``: the event says what happened, the run's status how far it got."""
    progress = _progress(status)
    error = (status.error if status is not None else None) or {}
    if kind == "done":
        title, body = f"run {run} done", progress or "finished"
    elif kind == "stopped":
        reason = event.get("reason")
        body = ", ".join(p for p in (progress, str(reason) if isinstance(reason, str) else "") if p)
        title, body = f"run {run} stopped", body or "stopped"
    elif kind == "failed":
        message = error.get("message") or "the worker reported a failure; see worker.log in the run directory"
        title, body = f"run {run} failed", _join(str(message), _at_step(status))
    elif kind in NOTABLE_ERRORS:
        title = f"run {run} failed: {NOTABLE_ERRORS[kind]}"
        body = _join(str(event.get("message") or NOTABLE_ERRORS[kind]), _at_step(status))
    elif kind == "stall":
        title, body = f"run {run} stalled", _stall_body(event)
    elif kind == "died":
        title = f"run {run} died"
        body = _join("its worker ended without a final status", _at_step(status))
    else:
        title, body = f"run {run}: {kind}", progress
    return Notification(run=run, kind=kind, title=f"sft-tui: {title}", body=body, event=event, run_dir=run_dir)


def _progress(status: RunStatus | None) -> str:
    """'step 600/600, loss 0.81, 42 min' from whatever the status knows."""
    if status is None:
        return ""
    parts = [_step(status)]
    if _number(status.last_loss) is not None:
        parts.append(f"loss {status.last_loss:.3g}")
    elapsed = status.elapsed()
    if elapsed is not None:
        parts.append(span(elapsed))
    return ", ".join(p for p in parts if p)


def _step(status: RunStatus | None) -> str:
    if status is None or (not status.step and not status.max_steps):
        return ""
    return f"step {status.step}/{status.max_steps}" if status.max_steps else f"step {status.step}"


def _at_step(status: RunStatus | None) -> str:
    step = _step(status)
    return f"at {step}" if step else ""


def _join(message: str, where: str) -> str:
    return f"{message.rstrip('.')} {where}" if where else message


def _stall_body(event: dict[str, Any]) -> str:
    silent = _number(event.get("silent_s"))
    phase = event.get("phase") if isinstance(event.get("phase"), str) else ""
    body = f"no progress for {span(silent)}" if silent is not None else "no progress"
    if phase:
        body += f" while {phase}"
    median = _number(event.get("median_step_s"))
    if median is not None and median > 0:
        body += f" (a step usually takes {median:.3g} s)"
    return body


def span(seconds: float | None) -> str:
    """A duration as a person says it: '40 s', '42 min', '3 h 05 min'."""
    value = _number(seconds)
    if value is None or value < 0:
        return ""
    if value < 60:
        return f"{int(value)} s"
    minutes = round(value / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# --------------------------------------------------------------------------- firing once


Output = Callable[[Notification], Any]
_NOW = object()  # "since": the moment the notifier is made


class RunNotifier:
    """Fed one run's events (dicts as ``EventTail`` reads them); hands each notable one to its outputs once."""

    def __init__(self, run: RunDir | str | Path, *outputs: Output, since: float | None | object = _NOW,
                 status: Callable[[], RunStatus | None] | None = None) -> None:
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.outputs = list(outputs)
        self.since: float | None = time.time() if since is _NOW else since  # type: ignore[assignment]
        self._status = status or self._read_status
        self._fired: set[tuple[Any, ...]] = set()
        self._failure_told = False  # an oom/NaN error was announced: its 'failed' status is the same news
        self.state: str | None = None  # the latest status state fed (history included)
        self._watch_over = False  # finish() looked already and nothing new has come since
        self._saw_it_run = False  # a new (not historical) event of a run still going: its death is news

    def feed(self, event: dict[str, Any]) -> Notification | None:
        """Take one event; returns the notification it fired, if any."""
        final = event.get("type") == "status" and event.get("state") in FINAL_STATES
        if event.get("type") == "status" and isinstance(event.get("state"), str):
            self.state = event["state"]
        self._watch_over = False
        new = self.since is None or _at_or_after(event.get("time"), self.since)
        if new:
            self._saw_it_run = not final
        kind = notable_kind(event)
        if kind is None:
            if event.get("type") == "status" and event.get("state") in ACTIVE_STATES:
                self._failure_told = False  # a resumed run's next failure is news again
            return None
        if not new:
            return None  # history: it happened before this notifier was watching
        key = (event.get("type"), event.get("state"), event.get("kind"), event.get("time"), event.get("step"))
        if key in self._fired:
            return None
        self._fired.add(key)
        if kind == "failed" and self._failure_told:
            self._failure_told = False
            return None
        if kind in NOTABLE_ERRORS:
            self._failure_told = True
        return self._send(kind, event)

    def feed_all(self, events: Iterable[dict[str, Any]]) -> list[Notification]:
        return [note for note in map(self.feed, events) if note is not None]

    def finish(self) -> Notification | None:
        """The watch ended (the follow returned, or the worker is gone): a run that died says so.

        A worker killed outright (the kernel's OOM killer, a reboot) writes no final status; the
        run's status calls that ``died``, and that is worth hearing about too, if this notifier saw
        it running (a run found dead is history). Looks once per lull: calling it again before a new
        event arrives does nothing.
        """
        if self._watch_over or not self._saw_it_run or self.state in FINAL_STATES:
            return None
        self._watch_over = True
        status = self._status()
        if status is None or status.state != "died":
            return None
        key = ("died", status.last_event)
        if key in self._fired:
            return None
        self._fired.add(key)
        return self._send("died", {"type": "status", "state": "died", "time": status.last_event}, status)

    def _send(self, kind: str, event: dict[str, Any], status: RunStatus | None = None) -> Notification:
        status = status if status is not None else self._status()
        note = describe(self.run.name, kind, event, status, run_dir=str(self.run.path))
        for output in self.outputs:
            try:
                output(note)
            except Exception:  # noqa: BLE001 - telling someone must never break what they are watching
                pass
        return note

    def _read_status(self) -> RunStatus | None:
        try:
            return self.run.status()
        except Exception:  # noqa: BLE001 - a damaged run still gets its notification, just shorter
            return None


def _at_or_after(stamp: Any, since: float) -> bool:
    return isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp >= since


class TerminalOutput:
    """An output that writes a notification's escape sequences to a terminal stream."""

    def __init__(self, stream: Any, support: TerminalSupport) -> None:
        self.stream = stream
        self.support = support

    def __call__(self, note: Notification) -> None:
        write_raw(self.stream, escapes(note.title, note.body, self.support))


def terminal_notifier(run: RunDir, mode: str | None = None, stream: Any = None,
                      env: Mapping[str, str] | None = None) -> RunNotifier | None:
    """A notifier writing to the terminal (stdout by default), or None where nothing would be sent.

    ``mode`` is the ``notify`` setting (read from the settings file when not given): ``auto`` sends
    only to a terminal that can show it, ``on`` always, ``off`` never.
    """
    if mode is None:
        mode = load_settings().notify
    stream = stream if stream is not None else sys.stdout
    try:
        tty = bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        tty = False
    support = terminal_support(mode, env, tty=tty)
    if not support.enabled:
        return None
    return RunNotifier(run, TerminalOutput(stream, support))



class RunWatch:
    """One run watched from now on (the app's notifications): a tail from where the watch began, and
    the notifier it feeds; a resumed run's old ``stopped`` is behind the tail, so it never fires."""

    def __init__(self, run: RunDir) -> None:
        from sft_tui.core.run.events import EventTail

        self.run = run
        self.tail = EventTail.at_end(run.events_path, thin=True)
        self.notifier = RunNotifier(run, since=None)  # the tail already sees new lines only

    def read(self) -> list[Notification]:
        notes = self.notifier.feed_all(self.tail.read_new())
        if self.run.pid() is not None and not self.run.is_alive():
            note = self.notifier.finish()  # killed without a final status: 'died'
            if note is not None:
                notes.append(note)
        return notes


def worker_hook(settings: Any, timeout: float = HOOK_TIMEOUT_S) -> Callable[[dict[str, Any], Path], None] | None:
    """The ``EventWriter`` observer that runs ``settings.notify_command``; None when none is set.

    Every event the process writes after this is new, so ``since=None``; one notifier per events
    file, in case a process writes more than one run. The worker writes from several threads (the
    training loop, the control watcher, the stall watch), so one event is judged at a time.
    """
    command = getattr(settings, "notify_command", None)
    if not command:
        return None
    hook = CommandHook(command, timeout=timeout)
    notifiers: dict[Path, RunNotifier] = {}
    # Reentrant: the worker's signal handler writes an event, and so runs this, on top of whatever
    # the main thread was doing — possibly this very function (a plain lock deadlocked there).
    lock = threading.RLock()

    def observe(event: dict[str, Any], path: Path) -> None:
        with lock:
            notifier = notifiers.get(path)
            if notifier is None:
                notifier = notifiers[path] = RunNotifier(RunDir(Path(path).parent), hook, since=None)
            notifier.feed(event)

    return observe


def install_worker_hook(settings: Any = None) -> Callable[[dict[str, Any], Path], None] | None:
    """Register the hook for every event this process writes (the worker calls this once, first thing).

    A settings file that cannot be read costs a warning on stderr (the worker's log), never the run.
    """
    if settings is None:
        settings = load_settings()
        if settings.warning:
            print(f"sft-tui: {settings.warning}", file=sys.stderr, flush=True)
    observer = worker_hook(settings)
    if observer is not None:
        EventWriter.add_observer(observer)
    return observer

