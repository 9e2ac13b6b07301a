"""The run directory: the only contract between the UI, the CLI and the worker.

Everything a run knows lives in files so that a run started in one SSH session can be followed
from another and outlives the process that started it. Writers append whole lines and flush;
readers tolerate a torn last line (the writer may be mid-write) by leaving it for the next read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sft_tui.core.config import Config, load_config, save_config
from sft_tui.core.errors import UserError
from sft_tui.core.paths import default_runs_dir
from sft_tui.core.run.events import ACTIVE_STATES, FINAL_STATES, EventTail, EventWriter

COMMANDS = ("stop", "save", "start")  # start: a queued run skips the queue

# Every state in which a worker should be alive (the monitor's name for the protocol's active states).
LIVE_STATES = ACTIVE_STATES

@dataclass
class RunStatus:
    """What a run is doing, derived from its events and whether its worker still lives."""

    name: str
    state: str  # starting|queued|loading|tokenizing|training|evaluating|saving|done|failed|stopped|died|new
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
    last_event: float | None = None
    unreadable: int = 0  # lines of events.jsonl the reader had to skip
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

    def events_unreadable(self) -> bool:
        """events.jsonl is there but cannot be read at all (permissions, not a file): state ``unreadable``."""
        path = self.events_path
        return path.exists() and (not path.is_file() or not os.access(path, os.R_OK))

    @property
    def has_adapter(self) -> bool:
        """The run saved what it trained: a LoRA adapter, or the whole model for full fine-tuning."""
        return (self.adapter_dir / "adapter_config.json").exists() or (self.adapter_dir / "config.json").exists()

    @property
    def has_merged(self) -> bool:
        """An export merged the adapter into the base (``merged/`` holds a plain transformers model)."""
        return (self.merged_dir / "config.json").exists()

    @property
    def has_model(self) -> bool:
        """Something to evaluate, chat with or export."""
        return self.has_adapter or self.has_merged

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, config: Config, runs_dir: str | Path | None = None) -> "RunDir":
        """Make a new run folder with the resolved config written before any worker starts.

        The name goes through the same rule as ``output.run_name`` (so ``--name ../x`` cannot escape
        the runs dir), and two runs created at once with one name get two folders (``mkdir`` is
        the arbiter, not a check beforehand).
        """
        root = runs_root(runs_dir or config.output.runs_dir)
        base = config.output.run_name or _auto_name(config)
        check_run_name(base)
        n = 1
        while True:
            name = base if n == 1 else f"{base}-{n}"
            path = root / name
            if path.parent != root:
                raise UserError(f"run name {name!r} would put the run outside {root}",
                                "use letters, digits, '.', '_' or '-' (no '/' or '..')", kind="config")
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
            except OSError as exc:
                raise _runs_dir_error(root, exc) from None
        run = cls(path)
        config = config.model_copy(deep=True)
        config.output.run_name = name
        config.output.runs_dir = str(root)
        try:
            save_config(config, run.config_path, comments=False)
            run.writer().status("starting")
        except OSError as exc:
            raise _runs_dir_error(root, exc) from None
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
    def send(self, command: str) -> int:
        """Ask the worker to 'stop' (checkpoint and end), 'save' (checkpoint now) or 'start' (a queued run
        starts now, ahead of the queue); returns the seq.

        The seq is above both the file's last one and the clock in milliseconds, so it rises even
        when control.json was garbage (the worker ignores seqs it has handled). Each writer has its
        own temp file and the rename is atomic: two commands at once never share or tear a file.
        """
        if command not in COMMANDS:
            raise UserError(f"unknown command {command!r}", "use 'stop', 'save' or 'start'")
        previous, problem = self.read_control_checked()
        seq = int(previous.get("seq", 0)) + 1
        if problem:  # the file was garbage: continue after the highest seq the worker has seen
            seq = max(seq, self._seen_control_seq() + 1)
        write_atomic(self.control_path, json.dumps({"seq": seq, "command": command, "time": time.time()}))
        return seq

    def _seen_control_seq(self) -> int:
        """The highest control seq the worker recorded in its events (it logs the seq it starts from)."""
        seen = [ev["control_seq"] for ev in self.events() if type(ev.get("control_seq")) is int]
        return max(seen, default=0)

    def control_seq(self) -> int:
        """The seq of the command in control.json now (0 when there is none or it is unreadable)."""
        return int(self.read_control_checked()[0].get("seq", 0))

    def read_control(self) -> dict[str, Any]:
        """The current command, ``{}`` when there is none or the file is not a valid command."""
        return self.read_control_checked()[0]

    def read_control_checked(self) -> tuple[dict[str, Any], str | None]:
        """(command, problem): a file that is not ``{"seq": int, "command": "stop"|"save"}`` is a problem."""
        try:
            raw = self.control_path.read_bytes()
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            return {}, f"control.json cannot be read: {exc.strerror or exc}"
        if len(raw) > 4096:
            return {}, "control.json is too large to be a command"
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return {}, "control.json is not valid JSON"
        if not isinstance(data, dict):
            return {}, "control.json is not a JSON object"
        seq, command = data.get("seq"), data.get("command")
        if type(seq) is not int or not 0 <= seq < 2**63:
            return {}, f"control.json has seq {str(seq)[:40]!r}, not a whole number"
        if command not in COMMANDS:
            return {}, f"control.json has command {str(command)[:40]!r}, not stop, save or start"
        return {"seq": seq, "command": command}, None

    # ------------------------------------------------------------------ derived state
    def all_checkpoints(self) -> list[Path]:
        """Every ``checkpoint-N`` folder, complete or not, by step."""
        try:
            found = [p for p in self.checkpoints_dir.iterdir()
                     if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
        except OSError:
            return []
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def checkpoints(self) -> list[Path]:
        """The checkpoints a resume may use: complete ones only (see ``checkpoint_problem``)."""
        return [p for p in self.all_checkpoints() if checkpoint_problem(p) is None]

    def incomplete_checkpoints(self) -> list[tuple[Path, str]]:
        return [(p, why) for p in self.all_checkpoints() if (why := checkpoint_problem(p)) is not None]

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def set_aside_incomplete(self) -> list[tuple[Path, str]]:
        """Move partial checkpoints out of the trainer's way (into ``incomplete-checkpoints/``).

        Never deleted: a person may still want to look. Returns (new place, why) for each.
        """
        moved = []
        for path, why in self.incomplete_checkpoints():
            target = self.path / "incomplete-checkpoints" / path.name
            n = 1
            while target.exists():
                n += 1
                target = target.with_name(f"{path.name}-{n}")
            target.parent.mkdir(exist_ok=True)
            os.replace(path, target)
            moved.append((target, why))
        return moved

    def status(self, events: list[dict[str, Any]] | None = None) -> RunStatus:
        st = RunStatus(name=self.name, state="new")
        try:
            cfg = self.load_config()
            st.model, st.method = cfg.model.path, cfg.method.type
        except Exception:  # a damaged config must not hide the run from the list
            pass
        if events is None:
            if self.events_unreadable():
                st.state = "unreadable"
                return st
            tail = self.tail()
            events = tail.read_new()
            st.unreadable = tail.unreadable
        for ev in events:
            fold_event(st, ev)
        st = with_liveness(st, self.pid())
        return with_checkpoint(st, self)

    def delete(self) -> None:
        if self.is_alive():
            raise UserError(f"run {self.name} is still running", f"stop it first: sft-tui stop {self.name}")
        shutil.rmtree(self.path)


def fold_event(st: RunStatus, ev: dict[str, Any]) -> None:
    """Update a status with one event; shared by full reads and incremental monitors.

    Events come from ``EventTail``, which has checked every field used here for its type.
    """
    kind = ev.get("type")
    if ev.get("time") is not None:
        st.last_event = ev["time"]
    if kind == "status":
        st.state = ev.get("state", st.state)
        if st.started is None:
            st.started = ev.get("time")
        if st.state in FINAL_STATES:
            st.ended = ev.get("time")
        else:
            st.ended = None
        # Why a queued run waits ("waiting for 22 GiB on GPU 1; 9 GiB free, held by alice: ...").
        if st.state == "queued" and isinstance(ev.get("reason"), str):
            st.extra["queued_reason"] = ev["reason"]
        else:
            st.extra.pop("queued_reason", None)
        if isinstance(ev.get("gpus"), list):
            st.extra["gpus"] = [i for i in ev["gpus"] if isinstance(i, int)]
    elif kind == "ranks":
        if isinstance(ev.get("world_size"), int):
            st.extra["world_size"] = ev["world_size"]
    elif kind == "train":
        if st.state == "evaluating":  # training goes on: the evaluation is over
            st.state = "training"
        st.extra.pop("stall", None)  # steps complete again: the stall is over
        st.step = ev.get("step", st.step)
        st.epoch = ev.get("epoch", st.epoch)
        st.max_steps = ev.get("max_steps", st.max_steps)
        if ev.get("loss") is not None:
            st.last_loss = ev["loss"]
    elif kind == "eval":
        if st.state == "evaluating":  # its results: the evaluation is over, training goes on
            st.state = "training"
        loss = ev.get("eval_loss")
        if loss is not None and (st.best_eval_loss is None or loss < st.best_eval_loss):
            st.best_eval_loss = loss
    elif kind == "checkpoint":
        st.last_checkpoint = ev.get("path")
        st.step = max(st.step, ev.get("step") or 0)  # a stop between logging steps still counts
    elif kind == "error":
        st.error = {k: ev.get(k) for k in ("kind", "message", "hint")}
    elif kind == "log" and ev.get("stall_ended") is True:  # a save or evaluation that stalled has ended
        st.extra.pop("stall", None)
    elif kind == "stall":  # the watchdog's summary (its thread stacks stay in events.jsonl)
        st.extra["stall"] = {k: ev.get(k) for k in ("time", "phase", "silent_s", "median_step_s", "step")}
    elif kind == "energy":  # cumulative over the run: the latest one is the total so far
        kwh = ev.get("kwh")
        if type(kwh) in (int, float) and 0 <= kwh < 1e12:
            st.extra["energy_kwh"] = kwh


def with_liveness(st: RunStatus, pid: int | None) -> RunStatus:
    """Set pid/alive, and call a run in an active state whose worker is gone ``died``.

    The one rule for "died" (``RunDir.status`` and the incremental ``RunIndex`` both apply it): a
    crash, a kill or a reboot leaves an active state with no live worker. A run still ``starting``
    without any pid file yet is simply starting.
    """
    st.pid = pid
    st.alive = pid is not None and pid_alive(pid)
    if st.state in LIVE_STATES and not st.alive and (pid is not None or st.state != "starting"):
        st.state = "died"
        st.ended = st.last_event  # its clock stopped when it did, not now
    return st


def with_checkpoint(st: RunStatus, run: RunDir) -> RunStatus:
    """The newest checkpoint a resume would use, as the disk has it (partial ones never count).

    Only a run without any checkpoint folder keeps what its events said.
    """
    if run.all_checkpoints():
        latest = run.latest_checkpoint()
        st.last_checkpoint = str(latest) if latest is not None else None
    return st


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
    try:
        runs = [RunDir(p) for p in root.iterdir() if (p / "config.yaml").exists()]
    except OSError:  # not there yet, not a folder, or not ours to read: no runs to list
        return []

    def mtime(run: RunDir) -> float:
        try:
            return run.config_path.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(runs, key=mtime)


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
    """Atomically, so a reader never sees an empty or half-written pid file."""
    write_atomic(run.pid_path, str(pid or os.getpid()))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file unique to this writer, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RUN_NAME_MAX = 100


def check_run_name(name: str) -> None:
    """The one rule for run folder names (``output.run_name`` and ``--name``)."""
    from sft_tui.core.config import ConfigError, Problem

    if not RUN_NAME.fullmatch(name or "") or ".." in name:
        raise ConfigError([Problem("output.run_name", name, "not a valid run name",
                                   "use letters, digits, '.', '_' or '-', starting with a letter or digit "
                                   "(no '/' or '..': runs live in the runs dir)")])
    if len(name) > RUN_NAME_MAX:
        raise ConfigError([Problem("output.run_name", name[:40] + "…", f"longer than {RUN_NAME_MAX} characters",
                                   "choose a shorter name")])


def runs_root(runs_dir: str | Path | None = None) -> Path:
    """The runs dir, resolved and created; an unusable one is a UserError that says why."""
    root = Path(runs_dir or default_runs_dir()).expanduser()
    try:
        root = root.resolve()
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _runs_dir_error(root, exc) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"the runs dir {root} is not writable by you",
                        "choose another with --runs-dir or output.runs_dir, or fix its permissions",
                        kind="runs_dir")
    return root


def _runs_dir_error(root: Path, exc: OSError) -> UserError:
    if exc.errno == errno.ENOSPC:
        return UserError(f"no space left on the disk of {root}", "free some space, or choose another runs dir",
                         kind="disk_full")
    if exc.errno == errno.ENAMETOOLONG:
        return UserError(f"the run folder name is too long for the file system in {root}", "choose a shorter name",
                         kind="config")
    what = "is a file, not a folder" if root.is_file() else (exc.strerror or str(exc)).lower()
    return UserError(f"cannot create runs in {root}: {what}",
                     "choose another folder with --runs-dir or output.runs_dir (it must be a writable folder)",
                     kind="runs_dir")


# Files a Trainer checkpoint must hold before a resume may use it (besides the weights).
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a checkpoint a resume can load, or None when it is complete.

    Complete means: trainer state (valid JSON), optimizer, scheduler and RNG state, and the weights
    (a LoRA adapter, or every shard a full model's index names), all non-empty. The trainer writes
    trainer_state.json last, so a kill or a full disk mid-save leaves it missing or the others short.
    """
    try:
        names = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
        folders = {p.name for p in path.iterdir() if p.is_dir()}
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    # Sharded runs keep their optimizer elsewhere: FSDP (through accelerate) as optimizer.bin,
    # DeepSpeed in a global_stepN folder (with its scheduler) named by the `latest` file.
    deepspeed = bool(names.get("latest")) and any(f.startswith("global_step") for f in folders)
    missing = [f for f in CHECKPOINT_FILES if not names.get(f)
               and not (f == "optimizer.pt" and (names.get("optimizer.bin") or deepspeed))
               and not (f == "scheduler.pt" and deepspeed)]
    if not any(n.startswith("rng_state") and size for n, size in names.items()):
        missing.append("rng_state.pth")
    weights = ["adapter_model.safetensors"] if names.get("adapter_model.safetensors") else []
    if not weights and names.get("model.safetensors"):
        weights = ["model.safetensors"]
    if not weights and (names.get("pytorch_model_fsdp.bin") or "pytorch_model_fsdp_0" in folders):
        weights = ["pytorch_model_fsdp"]  # FSDP's own save of the (full or sharded) weights
    if not weights and names.get("model.safetensors.index.json"):
        try:
            index = json.loads((path / "model.safetensors.index.json").read_text())
            weights = sorted(set(index.get("weight_map", {}).values())) or ["(empty weight map)"]
        except (OSError, ValueError, AttributeError):
            weights = ["(unreadable model.safetensors.index.json)"]
        missing += [w for w in weights if not names.get(w)]
    if not weights:
        missing.append("adapter_model.safetensors or model.safetensors")
    if missing:
        return "missing " + ", ".join(missing)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            return "trainer_state.json has no global_step"
    except (OSError, ValueError):
        return "trainer_state.json is damaged"
    return None


def checkpoint_state(path: Path) -> dict[str, Any]:
    """trainer_state.json of a complete checkpoint (global_step, max_steps, num_train_epochs, …)."""
    try:
        data = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
