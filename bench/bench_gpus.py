"""Time ``GpuSampler.sample()`` per GPU: with the real NVML where there is one, and always with a fake
NVML that measures our own overhead. The target is under 5 ms per GPU.

    python bench/bench_gpus.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def per_gpu_ms(sampler, n: int = 200) -> tuple[float, int]:
    snap = sampler.sample()
    count = max(len(snap.gpus), 1)
    start = time.perf_counter()
    for _ in range(n):
        sampler.sample()
    return (time.perf_counter() - start) / n / count * 1e3, len(snap.gpus)


def main() -> int:
    from sft_tui.core.system.gpus import GpuSampler
    from test_gpus import FakeNVML

    fake_ms, gpus = per_gpu_ms(GpuSampler(FakeNVML(count=8)), 2000)
    print(f"fake NVML, {gpus} GPUs: {fake_ms * 1000:.1f} µs per GPU (sampler overhead)")
    real = GpuSampler()
    snap = real.sample()
    if not snap.available:
        print(f"real NVML: {snap.reason}")
        return 0
    ms, gpus = per_gpu_ms(real)
    print(f"real NVML, {gpus} GPU(s): {ms:.3f} ms per GPU ({'ok' if ms < 5 else 'over the 5 ms target'})")
    real.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
