"""Energy a run's GPUs used, from NVML: joules, kWh and what that cost.

Called periodically (the training callback does so at each log), ``EnergyMeter`` adds up, per GPU,
the difference of NVML's energy counter (millijoules since the driver loaded; exact, Volta and newer)
and, where a GPU has no counter or the counter went backwards (driver reload), the trapezoid of two
power readings over the time between them. Without a GPU — or without any GPU of the run reporting
either — nothing is known and the meter says ``None``; it never raises into the training loop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from sft_tui.core.system.gpus import GpuSampler, GpuSnapshot, GpuStats

JOULES_PER_KWH = 3_600_000.0


@dataclass
class _Reading:
    when: float
    energy_mj: int | None
    power_w: float | None


class EnergyMeter:
    """Integrates the energy of the GPUs ``indices`` (NVML indices; None: every GPU) across calls."""

    def __init__(self, sampler: GpuSampler | None = None, indices: Iterable[int] | None = None,
                 clock: Callable[[], float] = time.monotonic, start_joules: float = 0.0) -> None:
        self.sampler = sampler
        self.indices = None if indices is None else sorted(set(indices))
        self.clock = clock
        self._last: dict[int, _Reading] = {}
        self._total = float(start_joules)
        self._known = start_joules > 0

    def sample(self, snapshot: GpuSnapshot | None = None) -> float | None:
        """Take one reading (from ``snapshot`` when given, else from the sampler); returns ``joules``."""
        try:
            if snapshot is None:
                if self.sampler is None:
                    from sft_tui.core.system.gpus import default_sampler

                    self.sampler = default_sampler()
                snapshot = self.sampler.sample()
            self._add(snapshot, self.clock())
        except Exception:  # noqa: BLE001 - energy is a nicety; a training step must never fail for it
            pass
        return self.joules

    def _add(self, snapshot: GpuSnapshot, now: float) -> None:
        if not snapshot.available:
            return
        for gpu in snapshot.gpus:
            if self.indices is not None and gpu.index not in self.indices:
                continue
            reading = _Reading(now, gpu.energy_mj, gpu.power_w)
            if reading.energy_mj is None and reading.power_w is None:
                continue
            before = self._last.get(gpu.index)
            self._last[gpu.index] = reading
            self._known = True
            if before is not None:
                self._total += _joules_between(before, reading)

    @property
    def gpus(self) -> list[int]:
        """The GPUs measured so far."""
        return sorted(self._last)

    @property
    def joules(self) -> float | None:
        return self._total if self._known else None

    @property
    def kwh(self) -> float | None:
        return None if self.joules is None else self.joules / JOULES_PER_KWH

    def cost(self, price_per_kwh: float | None) -> float | None:
        """What the energy cost at ``price_per_kwh``; None when either is unknown."""
        kwh = self.kwh
        return None if kwh is None or price_per_kwh is None else kwh * price_per_kwh


def _joules_between(before: _Reading, after: _Reading) -> float:
    """The counter difference when both readings have it and it rose; else the power trapezoid."""
    if before.energy_mj is not None and after.energy_mj is not None and after.energy_mj >= before.energy_mj:
        return (after.energy_mj - before.energy_mj) / 1000.0
    seconds = after.when - before.when
    if before.power_w is not None and after.power_w is not None and seconds > 0:
        return (before.power_w + after.power_w) / 2.0 * seconds
    return 0.0


def visible_gpu_indices(value: str | None = None, snapshot: GpuSnapshot | None = None) -> list[int] | None:
    """The NVML indices a process may use, from ``CUDA_VISIBLE_DEVICES`` (``value`` overrides it).

    None means every GPU (unset). Integers are physical indices (NVML's order is PCI bus order, as
    CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``); a ``GPU-…`` UUID or unique prefix is matched against
    the snapshot. CUDA stops at the first invalid entry, and so does this.
    """
    if value is None:
        value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    gpus: list[GpuStats] = snapshot.gpus if snapshot is not None else []
    out: list[int] = []
    for token in (t.strip() for t in value.split(",")):
        if not token:
            break
        if token.lstrip("-").isdigit():
            if int(token) < 0:
                break
            out.append(int(token))
            continue
        matches = [g.index for g in gpus if g.uuid and g.uuid.startswith(token)]
        if len(matches) != 1:
            break
        out.append(matches[0])
    return out


def format_kwh(kwh: float) -> str:
    """'1.23 kWh', '0.0456 kWh', '123 kWh': three figures, however small the run."""
    if kwh >= 100:
        return f"{kwh:.0f} kWh"
    if kwh >= 1:
        return f"{kwh:.2f} kWh"
    return f"{kwh:.3g} kWh"


def format_money(amount: float, currency: str = "") -> str:
    """'€0.37' for a symbol, '0.37 EUR' for a code, '0.37' with no currency."""
    if not currency:
        return f"{amount:.2f}"
    if currency.isalpha() and len(currency) > 1:
        return f"{amount:.2f} {currency}"
    return f"{currency}{amount:.2f}"


def energy_line(kwh: float, price_per_kwh: float | None = None, currency: str = "") -> str:
    """'1.23 kWh (€0.37 at 0.30/kWh)', or just the energy without a price."""
    text = format_kwh(kwh)
    if price_per_kwh is not None:
        text += f" ({format_money(kwh * price_per_kwh, currency)} at {price_per_kwh:.2f}/kWh)"
    return text
