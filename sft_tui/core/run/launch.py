"""Starting workers: the one place that spawns training processes for the CLI and the TUI."""

from __future__ import annotations

import os
import subprocess
import sys

from sft_tui.core.run.rundir import RunDir, write_pid


def start_worker(run: RunDir, resume: bool = False) -> subprocess.Popen:
    """Start the worker in its own session, detached from this terminal.

    ``start_new_session`` puts the worker outside our process group, so closing the terminal,
    a dropped SSH link or Ctrl-C in the UI never reaches it; only an explicit stop does.
    """
    # The seq now: any command sent from here on is for this worker, even before it reads the file.
    cmd = [sys.executable, "-m", "sft_tui.worker", str(run.path), "--control-seq", str(run.control_seq())]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Fewer out-of-memory failures from fragmentation on CUDA; set before the worker imports torch.
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    log = open(run.log_path, "ab")
    try:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, close_fds=True,
        )
    finally:
        log.close()
    # Written here too (the worker rewrites it) so a reader never sees a started run without a pid.
    write_pid(run, proc.pid)
    return proc


def start_run(config, runs_dir=None) -> RunDir:
    """Create the run directory for ``config`` and start its worker detached (TUI and CLI share it)."""
    run = RunDir.create(config, runs_dir=runs_dir)
    start_worker(run)
    return run
