"""Choosing a run's GPUs, and waiting for them on a server shared with colleagues.

The worker itself waits (``queued`` status, with the reason in words), so the TUI can be closed and
the run still starts when the GPUs free up. Several queued runs on one server take turns in the
order they were queued: a run starts only when the GPUs it needs are free after every earlier
queued run has taken what it needs. Deciding and claiming happen under one lock file in the runs
folder, and a run that has just started (its memory not yet visible to NVML) keeps its claim, so
two runs never take the same free GPU.

GPU indices here are NVML's (``nvidia-smi``'s); the worker sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so
CUDA numbers them the same way.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from sft_tui.core.config import Config
from sft_tui.core.errors import UserError
from sft_tui.core.format import human_bytes
from sft_tui.core.run.rundir import RunDir, list_runs

GIB = 1 << 30
POLL_ENV = "SFT_TUI_QUEUE_POLL_S"  # tests poll faster
DEFAULT_POLL_S = 5.0
# Status states of a run that has claimed GPUs but whose memory NVML may not show yet (a training run
# only until its first step is logged).
CLAIMING_STATES = ("starting", "loading", "tokenizing", "training")
# Without an estimate, a GPU counts as free when this share of its memory is free.
FREE_SHARE_WITHOUT_ESTIMATE = 0.9


@dataclass
class Choice:
    """The GPUs a run gets, or why it must wait."""

    gpus: list[int] = field(default_factory=list)
    reason: str = ""  # empty when the run can start

    @property
    def ready(self) -> bool:
        return not self.reason


def wanted_count(config: Config) -> int:
    devices = config.training.devices
    if devices == "auto":
        return 1
    if isinstance(devices, int):
        return devices
    return len(devices)


def _holder_text(gpu: Any, holders: dict[int, list[Any]] | None) -> str:
    """'held by alice: python train.py' — who to ask, when we can tell."""
    found = (holders or {}).get(gpu.index) or []
    others = [h for h in found if getattr(h, "run_name", None) is None]
    if not others:
        return ""
    top = max(others, key=lambda h: getattr(h, "used_bytes", 0) or 0)
    user = getattr(top, "user", None) or "another user"
    command = getattr(top, "command", None)
    more = f" and {len(others) - 1} more" if len(others) > 1 else ""
    return f", held by {user}" + (f": {command}" if command else "") + more


def choose(config: Config, snapshot: Any, need_bytes: int | None,
           claims: dict[int, int] | None = None, holders: dict[int, list[Any]] | None = None) -> Choice:
    """The GPUs for ``config`` now: the ones it names, or the ones with the most free memory.

    ``need_bytes`` is the free memory each GPU must have (None: most of the GPU); ``claims`` is memory
    already promised to runs ahead in the queue or just started, by GPU index.
    """
    gpus = list(getattr(snapshot, "gpus", []) or [])
    claims = claims or {}
    devices = config.training.devices
    count = wanted_count(config)
    by_index = {g.index: g for g in gpus}
    if isinstance(devices, list):
        missing = [i for i in devices if i not in by_index]
        if missing:
            raise UserError(f"training.devices names GPU {', '.join(map(str, missing))}, but this machine has "
                            f"{len(gpus)} GPU(s) (0..{len(gpus) - 1})", "run `sft-tui gpus` to see them, and fix "
                            "training.devices")
        candidates = [by_index[i] for i in devices]
    else:
        if count > len(gpus):
            raise UserError(f"training.devices asks for {count} GPUs, but this machine has {len(gpus)}",
                            f"set training.devices to {len(gpus) or 'auto'} or fewer")
        candidates = gpus

    def free(g: Any) -> int:
        return max((g.mem_free or 0) - claims.get(g.index, 0), 0)

    def enough(g: Any) -> bool:
        if need_bytes is not None:
            return free(g) >= need_bytes
        total = g.mem_total or 0
        return total > 0 and free(g) >= FREE_SHARE_WITHOUT_ESTIMATE * total

    if isinstance(devices, list):
        short = [g for g in candidates if not enough(g)]
        if not short:
            return Choice(list(devices))
        return Choice(list(devices), _wait_reason(short, need_bytes, free, holders))
    ranked = sorted(candidates, key=lambda g: (-free(g), g.index))
    ok = [g for g in ranked if enough(g)]
    if len(ok) >= count:
        return Choice(sorted(g.index for g in ok[:count]))
    return Choice([], _wait_reason(ranked[len(ok):count], need_bytes, free, holders, wanted=count, ok=len(ok)))


def _wait_reason(short: list[Any], need: int | None, free: Callable[[Any], int],
                 holders: dict[int, list[Any]] | None, wanted: int | None = None, ok: int = 0) -> str:
    g = short[0]
    want = human_bytes(need) if need is not None else f"{int(FREE_SHARE_WITHOUT_ESTIMATE * 100)}% of its memory"
    head = f"waiting for {want} on GPU {g.index}; {human_bytes(free(g))} free{_holder_text(g, holders)}"
    if wanted and wanted > 1:
        head += f" ({ok} of the {wanted} GPUs needed are free enough)"
    elif len(short) > 1:
        head += f" (and {len(short) - 1} more of its GPUs)"
    return head


def need_per_gpu(config: Config, model_folder: str | None) -> int | None:
    """Free memory each GPU needs: the user's figure, else the memory estimate, else None."""
    t = config.training
    if t.wait_memory_gb:
        return int(t.wait_memory_gb * GIB)
    if model_folder is None:
        return None
    try:
        from sft_tui.core.models.describe import describe_model
        from sft_tui.core.models.memory import estimate_for_config

        info = describe_model(Path(model_folder), trust_remote_code=config.model.trust_remote_code)
        return int(estimate_for_config(config, info, world_size=wanted_count(config)).total)  # per GPU
    except Exception:  # noqa: BLE001 - no estimate: wait for a mostly free GPU instead
        return None


@contextmanager
def queue_lock(runs_dir: Path) -> Iterator[None]:
    """One decider at a time across every worker of this runs folder."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(runs_dir / ".gpu-queue.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _queued_at(events: list[dict[str, Any]]) -> float | None:
    """When a run's current wait began: the first ``queued`` of its latest run of them (a resumed
    run queues again at the back, not at the place it had the first time)."""
    began: float | None = None
    previous = None
    for ev in events:
        if ev.get("type") != "status":
            continue
        state = ev.get("state")
        if state == "queued" and previous != "queued":
            began = ev.get("time")
        previous = state
    return began


def ahead_and_claims(me: RunDir) -> tuple[list[tuple[float, RunDir, int | None]], dict[int, int]]:
    """Runs of the same folder queued before ``me`` (oldest first, with the free memory each waits for)
    and the memory claimed by runs that have just started and may not show in NVML yet."""
    mine = _queued_at(me.events()) or time.time()
    ahead: list[tuple[float, RunDir, int | None]] = []
    claims: dict[int, int] = {}
    for run in list_runs(me.path.parent):
        if run.path == me.path:
            continue
        events = run.events()
        st = run.status(events)
        if not st.alive:
            continue
        if st.state == "queued":
            at = _queued_at(events)
            if at is not None and at < mine:
                need = next(e for e in reversed(events) if e.get("type") == "status").get("need_bytes")
                ahead.append((at, run, int(need) if isinstance(need, (int, float)) else None))
        elif st.state in CLAIMING_STATES:
            at = next((i for i in range(len(events) - 1, -1, -1) if events[i].get("type") == "status"
                       and events[i].get("gpus")), None)
            claim = events[at] if at is not None else None
            # Held until its first step: only then do the optimizer states and activations exist.
            if claim is not None and any(e.get("type") == "train" for e in events[at:]):
                claim = None
            if claim and isinstance(claim.get("gpus"), list):
                for index in claim["gpus"]:
                    if isinstance(index, int):
                        claims[index] = claims.get(index, 0) + int(claim.get("claim_bytes") or 0)
    ahead.sort(key=lambda item: item[0])
    return ahead, claims


def wait_for_gpus(run: RunDir, config: Config, writer: Any, sampler: Any, need: int | None,
                  start_now: Callable[[], bool] = lambda: False,
                  holders_of: Callable[[Any], dict[int, list[Any]]] | None = None) -> Choice:
    """Block until the GPUs for ``config`` are free (``queued`` meanwhile), then claim them.

    Returns the choice, already announced as a ``starting`` status carrying the GPUs and the claim
    (what the next queued run deducts). ``start_now`` lets a user skip the queue. A stop arrives as
    KeyboardInterrupt from the worker's control watcher, as for any run that has not started.
    """
    t = config.training
    poll = float(os.environ.get(POLL_ENV, DEFAULT_POLL_S))
    deadline = time.monotonic() + t.wait_timeout_min * 60 if t.wait_timeout_min else None
    last_reason = None
    while True:
        with queue_lock(run.path.parent):
            snapshot = sampler.sample()
            if not snapshot.available:
                # Nothing to wait for: the run uses the CPU (or fails later with the GPU's own reason).
                return Choice([])
            ahead, claims = ahead_and_claims(run)
            for _, other, other_need in ahead:  # earlier runs take their GPUs first
                try:
                    their = choose(other.load_config(), snapshot, other_need, claims)
                except Exception:  # noqa: BLE001 - a neighbour that cannot be placed does not block this run
                    continue
                for index in their.gpus if their.ready else []:
                    claims[index] = claims.get(index, 0) + (other_need or 0)
            holders = holders_of(snapshot) if holders_of is not None else None
            choice = choose(config, snapshot, need, claims, holders)
            forced = start_now()
            if choice.ready or forced:
                if not choice.ready:  # started now by hand: the GPUs it named, or the freest ones
                    choice = Choice(choice.gpus or sorted(g.index for g in sorted(
                        snapshot.gpus, key=lambda g: -(g.mem_free or 0))[:wanted_count(config)]))
                    writer.write("log", level="warning", msg="started now by request, ahead of the queue")
                # Without an estimate the claim is the whole GPU: a zero claim let the next run in.
                by_index = {g.index: g for g in snapshot.gpus}
                claim = need if need is not None else max((by_index[i].mem_total or 0 for i in choice.gpus
                                                           if i in by_index), default=0)
                writer.status("starting", gpus=choice.gpus, claim_bytes=claim)
                return choice
            reason = choice.reason
            if ahead:
                reason += f"; {len(ahead)} run(s) queued before this one"
            if reason != last_reason:
                writer.status("queued", reason=reason, need_bytes=need)
                last_reason = reason
        if deadline is not None and time.monotonic() >= deadline:
            raise UserError(f"gave up waiting for GPUs after {t.wait_timeout_min:g} min: {last_reason}",
                            "raise training.wait_timeout_min, ask the holder to free the GPU, or choose "
                            "other GPUs in training.devices")
        _sleep(poll, start_now)


def _sleep(seconds: float, start_now: Callable[[], bool]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not start_now():
        time.sleep(min(0.2, seconds))
