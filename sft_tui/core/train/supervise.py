"""The worker as supervisor: place a run on its GPUs (waiting for them if asked), and for more than
one process, start the ranks under torchrun and turn how they ended into the run's final events.

The supervisor is the process whose pid is in ``worker.pid``: it lives in its own session like a
single-process worker, so a dropped SSH link never reaches it, and ``sft-tui stop`` works the same
way — control.json, which every rank reads. A rank that dies or hangs makes torchrun tear the others
down (a hung one through the collective timeout); the supervisor then writes an ``error`` event that
names the rank, its host, how it ended and its last lines, so a multi-GPU run never hangs silently.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

from sft_tui.core.config import DEMO_MODEL, Config
from sft_tui.core.format import human_bytes
from sft_tui.core.run.rundir import FINAL_STATES, RunDir


@dataclass
class Placement:
    """Where a run trains: its world (processes, backend) and the physical GPUs it took."""

    world: Any  # launcher.World
    gpus: list[int]


def _model_folder_for_estimate(config: Config) -> str | None:
    """A folder to estimate memory from, without downloading anything."""
    if config.model.path == DEMO_MODEL:
        from sft_tui.core.models.demo import demo_model_dir, is_built

        return str(demo_model_dir()) if is_built() else None
    if os.path.isdir(os.path.expanduser(config.model.path)):
        return os.path.expanduser(config.model.path)
    try:
        from sft_tui.core.models.load import model_folder

        return model_folder(config)
    except Exception:  # noqa: BLE001 - not downloaded yet: no estimate, wait for a mostly free GPU
        return None


def place(run: RunDir, config: Config, writer: Any, watcher: Any, sampler: Any = None) -> Placement:
    """Choose the run's GPUs (waiting in ``queued`` when asked to) and set the environment for them.

    Sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (CUDA then numbers GPUs as NVML and nvidia-smi do) and
    ``CUDA_VISIBLE_DEVICES`` to the chosen GPUs, before anything in this process touches CUDA. A
    ``CUDA_VISIBLE_DEVICES`` the user set is kept when ``devices`` is ``auto``.
    """
    from sft_tui.core.system.gpus import default_sampler
    from sft_tui.core.train.launcher import resolve_world
    from sft_tui.core.train.queue import choose, need_per_gpu, wait_for_gpus

    sampler = sampler or default_sampler()
    snapshot = sampler.sample()
    t = config.training
    user_set = os.environ.get("CUDA_VISIBLE_DEVICES")
    if user_set is not None and snapshot.available and not isinstance(t.devices, list):
        # The GPUs the user left visible are the ones to choose from (and to wait for).
        from sft_tui.core.system.energy import visible_gpu_indices

        allowed = visible_gpu_indices(user_set, snapshot)
        if allowed is not None:
            sampler = _Only(sampler, allowed)
            snapshot = sampler.sample()
    gpu_count = len(snapshot.gpus) if snapshot.available else 0
    if not gpu_count:
        gpu_count = _cuda_count_without_nvml(config, snapshot, writer)
    chosen: list[int] = []
    if snapshot.available and gpu_count and t.wait_for_gpu:
        need = need_per_gpu(config, _model_folder_for_estimate(config))
        choice = wait_for_gpus(run, config, writer, sampler, need, start_now=watcher.start_now.is_set,
                               holders_of=_holders_of(run))
        chosen = choice.gpus
    elif snapshot.available and gpu_count:
        choice = choose(config, snapshot, 0)
        chosen = choice.gpus
    if chosen:
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, chosen))
        by_index = {g.index: g for g in sampler.sample().gpus}
        described = ", ".join(f"{i} ({human_bytes(by_index[i].mem_free)} free)" if i in by_index and
                              by_index[i].mem_free is not None else str(i) for i in chosen)
        writer.write("log", level="info", msg=f"GPU {described}" + (
            "" if isinstance(t.devices, list) else ": the most free memory"), gpus=chosen)
    world = resolve_world(config, gpu_count, chosen or None)
    return Placement(world, chosen)


class _Only:
    """A sampler that sees only some GPUs (those ``CUDA_VISIBLE_DEVICES`` left to this run)."""

    def __init__(self, sampler: Any, allowed: list[int]) -> None:
        self.sampler, self.allowed = sampler, set(allowed)

    def sample(self) -> Any:
        from sft_tui.core.system.gpus import GpuSnapshot

        snap = self.sampler.sample()
        return GpuSnapshot(snap.available, snap.reason, [g for g in snap.gpus if g.index in self.allowed],
                           snap.driver_version, snap.time)


def _cuda_count_without_nvml(config: Config, snapshot: Any, writer: Any) -> int:
    """GPUs that CUDA sees when NVML cannot (nvidia-ml-py missing, a container without the library):
    a multi-process run must not quietly become CPU processes on a GPU machine."""
    from sft_tui.core.train.queue import wanted_count

    if wanted_count(config) <= 1 and config.training.nodes == 1:
        return 0
    import torch

    if not torch.cuda.is_available():
        return 0
    count = torch.cuda.device_count()
    writer.write("log", level="warning", msg=f"NVML cannot see the GPUs ({snapshot.reason}); {count} GPU(s) counted "
                 "through CUDA instead: no free-memory choice, no queue, no holders (pip install nvidia-ml-py)")
    return count


def _holders_of(run: RunDir):
    """Who holds each GPU, for the queue's reason; None when that cannot be told."""
    try:
        from sft_tui.core.system.holders import holders
    except ImportError:
        return None

    def find(snapshot: Any):
        try:
            return holders(snapshot, run.path.parent)
        except Exception:  # noqa: BLE001 - the reason just says less
            return None

    return find


# ------------------------------------------------------------------ several processes

_ROOT = re.compile(r"Root Cause \(first observed failure\):(.*?)(?:\n=+|\Z)", re.S)
_FIELD = re.compile(r"^\s*(host|rank|exitcode|traceback)\s*:\s*(.*)$", re.M)


@dataclass
class RankFailure:
    rank: int | None
    local_rank: int | None
    host: str | None
    exitcode: int | None
    detail: str  # "killed by signal 9 (SIGKILL)", "exited with code 1"


def parse_failure(text: str) -> RankFailure | None:
    """torchrun's failure summary (its "Root Cause" block) as fields; None when there is none."""
    matches = list(_ROOT.finditer(text))
    if not matches:
        return None
    fields = dict(_FIELD.findall(matches[-1].group(1)))
    rank = local = code = None
    m = re.match(r"(\d+)(?:\s*\(local_rank:\s*(\d+)\))?", fields.get("rank", ""))
    if m:
        rank, local = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    m = re.match(r"(-?\d+)", fields.get("exitcode", ""))
    if m:
        code = int(m.group(1))
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        detail = f"killed by signal {-code} ({name})"
    elif code is not None:
        detail = f"exited with code {code}"
    else:
        detail = "failed"
    return RankFailure(rank, local, fields.get("host") or None, code, detail)


def _read_from(path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _rank_error(run: RunDir, rank: int | None) -> dict[str, Any] | None:
    """The error a rank above 0 recorded in its own events file (kind, message, hint)."""
    if rank is None or rank == 0:
        return None
    from sft_tui.core.run.events import EventTail

    path = run.path / "ranks" / f"rank-{rank}.jsonl"
    events = EventTail(path).read_new() if path.is_file() else []
    return next((ev for ev in reversed(events) if ev.get("type") == "error" and ev.get("message")), None)


class Supervisor:
    """Runs torchrun for a multi-process run and writes how it ended."""

    def __init__(self, run: RunDir, writer: Any, watcher: Any, node_rank: int = 0) -> None:
        from sft_tui.core.run.launch import node_files

        self.run, self.writer, self.watcher = run, writer, watcher
        self.node_rank = node_rank
        self.log_path = node_files(run, node_rank)[0]
        self.proc: subprocess.Popen | None = None

    def forward_stop(self) -> None:
        """A signal to the supervisor becomes a stop every rank reads (after the same step)."""
        try:
            self.run.send("stop")
        except Exception:  # noqa: BLE001 - a signal handler must not raise
            pass

    def run_ranks(self, config: Config, placement: Placement, resume: bool) -> tuple[str | None, int]:
        """Start the ranks and wait; returns (final state to write or None if rank 0 wrote it, exit code)."""
        from sft_tui.core.train import launcher

        world = placement.world
        worker_args = ["--control-seq", str(self.watcher.seq_done)] + (["--resume"] if resume else [])
        launcher.write_launcher_files(world, config, self.run.path, worker_args)
        cmd = launcher.launch_command(world, self.run.path, worker_args)
        env = launcher.launch_env(world, dict(os.environ))
        # From here a stop is for the ranks (they read control.json themselves): nothing to interrupt here.
        self.watcher.training_started()
        self.writer.write("log", level="info", world_size=world.world_size, msg=(
            f"starting {world.world_size} processes with torchrun ({world.nproc_per_node} on this node, "
            f"{world.strategy}, {world.backend})"))
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        rc = self.proc.wait()
        if self.node_rank:  # node 0 writes the run's status; this node reports only its own failure
            if rc != 0:
                self._report(parse_failure(_read_from(self.log_path, start)), rc, world)
            return None, (0 if rc == 0 else 1)
        st = self.run.status()
        if rc == 0:
            return (None if st.state in FINAL_STATES else "done"), 0
        if self.watcher.stop.requested and st.state != "failed":
            # Stopped before training: each rank ends itself when it reads the stop, and torchrun
            # tears down the slower ones — rank 0 may not have written `stopped` by then.
            if st.state != "stopped":
                self.writer.status("stopped", reason="stopped before training started: nothing to resume from; "
                                                     "start the run again when you are ready")
            return None, 130
        if st.state == "failed" and (st.error or {}).get("kind") not in (None, "internal"):
            return None, 1  # rank 0 failed and said why (out of memory, NaN, …): its words stand
        # Otherwise rank 0's error, if any, is a consequence ("connection closed by peer"): name the cause.
        failure = parse_failure(_read_from(self.log_path, start))
        self._report(failure, rc, world)
        return "failed", 1

    def _report(self, failure: RankFailure | None, rc: int, world: Any) -> None:
        from sft_tui.core.train.ranks import rank_log_tail

        if failure is None or failure.rank is None:
            message = f"the training processes ended with code {rc} and torchrun named no failed rank"
            self.writer.write("error", kind="rank_failed", message=message,
                              hint=f"see {self.log_path} for every rank's output")
            return
        from sft_tui.core.train.ranks import collective_timeout, hung_rank, read_heartbeats

        hung = hung_rank(read_heartbeats(self.run.path), lag_s=min(30.0, collective_timeout() / 2))
        if hung is not None and hung[0] != failure.rank:
            # The rank torchrun saw fail only timed out waiting: name the one that stopped answering.
            rank, note, behind = hung
            host = f" on {note.get('host')}" if note.get("host") else ""
            tail = rank_log_tail(self.run, rank)
            message = (f"rank {rank}{host} stopped answering after step {note.get('step')}; {behind:.0f} s later "
                       f"rank {failure.rank} gave up waiting for it ({failure.detail}) and torchrun stopped every rank")
            self.writer.write("error", kind="rank_failed", message=message, rank=rank, host=note.get("host"),
                              exitcode=failure.exitcode, last_lines=tail, world_size=world.world_size,
                              hint=f"a hung rank is often a deadlock in a collective or a stuck GPU; every rank's "
                                   f"output is in {self.log_path}; resume with `sft-tui train --resume {self.run.name}`")
            return
        where = f" on {failure.host}" if failure.host else ""
        own = _rank_error(self.run, failure.rank)
        tail = rank_log_tail(self.run, failure.local_rank if failure.local_rank is not None else failure.rank)
        message = f"rank {failure.rank}{where} {failure.detail}" + (f": {own['message']}" if own else "")
        if failure.exitcode is not None and failure.exitcode < 0:
            message += "; torchrun stopped the other ranks"
        resume = f"`sft-tui train --resume {self.run.name}`" + (" (with --node-rank K on node K)" if world.multi_node else "")
        hint = ("a killed rank is most often the kernel's out-of-memory killer (check `dmesg`) or someone's kill; "
                if failure.exitcode == -9 else "") + f"every rank's output is in {self.log_path}; resume with {resume}"
        kind = "rank_failed"
        if own and own.get("kind") not in (None, "internal"):
            # The rank explained its failure (out of memory, NaN loss, a full disk): keep its kind and fix.
            kind = str(own["kind"])
            hint = f"{own.get('hint') or ''}; every rank's output is in {self.log_path}".lstrip("; ")
        self.writer.write("error", kind=kind, message=message, hint=hint, rank=failure.rank,
                          host=failure.host, exitcode=failure.exitcode, last_lines=tail,
                          world_size=world.world_size)
