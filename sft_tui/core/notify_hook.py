"""The ``notify_command`` hook: a shell command line run for each notification.

People point it at whatever reaches them (``curl -d "$SFT_TUI_BODY" ntfy.sh/my-topic``, a Slack
webhook, ``mail``). It is run with ``/bin/sh -c`` in its own session, the notification as JSON on its
stdin and in ``SFT_TUI_*`` environment variables, from a thread: the caller (the worker, mid-training)
never waits for it. A hook that hangs is killed (with everything it started) after ``timeout``
seconds; one that fails costs a warning line, never the run.

The threads are not daemons, so a worker that ends right after writing ``done`` still delivers its
last notification: the interpreter waits for the hook, at most ``timeout`` seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable

from sft_tui.core.notify_terminal import clean

if TYPE_CHECKING:
    from sft_tui.core.notify import Notification

HOOK_TIMEOUT_S = 30.0
# A stall event carries a stack trace; the JSON stays small enough for any pipe and any hook.
MAX_STDIN_BYTES = 64 * 1024


def _warn_stderr(message: str) -> None:
    print(f"sft-tui: {message}", file=sys.stderr, flush=True)


class CommandHook:
    """Callable with a Notification: starts the command in the background and returns its thread."""

    def __init__(self, command: str, timeout: float = HOOK_TIMEOUT_S,
                 warn: Callable[[str], None] = _warn_stderr) -> None:
        self.command = command
        self.timeout = timeout
        self.warn = warn

    def __call__(self, note: Notification) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(note,), name="sft-tui-notify-command", daemon=False)
        thread.start()
        return thread

    def environment(self, note: Notification) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "SFT_TUI_EVENT": note.kind,
            "SFT_TUI_RUN": clean(note.run, 200),
            "SFT_TUI_RUN_DIR": note.run_dir,
            "SFT_TUI_TITLE": clean(note.title, 200),
            "SFT_TUI_BODY": clean(note.body, 1000),
            "SFT_TUI_SEVERITY": note.severity,
        })
        return env

    def _run(self, note: Notification) -> None:
        try:
            data = stdin_bytes(note)
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self.command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=self.environment(note), start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            self.warn(f"notify_command could not start: {exc}")
            return
        try:
            _, err = proc.communicate(data, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            self.warn(f"notify_command took longer than {self.timeout:g} s and was stopped: {self.command}")
            return
        except (OSError, ValueError) as exc:
            _kill_group(proc)
            self.warn(f"notify_command failed: {exc}")
            return
        if proc.returncode:
            last = (err or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            self.warn(f"notify_command exited with status {proc.returncode}"
                      + (f": {clean(last[0], 200)}" if last[0] else f" ({self.command})"))


def stdin_bytes(note: Notification) -> bytes:
    """The notification as one JSON object (and a newline); a huge event keeps its fields, not its stack."""
    payload = _finite(note.payload())
    data = json.dumps(payload, default=str, allow_nan=False, ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_STDIN_BYTES:
        event = {k: (v[:2000] if isinstance(v, str) else v) for k, v in payload["event"].items()
                 if isinstance(v, (int, float, str, bool)) or v is None}
        data = json.dumps({**payload, "event": event}, default=str, ensure_ascii=False).encode("utf-8")
    return data + b"\n"


def _finite(value: Any) -> Any:
    """NaN and infinity are not JSON (a hook's parser would reject the whole object): null instead."""
    if isinstance(value, float):
        return value if value - value == 0 else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill the shell and everything it started (a curl waiting on the network), then reap it."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        pass
