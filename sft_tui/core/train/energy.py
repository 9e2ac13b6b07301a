"""The run's GPU energy as ``energy`` events: {joules, kwh, gpus}, cumulative over the whole run.

A TrainerCallback beside ``EventCallback``: it reads NVML at every log (so the power trapezoid has
fine steps where a GPU has no energy counter) and writes an event at most once a minute and at the
end, so ``sft-tui logs`` is not flooded. The GPUs measured are the ones the run may use
(``CUDA_VISIBLE_DEVICES``, else all). Only the process that writes events (rank 0) measures; on CPU
nothing is measured or written. A resumed run starts from the last ``energy`` event's joules, so the
figure covers every session of the run.

Only the worker imports this module (it imports transformers).
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from sft_tui.core.run.events import EventWriter
from sft_tui.core.run.rundir import RunDir
from sft_tui.core.system.energy import EnergyMeter, visible_gpu_indices


def previous_joules(run: RunDir | None) -> float:
    """Joules recorded by earlier sessions of the run (its last ``energy`` event), 0 if none."""
    if run is None:
        return 0.0
    last = 0.0
    for ev in run.events():
        if ev.get("type") == "energy":
            value = ev.get("joules")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                last = float(value)
    return last


class EnergyCallback(TrainerCallback):
    """Samples GPU energy on each log and writes ``energy`` events through the run's writer."""

    def __init__(self, writer: EventWriter, device: str, run: RunDir | None = None,
                 meter: EnergyMeter | None = None, every: float = 60.0) -> None:
        self.writer, self.device, self.run, self.every = writer, device, run, every
        self.meter = meter
        self._started = False
        self._written_at: float | None = None

    def _meter(self) -> EnergyMeter | None:
        """Built on first use (rank 0 only): the GPUs of this run, continuing a resumed run's total."""
        if self.meter is None and not self._started:
            self._started = True
            if self.device != "cuda":
                return None
            from sft_tui.core.system.gpus import default_sampler

            sampler = default_sampler()
            snapshot = sampler.sample()
            if not snapshot.available:
                return None
            self.meter = EnergyMeter(sampler, visible_gpu_indices(None, snapshot), start_joules=previous_joules(self.run))
            self.meter.sample(snapshot)
        return self.meter

    def _measure(self, state: Any, final: bool = False) -> None:
        if not getattr(state, "is_world_process_zero", True):
            return
        try:
            meter = self._meter()
            if meter is None:
                return
            meter.sample()
            now = time.monotonic()
            due = final or self._written_at is None or now - self._written_at >= self.every
            if due and meter.joules is not None and meter.gpus:
                self._written_at = now
                self.writer.write("energy", joules=round(meter.joules, 1), kwh=round(meter.kwh or 0.0, 6),
                                  gpus=meter.gpus)
        except Exception:  # noqa: BLE001 - an energy figure is never worth a failed run
            pass

    def on_train_begin(self, args, state, control, **kwargs):
        self._measure(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._measure(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._measure(state, final=True)
