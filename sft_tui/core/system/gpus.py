"""Sample NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, module ``pynvml``).

Habits borrowed from nvitop/gpustat: initialise NVML once per process and only when first asked
(importing this module costs nothing on a machine without a GPU), cache the device handles, read
every field through a wrapper that gives ``None`` instead of raising (a laptop GPU that does not
report power must not blank the whole gauge), and never raise out of ``sample()``: with no driver
or no GPU the snapshot says so in ``reason`` and the UI shows it. The NVML module can be injected,
which is how the tests exercise the arithmetic without a GPU.
"""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

NO_GPU = "no NVIDIA GPU found"
_NOT_AVAILABLE = 2**64 - 1  # NVML's "value not available" for per-process memory


@dataclass
class GpuStats:
    index: int
    name: str | None
    mem_used: int | None
    mem_total: int | None
    util_percent: float | None
    temperature_c: float | None
    power_w: float | None
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    power_limit_w: float | None = None
    uuid: str | None = None

    @property
    def mem_free(self) -> int | None:
        if self.mem_used is None or self.mem_total is None:
            return None
        return max(self.mem_total - self.mem_used, 0)

    def memory_of(self, pids: Iterable[int]) -> int:
        """Bytes this GPU holds for the given processes (e.g. our worker), unknown counted as 0."""
        wanted = set(pids)
        return sum(used or 0 for pid, used in self.processes if pid in wanted)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["processes"] = [{"pid": pid, "used_bytes": used} for pid, used in self.processes]
        data["mem_free"] = self.mem_free
        return data


@dataclass
class GpuSnapshot:
    available: bool
    reason: str
    gpus: list[GpuStats] = field(default_factory=list)
    driver_version: str | None = None
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason, "driver_version": self.driver_version,
                "time": self.time, "gpus": [g.to_dict() for g in self.gpus]}


def _reason(nvml: Any, exc: BaseException) -> str:
    """Words for why NVML is unusable; the first two are by far the most common."""
    value = getattr(exc, "value", None)
    codes = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12): f"{NO_GPU} (the NVIDIA driver's NVML library is not installed)",
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9): "NVIDIA driver not loaded",
        getattr(nvml, "NVML_ERROR_NO_PERMISSION", 4): "no permission to query the NVIDIA driver",
        getattr(nvml, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", 18): "NVIDIA driver/library version mismatch (reboot after a driver update)",
    }
    return codes.get(value, f"NVML error: {exc}")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class GpuSampler:
    """Reads GPU gauges; one instance per consumer is fine, NVML itself is initialised once.

    ``nvml`` defaults to ``pynvml`` imported on first use. Initialisation state is shared per NVML
    module across instances (NVML counts inits, but one init per process is simpler to reason
    about and to shut down at exit).
    """

    _shared: dict[int, dict[str, Any]] = {}
    _lock = threading.Lock()

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml

    # ---- initialisation

    def _module(self) -> Any | None:
        if self._nvml is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:
                return None
            self._nvml = pynvml
        return self._nvml

    def _init(self) -> dict[str, Any]:
        nvml = self._module()
        if nvml is None:
            return {"ok": False, "reason": f"{NO_GPU} (nvidia-ml-py is not installed)", "handles": []}
        state = GpuSampler._shared.get(id(nvml))  # the lock-free fast path of every sample
        if state is None:
            with GpuSampler._lock:
                state = GpuSampler._shared.get(id(nvml))
                if state is None:
                    state = self._start(nvml)
                    GpuSampler._shared[id(nvml)] = state
        return state

    @staticmethod
    def _start(nvml: Any) -> dict[str, Any]:
        error = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except error as exc:
            return {"ok": False, "reason": _reason(nvml, exc), "handles": [], "nvml": nvml}
        except Exception as exc:  # a broken install must not take the UI down
            return {"ok": False, "reason": f"NVML unusable: {exc}", "handles": [], "nvml": nvml}
        handles: list[Any] = []
        try:
            count = nvml.nvmlDeviceGetCount()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            return {"ok": False, "reason": _reason(nvml, exc), "handles": [], "nvml": nvml, "initialised": True}
        driver = None
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception:
            pass
        state = {"ok": bool(handles), "reason": "" if handles else NO_GPU, "handles": handles,
                 "driver": driver, "nvml": nvml, "initialised": True}
        if not GpuSampler._atexit_registered:
            atexit.register(GpuSampler.shutdown_all)
            GpuSampler._atexit_registered = True
        return state

    _atexit_registered = False

    # ---- sampling

    def _safe(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:  # NVMLError_NotSupported and friends: the field is just unknown
            return None

    def _processes(self, nvml: Any, handle: Any) -> list[tuple[int, int | None]]:
        found: dict[int, int | None] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(nvml, getter, None)
            procs = self._safe(fn, handle) if fn is not None else None
            for proc in procs or []:
                pid = getattr(proc, "pid", None)
                if pid is None:
                    continue
                used = getattr(proc, "usedGpuMemory", None)
                used = None if used is None or used >= _NOT_AVAILABLE else int(used)
                if found.get(pid) is None:
                    found[int(pid)] = used
        return sorted(found.items())

    def _read(self, nvml: Any, index: int, handle: Any) -> GpuStats:
        safe = self._safe
        mem = safe(nvml.nvmlDeviceGetMemoryInfo, handle)
        util = safe(nvml.nvmlDeviceGetUtilizationRates, handle)
        temp = safe(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        power = safe(nvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
        limit = safe(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return GpuStats(
            index=index,
            name=_text(safe(nvml.nvmlDeviceGetName, handle)),
            mem_used=int(mem.used) if mem is not None else None,
            mem_total=int(mem.total) if mem is not None else None,
            util_percent=float(util.gpu) if util is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            power_w=power / 1000.0 if power is not None else None,
            processes=self._processes(nvml, handle),
            power_limit_w=limit / 1000.0 if limit is not None else None,
            uuid=_text(safe(nvml.nvmlDeviceGetUUID, handle)) if hasattr(nvml, "nvmlDeviceGetUUID") else None,
        )

    def sample(self) -> GpuSnapshot:
        """Every GPU's gauges now; never raises."""
        try:
            state = self._init()
            if not state["ok"]:
                return GpuSnapshot(False, state["reason"])
            nvml = state["nvml"]
            gpus = [self._read(nvml, i, h) for i, h in enumerate(state["handles"])]
            return GpuSnapshot(True, "", gpus, state.get("driver"))
        except Exception as exc:  # pragma: no cover - belt and braces for the UI thread
            return GpuSnapshot(False, f"GPU sampling failed: {exc}")

    # ---- shutdown

    def shutdown(self) -> None:
        """Release NVML for this process (all samplers share it); a later sample re-initialises."""
        nvml = self._nvml
        if nvml is None:
            return
        with GpuSampler._lock:
            state = GpuSampler._shared.pop(id(nvml), None)
        if state and state.get("initialised"):
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass

    @classmethod
    def shutdown_all(cls) -> None:
        with cls._lock:
            states = list(cls._shared.values())
            cls._shared.clear()
        for state in states:
            if state.get("initialised"):
                try:
                    state["nvml"].nvmlShutdown()
                except Exception:
                    pass


_default: GpuSampler | None = None


def default_sampler() -> GpuSampler:
    global _default
    if _default is None:
        _default = GpuSampler()
    return _default


def sample_gpus() -> GpuSnapshot:
    return default_sampler().sample()

