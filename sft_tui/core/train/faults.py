"""Test-only fault injection for the worker, switched on by ``SFT_TUI_FAULTS`` (never set by users).

The fault-injection tests need faults at exact moments of a real worker's life — a full disk while
a checkpoint is written, a pause mid-checkpoint or mid-final-save to ``kill -9`` into, a NaN loss.
Each is raised from the same call and with the same exception type as the real fault (``torch.save``
raising ``OSError(ENOSPC)``), so the code under test cannot tell the difference. Specs, comma
separated: ``enospc_checkpoint:STEP``, ``pause_checkpoint:STEP``, ``pause_final_save``, ``nan_loss:STEP``,
``slow_step:STEP:SECONDS`` (that one step sleeps, for the stall watchdog's test).
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any

ENV = "SFT_TUI_FAULTS"
PAUSE_SECONDS = 300.0


def active() -> dict[str, str]:
    """{fault name: argument} from the environment."""
    out: dict[str, str] = {}
    for spec in os.environ.get(ENV, "").split(","):
        if spec.strip():
            name, _, arg = spec.strip().partition(":")
            out[name] = arg
    return out


def pause(writer: Any, where: str) -> None:
    """Announce the pause as an event (the test waits for it), then hang until killed."""
    writer.write("log", level="warning", msg=f"test fault: paused {where}")
    time.sleep(PAUSE_SECONDS)


def install(writer: Any) -> None:
    """Wrap ``torch.save`` for the checkpoint faults; a no-op unless ``SFT_TUI_FAULTS`` asks."""
    faults = active()
    wanted = {k: v for k, v in faults.items() if k in ("enospc_checkpoint", "pause_checkpoint")}
    if not wanted:
        return
    import torch

    original = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        path = str(f)
        for name, step in wanted.items():
            if path.endswith(os.path.join(f"checkpoint-{step}", "optimizer.pt")):
                with open(path, "wb") as fh:
                    fh.write(b"PK\x03\x04 partial")  # what a write cut short leaves behind
                if name == "enospc_checkpoint":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
                pause(writer, f"writing {path}")
        return original(obj, f, *args, **kwargs)

    torch.save = save


def nan_at(step: int) -> bool:
    arg = active().get("nan_loss")
    return arg is not None and step >= int(arg or 0)


def final_save_pause(writer: Any) -> None:
    if "pause_final_save" in active():
        pause(writer, "in the final save")


def slow_step(step: int) -> None:
    """Sleep at the end of step ``STEP`` for ``SECONDS`` (``slow_step:STEP:SECONDS``): a stall on demand."""
    arg = active().get("slow_step")
    if not arg:
        return
    at, _, seconds = arg.partition(":")
    if at.strip().isdigit() and int(at) == step:
        time.sleep(float(seconds or 0))
