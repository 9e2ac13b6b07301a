"""GPU sampling through a fake NVML module, and the real one on a machine without a GPU."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from sft_tui.core.system.gpus import NO_GPU, GpuSampler, GpuSnapshot


class FakeNVMLError(Exception):
    def __init__(self, value):
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNVML:
    """The subset of pynvml the sampler uses; GPU 1 is a laptop part that reports no power."""

    NVMLError = FakeNVMLError
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count=2, init_error=None):
        self.count, self.init_error = count, init_error
        self.inits = self.shutdowns = self.handle_calls = 0

    def nvmlInit(self):
        self.inits += 1
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        self.handle_calls += 1
        return ("handle", i)

    def nvmlSystemGetDriverVersion(self):
        return b"550.54"

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3" if h[1] == 0 else "NVIDIA RTX 4060 Laptop GPU"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h[1]}"

    def nvmlDeviceGetMemoryInfo(self, h):
        gib = 1024**3
        return SimpleNamespace(total=80 * gib, used=30 * gib, free=50 * gib) if h[1] == 0 else \
            SimpleNamespace(total=8 * gib, used=1 * gib, free=7 * gib)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=87 if h[1] == 0 else 3, memory=40)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 64

    def nvmlDeviceGetPowerUsage(self, h):
        if h[1] == 1:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return 312_500  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if h[1] == 1:
            return []
        return [SimpleNamespace(pid=4242, usedGpuMemory=20 * 1024**3),
                SimpleNamespace(pid=77, usedGpuMemory=2**64 - 1)]  # "not available" under some containers

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return [SimpleNamespace(pid=4242, usedGpuMemory=None), SimpleNamespace(pid=999, usedGpuMemory=512 * 1024**2)]


@pytest.fixture(autouse=True)
def _fresh_nvml_state():
    yield
    GpuSampler.shutdown_all()


def test_arithmetic_and_fields():
    nvml = FakeNVML()
    snap = GpuSampler(nvml).sample()
    assert snap.available and snap.reason == "" and snap.driver_version == "550.54"
    h100, laptop = snap.gpus
    assert (h100.index, h100.name, h100.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-0")
    assert h100.mem_used == 30 * 1024**3 and h100.mem_total == 80 * 1024**3 and h100.mem_free == 50 * 1024**3
    assert h100.util_percent == 87 and h100.temperature_c == 64
    assert h100.power_w == pytest.approx(312.5) and h100.power_limit_w == pytest.approx(700.0)
    # compute and graphics lists merged; a known size wins over "unknown"; NVML's sentinel is None
    assert h100.processes == [(77, None), (999, 512 * 1024**2), (4242, 20 * 1024**3)]
    assert h100.memory_of([4242, 12345]) == 20 * 1024**3
    assert laptop.power_w is None and laptop.power_limit_w == pytest.approx(700.0)
    assert laptop.name == "NVIDIA RTX 4060 Laptop GPU"
    d = snap.to_dict()
    assert d["gpus"][0]["processes"][2] == {"pid": 4242, "used_bytes": 20 * 1024**3}
    assert d["gpus"][0]["mem_free"] == 50 * 1024**3


def test_one_init_and_cached_handles():
    nvml = FakeNVML()
    a, b = GpuSampler(nvml), GpuSampler(nvml)
    for _ in range(5):
        a.sample()
        b.sample()
    assert nvml.inits == 1 and nvml.handle_calls == 2
    a.shutdown()
    assert nvml.shutdowns == 1
    b.shutdown()  # already released: no second nvmlShutdown
    assert nvml.shutdowns == 1
    a.sample()  # a later sample initialises again
    assert nvml.inits == 2


@pytest.mark.parametrize("code, reason", [(12, NO_GPU), (9, "NVIDIA driver not loaded"), (999, "NVML error")])
def test_init_failures_are_reported_not_raised(code, reason):
    nvml = FakeNVML(init_error=code)
    sampler = GpuSampler(nvml)
    snap = sampler.sample()
    assert not snap.available and reason in snap.reason and snap.gpus == []
    sampler.sample()
    assert nvml.inits == 1  # a failed init is remembered, not retried on every tick
    sampler.shutdown()
    assert nvml.shutdowns == 0


def test_zero_gpus():
    snap = GpuSampler(FakeNVML(count=0)).sample()
    assert not snap.available and snap.reason == NO_GPU


def test_module_without_nvml_error_class_or_functions():
    broken = SimpleNamespace(nvmlInit=lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    snap = GpuSampler(broken).sample()
    assert not snap.available and "boom" in snap.reason


def test_every_field_failing_gives_none():
    class Flaky(FakeNVML):
        def __getattribute__(self, name):
            if name.startswith("nvmlDeviceGet") and name not in ("nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex"):
                def fail(*a):
                    raise FakeNVMLError(3)
                return fail
            return object.__getattribute__(self, name)

    snap = GpuSampler(Flaky(count=1)).sample()
    (g,) = snap.gpus
    assert snap.available and g.name is None and g.mem_free is None and g.power_w is None and g.processes == []


def test_sampling_cost_under_5ms_per_gpu():
    nvml = FakeNVML(count=8)
    sampler = GpuSampler(nvml)
    sampler.sample()
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        sampler.sample()
    per_gpu = (time.perf_counter() - start) / n / 8
    assert per_gpu < 0.005, f"{per_gpu * 1e3:.3f} ms per GPU"


def test_real_nvml_never_raises():
    snap = GpuSampler().sample()
    assert isinstance(snap, GpuSnapshot)
    if not snap.available:
        assert snap.reason and snap.gpus == []
    else:  # pragma: no cover - only on GPU machines
        assert snap.gpus[0].mem_total > 0
