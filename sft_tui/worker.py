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
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--control-seq", type=int, default=None,
                        help="seq of control.json when the worker was launched (later commands are for it)")
    args = parser.parse_args(argv)

    run = RunDir(args.run_dir)
    if not run.exists():
        print(f"error: {run.path} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    write_pid(run)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    writer = run.writer()
    # The first sign of life, before anything slow (torch, transformers, a first demo build): the run
    # says what it is doing from its first second; the recipe reports each later stage the same way.
    from sft_tui.core.train.recipe import STAGE_WORKER, StageProgress

    stages = StageProgress(writer)
    stages(STAGE_WORKER, 0.0)

    # Commands are read from here on, before anything slow: a stop sent while the model loads counts.
    from sft_tui.core.train.control import ControlWatcher, StopHandle

    seq = args.control_seq if args.control_seq is not None else run.control_seq()
    watcher = ControlWatcher(run, writer, StopHandle(), seq_done=seq)

    def on_stop_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        if not watcher.stop.requested:  # a stop from control.json arrives here too (interrupt_main)
            writer.write("log", level="info", msg=f"signal {signum}: " + (
                "stopping after this step" if watcher.training else "stopping before training starts"))
        watcher.stop.request(f"signal {signum}")
        if not watcher.training:
            raise KeyboardInterrupt

    try:
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, on_stop_signal)
        signal.signal(signal.SIGINT, on_stop_signal)
        watcher.start()
        from sft_tui.core.train.recipe import run_training

        state = run_training(run, resume=args.resume, watcher=watcher, stages=stages)
    except BaseException as exc:  # noqa: BLE001 - every failure must become an event
        return _failed(run, writer, exc, watcher)
    finally:
        watcher.close()
    writer.status(state)
    return 0


def _failed(run: RunDir, writer, exc: BaseException, watcher) -> int:
    """Every way a worker can fail ends as events: stopped before training, or error + failed."""
    from sft_tui.core.errors import explain

    if isinstance(exc, KeyboardInterrupt) or (watcher.stop.requested and not watcher.training):
        writer.status("stopped", reason="stopped before training started: nothing to resume from; "
                                        "start the run again when you are ready")
        return 130
    traceback.print_exc()  # the full trace goes to worker.log for whoever debugs it
    info = explain(exc, disk=run.path)
    writer.write("error", kind=info.kind, message=info.message, hint=info.hint)
    writer.status("failed")
    return 1


if __name__ == "__main__":
    sys.exit(main())
