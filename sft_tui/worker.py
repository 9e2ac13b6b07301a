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
    parser.add_argument("--rank-child", action="store_true",
                        help="one rank of a multi-process run, started by torchrun (never by hand)")
    parser.add_argument("--node-rank", type=int, default=0,
                        help="this machine's part of a multi-node run whose folder node 0 made (shared storage)")
    args = parser.parse_args(argv)

    run = RunDir(args.run_dir)
    if not run.exists():
        print(f"error: {run.path} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.rank_child:
        return _rank_main(run, args)
    if args.node_rank:
        from sft_tui.core.run.events import EventWriter
        from sft_tui.core.run.launch import node_files
        from sft_tui.core.run.rundir import write_atomic

        _, pid_path, events_path = node_files(run, args.node_rank)
        write_atomic(pid_path, str(os.getpid()))
        writer = EventWriter(events_path)  # node 0's events are the run's; this node keeps its own
    else:
        write_pid(run)
        writer = run.writer()
    # The first sign of life, before anything slow (torch, transformers, a first demo build): the run
    # says what it is doing from its first second; the recipe reports each later stage the same way.
    from sft_tui.core.train.recipe import STAGE_WORKER, StageProgress

    stages = StageProgress(writer)
    stages(STAGE_WORKER, 0.0)
    if not args.node_rank:  # node 0 reports the run; another node's events are only its own part
        _register_hooks()

    # Commands are read from here on, before anything slow: a stop sent while the model loads counts.
    from sft_tui.core.train.control import ControlWatcher, StopHandle

    seq = args.control_seq if args.control_seq is not None else run.control_seq()
    watcher = ControlWatcher(run, writer, StopHandle(), seq_done=seq)
    supervisor = None

    def on_stop_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        if supervisor is not None and supervisor.proc is not None:
            writer.write("log", level="info", msg=f"signal {signum}: asking every rank to stop after this step")
            supervisor.forward_stop()
            return
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
        from sft_tui.core.train.supervise import Supervisor, place

        config = run.load_config()
        config.training.node_rank = args.node_rank  # the shared config.yaml is node 0's
        placement = place(run, config, writer, watcher)
        if placement.world.multi_process:
            from sft_tui.core.train.recipe import build_demo_first

            build_demo_first(config, writer, stages)  # once, before the ranks start, never by each rank
            supervisor = Supervisor(run, writer, watcher, node_rank=args.node_rank)
            state, code = supervisor.run_ranks(config, placement, args.resume)
            if state is not None:
                writer.status(state)
            return code
        from sft_tui.core.train.recipe import run_training

        state = run_training(run, resume=args.resume, watcher=watcher, stages=stages)
    except BaseException as exc:  # noqa: BLE001 - every failure must become an event
        return _failed(run, writer, exc, watcher)
    finally:
        watcher.close()
    writer.status(state)
    return 0


def _register_hooks() -> None:
    """The settings' notify_command runs here, in the worker: the one process alive when a run ends,
    whether or not anyone is watching."""
    try:
        from sft_tui.core.notify import worker_hook
        from sft_tui.core.run.events import EventWriter
        from sft_tui.core.settings import load_settings
    except ImportError:
        return
    hook = worker_hook(load_settings())
    if hook is not None:
        EventWriter.add_observer(hook)


def _rank_main(run: RunDir, args) -> int:
    """One rank under torchrun: the same recipe, its own writer, the group joined first.

    torchrun tears the ranks down with SIGTERM when one fails, so here SIGTERM ends the process (a
    user's stop comes through control.json, which every rank reads, and ends them after one step).
    """
    from sft_tui.core.train.control import ControlWatcher, StopHandle
    from sft_tui.core.train.ranks import Rank, init_process_group, rank_writer
    from sft_tui.core.train.recipe import StageProgress

    rank = Rank.from_env()
    writer = rank_writer(run, rank)
    if rank.main:  # rank 0 writes the run's done, stopped, stall and out-of-memory events
        _register_hooks()
    stages = StageProgress(writer)
    seq = args.control_seq if args.control_seq is not None else run.control_seq()
    watcher = ControlWatcher(run, writer, StopHandle(), seq_done=seq)
    try:
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        watcher.start()
        init_process_group(rank)
        from sft_tui.core.train.recipe import run_training

        state = run_training(run, resume=args.resume, watcher=watcher, stages=stages, writer=writer, rank=rank)
    except BaseException as exc:  # noqa: BLE001 - every failure must become an event
        return _failed(run, writer, exc, watcher)
    finally:
        watcher.close()
    if rank.main:
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
