"""A fake NVML driver backed by a JSON file: test-only, switched on by ``SFT_TUI_FAKE_GPUS``.

Why a file and not an object in memory: the GPU queue and the attribution tests need a *second
process* (a worker, the CLI) to see GPUs whose free memory the test changes while it watches. Every
NVML call re-reads the file, so a test rewrites it (``write_fake_gpus``, atomic) and the next sample
sees the change. ``gpus.default_sampler()`` uses this module when the variable names a file; users
never set it (like ``SFT_TUI_FAULTS``).

The file::

    {"driver_version": "550.54",
     "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...", "mem_total": 85899345920,
               "mem_used": 9663676416, "util": 35, "temperature": 50, "power_w": 300.0,
               "power_limit_w": 700.0, "energy_mj": 123456789, "clock_sm_mhz": 1410,
               "clock_sm_max_mhz": 1980, "throttle": ["sw_power_cap"],
               "processes": [{"pid": 1234, "used": 9663676416, "sm_util": 30}]}]}

A key left out of a GPU is a field that GPU does not support (NVML's NOT_SUPPORTED, so the sampler
shows "n/a"); ``throttle`` names are the keys of ``gpus.THROTTLE_REASONS``; a process's ``used`` may be
null (NVML's "not available"). A missing or unreadable file makes ``nvmlInit`` fail with a message
that names it, which the sampler reports as the reason there is no GPU. As with the real driver, the
sampler initialises once per process: write the file before the first sample, and keep the number of
GPUs fixed (their fields may change at will).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sft_tui.core.system.gpus import THROTTLE_REASONS

GIB = 1024**3


class NVMLError(Exception):
    """pynvml's error shape: the NVML return code in ``value``."""

    def __init__(self, value: int, message: str | None = None) -> None:
        super().__init__(message or f"NVML error {value}")
        self.value = value


class FakeNvml:
    """The subset of ``pynvml`` that ``GpuSampler`` calls, answered from the JSON file at ``path``."""

    NVMLError = NVMLError
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_UNKNOWN = 999
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---- the file
    def _data(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NVMLError(self.NVML_ERROR_UNKNOWN, f"fake GPU file {self.path} cannot be read: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("gpus", []), list):
            raise NVMLError(self.NVML_ERROR_UNKNOWN, f"fake GPU file {self.path} must be {{'gpus': [...]}}")
        return data

    def _gpu(self, handle: Any) -> dict[str, Any]:
        gpus = self._data().get("gpus") or []
        index = handle[1] if isinstance(handle, tuple) and len(handle) == 2 else -1
        if not 0 <= index < len(gpus) or not isinstance(gpus[index], dict):
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT, f"no fake GPU {index}")
        return gpus[index]

    def _field(self, handle: Any, key: str) -> Any:
        value = self._gpu(handle).get(key)
        if value is None:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED, f"{key} not supported")
        return value

    # ---- library
    def nvmlInit(self) -> None:
        data = self._data()
        code = data.get("init_error")  # a driver that fails to load, for tests of that path
        if isinstance(code, int):
            raise NVMLError(code)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        version = self._data().get("driver_version")
        if version is None:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return str(version)

    def nvmlDeviceGetCount(self) -> int:
        return len(self._data().get("gpus") or [])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        return ("fake-gpu", int(index))

    # ---- per GPU
    def nvmlDeviceGetName(self, handle: Any) -> str:
        return str(self._field(handle, "name"))

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return str(self._field(handle, "uuid"))

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> SimpleNamespace:
        total, used = int(self._field(handle, "mem_total")), int(self._field(handle, "mem_used"))
        return SimpleNamespace(total=total, used=used, free=max(total - used, 0))

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> SimpleNamespace:
        return SimpleNamespace(gpu=int(self._field(handle, "util")), memory=0)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        return int(self._field(handle, "temperature"))

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return int(float(self._field(handle, "power_w")) * 1000)  # milliwatts, as NVML

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return int(float(self._field(handle, "power_limit_w")) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return int(self._field(handle, "energy_mj"))

    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int:
        if clock != self.NVML_CLOCK_SM:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return int(self._field(handle, "clock_sm_mhz"))

    def nvmlDeviceGetMaxClockInfo(self, handle: Any, clock: int) -> int:
        if clock != self.NVML_CLOCK_SM:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return int(self._field(handle, "clock_sm_max_mhz"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        names = self._field(handle, "throttle")
        bits = {key: bit for bit, key, _ in THROTTLE_REASONS}
        unknown = [name for name in names if name not in bits]
        if unknown:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT, f"unknown throttle reason(s) {unknown}")
        mask = 0
        for name in names:
            mask |= bits[name]
        return mask

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[SimpleNamespace]:
        return self._processes(handle, "processes")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[SimpleNamespace]:
        return self._processes(handle, "graphics_processes")

    def nvmlDeviceGetProcessUtilization(self, handle: Any, since_us: int) -> list[SimpleNamespace]:
        now = int(time.time() * 1_000_000)
        samples = [SimpleNamespace(pid=int(p["pid"]), smUtil=int(p["sm_util"]), timeStamp=now)
                   for p in self._gpu(handle).get("processes") or []
                   if isinstance(p, dict) and p.get("pid") is not None and p.get("sm_util") is not None]
        if not samples:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED, "no samples")  # NVML says NOT_FOUND; both mean none
        return samples

    def _processes(self, handle: Any, key: str) -> list[SimpleNamespace]:
        out = []
        for proc in self._gpu(handle).get(key) or []:
            if isinstance(proc, dict) and proc.get("pid") is not None:
                used = proc.get("used")
                out.append(SimpleNamespace(pid=int(proc["pid"]), usedGpuMemory=None if used is None else int(used)))
        return out


def fake_gpu(name: str = "NVIDIA H100 80GB HBM3", index: int = 0, mem_total: int = 80 * GIB,
             mem_used: int = 0, **fields: Any) -> dict[str, Any]:
    """One GPU entry with every field filled (an idle H100 unless told otherwise)."""
    gpu: dict[str, Any] = {
        "name": name, "uuid": f"GPU-fake-{index:04d}", "mem_total": mem_total, "mem_used": mem_used,
        "util": 0, "temperature": 35, "power_w": 70.0, "power_limit_w": 700.0, "energy_mj": 0,
        "clock_sm_mhz": 345, "clock_sm_max_mhz": 1980, "throttle": ["gpu_idle"], "processes": [],
    }
    gpu.update(fields)
    return gpu


def write_fake_gpus(path: str | Path, gpus: list[dict[str, Any]], driver_version: str = "550.54",
                    **extra: Any) -> Path:
    """Write the fake GPU file atomically (temp file + rename), so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"driver_version": driver_version, "gpus": gpus, **extra}, indent=1)
    from sft_tui.core.run.rundir import write_atomic

    write_atomic(path, text)
    return path
