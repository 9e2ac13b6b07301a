"""The ``sft-tui`` command: the TUI with no arguments, headless sub-commands otherwise.

Output and exit codes are an API: 0 success, 1 the run or check failed, 2 the input was wrong
(bad config, unknown run, missing file), 130 interrupted. Nothing here prints a traceback for a
problem the user can fix; heavy libraries are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sft_tui import __version__
from sft_tui.core.config import (
    Config,
    ConfigError,
    Environment,
    apply_preset,
    dump_yaml,
    load_config,
    preset_about,
    preset_names,
)
from sft_tui.core.errors import UserError
from sft_tui.core.format import STATE_STYLES, fixed, human_duration, human_time
from sft_tui.core.run.events import FINAL_STATES, format_event
from sft_tui.core.run.rundir import RunDir, find_run, list_runs

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- config


def cmd_config_validate(args: argparse.Namespace) -> int:
    """The schema, then the pre-flight (files, model, data, disk, memory) unless --no-env."""
    env = None if args.no_env else Environment.detect()
    try:
        config = load_config(args.file, env=env)
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"valid": False, "problems": [p.to_dict() for p in exc.problems]}, indent=2))
        else:
            err_console.print(f"[bold red]{args.file}: {len(exc.problems)} problem(s)[/]")
            for prob in exc.problems:
                err_console.print(f"  ✗ {prob}", markup=False)
        return 2
    report = None
    if not args.no_env:
        from sft_tui.core.train.preflight import preflight

        report = preflight(config, env, deep=not args.quick, runs_dir=args.runs_dir, gpus=_gpus())
    valid = report is None or report.ok
    if args.json:
        print(json.dumps({"valid": valid, "config": config.to_dict(),
                          "problems": [f.to_dict() for f in report.errors] if report else [],
                          "warnings": [f.to_dict() for f in report.warnings] if report else [],
                          "preflight": report.to_dict() if report else None}, indent=2, default=str))
        return 0 if valid else 2
    if report is not None:
        _print_findings(report, args.file)
    if valid:
        console.print(f"[green]✓[/] {args.file} is valid ({config.method.type} on {config.model.path})"
                      + ("" if report is None else " and ready to start"))
        return 0
    return 2


def _gpus() -> Any:
    """The GPUs now, for the memory check (none found is an empty snapshot, never an error)."""
    try:
        from sft_tui.core.system.gpus import sample_gpus

        return sample_gpus()
    except Exception:  # noqa: BLE001 - no NVML, no GPU: the memory check is skipped
        return None


def _print_findings(report: Any, source: str) -> None:
    errors, warnings = report.errors, report.warnings
    if errors:
        err_console.print(f"[bold red]{source}: {len(errors)} problem(s) would stop the run[/]")
        for f in errors:
            err_console.print(f"  ✗ {f}" + ("  (can be overridden with --force)" if f.forceable else ""),
                              markup=False)
    for f in warnings:
        err_console.print(f"  ! {f}", markup=False)


def cmd_config_new(args: argparse.Namespace) -> int:
    config = Config()
    if args.preset:
        config = apply_preset(config, args.preset)
    if args.model:
        config.model.path = args.model
    if args.data:
        config.data.path = args.data
    text = dump_yaml(config, comments=True)
    if args.preset:
        text = f"# preset: {args.preset} — {preset_about(args.preset)}\n" + text
    sys.stdout.write(text)
    return 0


def cmd_config_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        console.print(f"[bold]{name}[/]: {preset_about(name)}")
    return 0


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from sft_tui.core.run.launch import start_worker

    from sft_tui.core.run.rundir import check_run_name
    from sft_tui.core.train.preflight import preflight

    env = Environment.detect()
    if getattr(args, "preflight", False):
        return cmd_train_preflight(args, env)
    if getattr(args, "print_launch", False) or getattr(args, "sbatch", None):
        return cmd_train_launch_plan(args)
    if args.resume:
        from sft_tui.core.train.resume import plan_resume

        run = find_run(args.resume, args.runs_dir)
        if getattr(args, "node_rank", None):  # node K's part of resuming a multi-node run
            config = run.load_config()
            config.training.node_rank = args.node_rank
            return _join_as_node(config, argparse.Namespace(**{**vars(args), "runs_dir": str(run.path.parent)}),
                                 resume=True)
        if run.is_alive():
            raise UserError(f"run {run.name} is already running", f"follow it with: sft-tui logs {run.name} --follow")
        plan = plan_resume(run)  # refuses a finished run, or one without a complete checkpoint
        report = preflight(run.load_config(), env, deep=False, runs_dir=run.path.parent, gpus=_gpus())
        report.raise_if_blocked(args.force, str(run.config_path))
        for note in plan.notes():
            err_console.print(note, markup=False)
        run.writer().status("starting", resume=True)
    else:
        if not args.config:
            raise UserError("give a config file or --resume RUN", "create a config with: sft-tui config new > run.yaml")
        from sft_tui.core.train.launcher import load_node_config

        # --node-rank / --master-addr go in before validation (a multi-node file may lack master_addr)
        config = load_node_config(args.config, env, getattr(args, "node_rank", None),
                                  getattr(args, "master_addr", None))
        if args.name:
            check_run_name(args.name)
            config.output.run_name = args.name
        report = preflight(config, env, deep=True, runs_dir=args.runs_dir, gpus=_gpus())
        for f in report.warnings:
            err_console.print(f"  ! {f}", markup=False)
        report.raise_if_blocked(args.force, args.config)  # refused before any run folder exists
        if config.training.node_rank > 0:
            return _join_as_node(config, args)
        run = RunDir.create(config, runs_dir=args.runs_dir)
        if config.training.nodes > 1 and run.name != config.output.run_name and config.output.run_name:
            run.delete()
            raise UserError(f"a run named {config.output.run_name} already exists in {run.path.parent}, and every "
                            "node of a multi-node run must find it by that name",
                            "choose a new --name (the same on every node), or delete the old run")
    proc = start_worker(run, resume=bool(args.resume))
    if args.detach:
        print(run.path)
        err_console.print(f"worker started (pid {proc.pid}); follow with: sft-tui logs {run.name} --follow")
        return 0
    code = follow_with_progress(run, notify=not getattr(args, "no_notify", False))
    if code != 130:
        try:
            proc.wait(timeout=60)  # let the worker finish writing before we report
        except Exception:  # noqa: BLE001 - a slow exit must not turn success into a crash
            pass
    return code


# How long a node other than 0 waits for node 0 to create the shared run folder: torchrun's own
# rendezvous waits 10 minutes for every node, so a node started first waits as long here.
JOIN_TIMEOUT_S = 600.0


def _join_as_node(config: Any, args: argparse.Namespace, resume: bool = False) -> int:
    """Node K > 0 of a multi-node run: wait for node 0's run folder (shared storage), start this
    machine's ranks in it, and follow the run as node 0 reports it."""
    from sft_tui.core.run.launch import node_files, start_worker
    from sft_tui.core.run.rundir import runs_root

    k = config.training.node_rank
    name = config.output.run_name
    if not name:
        raise UserError(f"node {k} joins node 0's run by its name, and none was given",
                        "give every node the same --name (`sft-tui train CONFIG --print-launch` shows the commands)")
    run = RunDir(runs_root(args.runs_dir or config.output.runs_dir) / name)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    if not run.exists():
        err_console.print(f"waiting for node 0 to create {run.path} (shared storage)…", markup=False)
    while not run.exists():
        if time.monotonic() >= deadline:
            raise UserError(f"node 0 did not create {run.path} within {JOIN_TIMEOUT_S / 60:.0f} minutes",
                            "start node 0 first, and keep output.runs_dir on storage every node shares")
        time.sleep(1.0)
    proc = start_worker(run, resume=resume, node_rank=k)
    log = node_files(run, k)[0]
    if args.detach:
        print(run.path)
        err_console.print(f"node {k} started (pid {proc.pid}); its output: {log}", markup=False)
        return 0
    # Node 0's worker.pid names a process on node 0, so the run's liveness cannot be judged here:
    # this node waits for its own part, and says how the run stands when that ends.
    err_console.print(f"node {k}: training its part of run {run.name} (node 0 reports the run: sft-tui logs "
                      f"{run.name} --follow there); this node's output: {log}", markup=False)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        err_console.print(f"node {k} keeps training in the background; stop the whole run with "
                          f"`sft-tui stop {run.name}`", markup=False)
        return 130
    state = next((e.get("state") for e in reversed(run.events()) if e.get("type") == "status"), None)
    err_console.print(f"node {k}: its processes ended " + ("cleanly" if code == 0 else f"with code {code}")
                      + (f"; the run is {state}" if state else ""), markup=False)
    return 0 if code == 0 else 1


def cmd_train_launch_plan(args: argparse.Namespace) -> int:
    """`train CONFIG --print-launch` / `--sbatch FILE`: how the run starts on each node; starts nothing.

    The config is checked without this machine (it may be a login node planning for GPU nodes), and
    the GPUs per node are --gpus-per-node, else this machine's (a single-node run starts here), else
    as many as training.devices asks.
    """
    from pathlib import Path

    from sft_tui.core.models.memory import gpu_count
    from sft_tui.core.train.launcher import load_node_config, print_launch, sbatch_script

    if not args.config or args.resume:
        raise UserError("--print-launch and --sbatch plan a config file, not a run",
                        "use: sft-tui train CONFIG --print-launch")
    if args.sbatch:
        # SLURM supplies node 0's address when the job starts; the script passes it on.
        config = load_node_config(args.config, None, None, args.master_addr or "$MASTER_ADDR")
        per_node = args.gpus_per_node  # the compute nodes', not this machine's: None takes the request
        # srun starts in the submit directory, but an absolute path survives a `cd` in the script too
        text = sbatch_script(config, str(Path(args.config).resolve()), gpus_per_node=per_node)
        Path(args.sbatch).write_text(text, encoding="utf-8")
        err_console.print(f"wrote {args.sbatch}; submit it with: sbatch {args.sbatch}", markup=False)
    if args.print_launch:
        config = load_node_config(args.config, None, args.node_rank, args.master_addr)
        per_node = args.gpus_per_node
        if per_node is None and config.training.nodes == 1:
            per_node = gpu_count(_gpus())  # a single-node run starts on this machine
        sys.stdout.write(print_launch(config, per_node, args.config, runs_dir=args.runs_dir, run_name=args.name))
    return 0


def cmd_train_preflight(args: argparse.Namespace, env: Environment) -> int:
    """`train CONFIG --preflight`: estimate vs measured vs free memory; 0 fits, 1 does not, 2 bad input."""
    from sft_tui.core.format import human_bytes
    from sft_tui.core.train.measure import measured_preflight
    from sft_tui.core.train.preflight import preflight

    if not args.config or args.resume:
        raise UserError("--preflight measures a config file, not a run", "use: sft-tui train CONFIG --preflight")
    config = load_config(args.config, env=env)
    report = preflight(config, env, deep=True, runs_dir=args.runs_dir, gpus=_gpus())
    for f in report.warnings:
        err_console.print(f"  ! {f}", markup=False)
    report.raise_if_blocked(True, args.config)  # what cannot be measured is bad input (exit 2)
    result = measured_preflight(config, say=lambda msg: err_console.print(msg, markup=False))
    if getattr(args, "json", False):
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0 if result.fits else 1
    table = Table(title=f"measured pre-flight ({result.device})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for name, value in result.rows():
        table.add_row(name, value)
    console.print(table)
    if result.measurement.error and not result.measurement.oom and not result.measurement.ok:
        console.print(f"[red]the measurement failed:[/] {result.measurement.error}")
        return 2
    for p in result.proposals:
        peak = p.measurement.peak
        console.print(f"  {'✓' if p.fits else '✗'} {p.text}: "
                      f"{human_bytes(peak) if peak else (p.measurement.error or 'n/a')} "
                      f"({', '.join(f'{k}={v}' for k, v in p.changes.items())})", markup=False)
    if result.fits:
        console.print("[green]fits[/]: start it with sft-tui train " + args.config)
        return 0
    good = next((p for p in result.proposals if p.fits), None)
    console.print("[red]does not fit[/]" + (f": set {', '.join(f'{k}: {v}' for k, v in good.changes.items())}"
                                            if good else ": no measured setting fits this memory"))
    return 1


def _terminal_notifier(run: RunDir, notify: bool = True) -> Any:
    """The notifier that writes desktop-notification escapes to this terminal, or None.

    Made before any live display takes over ``sys.stdout``, so it holds the real stream: the
    escapes must reach the terminal as bytes, not as text for rich to print.
    """
    if not notify:
        return None
    from sft_tui.core.notify import terminal_notifier

    return terminal_notifier(run)


def follow_with_progress(run: RunDir, notify: bool = True) -> int:
    """Draw the run until it ends; Ctrl-C asks the worker to stop (a second one detaches).

    Ctrl-C is caught as a flag rather than an exception so it never breaks the event reader
    mid-read: the worker runs in its own session and only hears about it through control.json.
    ``notify``: tell the terminal (a desktop notification, the bell) when the run ends, fails or stalls.
    """
    import signal

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console.print(f"run directory: {run.path}")
    notifier = _terminal_notifier(run, notify)
    interrupts = [0]
    handled = 0
    final: dict[str, Any] = {}
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupts.__setitem__(0, interrupts[0] + 1))
    try:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[steps]}"),
            TextColumn("{task.fields[metrics]}"), TimeRemainingColumn(), console=console, transient=False,
        ) as progress:
            task = progress.add_task("starting", total=None, metrics="", steps="")
            for ev in run.follow(poll=0.3, heartbeat=True):
                if interrupts[0] > handled:
                    handled = interrupts[0]
                    if handled == 1:
                        run.send("stop")
                        progress.console.print("stopping: the worker saves a checkpoint and the adapter "
                                               "(Ctrl-C again to leave it running in the background)")
                    else:
                        progress.console.print(f"left running; follow with: sft-tui logs {run.name} --follow")
                        return 130
                if ev is None:
                    continue  # heartbeat: no new event, but a chance to notice Ctrl-C
                _show_event(progress, task, ev, final)
                if notifier is not None:
                    notifier.feed(ev)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    if notifier is not None:
        notifier.finish()  # a worker that vanished without a final status is news too
    state = final.get("state") or run.status().state
    if state in ("done", "stopped"):
        console.print(f"[green]{state}[/]: adapter saved in {run.adapter_dir}")
        return 0
    console.print(f"[red]{state}[/]: see {run.log_path}")
    return 1


def _show_event(progress: Any, task: Any, ev: dict[str, Any], final: dict[str, Any]) -> None:
    kind = ev["type"]
    if kind == "status":
        progress.update(task, description=ev["state"])
        if ev["state"] in FINAL_STATES:
            final.update(ev)
    elif kind == "train":
        metrics = f"loss {fixed(ev.get('loss'), '.4f')}" if ev.get("loss") is not None else ""
        if ev.get("tokens_per_s"):
            metrics += f"  {fixed(ev['tokens_per_s'], '.0f')} tok/s"
        step, total = ev.get("step", 0), ev.get("max_steps")
        progress.update(task, total=total, completed=step, metrics=metrics,
                        steps=f"{step}/{total}" if total else str(step))
    elif kind == "eval":
        progress.console.print(f"step {ev.get('step')}: eval loss {fixed(ev.get('eval_loss'), '.4f')}")
    elif kind == "checkpoint":
        progress.console.print(f"checkpoint saved: {ev.get('path')}")
    elif kind == "error":
        progress.console.print(f"[bold red]error:[/] {ev.get('message')}", markup=True)
        if ev.get("hint"):
            progress.console.print(f"  hint: {ev['hint']}")
    elif kind == "log" and ev.get("level") in ("warning", "error"):
        progress.console.print(f"{ev['level']}: {ev.get('msg')}")


# --------------------------------------------------------------------------- runs / logs / stop


def _status(run: RunDir) -> Any:
    """A run's status; one that cannot be read at all is listed as ``unreadable``, never fatal."""
    from sft_tui.core.run.rundir import RunStatus

    try:
        return run.status()
    except Exception:  # noqa: BLE001 - one damaged run must not hide the others
        return RunStatus(name=run.name, state="unreadable")


# The runs table's columns, and the order they give way in on a narrow terminal: the run name and
# status are what every other command needs, so they are never dropped or shortened; the model and
# method are usually in the name already.
RUN_COLUMNS = ("run", "status", "model", "method", "step", "loss", "best eval", "started", "duration")
RUN_COLUMNS_DROP_ORDER = ("method", "model", "started", "duration", "best eval", "loss", "step")


def _run_cells(st: Any) -> dict[str, str]:
    step = f"{st.step}/{st.max_steps}" if st.max_steps else str(st.step)
    return {"run": st.name, "status": st.state, "model": str(st.model or "-"), "method": str(st.method or "-"),
            "step": step, "loss": fixed(st.last_loss, ".4f"), "best eval": fixed(st.best_eval_loss, ".4f"),
            "started": human_time(st.started), "duration": human_duration(st.duration)}


def runs_plain(rows: list[dict[str, str]]) -> str:
    """The runs as aligned plain text for a pipe or a file: every value in full, never cut or wrapped.

    The run name and status come first and never hold a space, so ``awk '{print $1}'`` gives the names.
    """
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in RUN_COLUMNS}
    lines = []
    for r in [dict(zip(RUN_COLUMNS, RUN_COLUMNS))] + rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in RUN_COLUMNS).rstrip())
    return "\n".join(lines)


def runs_table(rows: list[dict[str, str]], width: int, target: Console | None = None) -> tuple[Table, list[str]]:
    """The runs table for a terminal ``width`` columns wide, and the columns left out to fit it.

    Less important columns give way first (RUN_COLUMNS_DROP_ORDER), each time trying the boxed
    table and then a borderless one; the run name and status are always shown whole: at a width
    too small even for them the name folds onto a second line rather than being cut with an ellipsis.
    """
    from rich import box
    from rich.measure import Measurement

    measure = target or Console(width=width, force_terminal=True)
    options = measure.options.update_width(100_000)  # the table's natural width, not one clamped to the screen

    def build(columns: list[str], compact: bool, fold: bool = False) -> Table:
        table = (Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)) if compact
                 else Table())
        for col in columns:
            longest = max([len(col)] + [len(r[col]) for r in rows])
            if fold and col == "run":
                table.add_column(col, overflow="fold")
            else:
                table.add_column(col, no_wrap=True, min_width=longest)
        for r in rows:
            table.add_row(*[Text(r[c], style=STATE_STYLES.get(r[c], "")) if c == "status" else r[c]
                            for c in columns])
        return table

    columns = list(RUN_COLUMNS)
    hidden: list[str] = []
    for drop in (None,) + RUN_COLUMNS_DROP_ORDER:
        if drop is not None:
            columns.remove(drop)
            hidden.append(drop)
        for compact in (False, True):
            table = build(columns, compact)
            if Measurement.get(measure, options, table).maximum <= width:
                return table, hidden
    return build(columns, True, fold=True), hidden


def cmd_runs(args: argparse.Namespace) -> int:
    runs = list_runs(args.runs_dir)
    statuses = [_status(run) for run in runs]
    if args.json:
        rows = []
        for st, run in zip(statuses, runs):
            rows.append({**st.to_dict(), "path": str(run.path)})
        print(json.dumps(rows, indent=2))
        return 0
    if not statuses:
        console.print("no runs yet; start one with: sft-tui train CONFIG")
        return 0
    cells = [_run_cells(st) for st in statuses]
    if console.is_terminal:
        table, hidden = runs_table(cells, console.width, console)
        console.print(table)
        if hidden:
            console.print(f"[dim]hidden at this width: {', '.join(c for c in RUN_COLUMNS if c in hidden)} "
                          "(`sft-tui runs --json` has every field)[/]")
    else:
        print(runs_plain(cells), flush=True)
    for st in statuses:
        if st.unreadable:
            err_console.print(f"note: {st.name}: {st.unreadable} line(s) of events.jsonl could not be read and were "
                              "skipped", markup=False)
        if st.state == "queued" and st.extra.get("queued_reason"):
            print(f"{st.name}: {st.extra['queued_reason']} (start it now: sft-tui start {st.name}; "
                  f"cancel: sft-tui stop {st.name})", flush=True)
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    """A queued run starts now, ahead of the queue, on the GPUs it would have waited for."""
    run = find_run(args.run, args.runs_dir)
    st = run.status()
    if st.state != "queued" or not st.alive:
        raise UserError(f"run {run.name} is not waiting in the queue (status: {st.state})",
                        "only a queued run can be started now")
    run.send("start")
    console.print(f"asked {run.name} to start now, ahead of the queue")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    run = find_run(args.run, args.runs_dir)
    show: Callable[[dict[str, Any]], None]
    if args.json:
        def show(ev: dict[str, Any]) -> None:
            print(json.dumps(ev), flush=True)
    else:
        def show(ev: dict[str, Any]) -> None:
            if args.all or ev.get("type") not in ("memory", "progress", "ranks", "energy"):
                print(format_event(ev), flush=True)
    if not args.follow:
        for ev in run.events():
            show(ev)
        return 0
    # JSON lines piped to a program must stay JSON lines: no escapes there.
    quiet = getattr(args, "no_notify", False) or (args.json and not sys.stdout.isatty())
    notifier = _terminal_notifier(run, notify=not quiet)
    try:
        for ev in run.follow(poll=0.5):
            show(ev)
            if notifier is not None:
                notifier.feed(ev)  # only events newer than this command fire, once each
    except KeyboardInterrupt:
        return 130
    if notifier is not None:
        notifier.finish()
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    run = find_run(args.run, args.runs_dir)
    if not run.is_alive():
        st = run.status()
        raise UserError(f"run {run.name} is not running (status: {st.state})", "nothing to stop")
    run.send("stop")
    console.print(f"asked {run.name} to stop; it saves a checkpoint and the adapter first")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while run.is_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        console.print(f"status: {run.status().state}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sft_tui.core.models.demo import ensure_demo_model

    path = ensure_demo_model(progress=lambda msg: err_console.print(msg), force=args.rebuild)
    print(path)
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from sft_tui.app import run_app

    return run_app(config_path=args.config, attach=getattr(args, "run", None), runs_dir=args.runs_dir)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sft-tui", description="Fine-tune language models from your terminal. With no command, opens the app."
    )
    parser.add_argument("--version", action="version", version=f"sft-tui {__version__}")
    parser.add_argument("--config", help="open the app with this config loaded")
    parser.add_argument("--runs-dir", help="folder holding run directories (default: sft-tui's data dir)")
    parser.set_defaults(func=cmd_tui)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--runs-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    cfg = sub.add_parser("config", help="create and check run configs")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = cfg_sub.add_parser("validate", help="report every problem in a config file (exit 2 if any)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-env", action="store_true",
                   help="check the schema only: skip the pre-flight against this machine (files, model, GPU)")
    p.add_argument("--quick", action="store_true", help="pre-flight without reading the data or the tokenizer")
    p.set_defaults(func=cmd_config_validate)
    p = cfg_sub.add_parser("new", help="print a commented starting config")
    p.add_argument("--preset", choices=preset_names())
    p.add_argument("--model", help="model path, hub id or 'demo'")
    p.add_argument("--data", help="training data path")
    p.set_defaults(func=cmd_config_new)
    p = cfg_sub.add_parser("presets", help="list presets")
    p.set_defaults(func=cmd_config_presets)
    from sft_tui.cli_interop import register_config_actions

    register_config_actions(cfg_sub)  # config import / config export (peers' formats)

    p = add("train", cmd_train, "train from a config in a worker process")
    p.add_argument("config", nargs="?")
    p.add_argument("--detach", action="store_true", help="start the worker in the background and return")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its newest checkpoint")
    p.add_argument("--name", help="run name (default: model, method and time)")
    p.add_argument("--force", action="store_true",
                   help="start even if the pre-flight's estimates (memory, disk, batch vs rows) say it will fail")
    p.add_argument("--no-notify", action="store_true",
                   help="no desktop notification or bell when the run ends, fails or stalls")
    p.add_argument("--preflight", action="store_true",
                   help="measure a few real steps on the longest batch in a throwaway process and show estimate vs "
                        "measured vs free memory (exit 0 fits, 1 does not, 2 bad input); starts no run")
    p.add_argument("--node-rank", type=int, metavar="N",
                   help="this machine's number in a multi-node run, from 0 (overrides training.node_rank)")
    p.add_argument("--master-addr", metavar="HOST",
                   help="address of node 0 in a multi-node run (overrides training.master_addr)")
    p.add_argument("--print-launch", action="store_true",
                   help="print the command to run on each node and the torchrun line it starts; starts nothing")
    p.add_argument("--sbatch", metavar="FILE", help="write a SLURM batch script for this config; starts nothing")
    p.add_argument("--gpus-per-node", type=int, metavar="N",
                   help="with --print-launch/--sbatch: GPUs on each node (0: CPU processes); default: this "
                        "machine's, or as many as training.devices asks")

    p = add("runs", cmd_runs, "list runs with status, step and loss")
    p.add_argument("--json", action="store_true")

    p = add("logs", cmd_logs, "print a run's events")
    p.add_argument("run")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    p.add_argument("--json", action="store_true", help="raw JSON lines")
    p.add_argument("--all", action="store_true", help="include memory, progress, per-rank and energy events")
    p.add_argument("--no-notify", action="store_true",
                   help="with --follow: no desktop notification or bell when the run ends, fails or stalls")

    p = add("stop", cmd_stop, "ask a running worker to checkpoint and stop")
    p.add_argument("run")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--timeout", type=float, default=120.0)

    p = add("start", cmd_start, "start a queued run now, without waiting for its GPUs to free up")
    p.add_argument("run")

    p = add("attach", cmd_tui, "open the training monitor for a run")
    p.add_argument("run")
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)

    p = add("demo", cmd_demo, "build (or locate) the built-in demo model and print its folder")
    p.add_argument("--rebuild", action="store_true")

    for module in ("sft_tui.cli_data", "sft_tui.cli_models", "sft_tui.cli_eval"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "runs_dir"):
        args.runs_dir = None
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        err_console.print(f"error: {len(exc.problems)} problem(s) in {exc.source or 'the config'}:", markup=False)
        for prob in exc.problems:
            err_console.print(f"  ✗ {prob}", markup=False)
        return 2
    except UserError as exc:
        err_console.print(f"error: {exc.message}", markup=False)
        if exc.hint:
            err_console.print(f"  hint: {exc.hint}", markup=False)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        from sft_tui.core.errors import explain

        info = explain(exc)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        err_console.print(f"error: {exc.strerror or info.message}{where}", markup=False)
        err_console.print("  hint: " + (info.hint if info.kind == "disk_full" else
                                        "check that the path exists and that you may read and write it"),
                          markup=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
