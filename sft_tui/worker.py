"""The training worker: ``python -m sft_tui.worker RUN_DIR [--resume]``.

The only process that trains. It owns the GPU, writes everything to the run directory, and turns
every failure into an ``error`` event with a hint plus a ``failed`` status and a non-zero exit, so
a run never dies silently. It ignores SIGHUP (a dropped SSH link must not kill training) and treats
SIGTERM/SIGINT as "stop": checkpoint, save the adapter, end with status ``stopped``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from sft_tui.core.run.rundir import RunDir, write_pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_tui.worker", description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args = parser.parse_args(argv)

    run = RunDir(args.run_dir)
    if not run.exists():
        print(f"error: {run.path} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    write_pid(run)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    writer = run.writer()

    callbacks: list = []

    def on_stop_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        if callbacks:
            callbacks[0].request_stop()
            writer.write("log", level="info", msg=f"signal {signum}: stopping after this step")
        else:
            raise KeyboardInterrupt

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)

    from sft_tui.core.errors import explain
    from sft_tui.core.train.recipe import run_training

    try:
        state = run_training(run, resume=args.resume, stop_flag=callbacks)
    except BaseException as exc:  # noqa: BLE001 - every failure must become an event
        traceback.print_exc()  # the full trace goes to worker.log for whoever debugs it
        info = explain(exc)
        if info.kind == "interrupted":
            writer.status("stopped", reason="interrupted before training started")
            return 130
        writer.write("error", kind=info.kind, message=info.message, hint=info.hint)
        writer.status("failed")
        return 1
    writer.status(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
