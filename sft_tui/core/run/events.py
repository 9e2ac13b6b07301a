"""The event protocol of a run: one JSON object a line in ``events.jsonl``, and its text form.

The worker writes with ``EventWriter``; every reader (the monitor, the run index, the CLI) goes
through ``EventTail``, so what counts as a readable line is decided here once. ``format_event`` is
the one human line per event that ``sft-tui logs`` and the TUI's log pane both print.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ACTIVE_STATES = ("starting", "loading", "tokenizing", "training", "saving")
FINAL_STATES = ("done", "failed", "stopped")


class EventWriter:
    """Append-only JSONL writer; one ``write`` is one whole line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"time": time.time(), "type": type, **fields}
        line = json.dumps(_finite(event), default=_jsonable, allow_nan=False) + "\n"
        # O_APPEND makes each write land whole at the end even if two processes write.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        return event

    def status(self, state: str, **fields: Any) -> dict[str, Any]:
        return self.write("status", state=state, **fields)


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON; they become null so every reader can parse every line."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class EventTail:
    """Incremental reader: each ``read_new`` parses only bytes appended since the last call.

    ``thin=True`` drops all but the last ``memory`` line of each read before parsing: the worker
    writes one per logged step, a monitor shows only the latest, and skipping them halves the cost
    of opening a long history. Lines are matched on the writer's exact ``"type": "memory"`` bytes, so
    a line written differently is simply parsed (slower, never wrong).
    """

    MEMORY = b'"type": "memory"'

    def __init__(self, path: Path, offset: int = 0, thin: bool = False) -> None:
        self.path = Path(path)
        self.offset = offset
        self.thin = thin

    def read_new(self, max_bytes: int | None = None) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read() if max_bytes is None else fh.read(max_bytes)
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # nothing complete yet; a torn line waits for its newline
        self.offset += end + 1
        chunk = chunk[: end + 1]
        if self.thin and self.MEMORY in chunk:
            at = chunk.rfind(self.MEMORY)
            last = chunk[chunk.rfind(b"\n", 0, at) + 1: chunk.find(b"\n", at) + 1]
            chunk = b"\n".join(line for line in chunk.split(b"\n") if self.MEMORY not in line) + last
        return parse_bulk(chunk)


def parse_bulk(data: bytes) -> list[dict[str, Any]]:
    """Parse many complete JSONL lines at once (about twice as fast as line by line).

    The chunk is decoded as one JSON array; if any line is damaged, fall back to parsing line by
    line so one bad line never hides the rest.
    """
    text = data.decode("utf-8", errors="replace").strip()
    if not text:
        return []
    try:
        items = json.loads("[" + text.replace("\n", ",") + "]")
    except json.JSONDecodeError:
        return parse_lines(text.splitlines())
    return [obj for obj in items if isinstance(obj, dict) and "type" in obj]


def parse_lines(lines: list[str]) -> list[dict[str, Any]]:
    events = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line damaged by a crash mid-write must not hide the rest
        if isinstance(obj, dict) and "type" in obj:
            events.append(obj)
    return events


def format_event(ev: dict[str, Any]) -> str:
    """One human line per event, shared by `logs` and the TUI's log pane."""
    when = time.strftime("%H:%M:%S", time.localtime(ev.get("time", 0)))
    kind = ev.get("type")
    if kind == "train":
        parts = [f"step {ev.get('step')}" + (f"/{ev['max_steps']}" if ev.get("max_steps") else "")]
        for key, label, fmt in (("loss", "loss", ".4f"), ("lr", "lr", ".2e"), ("grad_norm", "grad", ".3f"),
                                ("tokens_per_s", "tok/s", ".0f"), ("epoch", "epoch", ".2f")):
            if ev.get(key) is not None:
                parts.append(f"{label} {format(ev[key], fmt)}")
        return f"{when} train  " + "  ".join(parts)
    if kind == "eval":
        return f"{when} eval   step {ev.get('step')}  eval_loss {ev.get('eval_loss', float('nan')):.4f}"
    if kind == "status":
        return f"{when} status {ev.get('state')}"
    if kind == "error":
        hint = f" (hint: {ev['hint']})" if ev.get("hint") else ""
        return f"{when} ERROR  {ev.get('message')}{hint}"
    if kind == "log":
        return f"{when} {ev.get('level', 'info'):<6} {ev.get('msg')}"
    if kind == "checkpoint":
        return f"{when} saved  checkpoint at step {ev.get('step')}: {ev.get('path')}"
    if kind == "memory":
        return f"{when} memory {ev.get('device')}: {ev.get('allocated', 0) / 2**20:.0f} MiB allocated, peak {ev.get('peak', 0) / 2**20:.0f} MiB"
    if kind == "progress":
        return f"{when} {ev.get('stage')}: {100 * ev.get('fraction', 0):.0f}%"
    if kind == "saved":
        return f"{when} saved  {ev.get('method', 'model')} weights in {ev.get('path')}"
    if kind == "data":
        return f"{when} data   {ev.get('train_rows', '?')} training rows, {ev.get('eval_rows', 0)} validation rows"
    rest = {k: v for k, v in ev.items() if k not in ("time", "type")}
    return f"{when} {kind:<6} {json.dumps(rest, default=str)[:200]}"
