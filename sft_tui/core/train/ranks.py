"""One rank of a multi-process run: who it is, how it meets the others, what it reports.

Under torchrun every rank runs the same recipe; the differences are kept here so the recipe reads
the same for one process and for many:

- only rank 0 writes the run's ``events.jsonl``, checkpoints and adapter; the other ranks write their
  events to ``ranks/rank-N.jsonl`` (the supervisor quotes them when a rank fails);
- every rank reads control.json, and at each step the ranks agree (one tiny all-reduce) on whether
  to stop or save, so a stop seen by one rank a step before another never leaves a rank waiting in a
  collective that the others skipped;
- at each log step the ranks all-gather what each measured on its own — time in the forward pass,
  time waiting for data, tokens of its own batches, memory — and rank 0 writes one ``ranks`` event,
  from which the monitor shows a row per rank and names a straggler. Wall time per step is the same
  on every rank (they meet at the gradient all-reduce), so it cannot show a straggler; the local
  forward and data times can.

Nothing here is imported by a single-process run.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_tui.core.run.events import EventWriter
from sft_tui.core.run.rundir import RunDir

# A collective that waits this long means a rank is gone or hung: it raises, torchrun tears the
# other ranks down and the supervisor reports which rank failed. Long enough for a slow checkpoint
# of a large model (every rank waits at the save's barrier), short enough that a hang costs minutes,
# not the night. The launcher's environment may set another value.
TIMEOUT_ENV = "SFT_TUI_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0

# A rank whose own work per step (forward + waiting for data) is this much above the median of all
# ranks is named as the straggler.
STRAGGLER_RATIO = 1.3


@dataclass(frozen=True)
class Rank:
    rank: int
    local_rank: int
    world_size: int
    host: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Rank":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)), socket.gethostname())


def rank_writer(run: RunDir, rank: Rank) -> EventWriter:
    """Rank 0 writes the run's events; the others keep their own file beside it."""
    if rank.main:
        return run.writer()
    return EventWriter(run.path / "ranks" / f"rank-{rank.rank}.jsonl")


def collective_timeout() -> float:
    try:
        return max(float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)), 1.0)
    except ValueError:
        return DEFAULT_TIMEOUT_S


def init_process_group(rank: Rank) -> str:
    """Join the other ranks before anything slow, so a rank that cannot join fails in seconds.

    NCCL on GPUs (each rank on its own device), gloo on CPU. transformers and accelerate find the
    group already initialised and use it, with this timeout.
    """
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(rank.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=collective_timeout()))
    return backend


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _device_tensor(values: list[float]):
    import torch
    import torch.distributed as dist

    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    return torch.tensor(values, dtype=torch.float32, device=device)


def agree(stop: bool, save: bool) -> tuple[bool, bool]:
    """Whether any rank wants to stop or save now: every rank gets the same answer."""
    import torch.distributed as dist

    flags = _device_tensor([float(stop), float(save)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0].item()), bool(flags[1].item())


def rank_work(row: dict[str, Any]) -> float | None:
    """A rank's own work per step: its forward pass plus its wait for data (what tells a straggler,
    since wall time per step is the same on every rank); None when it has no measurement."""
    forward, data = row.get("forward_s"), row.get("data_s")
    if isinstance(forward, bool) or not isinstance(forward, (int, float)):
        return None
    return float(forward) + (float(data) if isinstance(data, (int, float)) and not isinstance(data, bool) else 0.0)


def work_ratios(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Each measured rank's work as a multiple of the median of all; empty under two measured ranks."""
    work = {r["rank"]: w for r in rows if type(r.get("rank")) is int and (w := rank_work(r)) is not None}
    if len(work) < 2:
        return {}
    ordered = sorted(work.values())
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {rank: w / median for rank, w in work.items()} if median > 0 else {}


def slowest(rows: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(rank, its work as a multiple of the median) of the slowest rank, or None."""
    ratios = work_ratios(rows)
    if not ratios:
        return None
    rank = max(ratios, key=lambda r: (ratios[r], -r))
    return rank, ratios[rank]


def stragglers(rows: list[dict[str, Any]], ratio: float = STRAGGLER_RATIO) -> list[int]:
    """Ranks whose own work per step is ``ratio`` × the median or more. A rank with no figure is
    never named here (a rank that stops reporting ends the run through the collective timeout)."""
    return sorted(r for r, x in work_ratios(rows).items() if x >= ratio)


def _tokens_of(args: tuple, kwargs: dict) -> int:
    mask = kwargs.get("attention_mask")
    ids = kwargs.get("input_ids", args[0] if args else None)
    try:
        if mask is not None:
            return int(mask.sum().item())
        if ids is not None:
            return int(ids.numel())
    except Exception:  # noqa: BLE001 - an odd input must not break training
        pass
    return 0


def heartbeat_path(run_path: Path, rank: int) -> Path:
    return Path(run_path) / "ranks" / f"alive-{rank}.json"


HEARTBEAT_S = 2.0


def beat(run_path: Path, rank: Rank, step: int) -> None:
    """A rank's sign of life: its last finished step, and now. A thread writes it every few seconds
    while the rank trains, so a rank frozen as a whole (stopped, swapped out, stuck in the kernel)
    falls behind the others, which stay fresh while they wait for it in a collective: after the
    collective timeout, the oldest note names the rank that stopped, not the one that gave up."""
    import json

    from sft_tui.core.run.rundir import write_atomic

    try:
        write_atomic(heartbeat_path(run_path, rank.rank), json.dumps(
            {"step": step, "time": time.time(), "host": rank.host, "pid": os.getpid()}))
    except OSError:
        pass  # a full disk shows elsewhere; a missing heartbeat only makes a hang report vaguer


def read_heartbeats(run_path: Path) -> dict[int, dict[str, Any]]:
    import json

    out: dict[int, dict[str, Any]] = {}
    for path in (Path(run_path) / "ranks").glob("alive-*.json"):
        try:
            rank = int(path.stem.split("-", 1)[1])
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            continue
        if isinstance(data, dict) and isinstance(data.get("time"), (int, float)):
            out[rank] = data
    return out


def hung_rank(beats: dict[int, dict[str, Any]], lag_s: float = 30.0) -> tuple[int, dict[str, Any], float] | None:
    """(rank, its last note, seconds behind the next oldest) when one rank fell silent well before
    the others, else None."""
    if len(beats) < 2:
        return None
    ordered = sorted(beats.items(), key=lambda item: item[1]["time"])
    (rank, note), (_, next_note) = ordered[0], ordered[1]
    behind = next_note["time"] - note["time"]
    return (rank, note, behind) if behind >= lag_s else None


def make_callback(rank: Rank, writer: EventWriter, device: str, stop: Any, run_path: Path | None = None):
    """The rank callback (imports transformers, so only rank processes build it)."""
    from transformers import TrainerCallback

    from sft_tui.core.train.callback import memory_snapshot

    class RankCallback(TrainerCallback):
        """Keeps the ranks in step on stop/save, and gathers each rank's own measurements."""

        def __init__(self) -> None:
            self.stop = stop
            self.forward_s = 0.0
            self.data_s = 0.0
            self.tokens = 0
            self.steps = 0
            self._fwd_start: float | None = None
            self._step_end: float | None = None
            self._window_start = time.monotonic()
            self._hooked = False

        def _hook(self, model) -> None:
            if self._hooked or model is None:
                return
            self._hooked = True

            def before(module, args, kwargs):  # noqa: ARG001 - hook signature
                self._fwd_start = time.perf_counter()
                if module.training:
                    self.tokens += _tokens_of(args, kwargs)

            def after(module, args, output):  # noqa: ARG001
                if self._fwd_start is not None and module.training:
                    self.forward_s += time.perf_counter() - self._fwd_start
                self._fwd_start = None

            model.register_forward_pre_hook(before, with_kwargs=True)
            model.register_forward_hook(after)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._hook(model)
            self._window_start = time.monotonic()
            self._step = state.global_step
            if run_path is not None:
                import threading

                self._alive = threading.Event()

                def pulse() -> None:
                    while not self._alive.wait(HEARTBEAT_S):
                        beat(run_path, rank, self._step)

                beat(run_path, rank, self._step)
                threading.Thread(target=pulse, name="rank-heartbeat", daemon=True).start()

        def on_train_end(self, args, state, control, **kwargs):
            if getattr(self, "_alive", None) is not None:
                self._alive.set()

        def on_step_begin(self, args, state, control, **kwargs):
            if self._step_end is not None:
                self.data_s += time.monotonic() - self._step_end

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1
            self._step = state.global_step
            # A user's stop (not the end of training, which every rank reaches at the same step anyway).
            stop_now, save = agree(self.stop.requested, bool(control.should_save))
            if stop_now:
                self.stop.request("another rank was asked to stop")  # this rank ends `stopped` too
                control.should_training_stop = True
                control.should_save = True
            elif save:
                control.should_save = True
            self._step_end = time.monotonic()
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            import torch.distributed as dist

            now = time.monotonic()
            window = max(now - self._window_start, 1e-6)
            steps = max(self.steps, 1)
            mine = {
                "rank": rank.rank, "local_rank": rank.local_rank, "host": rank.host, "pid": os.getpid(),
                "step_time_s": round(window / steps, 5), "forward_s": round(self.forward_s / steps, 5),
                "data_s": round(self.data_s / steps, 5), "tokens_per_s": round(self.tokens / window, 2),
                "memory": memory_snapshot(device).get("peak"),
            }
            self.forward_s = self.data_s = 0.0
            self.tokens = self.steps = 0
            self._window_start = now
            rows: list[Any] = [None] * rank.world_size
            dist.all_gather_object(rows, mine)
            if rank.main:
                rows = sorted((r for r in rows if isinstance(r, dict)), key=lambda r: r["rank"])
                writer.write("ranks", step=state.global_step, world_size=rank.world_size, ranks=rows,
                             tokens_per_s=round(sum(r["tokens_per_s"] for r in rows), 2),
                             stragglers=stragglers(rows))

    return RankCallback()


def rank_log_tail(run: RunDir, rank: int, lines: int = 12) -> list[str]:
    """The last lines a rank printed (torchrun's per-rank log files under ``ranks/``), newest last."""
    found: list[Path] = []
    root = run.path / "ranks"
    if root.is_dir():
        for path in root.rglob("*"):
            if not path.is_file() or path.stat().st_size == 0:
                continue
            parts = path.relative_to(root).parts
            # torchrun: ranks/<run id>/attempt_0/<local rank>/{stdout,stderr}.log
            if len(parts) >= 2 and parts[-2] == str(rank) and path.name in ("stderr.log", "stdout.log"):
                found.append(path)
    out: list[str] = []
    for path in sorted(found, key=lambda p: (p.name != "stdout.log", p.stat().st_mtime)):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        out += [line for line in text.splitlines() if line.strip()]
    return out[-lines:]
