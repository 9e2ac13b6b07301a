"""The Textual app: steps as modes, app-wide keys, themes, help, and quitting without losing work.

Screens are imported only when first shown, so start-up never pays for torch or transformers.

Quitting is immediate: the app stops every screen's timers and cancels its workers first, and
background work runs in daemon threads (``DaemonThreadExecutor``), so a GPU sample, an events read
or a tokenizer still loading is abandoned instead of holding the terminal after the app has gone.
Work that writes something a user would miss (an export) is asked about before quitting.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme

from sft_tui.core.errors import explain
from sft_tui.core.setup.session import Session
from sft_tui.core.settings import Settings, load_settings, save_settings
from sft_tui.core.system.gpus import GpuSampler, default_sampler
from sft_tui.core.themes import load_themes
from sft_tui.screens.dialogs import ConfirmScreen, ErrorScreen, HelpScreen
from sft_tui.screens.work import Background, WorkFailed
from sft_tui.widgets.notifier import AppNotifier, RunNotifications
from sft_tui.widgets.stepbar import STEPS

SCREENS_BY_MODE: dict[str, tuple[str, str]] = {
    "model": ("sft_tui.screens.model", "ModelScreen"),
    "data": ("sft_tui.screens.data", "DataScreen"),
    "training": ("sft_tui.screens.training", "TrainingScreen"),
    "monitor": ("sft_tui.screens.monitor", "MonitorScreen"),
    "evaluate": ("sft_tui.screens.evaluate", "EvaluateScreen"),
    "export": ("sft_tui.screens.export", "ExportScreen"),
    "runs": ("sft_tui.screens.runs", "RunsScreen"),
}
STEP_ORDER = [key for key, _ in STEPS]
FKEYS = {"model": "f2", "data": "f3", "training": "f4", "monitor": "f5", "evaluate": "f6", "export": "f7", "runs": "f8"}


# The hint for an unexpected error inside the UI (not the worker's: there is no worker.log to read).
APP_DETAILS = ("this is a bug in sft-tui, not something you did; the app keeps running, so you can carry on. "
               "Please report it with the steps that led here and the message above")


class DaemonThreadExecutor(ThreadPoolExecutor):
    """The event loop's default executor, which Textual's thread workers run in: one daemon thread
    per task. The stock pool's threads are joined when the interpreter exits, so a worker still
    loading a tokenizer or waiting on NVML kept the process alive (a blank terminal for 4-15 s)
    after the app had closed; a daemon thread is simply abandoned once the app has quit. (Until
    then ``shutdown`` joins like the stock pool, which tests' event loops rely on.) Threads are
    cheap next to what these tasks do."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="sft-tui-work")
        self._lock = threading.Lock()
        self.running = 0
        self.abandoned = False  # the app is quitting: results that arrive now go nowhere
        self._live: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            with self._lock:
                self.running += 1
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting worker
                if not self.abandoned:  # (after quitting, the loop it would report to may be closed)
                    future.set_exception(exc)
            else:
                if not self.abandoned:
                    future.set_result(result)
            finally:
                with self._lock:
                    self.running -= 1

        thread = threading.Thread(target=run, name=self._thread_name_prefix, daemon=True)
        with self._lock:
            self._live = [t for t in self._live if t.is_alive()] + [thread]
        thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Join the tasks still running, as the stock pool does when an event loop closes (tests rely on
        it) — unless the app quit: then they are abandoned and end with the process."""
        if not wait or self.abandoned:
            return
        with self._lock:
            live = list(self._live)
        for thread in live:
            thread.join()


def _lazy(module: str, name: str) -> Callable[[], Screen]:
    def make() -> Screen:
        return getattr(importlib.import_module(module), name)()

    return make


class SftApp(Background, App):
    TITLE = "sft-tui"
    CSS_PATH = "app.tcss"
    MODES = {mode: _lazy(*target) for mode, target in SCREENS_BY_MODE.items()}
    BINDINGS = [
        Binding("ctrl+q", "request_quit", "Quit", priority=True, id="quit"),
        Binding("ctrl+n", "next_step", "Next", id="next_step"),
        Binding("ctrl+b", "previous_step", "Back", id="previous_step"),
        *[Binding(key, f"go('{mode}')", mode.capitalize(), show=False, id=f"go_{mode}") for mode, key in FKEYS.items()],
    ]

    def __init__(self, session: Session | None = None, start: str = "model", settings: Settings | None = None,
                 gpu_sampler: GpuSampler | None = None) -> None:
        super().__init__()
        self.session = session or Session()
        self.start_mode = start
        self.settings = settings if settings is not None else load_settings()
        # The one source of GPU samples for every screen that shows GPUs (tests pass a fake one).
        self.gpu_sampler = gpu_sampler if gpu_sampler is not None else default_sampler()
        self._theme_warnings: list[str] = []
        self.pending_run_selection: str | None = None  # a run the Runs screen selects when it lists it
        self.executor: DaemonThreadExecutor | None = None  # the loop's, from on_mount
        self.standalone = False  # run by run_until_quit (a real session, not a test's pilot)
        self.run_notifier = AppNotifier(self)  # toasts and desktop notifications for watched runs
        self._register_themes()

    # ------------------------------------------------------------------ start-up
    def _register_themes(self) -> None:
        themes, self._theme_warnings = load_themes()
        for data in themes:
            try:
                self.register_theme(Theme(**data))
            except (TypeError, ValueError) as exc:
                self._theme_warnings.append(f"theme {data.get('name')}: {exc}")
        wanted = self.settings.theme
        self.theme = wanted if wanted in self.available_themes else "sft-dark"

    def on_mount(self) -> None:
        # Before any screen starts a thread worker (see DaemonThreadExecutor).
        self.executor = DaemonThreadExecutor()
        asyncio.get_running_loop().set_default_executor(self.executor)
        if self.settings.keymap:
            self.set_keymap(self.settings.keymap)
        for warning in [self.settings.warning, *self._theme_warnings]:
            if warning:
                self.notify(warning, severity="warning", timeout=8)
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self.run_notifier.start()
        self.switch_mode(self.start_mode)

    def _remember_theme(self, theme: Theme) -> None:
        if self.settings.theme != theme.name:
            self.settings.theme = theme.name
            try:
                save_settings(self.settings)
            except OSError as exc:
                self.notify(f"could not save the theme choice: {exc}", severity="warning")

    def on_run_notifications(self, message: RunNotifications) -> None:
        self.run_notifier.show(message)

    # ------------------------------------------------------------------ navigation
    def show_run(self, path: str | Path) -> None:
        """Open the Runs screen with the run at ``path`` selected (it picks it up once listed)."""
        self.pending_run_selection = str(path)
        if self.current_mode == "runs":
            screen = self.screen
            getattr(screen, "apply_pending_selection", lambda: None)()
        else:
            self.go_step("runs")

    def go_step(self, step: str) -> None:
        if step in SCREENS_BY_MODE and step != self.current_mode:
            self.switch_mode(step)

    def action_go(self, step: str) -> None:
        self.go_step(step)

    def _step_index(self) -> int:
        return STEP_ORDER.index(self.current_mode) if self.current_mode in STEP_ORDER else 0

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Next/Back only where they lead somewhere: not past the last or first step, not on Runs."""
        if action in ("next_step", "previous_step"):
            if self.current_mode not in STEP_ORDER:
                return False
            index = STEP_ORDER.index(self.current_mode)
            return index < len(STEP_ORDER) - 1 if action == "next_step" else index > 0
        return True

    def action_next_step(self) -> None:
        self.go_step(STEP_ORDER[min(self._step_index() + 1, len(STEP_ORDER) - 1)])

    def action_previous_step(self) -> None:
        self.go_step(STEP_ORDER[max(self._step_index() - 1, 0)])

    def action_help(self) -> None:
        screen = self.screen
        if isinstance(screen, HelpScreen):
            return
        title = getattr(screen, "TITLE", "") or "sft-tui"
        body = getattr(screen, "HELP", "") or ""
        self.push_screen(HelpScreen(title, body))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, (_, cls_name) in SCREENS_BY_MODE.items():
            label = cls_name.removesuffix("Screen")
            yield SystemCommand(f"Go to {label}", f"Open the {label.lower()} screen ({FKEYS[mode].upper()})",
                                lambda m=mode: self.go_step(m))
        yield SystemCommand("Help", "Explain the current screen (F1)", self.action_help)
        # Screens add their own actions by defining ``commands()`` → (title, help, callback).
        for title, help_text, callback in getattr(screen, "commands", lambda: [])():
            yield SystemCommand(title, help_text, callback)

    # ------------------------------------------------------------------ errors
    def on_work_failed(self, message: WorkFailed) -> None:
        """The one place a failed background task of any screen or widget becomes a readable dialog."""
        info = explain(message.error, details=APP_DETAILS)
        self.show_error(info.message, info.hint)

    def show_error(self, message: str, hint: str = "", title: str = "Something went wrong") -> None:
        top = self.screen_stack[-1] if self.screen_stack else None
        if isinstance(top, ErrorScreen) and (top.message, top.hint, top.title_text) == (message, hint, title):
            return  # the same failure again (a polling worker): one dialog is enough
        self.push_screen(ErrorScreen(message, hint, title))

    # ------------------------------------------------------------------ quitting
    def action_request_quit(self) -> None:
        """Ask before losing an unsaved config or an export in progress; say that a running worker keeps going."""
        run = self.session.run
        running = run is not None and run.is_alive()
        busy = self._busy_writing()
        if self.session.dirty:
            self.push_screen(
                ConfirmScreen("Your training config has unsaved changes. Quit anyway?"
                              + (f"\n\nRun {run.name} keeps training in the background." if running else "")
                              + (f"\n\n{busy} is still going: quitting stops it." if busy else ""),
                              [("cancel", "Keep editing"), ("quit", "Discard and quit")]),
                lambda choice: self.quit_now() if choice == "quit" else None,
            )
        elif busy:
            self.push_screen(
                ConfirmScreen(f"{busy} is still going: quitting stops it and leaves what it wrote unfinished."
                              + (f"\n\nRun {run.name} keeps training in the background." if running else ""),
                              [("cancel", "Stay"), ("quit", "Quit anyway")]),
                lambda choice: self.quit_now() if choice == "quit" else None,
            )
        elif running:
            self.push_screen(
                ConfirmScreen(f"Run {run.name} keeps training in the background after you quit.\n"
                              f"Re-attach any time with: sft-tui attach {run.name}",
                              [("quit", "Quit, keep training"), ("cancel", "Stay")]),
                lambda choice: self.quit_now() if choice == "quit" else None,
            )
        else:
            self.quit_now()

    def _busy_writing(self) -> str | None:
        """What a screen is writing that quitting would cut short (a screen's ``busy_writing()``)."""
        for stack in self._screen_stacks.values():
            for screen in stack:
                what = getattr(screen, "busy_writing", lambda: None)()
                if what:
                    return str(what)
        return None

    def quit_now(self, code: int = 0) -> None:
        """Stop every screen's timers and cancel every worker, then exit: nothing new starts while the
        app closes, and work still running in a thread is abandoned (daemon threads)."""
        for stack in self._screen_stacks.values():
            for screen in stack:
                stop = getattr(screen, "stop_background", None)
                if stop is not None:
                    stop()
                for node in (screen, *screen.walk_children()):
                    for timer in list(getattr(node, "_timers", ())):  # Textual's own record of a node's timers
                        timer.stop()
        self.workers.cancel_all()
        if self.executor is not None:
            self.executor.abandoned = True
        self.exit(code)

    def exit(self, *args: Any, **kwargs: Any) -> None:
        if self.standalone and self.executor is not None:
            self.executor.abandoned = True  # however a real session ends, it does not wait for threads
        super().exit(*args, **kwargs)


def run_app(config_path: str | None = None, attach: str | None = None, runs_dir: str | None = None) -> int:
    """Entry point for ``sft-tui`` and ``sft-tui attach RUN`` (errors before start-up exit 2)."""
    from sft_tui.core.run.rundir import find_run

    session = Session.from_file(config_path) if config_path else Session()
    session.runs_dir = Path(runs_dir) if runs_dir else None
    start = "model"
    if attach:
        session.run = find_run(attach, runs_dir)
        start = "monitor"
    app = SftApp(session=session, start=start)
    return run_until_quit(app)


def run_until_quit(app: SftApp, **run_kwargs: Any) -> int:
    """Run ``app``; its exit code (non-zero after a crash). Also makes the interpreter's own exit quick:
    with torch and transformers loaded, its final garbage collection took seconds after the app had
    already gone, so everything alive at exit is frozen out of it (``gc.freeze``), as short-lived
    tools do; the OS reclaims the memory at once."""
    import atexit
    import gc

    atexit.register(gc.freeze)
    app.standalone = True
    result = app.run(**run_kwargs)
    if app.return_code:  # the app crashed (Textual printed the traceback): never exit 0 then
        return app.return_code
    return int(result or 0)
