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
from typing import Any, Callable

ACTIVE_STATES = ("starting", "queued", "loading", "tokenizing", "training", "evaluating", "saving")
FINAL_STATES = ("done", "failed", "stopped")


# Bounds for a line a reader will parse: a worker's own lines are well under a kilobyte (a data
# report can reach a few hundred); anything longer or deeper is damage or hostility, not an event.
MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 24

# The fields readers do arithmetic on, and the type each must have. A line whose field has another
# type (a string where a number belongs, a 5000-digit integer) is unreadable as a whole: half an
# event would fold into a wrong run status.
_NUMBER = "number"
FIELD_TYPES: dict[str, Any] = {
    "time": _NUMBER, "step": _NUMBER, "max_steps": _NUMBER, "epoch": _NUMBER, "loss": _NUMBER,
    "lr": _NUMBER, "grad_norm": _NUMBER, "tokens_per_s": _NUMBER, "tokens_seen": _NUMBER,
    "elapsed_s": _NUMBER, "eval_loss": _NUMBER, "allocated": _NUMBER, "reserved": _NUMBER,
    "peak": _NUMBER, "fraction": _NUMBER, "train_rows": _NUMBER, "eval_rows": _NUMBER,
    "trainable_params": _NUMBER, "total_params": _NUMBER, "silent_s": _NUMBER, "median_step_s": _NUMBER,
    "allowance_s": _NUMBER, "phase": str, "stack": str,
    "type": str, "state": str, "kind": str, "message": str, "hint": str, "msg": str, "level": str,
    "path": str, "device": str, "stage": str, "method": str, "model_path": str, "precision": str,
}
_LIMIT = 1e300  # finite, and far inside float range: arithmetic on it cannot overflow to inf


class EventWriter:
    """Append-only JSONL writer; one ``write`` is one whole line, flushed at once.

    If the file does not end in a newline (a writer was killed mid-line), the next event starts a
    fresh line, so the torn fragment stays one unreadable line instead of swallowing this event.

    ``observers`` are process-wide: each is called as ``observer(event, path)`` after every line any
    writer of this process has written, with the event as a reader would parse it back. The worker
    registers its ``notify_command`` hook here, since it is the one process alive whenever its run's
    events happen. An observer that raises is ignored: the line is already written, and the run must
    not fail over a notification.
    """

    observers: list[Callable[[dict[str, Any], Path], None]] = []

    @classmethod
    def add_observer(cls, observer: Callable[[dict[str, Any], Path], None]) -> None:
        if observer not in EventWriter.observers:
            EventWriter.observers.append(observer)

    @classmethod
    def remove_observer(cls, observer: Callable[[dict[str, Any], Path], None]) -> None:
        if observer in EventWriter.observers:
            EventWriter.observers.remove(observer)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"time": time.time(), "type": type, **fields}
        line = (json.dumps(_finite(event), default=_jsonable, allow_nan=False) + "\n").encode("utf-8")
        # O_APPEND makes each write land whole at the end even if two processes write.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)
        if EventWriter.observers:
            self._tell_observers(line)
        return event

    def _tell_observers(self, line: bytes) -> None:
        try:
            written = json.loads(line)  # exactly what a reader gets: NaN as null, paths as text
        except ValueError:
            return
        for observer in list(EventWriter.observers):
            try:
                observer(written, self.path)
            except Exception:  # noqa: BLE001 - an observer must never fail the write it observes
                pass

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


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth, giving up (returning ``limit + 1``) as soon as it passes ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        if level > limit:
            return limit + 1
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def valid_event(obj: Any) -> bool:
    """An object every reader can use without a check: a dict with a string type and sane fields.

    Written for speed (a monitor checks every line of a long history): one pass over the event's
    own keys, recursing only into nested values.
    """
    if type(obj) is not dict or type(obj.get("type")) is not str:
        return False
    for key, value in obj.items():
        if value is None:
            continue
        cls = type(value)
        want = FIELD_TYPES.get(key)
        if want is _NUMBER:
            if (cls is not float and cls is not int) or not -_LIMIT < value < _LIMIT:  # NaN fails too
                return False
        elif want is not None and cls is not want:
            return False
        if (cls is dict or cls is list) and _depth(value, MAX_DEPTH - 1) > MAX_DEPTH - 1:
            return False
    return True


class EventTail:
    """Incremental reader: each ``read_new`` parses only bytes appended since the last call.

    Nothing in a run directory can make it raise: a malformed, oversized (over ``MAX_LINE_BYTES``),
    too deeply nested or out-of-type line is skipped and counted in ``unreadable``. A last line
    without its newline waits for it (the writer may be mid-write).

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
        self.unreadable = 0

    @classmethod
    def at_end(cls, path: Path, thin: bool = False) -> "EventTail":
        """A tail that reads only lines written from now on: it starts just past the file's last
        newline, so a line still being written when it starts is read in full once it is done."""
        offset = 0
        try:
            with open(path, "rb") as fh:
                at = fh.seek(0, os.SEEK_END)
                while at > 0:
                    step = min(at, 1 << 16)
                    fh.seek(at - step)
                    newline = fh.read(step).rfind(b"\n")
                    if newline >= 0:
                        offset = at - step + newline + 1
                        break
                    at -= step
        except OSError:
            pass  # not written yet: everything that comes is new
        return cls(path, offset=offset, thin=thin)

    def read_new(self, max_bytes: int | None = None) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read() if max_bytes is None else fh.read(max(max_bytes, 1))
                end = chunk.rfind(b"\n")
                if end < 0 and max_bytes is not None and len(chunk) >= max_bytes:
                    chunk += fh.readline(MAX_LINE_BYTES + 1)  # one line longer than a read: finish it
                    end = chunk.rfind(b"\n")
                if end < 0 and len(chunk) > MAX_LINE_BYTES:
                    self._skip_long_line(fh)  # longer than any event: skip it, never stall on it
                    return []
        except OSError:
            return []  # missing or unreadable now: the next read tries again
        if end < 0:
            return []  # nothing complete yet; a torn line waits for its newline
        self.offset += end + 1
        chunk = chunk[: end + 1]
        if self.thin and self.MEMORY in chunk:
            at = chunk.rfind(self.MEMORY)
            last = chunk[chunk.rfind(b"\n", 0, at) + 1: chunk.find(b"\n", at) + 1]
            chunk = b"\n".join(line for line in chunk.split(b"\n") if self.MEMORY not in line) + last
        events, bad = parse_chunk(chunk)
        self.unreadable += bad
        return events

    def _skip_long_line(self, fh: Any) -> None:
        fh.seek(self.offset)
        skipped = 0
        while block := fh.read(1 << 20):
            at = block.find(b"\n")
            if at >= 0:
                self.offset += skipped + at + 1
                self.unreadable += 1
                return
            skipped += len(block)
        # No newline yet: the line may still be being written; look again next time.


def parse_chunk(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """(events, unreadable line count) of complete JSONL lines, fast when nothing is damaged.

    The chunk is decoded as one JSON array (about twice as fast as line by line); if anything in it
    is damaged, it is parsed line by line so one bad line never hides the rest.
    """
    text = data.decode("utf-8", errors="replace").strip()
    if not text:
        return [], 0
    if len(data) <= 64 * MAX_LINE_BYTES:
        try:
            items = json.loads("[" + text.replace("\n", ",") + "]")
        except (ValueError, RecursionError):
            items = None
        if items is not None and len(items) == text.count("\n") + 1:
            good = [obj for obj in items if valid_event(obj)]
            if len(good) == len(items) and all(len(line) <= MAX_LINE_BYTES for line in data.split(b"\n")):
                return good, 0
    return parse_lines(text.splitlines())


def parse_bulk(data: bytes) -> list[dict[str, Any]]:
    """The events of a chunk of complete lines (unreadable ones left out)."""
    return parse_chunk(data)[0]


def parse_lines(lines: list[str]) -> tuple[list[dict[str, Any]], int]:
    events, bad = [], 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if len(line) > MAX_LINE_BYTES:
            bad += 1
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1  # a line damaged by a crash mid-write, or hostile: counted, never fatal
            continue
        if valid_event(obj):
            events.append(obj)
        else:
            bad += 1
    return events, bad


def format_event(ev: dict[str, Any]) -> str:
    """One human line per event, shared by `logs` and the TUI's log pane (None and NaN print as '-')."""
    from sft_tui.core.format import fixed, human_bytes

    try:
        when = time.strftime("%H:%M:%S", time.localtime(float(ev.get("time") or 0)))
    except (OverflowError, OSError, ValueError, TypeError):
        when = "--:--:--"
    kind = ev.get("type")
    if kind == "train":
        parts = [f"step {ev.get('step')}" + (f"/{ev['max_steps']}" if ev.get("max_steps") else "")]
        for key, label, fmt in (("loss", "loss", ".4f"), ("lr", "lr", ".2e"), ("grad_norm", "grad", ".3f"),
                                ("tokens_per_s", "tok/s", ".0f"), ("epoch", "epoch", ".2f")):
            if ev.get(key) is not None:
                parts.append(f"{label} {fixed(ev[key], fmt)}")
        return f"{when} train  " + "  ".join(parts)
    if kind == "eval":
        return f"{when} eval   step {ev.get('step')}  eval_loss {fixed(ev.get('eval_loss'), '.4f')}"
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
        return (f"{when} memory {ev.get('device')}: {human_bytes(ev.get('allocated'))} allocated, "
                f"peak {human_bytes(ev.get('peak'))}")
    if kind == "progress":
        return f"{when} {ev.get('stage')}: {fixed(100 * (ev.get('fraction') or 0), '.0f')}%"
    if kind == "saved":
        return f"{when} saved  {ev.get('method', 'model')} weights in {ev.get('path')}"
    if kind == "data":
        return f"{when} data   {ev.get('train_rows', '?')} training rows, {ev.get('eval_rows', 0)} validation rows"
    if kind == "stall":
        return f"{when} ⚠ stall: {describe_stall(ev)} — thread stacks in events.jsonl"
    if kind == "ranks" and isinstance(ev.get("ranks"), list):
        rows = [r for r in ev["ranks"] if isinstance(r, dict)]
        each = "  ".join(f"r{r.get('rank')} {r.get('tokens_per_s') or 0:,.0f} tok/s" for r in rows)
        slow = ev.get("stragglers") if isinstance(ev.get("stragglers"), list) else []
        return (f"{when} ranks  step {ev.get('step')}  {ev.get('world_size')} processes  "
                f"{ev.get('tokens_per_s') or 0:,.0f} tok/s: {each}" + (f"  slowest: rank {slow[0]}" if slow else ""))
    if kind == "energy" and isinstance(ev.get("kwh"), (int, float)):
        return f"{when} energy {ev['kwh']:.3f} kWh so far (GPU {', '.join(map(str, ev.get('gpus') or []))})"
    rest = {k: v for k, v in ev.items() if k not in ("time", "type")}
    return f"{when} {kind:<6} {json.dumps(rest, default=str)[:200]}"


def describe_stall(ev: dict[str, Any]) -> str:
    """'no step for 5m 12s (median step 0.8 s) while saving a checkpoint' for a ``stall`` event."""
    silent = ev.get("silent_s")
    span = "a while"
    if isinstance(silent, (int, float)):
        minutes, seconds = divmod(int(round(silent)), 60)
        span = f"{minutes}m {seconds:02d}s" if minutes else f"{seconds} s"
    median = ev.get("median_step_s")
    usual = ""
    if isinstance(median, (int, float)):
        usual = f" (median step {median:.2g} s)" if median < 10 else f" (median step {median:.0f} s)"
    phase = ev.get("phase")  # the watchdog's phases read after "while": "saving a checkpoint"
    return f"no step for {span}{usual}" + (f" while {phase}" if phase else "")
