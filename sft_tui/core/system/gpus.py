"""Sample NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, module ``pynvml``).

Habits borrowed from nvitop/gpustat: initialise NVML once per process and only when first asked
(importing this module costs nothing on a machine without a GPU), cache the device handles, read
every field through a wrapper that gives ``None`` instead of raising (a laptop GPU that does not
report power must not blank the whole gauge), and never raise out of ``sample()``: with no driver
or no GPU the snapshot says so in ``reason`` and the UI shows it. The NVML module can be injected,
which is how the tests exercise the arithmetic without a GPU.

``SFT_TUI_FAKE_GPUS`` (test-only, never set by users, like ``SFT_TUI_FAULTS``): the path of a JSON
file that ``default_sampler()`` reads through ``fakegpu.FakeNvml`` instead of the driver, so tests and
the GPU queue can change free memory while a worker watches it (format in ``fakegpu``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

NO_GPU = "no NVIDIA GPU found"
FAKE_ENV = "SFT_TUI_FAKE_GPUS"
_NOT_AVAILABLE = 2**64 - 1  # NVML's "value not available" for per-process memory
_CLOCK_SM = 1  # NVML_CLOCK_SM, for an NVML module that does not name it

# NVML's clock event ("throttle") reason bits, in the words a person reads. Idle is why a resting GPU
# clocks down: it is reported but never called throttling.
THROTTLE_REASONS: tuple[tuple[int, str, str], ...] = (
    (0x1, "gpu_idle", "idle"),
    (0x2, "applications_clocks_setting", "app clocks setting"),
    (0x4, "sw_power_cap", "power cap"),
    (0x8, "hw_slowdown", "hw slowdown"),
    (0x10, "sync_boost", "sync boost"),
    (0x20, "sw_thermal_slowdown", "thermal slowdown (sw)"),
    (0x40, "hw_thermal_slowdown", "thermal slowdown (hw)"),
    (0x80, "hw_power_brake_slowdown", "power brake (hw)"),
    (0x100, "display_clock_setting", "display clock setting"),
    (0x200, "board_limit", "board limit"),
    (0x400, "reliability", "reliability limit"),
)
_THROTTLE_WORDS = {key: words for _, key, words in THROTTLE_REASONS}
NOT_THROTTLING = ("gpu_idle",)


def decode_throttle(mask: int | None) -> list[str] | None:
    """The reason keys set in an NVML clock-event bitmask (None stays unknown); unknown bits are
    kept as ``bit_0x…`` rather than dropped, so a newer driver's reason is still visible."""
    if mask is None:
        return None
    keys = [key for bit, key, _ in THROTTLE_REASONS if mask & bit]
    known = sum(bit for bit, _, _ in THROTTLE_REASONS)
    keys += [f"bit_{1 << i:#x}" for i in range(64) if mask & ~known & (1 << i)]
    return keys


def throttle_words(keys: Iterable[str] | None) -> list[str]:
    """The reasons that slow a GPU down, in words; idle is left out because it is not a problem."""
    return [_THROTTLE_WORDS.get(key, key) for key in keys or () if key not in NOT_THROTTLING]


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
    clock_sm_mhz: int | None = None
    clock_sm_max_mhz: int | None = None
    throttle: list[str] | None = None  # reason keys (THROTTLE_REASONS), idle included; None: unknown
    energy_mj: int | None = None  # millijoules since the driver loaded (Volta and newer)
    process_util: dict[int, float] = field(default_factory=dict)  # pid -> recent SM utilisation %

    @property
    def throttled_by(self) -> list[str]:
        """Why the clocks are held down now, in words ("power cap"); empty when not throttled."""
        return throttle_words(self.throttle)

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
        data["throttled_by"] = self.throttled_by
        data["process_util"] = {str(pid): util for pid, util in self.process_util.items()}
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


def _int(value: Any) -> int | None:
    """An integer reading, or None for anything else (a mock, a sentinel, a negative count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= _NOT_AVAILABLE:
        return None
    return int(value)


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

    def _optional(self, nvml: Any, names: tuple[str, ...], *args: Any) -> Any:
        """The first of ``names`` this NVML module has, called safely (older bindings lack newer names)."""
        for name in names:
            fn = getattr(nvml, name, None)
            if fn is not None:
                value = self._safe(fn, *args)
                if value is not None:
                    return value
        return None

    def _process_util(self, nvml: Any, handle: Any) -> dict[int, float]:
        """Each process's SM utilisation over the last few seconds (NVML keeps a short sample buffer)."""
        since = int((time.time() - 5) * 1_000_000)  # microseconds; older samples are stale
        samples = self._optional(nvml, ("nvmlDeviceGetProcessUtilization",), handle, since) or []
        seen: dict[int, list[float]] = {}
        for sample in samples:
            pid, util = getattr(sample, "pid", None), getattr(sample, "smUtil", None)
            if pid is not None and isinstance(util, (int, float)) and 0 <= util <= 100:
                seen.setdefault(int(pid), []).append(float(util))
        return {pid: sum(values) / len(values) for pid, values in seen.items()}

    def _read(self, nvml: Any, index: int, handle: Any) -> GpuStats:
        safe = self._safe
        mem = safe(nvml.nvmlDeviceGetMemoryInfo, handle)
        util = safe(nvml.nvmlDeviceGetUtilizationRates, handle)
        temp = safe(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        power = safe(nvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
        limit = safe(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        clock_sm = getattr(nvml, "NVML_CLOCK_SM", _CLOCK_SM)
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
            clock_sm_mhz=_int(self._optional(nvml, ("nvmlDeviceGetClockInfo",), handle, clock_sm)),
            clock_sm_max_mhz=_int(self._optional(nvml, ("nvmlDeviceGetMaxClockInfo",), handle, clock_sm)),
            throttle=decode_throttle(_int(self._optional(
                nvml, ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"), handle))),
            energy_mj=_int(self._optional(nvml, ("nvmlDeviceGetTotalEnergyConsumption",), handle)),
            process_util=self._process_util(nvml, handle),
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
_fakes: dict[str, GpuSampler] = {}


def default_sampler() -> GpuSampler:
    """The process's sampler: the real driver, or the fake GPU file named by ``SFT_TUI_FAKE_GPUS``
    (test-only). The variable is looked at on every call, so a test can set it after import."""
    global _default
    fake = os.environ.get(FAKE_ENV)
    if fake:
        sampler = _fakes.get(fake)
        if sampler is None:
            from sft_tui.core.system.fakegpu import FakeNvml

            sampler = _fakes[fake] = GpuSampler(FakeNvml(fake))
        return sampler
    if _default is None:
        _default = GpuSampler()
    return _default


def sample_gpus() -> GpuSnapshot:
    return default_sampler().sample()

