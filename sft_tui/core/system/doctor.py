"""``sft-tui doctor``: what this machine can train with, one verdict per item.

Each check answers a question a person would otherwise discover halfway through a run (is CUDA
there, can bitsandbytes do 4-bit here, is the disk full, will the hub be reached) and never
raises: a check that crashes is itself reported as a failed check.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

LOW_DISK = 10 * 1024**3


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable or only a warning
    detail: str

    @property
    def verdict(self) -> str:
        return {True: "ok", False: "problem", None: "note"}[self.ok]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def check_python() -> Check:
    return Check("python", True, f"{platform.python_version()} on {platform.system()} {platform.machine()}")


def check_torch() -> Check:
    try:
        import torch
    except Exception as exc:
        return Check("torch", False, f"cannot import torch: {exc}")
    cuda = torch.version.cuda
    build = f"CUDA {cuda} build" if cuda else "CPU-only build"
    return Check("torch", True, f"torch {torch.__version__} ({build})")


def check_cuda() -> Check:
    import torch

    if not torch.version.cuda:
        return Check("cuda", None, "this torch has no CUDA support: training runs on CPU (fine for the demo model)")
    try:
        if not torch.cuda.is_available():
            return Check("cuda", False, f"torch was built for CUDA {torch.version.cuda} but no usable GPU/driver was found")
        n = torch.cuda.device_count()
        bf16 = torch.cuda.is_bf16_supported()
        return Check("cuda", True, f"CUDA {torch.version.cuda}, {n} device(s), bf16 {'supported' if bf16 else 'not supported (use fp16)'}")
    except Exception as exc:
        return Check("cuda", False, f"CUDA initialisation failed: {exc}")


def check_gpus() -> Check:
    from sft_tui.core.system.gpus import sample_gpus
    from sft_tui.core.format import human_bytes

    snap = sample_gpus()
    if not snap.available:
        return Check("gpus", None, snap.reason)
    parts = [f"GPU {g.index} {g.name or '?'}: {human_bytes(g.mem_free)} free of {human_bytes(g.mem_total)}"
             for g in snap.gpus]
    driver = f" (driver {snap.driver_version})" if snap.driver_version else ""
    return Check("gpus", True, "; ".join(parts) + driver)


def check_bitsandbytes() -> Check:
    """4/8-bit loading (qlora, 8-bit optimizers) needs bitsandbytes *and* a CUDA GPU here."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return Check("bitsandbytes", False, "not installed: qlora and 8-bit optimizers are unavailable")
    ver = _version("bitsandbytes") or "?"
    import torch

    if not torch.cuda.is_available():
        return Check("bitsandbytes", None, f"{ver} installed, but qlora and 8-bit optimizers need a CUDA GPU (none found)")
    try:
        import bitsandbytes  # noqa: F401  (import fails when its CUDA library does not match)
    except Exception as exc:
        return Check("bitsandbytes", False, f"{ver} installed but cannot load: {str(exc).splitlines()[0]}")
    return Check("bitsandbytes", True, f"{ver}: qlora (4/8-bit) and 8-bit optimizers usable")


def check_flash_attention() -> Check:
    if importlib.util.find_spec("flash_attn") is None:
        return Check("flash-attention", None, "flash_attn not installed: sdpa attention is used (fine; flash-attn is optional)")
    import torch

    ver = _version("flash-attn") or "?"
    if not torch.cuda.is_available():
        return Check("flash-attention", None, f"flash_attn {ver} installed, but it needs a CUDA GPU")
    major, _ = torch.cuda.get_device_capability(0)
    if major < 8:
        return Check("flash-attention", False, f"flash_attn {ver} needs an Ampere or newer GPU (compute capability 8.0+)")
    return Check("flash-attention", True, f"flash_attn {ver} available")


def check_disk(runs_dir: str | Path | None = None) -> Check:
    from sft_tui.core.format import human_bytes
    from sft_tui.core.paths import default_runs_dir

    target = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent  # the runs dir may not exist yet; its disk does
    usage = shutil.disk_usage(probe)
    detail = f"{human_bytes(usage.free)} free in {target}"
    if usage.free < LOW_DISK:
        return Check("disk", False, detail + " — checkpoints of a 7B model take ~15 GiB each; free some space")
    return Check("disk", True, detail)


HUB_TIMEOUT = 2.0  # seconds: the whole reachability check (DNS included) never takes longer


def _hub_address() -> tuple[str, int, str]:
    """(host, port, what) to open a TCP connection to: the hub endpoint, or the HTTPS proxy on the way to it."""
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    hub = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
    host = hub.hostname or "huggingface.co"
    port = hub.port or (80 if hub.scheme == "http" else 443)
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
             or os.environ.get("all_proxy") or "")
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    skip = any(part.strip() and (part.strip() == "*" or host.endswith(part.strip().lstrip(".")))
               for part in no_proxy.split(","))
    if proxy and not skip:
        p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if p.hostname:
            return p.hostname, p.port or 8080, f"{host} via proxy {p.hostname}:{p.port or 8080}"
    return host, port, f"{host}:{port}"


def hub_reachable(timeout: float | None = None) -> tuple[bool, str]:
    """(reachable, detail): a TCP connection to the hub (or its proxy), name lookup included, within ``timeout``.

    The lookup has no timeout of its own (a resolver with no network can take 10 s or more), so the
    check runs in a daemon thread and is abandoned when the time is up.
    """
    import socket
    import threading
    import time

    timeout = HUB_TIMEOUT if timeout is None else timeout
    host, port, what = _hub_address()
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        start = time.monotonic()
        try:
            conn = socket.create_connection((host, port), timeout=timeout)
        except socket.gaierror as exc:
            result.append((False, f"{what}: the name does not resolve ({exc.strerror or exc})"))
        except OSError as exc:
            result.append((False, f"{what}: {exc.strerror or exc.__class__.__name__}"))
        except Exception as exc:  # noqa: BLE001 - a check never raises
            result.append((False, f"{what}: {exc.__class__.__name__}: {exc}"))
        else:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
            result.append((True, f"{what} answered in {(time.monotonic() - start) * 1000:.0f} ms"))

    thread = threading.Thread(target=probe, name="sft-tui-hub-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return False, f"{what}: no answer within {timeout:g} s"
    return result[0]


def check_hub() -> Check:
    from sft_tui.core.models.load import hf_cache_dir, hub_offline

    cache = hf_cache_dir()
    where = f"cache {cache}" + ("" if cache.exists() else " (not created yet)")
    if hub_offline():
        var = next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
                    if os.environ.get(v, "").strip().lower() in ("1", "on", "yes", "true")), "HF_HUB_OFFLINE")
        return Check("huggingface hub", None, f"not checked (offline mode set: {var}): only local and "
                                              f"cached models; {where}")
    reachable, detail = hub_reachable()
    if not reachable:
        return Check("huggingface hub", None, f"unreachable ({detail}): only local and cached models work; "
                                              f"set HF_HUB_OFFLINE=1 so nothing waits on the network; {where}")
    token = bool(os.environ.get("HF_TOKEN")) or (cache.parent / "token").exists()
    login = "token found" if token else "no token (gated models need `hf auth login`)"
    return Check("huggingface hub", True, f"reachable ({detail}); {where}; {login}")


def check_libraries() -> Check:
    names = ("transformers", "peft", "trl", "accelerate", "datasets")
    found = {n: _version(n) for n in names}
    missing = [n for n, v in found.items() if v is None]
    detail = ", ".join(f"{n} {v}" for n, v in found.items() if v)
    if missing:
        return Check("libraries", False, f"missing: {', '.join(missing)}; have {detail}")
    return Check("libraries", True, detail)


CHECKS: list[Callable[[], Check]] = [check_python, check_torch, check_cuda, check_gpus, check_bitsandbytes,
                                     check_flash_attention, check_disk, check_hub, check_libraries]


def run_checks() -> list[Check]:
    results = []
    for fn in CHECKS:
        name = fn.__name__.removeprefix("check_").replace("_", "-")
        try:
            results.append(fn())
        except Exception as exc:
            results.append(Check(name, False, f"check crashed: {exc.__class__.__name__}: {exc}"))
    return results
