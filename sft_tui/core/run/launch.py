"""Starting workers: the one place that spawns training processes for the CLI and the TUI."""

from __future__ import annotations

import os
import subprocess
import sys

from sft_tui.core.run.rundir import RunDir, write_atomic, write_pid


def node_files(run: RunDir, node_rank: int) -> tuple:
    """(log, pid file, events file) of node ``node_rank``'s supervisor in a run folder that several
    machines share: node 0 has the run's own; the others keep theirs under ``ranks/`` so they never
    overwrite node 0's pid or status."""
    if node_rank == 0:
        return run.log_path, run.pid_path, run.events_path
    base = run.path / "ranks"
    return base / f"node-{node_rank}.log", base / f"node-{node_rank}.pid", base / f"node-{node_rank}.jsonl"


def start_worker(run: RunDir, resume: bool = False, node_rank: int = 0) -> subprocess.Popen:
    """Start the worker in its own session, detached from this terminal.

    ``start_new_session`` puts the worker outside our process group, so closing the terminal,
    a dropped SSH link or Ctrl-C in the UI never reaches it; only an explicit stop does.
    ``node_rank`` above 0 starts this machine's part of a multi-node run in node 0's run folder.
    """
    # The seq now: any command sent from here on is for this worker, even before it reads the file.
    cmd = [sys.executable, "-m", "sft_tui.worker", str(run.path), "--control-seq", str(run.control_seq())]
    if resume:
        cmd.append("--resume")
    if node_rank:
        cmd += ["--node-rank", str(node_rank)]
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Fewer out-of-memory failures from fragmentation on CUDA; set before the worker imports torch.
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    log_path, pid_path, _ = node_files(run, node_rank)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, close_fds=True,
        )
    finally:
        log.close()
    # Written here too (the worker rewrites it) so a reader never sees a started run without a pid.
    if node_rank:
        write_atomic(pid_path, str(proc.pid))
    else:
        write_pid(run, proc.pid)
    return proc


def start_run(config, runs_dir=None) -> RunDir:
    """Create the run directory for ``config`` and start its worker detached (TUI and CLI share it).

    Node 0 of a multi-node run starts here like any run; the other nodes join its folder from their
    own shell (``sft-tui train CONFIG --node-rank K``), never by creating a run of their own.
    """
    if config.training.node_rank > 0:
        from sft_tui.core.errors import UserError

        raise UserError(f"node {config.training.node_rank} of a multi-node run joins node 0's run, it does not start one",
                        f"start node 0 here (training.node_rank: 0), and on node {config.training.node_rank} run "
                        "the command the launch plan shows (`sft-tui train CONFIG --print-launch`)")
    run = RunDir.create(config, runs_dir=runs_dir)
    start_worker(run)
    return run
