"""The measured pre-flight: a few real training steps on the longest batch, in a throwaway process.

``measured_preflight(config)`` starts ``python -m sft_tui.core.train.measure CONFIG`` in its own
process, which loads the model exactly as the worker does (``recipe.build_model``, the fast paths,
the data pipeline with packing), builds the trainer the worker builds (``recipe.build_trainer``) and
runs ``steps`` optimizer steps (× gradient accumulation) on the batch of the ``batch_size`` longest
rows the data produces — the batch that needs the most memory, since batches are padded to their
longest row. It records the peak: ``torch.cuda.max_memory_allocated``/``max_memory_reserved`` on a
GPU, and the process's resident-memory peak (``ru_maxrss``, read by the parent with ``wait4``) on
CPU. The report puts the formula's estimate, the measurement and the free memory side by side and,
when the run does not fit, re-measures cheaper settings in the order a person would try them
(gradient checkpointing, a smaller batch with more accumulation, a shorter max length, qlora) until
one fits.

UI-free: the CLI (``sft-tui train CONFIG --preflight``) and the TUI call ``measured_preflight``.
``SFT_TUI_MEMORY_BUDGET`` (bytes, or "1.5GiB"/"800MiB") overrides the free memory compared against.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sft_tui.core.errors import UserError

MiB = 1024**2
CUDA_CONTEXT = 500 * MiB  # what the allocator does not see but the free-memory comparison does
MARGIN = 1.05
DEFAULT_STEPS = 3


@dataclass
class Measurement:
    device: str = "cpu"
    ok: bool = False
    error: str | None = None
    oom: bool = False
    peak_allocated: int | None = None  # CUDA: torch.cuda.max_memory_allocated
    peak_reserved: int | None = None   # CUDA: torch.cuda.max_memory_reserved
    peak_rss: int | None = None        # the process's resident-memory peak (ru_maxrss)
    batch_shape: list[int] = field(default_factory=list)
    batch_tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    fast_paths: dict[str, Any] = field(default_factory=dict)

    @property
    def peak(self) -> int | None:
        """The figure compared with free memory: reserved + CUDA context on a GPU, resident memory on CPU."""
        if self.device == "cuda":
            return None if self.peak_reserved is None else self.peak_reserved + CUDA_CONTEXT
        return self.peak_rss

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["peak"] = self.peak
        return data


@dataclass
class Proposal:
    text: str
    changes: dict[str, Any]
    measurement: Measurement
    fits: bool


@dataclass
class MeasuredPreflight:
    device: str
    estimate: int | None
    measurement: Measurement
    free: int | None
    free_source: str
    fits: bool
    proposals: list[Proposal] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        from sft_tui.core.format import human_bytes

        m = self.measurement
        hb = lambda v: human_bytes(v) if v is not None else "n/a"  # noqa: E731
        rows = [("estimate (formula, GPU)", hb(self.estimate))]
        if m.device == "cuda":
            rows += [("measured peak allocated", hb(m.peak_allocated)), ("measured peak reserved", hb(m.peak_reserved)),
                     ("measured + CUDA context", hb(m.peak))]
        else:
            rows += [("measured peak resident memory", hb(m.peak_rss))]
        rows += [(f"free ({self.free_source})", hb(self.free)),
                 ("longest batch", f"{'×'.join(map(str, m.batch_shape))} = {m.batch_tokens} tokens, "
                                   f"{m.steps} step(s) in {m.seconds:.1f} s"),
                 ("verdict", "fits" if self.fits else ("out of memory" if m.oom else
                                                        (m.error or "does not fit")))]
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "estimate": self.estimate, "measurement": self.measurement.to_dict(),
                "free": self.free, "free_source": self.free_source, "fits": self.fits,
                "proposals": [{"text": p.text, "changes": p.changes, "fits": p.fits,
                               "measurement": p.measurement.to_dict()} for p in self.proposals]}


# --------------------------------------------------------------------------- the parent side


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)?\s*", text, re.I)
    if not match:
        raise UserError(f"cannot read {text!r} as a memory size", "write it like 2GiB, 800MiB or 1500000000")
    unit = (match.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(match.group(1)) * {"": 1, "K": 1024, "M": MiB, "G": 1024**3, "T": 1024**4}[unit])


def measure_config(config: Any, steps: int = DEFAULT_STEPS, timeout: float = 900.0,
                   env: dict[str, str] | None = None) -> Measurement:
    """Run the measurement child for ``config`` and return what it saw (never raises for an OOM)."""
    from sft_tui.core.config import save_config

    with tempfile.TemporaryDirectory(prefix="sft-measure-") as tmp:
        cfg_path = save_config(config, Path(tmp) / "config.yaml", comments=False)
        out = Path(tmp) / "result.json"
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
        child_env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        child_env["SFT_TUI_MEASURE_DIR"] = tmp
        log = open(Path(tmp) / "child.log", "wb")
        start = time.monotonic()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "sft_tui.core.train.measure", str(cfg_path),
                                     "--steps", str(steps), "--out", str(out)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env)
        finally:
            log.close()
        rss = _wait(proc, start + timeout)
        tail = (Path(tmp) / "child.log").read_text(errors="replace")[-2000:]
        if out.exists():
            m = Measurement(**json.loads(out.read_text()))
        else:
            m = Measurement(error=f"the measurement process ended with code {proc.returncode}: "
                                  f"{tail.strip().splitlines()[-1] if tail.strip() else 'no output'}")
        if rss:
            m.peak_rss = max(m.peak_rss or 0, rss)
        if not m.ok and m.error is None:
            m.error = tail.strip().splitlines()[-1] if tail.strip() else "failed"
        return m


def _wait(proc: subprocess.Popen, deadline: float) -> int | None:
    """Wait for the child; its ru_maxrss from wait4 (bytes on Linux), or None where wait4 is missing."""
    if hasattr(os, "wait4"):
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                scale = 1 if sys.platform == "darwin" else 1024
                return int(usage.ru_maxrss) * scale
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                return None
            time.sleep(0.05)
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return None


def free_memory(device: str) -> tuple[int | None, str]:
    budget = os.environ.get("SFT_TUI_MEMORY_BUDGET")
    if budget:
        return parse_bytes(budget), "SFT_TUI_MEMORY_BUDGET"
    if device == "cuda":
        try:
            from sft_tui.core.system.gpus import sample_gpus

            snap = sample_gpus()
            gpus = list(snap.gpus) if getattr(snap, "available", False) else []
            if gpus and gpus[0].mem_free is not None:
                return int(gpus[0].mem_free), "GPU 0, NVML"
        except Exception:  # noqa: BLE001 - NVML missing: no free figure rather than a crash
            pass
        return None, "GPU 0, unknown"
    import psutil

    return int(psutil.virtual_memory().available), "RAM available"


def _fits(m: Measurement, free: int | None) -> bool:
    if not m.ok or m.oom:
        return False
    if free is None or m.peak is None:
        return True
    return m.peak * MARGIN <= free


def _estimate(config: Any) -> int | None:
    try:
        from sft_tui.core.models.describe import describe_model
        from sft_tui.core.models.load import model_folder
        from sft_tui.core.models.memory import estimate_for_config

        info = describe_model(model_folder(config), trust_remote_code=config.model.trust_remote_code)
        return estimate_for_config(config, info).total
    except Exception:  # noqa: BLE001 - an estimate we cannot make is shown as n/a
        return None


def candidates(config: Any, cuda: bool) -> list[tuple[str, dict[str, Any]]]:
    """Cheaper settings, cumulative, in the order a person would try them."""
    t, d, m = config.training, config.data, config.method
    out: list[tuple[str, dict[str, Any]]] = []
    changes: dict[str, Any] = {}
    if not t.gradient_checkpointing:
        changes = {**changes, "training.gradient_checkpointing": True}
        out.append(("gradient checkpointing on", dict(changes)))
    batch, accum = t.batch_size, t.gradient_accumulation
    while batch > 1:
        batch, accum = max(batch // 2, 1), accum * 2
        changes = {**changes, "training.batch_size": batch, "training.gradient_accumulation": accum}
        out.append((f"batch size {batch}, gradient accumulation {accum} (same effective batch)", dict(changes)))
    length = d.max_length
    for _ in range(2):
        if length // 2 < 128:
            break
        length //= 2
        changes = {**changes, "data.max_length": length}
        out.append((f"max length {length} (longer rows are cut)", dict(changes)))
    if cuda and m.type != "qlora":
        changes = {**changes, "method.type": "qlora", "method.quantization_bits": 4,
                   "training.gradient_checkpointing": True}
        out.append(("qlora (4-bit base weights)", dict(changes)))
    return out


def apply_changes(config: Any, changes: dict[str, Any]) -> Any:
    new = config.model_copy(deep=True)
    for key, value in changes.items():
        section, name = key.split(".")
        setattr(getattr(new, section), name, value)
    return new


def measured_preflight(config: Any, steps: int = DEFAULT_STEPS, propose: bool = True, max_tries: int = 4,
                       say: Callable[[str], None] | None = None) -> MeasuredPreflight:
    """Estimate vs measured vs free; when it does not fit, measured proposals (see the module docstring)."""
    from sft_tui.core.config import Environment

    cuda = Environment.detect().cuda_available
    device = "cuda" if cuda else "cpu"
    if say:
        say(f"measuring {steps} step(s) on the longest batch ({device})…")
    measurement = measure_config(config, steps)
    free, source = free_memory(device)
    report = MeasuredPreflight(device=device, estimate=_estimate(config), measurement=measurement, free=free,
                               free_source=source, fits=_fits(measurement, free))
    if measurement.error and not measurement.oom and not measurement.ok:
        return report  # a broken config is not a memory problem: nothing to propose
    if not report.fits and propose:
        for text, changes in candidates(config, cuda)[:max_tries]:
            if say:
                say(f"re-measuring with {text}…")
            m = measure_config(apply_changes(config, changes), steps)
            fits = _fits(m, free)
            report.proposals.append(Proposal(text, changes, m, fits))
            if fits:
                break
    return report


# --------------------------------------------------------------------------- the child side


def _child(config_path: str, steps: int, out: str) -> int:
    import resource
    from types import SimpleNamespace

    from sft_tui.core.config import load_config
    from sft_tui.core.train.fastpaths import set_alloc_conf

    set_alloc_conf()
    result = Measurement()
    start = time.monotonic()
    try:
        import torch

        from sft_tui.core.data import prepare_datasets
        from sft_tui.core.models.load import load_tokenizer, model_folder
        from sft_tui.core.train.recipe import (
            Device, build_model, build_trainer, choose_fast_paths, data_config_for, resolve_precision,
            training_arguments)

        config = load_config(config_path)
        device = Device.detect()
        result.device = device.kind
        t, d = config.training, config.data
        result.settings = {"method": config.method.type, "bits": config.method.bits, "batch_size": t.batch_size,
                           "gradient_accumulation": t.gradient_accumulation, "max_length": d.max_length,
                           "gradient_checkpointing": t.gradient_checkpointing, "packing": d.packing}
        precision = resolve_precision(config, device)
        path = model_folder(config)
        tokenizer = load_tokenizer(path, trust_remote_code=config.model.trust_remote_code)
        fast = choose_fast_paths(config, path)
        result.fast_paths = fast.to_dict()
        model = build_model(config, path, device, precision, fast.attn_implementation)
        data = prepare_datasets(data_config_for(config, fast), tokenizer)
        lengths = [len(x) for x in data.train["input_ids"]]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        pick = order[:t.batch_size]
        micro = steps * t.gradient_accumulation
        rows = data.train.select([i for _ in range(micro) for i in pick])
        longest = max(lengths[i] for i in pick)
        result.batch_shape = ([1, sum(lengths[i] for i in pick)] if fast.padding_free else [len(pick), longest])
        result.batch_tokens = result.batch_shape[0] * result.batch_shape[1]
        work = Path(os.environ.get("SFT_TUI_MEASURE_DIR") or tempfile.mkdtemp(prefix="sft-measure-"))
        args = training_arguments(config, SimpleNamespace(checkpoints_dir=work / "checkpoints"), device, precision,
                                  False, fast)
        args.max_steps, args.save_strategy, args.logging_steps = steps, "no", max(steps, 1)
        args.train_sampling_strategy, args.eval_strategy, args.load_best_model_at_end = "sequential", "no", False
        args.report_to = []
        trainer = build_trainer(config, model, tokenizer, SimpleNamespace(train=rows, eval=None), args, fast, [])
        if device.kind == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        if device.kind == "cuda":
            torch.cuda.synchronize()
            result.peak_allocated = int(torch.cuda.max_memory_allocated())
            result.peak_reserved = int(torch.cuda.max_memory_reserved())
        result.steps = steps
        result.ok = True
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent as data
        text = f"{type(exc).__name__}: {exc}"
        result.oom = "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError"
        result.error = getattr(exc, "message", None) or text.splitlines()[0][:400]
    result.seconds = time.monotonic() - start
    scale = 1 if sys.platform == "darwin" else 1024
    result.peak_rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    Path(out).write_text(json.dumps(asdict(result)))
    return 0 if result.ok else 1


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sft_tui.core.train.measure")
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--out", required=True)
    ns = parser.parse_args()
    sys.exit(_child(ns.config, ns.steps, ns.out))
