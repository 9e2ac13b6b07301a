"""Commands reach the worker from its first second: a stop handle and the control.json watcher.

The worker creates both before it imports anything heavy, so a signal or a control command that
arrives while the model loads or the data tokenizes is kept, not lost; the training callback reads
the same handle at every step. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import threading

from sft_tui.core.run.events import EventWriter
from sft_tui.core.run.rundir import RunDir


class StopHandle:
    """"Stop after this step, with a checkpoint": set from a signal handler, a control command or a test."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


class ControlWatcher:
    """Reads control.json from the worker's first second, in a daemon thread.

    A stop or save sent while the model loads or the data tokenizes is therefore never lost: a
    stop before training interrupts the main thread (the run ends ``stopped`` with nothing to
    resume from), a save waits for the first step. A control file that is not a valid command is
    reported once as a warning and ignored. Commands with a seq at or below ``seq_done`` (the seq
    when the worker was launched) were sent to an earlier worker and are not replayed.
    """

    def __init__(self, run: RunDir, writer: EventWriter, stop: StopHandle, seq_done: int,
                 interval: float = 0.25) -> None:
        self.run, self.writer, self.stop = run, writer, stop
        self.seq_done = seq_done
        self.interval = interval
        self.save_pending = threading.Event()
        self.start_now = threading.Event()  # a queued run was told to skip the queue
        self.training = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._seen: tuple[float, int] | None = None
        self._thread = threading.Thread(target=self._loop, name="control-watcher", daemon=True)

    def start(self) -> "ControlWatcher":
        # Recorded so a sender can continue the seq even if control.json is later overwritten with garbage.
        self.writer.write("log", level="debug", msg=f"reading commands after seq {self.seq_done}",
                          control_seq=self.seq_done)
        self.poll()  # a command already waiting is honoured before anything slow starts
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()

    def training_started(self) -> None:
        with self._lock:
            self.training = True

    def request_stop(self, reason: str) -> None:
        """Stop now if nothing has trained yet, else after the current step with a checkpoint.

        "Now" is a KeyboardInterrupt in the main thread: raised directly when called there, else
        through ``interrupt_main`` (which runs the worker's SIGINT handler, which raises it while
        nothing trains). The lock is never held while that happens: the handler runs on top of
        whatever the main thread was doing.
        """
        with self._lock:
            self.stop.request(reason)
            early = not self.training
        if early:
            if threading.current_thread() is threading.main_thread():
                raise KeyboardInterrupt
            import _thread

            _thread.interrupt_main()

    def _loop(self) -> None:
        while not self._closed.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the watcher must never take training down
                self.writer.write("log", level="warning", msg=f"reading control.json failed: {exc}")

    def poll(self) -> None:
        try:
            st = self.run.control_path.stat()
        except OSError:
            return
        key = (st.st_mtime, st.st_size)
        if key == self._seen:
            return  # stat only: the file changes rarely
        self._seen = key
        cmd, problem = self.run.read_control_checked()
        if problem:
            self.writer.write("log", level="warning", msg=f"{problem}; ignored (send commands with `sft-tui stop RUN`)")
            return
        seq = cmd.get("seq", 0)
        if seq <= self.seq_done:
            return
        self.seq_done = seq
        if cmd["command"] == "stop":
            self.writer.write("log", level="info", control_seq=seq, msg="stop requested: " + (
                "saving a checkpoint and ending" if self.training else "ending before training starts"))
            self.request_stop("stop requested")
        elif cmd["command"] == "start":
            self.writer.write("log", level="info", control_seq=seq, msg="start requested: " + (
                "leaving the queue" if not self.training else "already started"))
            self.start_now.set()
        else:
            self.writer.write("log", level="info", control_seq=seq, msg="save requested: writing a checkpoint" + (
                "" if self.training else " after the first step"))
            self.save_pending.set()
