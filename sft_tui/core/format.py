"""How numbers, sizes, times and run states are written for people: one rule each, everywhere.

The CLI, the screens, the model card and the memory verdict all print through these, so a size
reads "3.0 GiB" (binary units, named as such) and a duration "1:05" wherever it appears. Every
function takes None, NaN, inf and values of the wrong type (a hostile events line may hold a
string where a number belongs) and answers with the ``missing`` text instead of raising.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from pathlib import Path
from typing import Any

# Rich style names per run state; the CLI's table, the monitor and the runs screen share them.
STATE_STYLES: dict[str, str] = {
    "new": "dim", "queued": "magenta", "starting": "cyan", "loading": "cyan", "tokenizing": "cyan",
    "training": "bold cyan", "evaluating": "cyan", "saving": "cyan", "done": "bold green",
    "stopped": "bold yellow", "failed": "bold red", "died": "bold red", "unreadable": "bold red",
}


def _number(value: Any) -> float | None:
    """A finite float, or None for anything that is not one (bool, str, NaN, inf, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return None
    return number if math.isfinite(number) else None


def human_bytes(n: Any, missing: str = "n/a") -> str:
    """Binary units with their real names: '512 B', '7.5 MiB', '600 MiB', '3.0 GiB', '22 GiB'."""
    value = _number(n)
    if value is None:
        return missing
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            if unit == "B":
                return f"{value:.0f} B"
            return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_count(n: Any, missing: str = "?") -> str:
    """Parameter and token counts to three figures: '831', '12.3K', '494M', '6.74B'."""
    value = _number(n)
    if value is None:
        return missing
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            scaled = value / size
            decimals = 2 if abs(scaled) < 10 else 1 if abs(scaled) < 100 else 0
            return f"{scaled:.{decimals}f}{unit}"
    return f"{value:.0f}"


def human_context(n: Any, missing: str = "?") -> str:
    """A context length: '32k' for a multiple of 1024, else the number."""
    value = _number(n)
    if not value:
        return missing
    n = int(value)
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def human_duration(seconds: Any, missing: str = "-") -> str:
    """Elapsed or remaining time: '0:42', '1:05', '1:02:05'."""
    value = _number(seconds)
    if value is None or value < 0:
        return missing
    total = int(round(value))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _local(timestamp: Any, pattern: str, missing: str) -> str:
    value = _number(timestamp)
    if not value:
        return missing
    try:
        return _dt.datetime.fromtimestamp(value).strftime(pattern)
    except (OverflowError, OSError, ValueError):
        return missing


def human_time(timestamp: Any, missing: str = "-") -> str:
    """A wall-clock moment in local time, to the minute: '2026-12-01 21:34'."""
    return _local(timestamp, "%Y-%m-%d %H:%M", missing)


def human_time_short(timestamp: Any, missing: str = "-") -> str:
    """A wall-clock moment in a narrow column: '12-01 21:34' (month-day; the year is in the details)."""
    return _local(timestamp, "%m-%d %H:%M", missing)


def shorten(text: str, width: int, keep: str = "middle") -> str:
    """``text`` in at most ``width`` cells with '…' where it was shortened: in the middle (run names:
    both their start and their date suffix tell), or at the start (model ids: the name is at the end)."""
    if width < 2 or len(text) <= width:
        return text
    if keep == "end":
        return "…" + text[-(width - 1):]
    head = (width - 1 + 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def shorten_path(path: str, width: int) -> str:
    """A path in at most ``width`` cells, the home folder as '~' and the middle as '…', always keeping
    the file name whole (the part a person looks for): '~/projects/…/train_conversations.jsonl'."""
    text = display_path(path)
    if len(text) <= width or width < 4:
        return text
    parts = text.split("/")
    name = parts[-1] or text
    if len(name) + 2 >= width:
        return f"…/{name}"
    head = ""
    for part in parts[:-1]:  # as many leading folders as fit before '…/name'
        candidate = f"{head}{part}/"
        if len(candidate) + 2 + len(name) > width:
            break
        head = candidate
    return f"{head}…/{name}"


def compact(value: Any, digits: int = 4, missing: str = "-") -> str:
    """Metrics in narrow panes: '1.235', '0.01234', '2.0e-04', '7.69k', '12.3M'."""
    number = _number(value)
    if number is None:
        return missing
    a = abs(number)
    if a == 0:
        return "0"
    if a >= 1e3:
        for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if a >= div:
                v = number / div
                return f"{v:.0f}{unit}" if abs(v) >= 100 else f"{v:.1f}{unit}" if abs(v) >= 10 else f"{v:.2f}{unit}"
    if a < 1e-3:
        return f"{number:.1e}"
    return f"{number:.{digits}g}"


def fixed(value: Any, spec: str, missing: str = "-") -> str:
    """``format(value, spec)`` for a finite number, else ``missing`` (the CLI's loss columns)."""
    number = _number(value)
    return missing if number is None else format(number, spec)


def display_path(path: str | Path, home: str | Path | None = None) -> str:
    """A path as a person reads it: the home folder written as '~' (shorter at 80 columns)."""
    text = str(path)
    home = str(home if home is not None else os.path.expanduser("~")).rstrip("/")
    if home and home != "/" and (text == home or text.startswith(home + "/")):
        return "~" + text[len(home):]
    return text


# C0 controls, DEL and C1 controls: any of them, printed, can start or end a terminal escape
# (U+009C is ST to a terminal in UTF-8 mode).
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]+")


def without_controls(text: Any, replacement: str = " ") -> str:
    """``text`` safe to print on a terminal: every run of control characters becomes ``replacement``."""
    return CONTROL_CHARS.sub(replacement, str(text))

