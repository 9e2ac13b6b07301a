"""The frame every step screen shares: step bar on top, keys in the footer, help on F1/?, GPU samples."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from sft_tui.screens.work import Background, background
from sft_tui.widgets.stepbar import StepBar


class GpusSampled(Message):
    """One GPU snapshot from the app's sampler, with the processes of a run's worker when asked, and
    who holds each GPU (``{index: [Holder]}``, None without GPUs) for the gauges' holder lines."""

    def __init__(self, snapshot: Any, pids: list[int] | None = None, rss: int | None = None,
                 holders: dict[int, list[Any]] | None = None) -> None:
        super().__init__()
        self.snapshot, self.pids, self.rss, self.holders = snapshot, pids or [], rss, holders

    def can_replace(self, message: Message) -> bool:  # only the newest sample matters
        return isinstance(message, GpusSampled)


class StepScreen(Background, Screen):
    """Subclasses set STEP (a key of the step bar), TITLE and HELP and implement compose_body."""

    STEP = ""
    TITLE = ""
    HELP = "No help for this screen yet."

    BINDINGS = [
        Binding("f1", "app.help", "Help", id="help"),
        Binding("question_mark", "app.help", "Help", show=False, id="help_question"),
    ]

    gpus: Any = None  # the latest GpuSnapshot, for screens that compare estimates with free memory

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP, id="stepbar")
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    # ------------------------------------------------------------------ GPUs
    @background(group="gpus", description="sample the GPUs")
    def sample_gpus(self, run: Any = None) -> GpusSampled:
        """NVML calls can block, so the app's one sampler is read in a thread. With ``run``, also the
        worker's process tree (whose GPU memory is ours) and, without a GPU, its resident memory."""
        from sft_tui.core.run.processes import process_tree, tree_rss

        snapshot = self.app.gpu_sampler.sample()  # type: ignore[attr-defined]
        pid = run.pid() if run is not None else None
        pids = process_tree(pid) if pid else []
        rss = tree_rss(pid) if pids and not snapshot.available else None
        return GpusSampled(snapshot, pids, rss, self._holders(snapshot))

    def _holders(self, snapshot: Any) -> dict[int, list[Any]] | None:
        """Who holds each GPU (psutil and the runs dir, so in this thread too); None without GPUs."""
        if not getattr(snapshot, "available", False):
            return None
        from sft_tui.core.system.holders import holders

        session = getattr(self.app, "session", None)
        try:
            return holders(snapshot, getattr(session, "runs_dir", None))
        except Exception:  # noqa: BLE001 - the gauges draw without holders rather than not at all
            return None

    def on_gpus_sampled(self, message: GpusSampled) -> None:
        self.gpus = message.snapshot
        self.gpus_sampled(message)

    def gpus_sampled(self, message: GpusSampled) -> None:
        """Override to react to a new GPU snapshot (``self.gpus`` is already set)."""

    # ------------------------------------------------------------------ shared
    @property
    def session(self):
        """The app-wide setup in progress (``sft_tui.core.setup.session.Session``)."""
        return self.app.session  # type: ignore[attr-defined]

    def on_step_bar_selected(self, message: StepBar.Selected) -> None:
        self.app.go_step(message.step)  # type: ignore[attr-defined]
