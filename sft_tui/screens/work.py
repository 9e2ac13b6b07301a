"""Background work for screens and widgets: one way to start it, one way back, one way to fail.

* ``@background(group=..., description=...)`` makes a method a thread worker that never exits the
  app on error (``exit_on_error=False``), exclusive within its group unless told otherwise.
* The method returns its result as a ``Message`` (or None); ``Background.on_worker_state_changed``
  posts it on the UI thread once the worker succeeded. Progress on the way is
  ``self.post_message(...)``, which is thread-safe. Workers never touch widgets.
* Expected failures a screen shows in place (a ``UserError`` next to a field) are caught in the
  worker and returned as a Message. Anything else ends the worker with an error: the owner's
  ``work_failed(worker)`` puts the screen back in a usable state, and ``WorkFailed`` goes to the
  app, whose one handler turns it into the error dialog. The app keeps running.

``Worker.StateChanged`` does not bubble (it reaches only the node that owns the worker), which is
why every screen and widget that runs work mixes in ``Background`` and forwards failures itself.
"""

from __future__ import annotations

from typing import Any, Callable

from textual import work
from textual.message import Message
from textual.worker import Worker, WorkerState


def background(*, group: str, description: str, exclusive: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """``@work`` with this project's defaults: a thread, a group, a description, never exit on error."""
    return work(thread=True, exclusive=exclusive, group=group, description=description, exit_on_error=False)


class WorkFailed(Message):
    """A background task raised something unexpected; the app shows it in its error dialog."""

    def __init__(self, worker: Worker, error: BaseException) -> None:
        super().__init__()
        self.worker, self.error = worker, error


class Background:
    """Mixin for a Screen, Widget or App that runs ``@background`` workers."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state == WorkerState.SUCCESS:
            if isinstance(worker.result, Message):
                self.post_message(worker.result)  # type: ignore[attr-defined]
        elif event.state == WorkerState.ERROR and worker.error is not None:
            self.work_failed(worker)
            self.app.post_message(WorkFailed(worker, worker.error))  # type: ignore[attr-defined]

    def work_failed(self, worker: Worker) -> None:
        """Override to undo a 'busy' state when a worker of this node failed (on the UI thread)."""
