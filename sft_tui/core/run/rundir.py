"""The run directory: the only contract between the UI, the CLI and the worker.

Everything a run knows lives in files so that a run started in one SSH session can be followed
from another and outlives the process that started it. Writers append whole lines and flush;
readers tolerate a torn last line (the writer may be mid-write) by leaving it for the next read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sft_tui.core.config import Config, load_config, save_config
from sft_tui.core.errors import UserError
from sft_tui.core.paths import default_runs_dir
from sft_tui.core.run.events import ACTIVE_STATES, FINAL_STATES, EventTail, EventWriter

@dataclass
class RunStatus:
    """What a run is doing, derived from its events and whether its worker still lives."""

    name: str
    state: str  # starting|loading|tokenizing|training|saving|done|failed|stopped|died|new
    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    last_loss: float | None = None
    best_eval_loss: float | None = None
    model: str = ""
    method: str = ""
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    alive: bool = False
    error: dict[str, Any] | None = None
    last_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds from the first status to the end (or to ``now`` while the run is going)."""
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (now if now is not None else time.time())
        return end - self.started

    @property
    def duration(self) -> float | None:
        return self.elapsed()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = self.duration
        return data


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()

    # ------------------------------------------------------------------ layout
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def control_path(self) -> Path:
        return self.path / "control.json"

    @property
    def pid_path(self) -> Path:
        return self.path / "worker.pid"

    @property
    def log_path(self) -> Path:
        return self.path / "worker.log"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.path / "merged"

    def exists(self) -> bool:
        return self.config_path.exists()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, config: Config, runs_dir: str | Path | None = None) -> "RunDir":
        """Make a new run folder with the resolved config written before any worker starts."""
        root = Path(runs_dir or config.output.runs_dir or default_runs_dir()).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        base = config.output.run_name or _auto_name(config)
        name, n = base, 1
        while (root / name).exists():
            n += 1
            name = f"{base}-{n}"
        run = cls(root / name)
        run.path.mkdir(parents=True)
        config = config.model_copy(deep=True)
        config.output.run_name = name
        config.output.runs_dir = str(root)
        save_config(config, run.config_path, comments=False)
        run.writer().status("starting")
        return run

    def load_config(self) -> Config:
        return load_config(self.config_path)

    def writer(self) -> EventWriter:
        return EventWriter(self.events_path)

    # ------------------------------------------------------------------ events
    def events(self) -> list[dict[str, Any]]:
        return EventTail(self.events_path).read_new()

    def tail(self) -> EventTail:
        return EventTail(self.events_path)

    def follow(self, poll: float = 0.5, until_final: bool = True, timeout: float | None = None,
               heartbeat: bool = False) -> Iterator[dict[str, Any] | None]:
        """Yield events as they arrive; ends when the run's latest status is final or its worker dies.

        "Latest" matters: a resumed run's history holds an earlier 'stopped' that must not end it.
        ``heartbeat`` yields None after each empty poll so a caller can react to its own flags.
        """
        tail = self.tail()
        start = time.monotonic()
        state = None
        while True:
            new = tail.read_new()
            yield from new
            for ev in new:
                if ev["type"] == "status":
                    state = ev.get("state")
            if until_final:
                if state in FINAL_STATES:
                    return
                if not new and self.pid() is not None and not self.is_alive():
                    # The worker is gone; read what it managed to write, then stop.
                    yield from tail.read_new()
                    return
            if timeout is not None and time.monotonic() - start > timeout:
                return
            if heartbeat and not new:
                yield None
            time.sleep(poll)

    # ------------------------------------------------------------------ process
    def pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_alive(self) -> bool:
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    # ------------------------------------------------------------------ control
    def send(self, command: str) -> None:
        """Ask the worker to 'stop' (checkpoint and end) or 'save' (checkpoint now)."""
        if command not in ("stop", "save"):
            raise UserError(f"unknown command {command!r}", "use 'stop' or 'save'")
        previous = self.read_control()
        payload = {"seq": int(previous.get("seq", 0)) + 1, "command": command, "time": time.time()}
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.control_path)  # atomic: the worker never reads half a command

    def read_control(self) -> dict[str, Any]:
        try:
            data = json.loads(self.control_path.read_text())
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    # ------------------------------------------------------------------ derived state
    def checkpoints(self) -> list[Path]:
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def status(self, events: list[dict[str, Any]] | None = None) -> RunStatus:
        events = self.events() if events is None else events
        st = RunStatus(name=self.name, state="new")
        try:
            cfg = self.load_config()
            st.model, st.method = cfg.model.path, cfg.method.type
        except Exception:  # a damaged config must not hide the run from the list
            pass
        for ev in events:
            fold_event(st, ev)
        st.pid = self.pid()
        st.alive = st.pid is not None and pid_alive(st.pid)
        if st.state in ACTIVE_STATES and not st.alive:
            # Started but nobody is working on it: crashed, killed, or the machine rebooted.
            st.state = "died" if st.pid is not None or st.state != "starting" else "starting"
        return st

    def delete(self) -> None:
        if self.is_alive():
            raise UserError(f"run {self.name} is still running", f"stop it first: sft-tui stop {self.name}")
        shutil.rmtree(self.path)


def fold_event(st: RunStatus, ev: dict[str, Any]) -> None:
    """Update a status with one event; shared by full reads and incremental monitors."""
    kind = ev.get("type")
    if kind == "status":
        st.state = ev.get("state", st.state)
        if st.started is None:
            st.started = ev.get("time")
        if st.state in FINAL_STATES:
            st.ended = ev.get("time")
        else:
            st.ended = None
    elif kind == "train":
        st.step = ev.get("step", st.step)
        st.epoch = ev.get("epoch", st.epoch)
        st.max_steps = ev.get("max_steps", st.max_steps)
        if ev.get("loss") is not None:
            st.last_loss = ev["loss"]
    elif kind == "eval":
        loss = ev.get("eval_loss")
        if loss is not None and (st.best_eval_loss is None or loss < st.best_eval_loss):
            st.best_eval_loss = loss
    elif kind == "checkpoint":
        st.last_checkpoint = ev.get("path")
        st.step = max(st.step, ev.get("step") or 0)  # a stop between logging steps still counts
    elif kind == "error":
        st.error = {k: ev.get(k) for k in ("kind", "message", "hint")}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _auto_name(config: Config) -> str:
    model = Path(config.model.path.rstrip("/")).name or "model"
    model = re.sub(r"[^A-Za-z0-9._-]", "-", model)[:40]
    return f"{model}-{config.method.type}-{time.strftime('%Y%m%d-%H%M%S')}"


def list_runs(runs_dir: str | Path | None = None) -> list[RunDir]:
    root = Path(runs_dir or default_runs_dir()).expanduser()
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if (p / "config.yaml").exists()]
    return sorted(runs, key=lambda r: r.config_path.stat().st_mtime)


def find_run(name_or_path: str, runs_dir: str | Path | None = None) -> RunDir:
    """A run by folder path or by name in the runs dir; a clear error lists what exists."""
    candidate = Path(name_or_path).expanduser()
    if (candidate / "config.yaml").exists():
        return RunDir(candidate)
    root = Path(runs_dir or default_runs_dir()).expanduser()
    if (root / name_or_path / "config.yaml").exists():
        return RunDir(root / name_or_path)
    names = [r.name for r in list_runs(root)]
    import difflib

    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    listing = "see `sft-tui runs`" if names else f"no runs in {root} yet; start one with `sft-tui train CONFIG`"
    raise UserError(f"no run named {name_or_path!r}", hint + listing)


def write_pid(run: RunDir, pid: int | None = None) -> None:
    run.pid_path.write_text(str(pid or os.getpid()))
