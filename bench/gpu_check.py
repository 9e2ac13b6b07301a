"""One command that proves the GPU story: python bench/gpu_check.py [--dry-run] [--out-dir DIR] [--budget-s 480]

On one NVIDIA GPU (≤ 8 minutes on an H100/H200), with nothing downloaded: models are built from a
config with random weights (a Qwen2-0.5B shape and a ~1.5B Llama shape; the tokenizer is the demo's,
built locally), the data is synthetic alpaca rows. Sections, each timed and recorded:

  env         GPU, driver, CUDA, torch, transformers, peft, TRL, accelerate, bitsandbytes, flash-attn,
              kernels, Liger
  runs        LoRA (bf16), QLoRA NF4 and QLoRA 8-bit through the real worker (python -m sft_tui.worker):
              events, checkpoint, adapter; the LoRA run is merged into 16-bit (export.merge), reloaded and
              generates; NVML gauges sampled during training against the worker's torch figures, and the
              worker found among the GPU's processes (sft_tui.core.system.gpus)
  shared      while the LoRA run of ``runs`` trains (pinned to GPU 0: ``devices: [0]``, one rank, no torchrun), a
              helper process holds 4 GiB on the same GPU; ``sft-tui gpus --json`` must list our worker
              with its run name and the helper with its user, command and memory; throttle reasons, SM
              clock / max clock and the energy counter are recorded; after the run, its ``energy``
              events and ``RunStatus.extra["energy_kwh"]`` (> 0)
  queue       the same LoRA run is queued first: ``wait_for_gpu`` with ``wait_memory_gb`` = free memory
              less the shared helper's 4 GiB and less 4 of the 8 GiB a second helper holds; it must wait
              in ``queued`` with a reason naming GPU 0 and that helper; the helper leaves, the run starts
              and finishes: the wait and the start latency (helper gone → ``starting``, poll 5 s)
  multi_gpu   with ≥ 2 GPUs: 2-rank DDP LoRA, FSDP LoRA and QLoRA (DDP, each rank's model on its own GPU)
              through the real worker (``devices: 2``, torchrun): per-rank tokens/s from the ``ranks``
              events, peak memory per rank and per GPU, and which GPU each rank's process sits on; with
              one GPU it says so and is skipped
  memory      the formula's estimate and the measured pre-flight against the real run's peak for ≥ 5
              configurations (method × length × batch × gradient checkpointing): the error table
  throughput  ours (the real worker) vs a plain TRL SFTTrainer script with SDPA on the same model, rows
              and settings: tokens/s, ratio, MFU; then each fast path on/off (packing, padding-free,
              Liger, gradient checkpointing, chunked loss) with tokens/s and peak memory

Sections run in that order; once ``--budget-s`` is spent, what is left is skipped and recorded.

Writes ``OUT/gpu-<date>.json`` and appends a section to ``OUT/RESULTS.md`` (OUT = bench/results and
bench/RESULTS.md by default). ``--dry-run`` runs every step on CPU with tiny shapes, skipping only what
needs CUDA and saying so; the test suite runs it (tests/test_gpu_check.py). In the dry run ``shared``
and ``queue`` see a fake GPU (``SFT_TUI_FAKE_GPUS``, sft_tui/core/system/fakegpu.py) whose process
list names the real worker and helper processes (the worker waits on it, the CLI reads it);
``multi_gpu`` is one 2-process gloo DDP run of 2 steps, in a thread beside the other sections (measured
to add ~8 s on 2 CPUs; ``--no-dry-ddp`` skips it); and each ``memory`` row's pre-flight child runs
beside its real run (on CPU both figures are per-process RSS peaks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import platform
import random
import select
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

SHAPES = {
    # name: (architecture, config kwargs); vocab sizes are the real models' (memory is dominated by them)
    "qwen2-0.5b": ("qwen2", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                                 max_position_embeddings=32768, rope_theta=1e6)),
    "llama-1.5b": ("llama", dict(hidden_size=2048, num_hidden_layers=20, num_attention_heads=32, num_key_value_heads=8,
                                 intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                                 max_position_embeddings=8192, rope_theta=5e5)),
    "tiny-qwen2": ("qwen2", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=128, vocab_size=2048, tie_word_embeddings=True)),
    "tiny-llama": ("llama", dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=192, vocab_size=2048, tie_word_embeddings=False)),
}


SECTIONS = ("runs", "shared", "queue", "multi_gpu", "memory", "throughput")  # after env and models, in this order
# In the dry run these run in a thread beside the others: the one-process-at-a-time sections leave the
# second core mostly idle. On a GPU everything runs in order.
DRY_BACKGROUND = ("multi_gpu",)
GIB = 1 << 30
SHARED_HOLD_GIB = 4.0  # what the helper holds beside the LoRA run (shared)
QUEUE_HOLD_GIB = 8.0  # what the helper holds so that the queued run must wait (queue)
QUEUE_DRY_HOLD_GIB, QUEUE_DRY_NEED_GIB = 74.0, 30.0  # the dry run's fake 80 GiB GPU
FAKE_GPUS_ENV = "SFT_TUI_FAKE_GPUS"  # sft_tui.core.system.gpus.FAKE_ENV (test-only fake NVML file)
QUEUE_POLL_ENV = "SFT_TUI_QUEUE_POLL_S"  # sft_tui.core.train.queue.POLL_ENV
HOLD_FLAG = "--_hold-gpu"
_ENV_LOCK = threading.Lock()


@contextmanager
def patched_environ(extra: dict[str, str]) -> Iterator[None]:
    """``start_worker`` copies os.environ: a worker that needs more variables gets them this way, one start
    at a time (the dry run starts workers from two threads)."""
    with _ENV_LOCK:
        saved = {key: os.environ.get(key) for key in extra}
        os.environ.update(extra)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class HoldingProcess:
    """A stand-in colleague: ``python gpu_check.py --_hold-gpu GIB`` holds GIB of GPU memory on one GPU until
    its stdin closes (so it never outlives the check). With ``dry`` it holds nothing and imports nothing:
    the fake NVML file says what it holds, while its pid, user and command are real."""

    def __init__(self, gib: float, gpu: int, dry: bool, env: dict[str, str], log: Path) -> None:
        self.gib, self.gpu, self.log = gib, gpu, log
        cmd = [sys.executable, str(Path(__file__).resolve()), HOLD_FLAG, f"{gib:g}"] + (["--dry"] if dry else [])
        env = dict(env)
        if not dry:  # NVML's numbering, as the worker's
            env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=str(gpu))
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env)
        self.pid = self.proc.pid
        self.held: int | None = None
        self.ended_at: float | None = None

    def wait_ready(self, timeout: float = 180.0) -> int:
        """The bytes it holds, once it has them; raises with its stderr when it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while self.held is None and time.monotonic() < deadline:
            readable, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if readable:
                line = self.proc.stdout.readline().decode(errors="replace").split()
                if line[:1] == ["ready"]:
                    self.held = int(line[1])
                    break
            if self.proc.poll() is not None:
                break
        if self.held is None:
            tail = self.log.read_text(errors="replace")[-1500:].strip() if self.log.exists() else ""
            raise RuntimeError(f"the helper holding {self.gib:g} GiB did not get ready "
                               f"(exit code {self.proc.poll()}): {tail or 'no output'}")
        return self.held

    def release(self) -> float:
        """End it (its stdin closes) and return the time it was gone."""
        if self.ended_at is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.ended_at = time.time()
        return self.ended_at


def hold_child(argv: list[str]) -> int:
    """The helper's body: allocate and touch GIB on the (only visible) GPU, say so, wait for stdin to close."""
    gib, held = float(argv[0]), 0
    if "--dry" not in argv and gib > 0:
        import torch

        block = torch.empty(int(gib * GIB), dtype=torch.uint8, device="cuda")
        block.fill_(1)
        torch.cuda.synchronize()
        held = block.numel()
    print(f"ready {held}", flush=True)
    sys.stdin.read()
    return 0


def wait_until(what: str, test: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Poll ``test`` until it returns something true; raises TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = test()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


class Check:
    def __init__(self, dry: bool, out_dir: Path, results_md: Path, budget_s: float,
                 only: set[str] | None = None, no_dry_ddp: bool = False) -> None:
        self.dry, self.out_dir, self.results_md, self.budget_s = dry, out_dir, results_md, budget_s
        self.only, self.no_dry_ddp = only, no_dry_ddp
        self.start = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="sft-gpu-check-"))
        self.result: dict[str, Any] = {"dry_run": dry, "date": dt.datetime.now().isoformat(timespec="seconds"),
                                       "sections": {}, "skipped": [], "failures": [], "timings": {}}
        self.cuda = False
        # Every child gets this environment, never os.environ as it is at that moment (patched_environ).
        self.base_env = {k: v for k, v in os.environ.items() if k != FAKE_GPUS_ENV}
        # What the queue and shared probes saw beside the runs section's LoRA run (probed_run).
        self.queue_probe: dict[str, Any] | None = None
        self.shared_probe: dict[str, Any] | None = None
        self.extra_time: dict[str, float] = {}  # seconds a section spent inside another (the shared probe)

    def want(self, name: str) -> bool:
        return self.only is None or name in self.only

    def private_cache_env(self, name: str) -> dict[str, str]:
        """The environment for a child that runs beside another run of the same data (dry run only): its
        own sft-tui cache. Two processes tokenizing the same data into the shared cache at once can delete
        each other's fresh copy (FileNotFoundError on its .arrow file), and these runs need nothing else
        from the cache (their models are folders)."""
        return {"SFT_TUI_CACHE_DIR": str(self.tmp / f"cache-{name}")}

    # ------------------------------------------------------------------ helpers
    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {msg}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.result["skipped"].append({"what": what, "why": why})
        self.say(f"SKIP {what}: {why}")

    def over_budget(self, what: str) -> bool:
        if time.monotonic() - self.start > self.budget_s:
            self.skip(what, f"time budget of {self.budget_s:.0f} s spent")
            return True
        return False

    def section(self, name: str, fn) -> None:
        t = time.monotonic()
        self.say(f"== {name}")
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            self.result["failures"].append({"section": name, "error": f"{type(exc).__name__}: {exc}",
                                            "trace": traceback.format_exc()[-3000:]})
            self.say(f"FAIL {name}: {type(exc).__name__}: {exc}")
            sec = self.result["sections"].get(name)
            if isinstance(sec, dict) and "status" in sec:
                sec["status"] = f"failed: {type(exc).__name__}: {exc}"
        else:
            sec = self.result["sections"].get(name)
            if isinstance(sec, dict) and sec.get("status") == "running":
                sec["status"] = "ok"
        self.result["timings"][name] = round(time.monotonic() - t + self.extra_time.get(name, 0.0), 1)

    def new_section(self, name: str) -> dict[str, Any]:
        """The JSON of a section with a ``status``: running, then ok, skipped: why, or failed: why."""
        sec = self.result["sections"][name] = {"status": "running"}
        return sec

    def skip_section(self, sec: dict[str, Any], what: str, why: str) -> None:
        self.skip(what, why)
        sec["status"] = f"skipped: {why}"

    # ------------------------------------------------------------------ env
    def env(self) -> None:
        import importlib.metadata as md

        import torch

        self.cuda = torch.cuda.is_available()
        if not self.dry and not self.cuda:
            raise SystemExit("no CUDA GPU found: run with --dry-run on a machine without one")
        versions = {}
        for pkg in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "flash-attn",
                    "flash_attn_3", "kernels", "liger-kernel", "triton", "nvidia-ml-py", "textual", "sft-tui"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                versions[pkg] = None
        env = {"python": platform.python_version(), "platform": platform.platform(), "versions": versions,
               "cuda": torch.version.cuda, "cuda_available": self.cuda, "cpus": os.cpu_count()}
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            env.update(gpu=torch.cuda.get_device_name(0), gpu_memory=props.total_memory,
                       capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
            from sft_tui.core.system.gpus import sample_gpus

            snap = sample_gpus()
            env["driver"] = snap.driver_version
            env["nvml"] = snap.available
        else:
            self.skip("GPU, driver, NVML", "no CUDA device (dry run)")
        from sft_tui.core.train.fastpaths import Capabilities, peak_tflops

        caps = Capabilities.detect("llama")
        env["fast_path_capabilities"] = {"flash_attn": caps.flash_attn, "flash_attn3": caps.flash_attn3,
                                         "liger": caps.liger, "packed_masks_llama": caps.packed_masks}
        env["peak_bf16_tflops"] = peak_tflops(env.get("gpu"))
        self.result["env"] = env
        self.say(f"env: {env.get('gpu', 'CPU')} torch {versions['torch']} CUDA {env['cuda']} "
                 f"bnb {versions['bitsandbytes']} flash-attn {versions['flash-attn']} liger {versions['liger-kernel']}")

    # ------------------------------------------------------------------ models and data
    def build_models(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from sft_tui.core.models.demo import ensure_demo_model

        tok = AutoTokenizer.from_pretrained(str(ensure_demo_model()), local_files_only=True)
        self.models: dict[str, Path] = {}
        names = ("tiny-qwen2", "tiny-llama") if self.dry else ("qwen2-0.5b", "llama-1.5b")
        for name in names:
            arch, kwargs = SHAPES[name]
            cfg = AutoConfig.for_model(arch, **kwargs)
            cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
            cfg.pad_token_id = tok.pad_token_id
            torch.manual_seed(0)
            dtype = torch.bfloat16 if self.cuda else torch.float32
            with torch.device("cuda" if self.cuda else "cpu"):
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
            folder = self.tmp / "models" / name
            model.save_pretrained(str(folder), safe_serialization=True)
            tok.save_pretrained(str(folder))
            params = sum(p.numel() for p in model.parameters())
            del model
            if self.cuda:
                torch.cuda.empty_cache()
            self.models[name] = folder
            self.say(f"built {name}: {params / 1e6:.1f}M parameters ({arch}, random weights) in {folder}")
        self.small, self.large = names
        self.data = self.tmp / "data.jsonl"
        rng = random.Random(0)
        words = ("the model trains on short and long rows of text so that padding matters and packing helps "
                 "answer review phone hotel screen battery camera great slow lovely dull").split()
        with open(self.data, "w", encoding="utf-8") as fh:
            for i in range(400 if not self.dry else 120):
                n = rng.randint(20, 900 if not self.dry else 90)
                fh.write(json.dumps({"instruction": f"Summarise review {i}.",
                                     "input": " ".join(rng.choice(words) for _ in range(n // 2)),
                                     "output": " ".join(rng.choice(words) for _ in range(n // 2))}) + "\n")
        self.result["models"] = {k: str(v) for k, v in self.models.items()}

    def config(self, model: str, **over: Any):
        from sft_tui.core.config import Config

        cfg = {"model": {"path": str(self.models[model])},
               "data": {"path": str(self.data), "validation_split": 0.0, "max_length": 64 if self.dry else 1024},
               "method": {"type": "lora", "lora_r": 16, "lora_alpha": 32},
               "training": {"max_steps": 4 if self.dry else 12, "logging_steps": 2, "save_steps": 2 if self.dry else 6,
                            "batch_size": 4, "learning_rate": 1e-4, "save_total_limit": 1}}
        for key, value in over.items():
            section, name = key.split("__")
            cfg.setdefault(section, {})[name] = value
        return Config.model_validate(cfg)

    # ------------------------------------------------------------------ the real worker
    def worker_run(self, config, sample_nvml: bool = False, env: dict[str, str] | None = None,
                   during: Callable[[Any, Any], None] | None = None, runs_dir: Path | None = None) -> dict[str, Any]:
        """One run through the real worker, to its end. ``env``: variables the worker gets on top of the
        check's; ``during(proc, run)`` runs in a thread while the worker lives (it must not reap the
        worker: no ``proc.poll()``); ``sample_nvml`` samples every GPU twice a second on CUDA."""
        from sft_tui.core.run.launch import start_worker
        from sft_tui.core.run.processes import process_tree
        from sft_tui.core.run.rundir import RunDir

        run = RunDir.create(config, runs_dir=runs_dir or self.tmp / "runs")
        with patched_environ(env or {}):
            proc = start_worker(run)
        per_gpu: dict[int, dict[str, Any]] = {}
        stop = threading.Event()

        def sampler() -> None:
            from sft_tui.core.system.gpus import sample_gpus

            while not stop.is_set():
                snap = sample_gpus()
                tree = set(process_tree(proc.pid)) | {proc.pid}  # the ranks of a multi-process run too
                for g in snap.gpus if snap.available else []:
                    d = per_gpu.setdefault(g.index, {"samples": 0, "mem_used_max": 0, "worker_bytes_max": 0,
                                                     "util_max": 0, "worker_listed": False, "pids": {}})
                    d["samples"] += 1
                    d["mem_used_max"] = max(d["mem_used_max"], g.mem_used or 0)
                    d["util_max"] = max(d["util_max"], g.util_percent or 0)
                    d["worker_bytes_max"] = max(d["worker_bytes_max"], g.memory_of(tree))
                    for pid, used in g.processes:
                        if pid in tree:
                            d["worker_listed"] = True
                            d["pids"][pid] = max(d["pids"].get(pid, 0), used or 0)
                stop.wait(0.5)

        threads = [threading.Thread(target=sampler, daemon=True)] if sample_nvml and self.cuda else []
        during_error: list[str] = []
        if during is not None:
            def guarded() -> None:
                try:
                    during(proc, run)
                except Exception as exc:  # noqa: BLE001 - reported by the section that asked for it
                    during_error.append(f"{type(exc).__name__}: {exc}")

            threads.append(threading.Thread(target=guarded, daemon=True))
        for thread in threads:
            thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        for thread in threads:
            thread.join(120)
        events = run.events()
        train = [e for e in events if e["type"] == "train"]
        memory = [e for e in events if e["type"] == "memory"]
        states = [e["state"] for e in events if e["type"] == "status"]
        energy = [e for e in events if e["type"] == "energy"]
        out = {"run": str(run.path), "exit": os.waitstatus_to_exitcode(status), "final": states[-1] if states else None,
               "states": states, "train_events": len(train), "checkpoints": [e["step"] for e in events
                                                                            if e["type"] == "checkpoint"],
               "adapter": (run.adapter_dir / "adapter_config.json").exists() or
               (run.adapter_dir / "config.json").exists(),
               "errors": [e for e in events if e["type"] == "error"],
               "warnings": [e["msg"] for e in events if e["type"] == "log" and e.get("level") == "warning"],
               "fast_paths": next((e["fast_paths"] for e in events if e["type"] == "log" and "fast_paths" in e), None),
               "rss_peak": usage.ru_maxrss * 1024,
               "torch_peak_reserved": max((m.get("peak") or 0 for m in memory), default=None) if self.cuda else None,
               "torch_reserved_last": memory[-1].get("reserved") if memory else None,
               "tokens_per_s": (train[-1]["tokens_seen"] / max(train[-1]["elapsed_s"], 1e-9)) if train else None,
               "mfu": train[-1].get("mfu") if train else None, "loss": [e["loss"] for e in train],
               "energy_events": len(energy), "energy_kwh": run.status().extra.get("energy_kwh")}
        if during_error:
            out["during_error"] = during_error[0]
        if per_gpu:
            # The run's GPU: where the worker held the most (GPU 0 when NVML never listed it).
            main = max(per_gpu, key=lambda i: (per_gpu[i]["worker_bytes_max"], -i))
            n = per_gpu[main]
            out["nvml"] = {"gpu": main, "samples": n["samples"], "mem_used_max": n["mem_used_max"],
                           "worker_bytes_max": n["worker_bytes_max"], "worker_listed": n["worker_listed"],
                           "util_max": n["util_max"]}
            out["per_gpu"] = per_gpu
        out["run_dir"] = run
        return out

    def runs(self) -> None:
        from sft_tui.core.eval.export import merge

        section: dict[str, Any] = {}
        variants = [("lora-bf16" if self.cuda else "lora-fp32", {}),
                    ("qlora-nf4", {"method__type": "qlora", "method__quantization_bits": 4}),
                    ("qlora-8bit", {"method__type": "qlora", "method__quantization_bits": 8})]
        for name, over in variants:
            if name.startswith("qlora") and not self.cuda:
                self.skip(f"runs/{name}", "needs CUDA (bitsandbytes)")
                continue
            if self.over_budget(f"runs/{name}"):
                continue
            if name.startswith("lora") and (self.want("queue") or self.want("shared")):
                r = self.probed_run(over, queue=self.want("queue"), shared=self.want("shared"))
            else:
                r = self.worker_run(self.config(self.small, data__group_by_length="off", **over), sample_nvml=True)
            run = r.pop("run_dir")
            ok = r["exit"] == 0 and r["final"] == "done" and r["adapter"] and r["checkpoints"] and r["train_events"]
            r["ok"] = bool(ok)
            self.say(f"{name}: {r['final']}, {r['train_events']} train events, checkpoints {r['checkpoints']}, "
                     f"adapter {r['adapter']}, {r['tokens_per_s'] or 0:.0f} tok/s, MFU {r['mfu']}")
            if "nvml" in r:
                n = r["nvml"]
                self.say(f"  NVML: used max {n['mem_used_max'] / 2**30:.2f} GiB, our worker listed {n['worker_listed']} "
                         f"holding {n['worker_bytes_max'] / 2**30:.2f} GiB; torch reserved peak "
                         f"{(r['torch_peak_reserved'] or 0) / 2**30:.2f} GiB")
            elif not self.cuda:
                self.skip(f"runs/{name} NVML gauges", "no NVIDIA GPU")
            if not ok:
                raise RuntimeError(f"{name} run failed: {r['errors'] or r['states']}; see {run.log_path}")
            if name.startswith("lora") and not self.over_budget("merge"):
                r["merge"] = self.merge_and_generate(run, merge)
            section[name] = r
            if name.startswith("lora"):
                self.ours_small = r
        self.result["sections"]["runs"] = section

    # ------------------------------------------------------------------ shared and queue: one probed run
    def probed_run(self, over: dict[str, Any], queue: bool, shared: bool) -> dict[str, Any]:
        """A LoRA run on GPU 0 (``devices: [0]``: one rank, no torchrun) with the queue and/or shared probes
        beside it: the runs section's LoRA run, or a short one of their own (``--only``).

        queue: a helper holds GPU 0 so that the run, with ``wait_for_gpu`` and ``wait_memory_gb`` = free
        memory less half of what the helper holds (and less the shared helper's), must wait in ``queued``;
        the helper leaves and the run must start. shared: another helper holds 4 GiB on GPU 0 while the
        run trains, and ``sft-tui gpus --json`` must tell it from our worker. In the dry run the GPU is the
        fake NVML file, whose process list names the real helper and worker processes. Neither probe can
        fail the run: what goes wrong is recorded for its section (a run the queue does not let go is
        started by hand, as ``sft-tui start`` would).
        """
        from sft_tui.core.system.gpus import sample_gpus

        q = self.queue_probe = {} if queue else None
        sh = self.shared_probe = {} if shared else None
        env: dict[str, str] = {}
        fake = self.tmp / "fake-gpus.json"
        procs: dict[str, tuple[int, int]] = {}  # dry run: what the fake GPU lists, by role: (pid, bytes)

        def fake_state(busy: bool = False, energy_mj: int = 10_000_000) -> None:
            from sft_tui.core.system.fakegpu import fake_gpu, write_fake_gpus

            listed = [{"pid": pid, "used": used, "sm_util": 95 if role == "worker" else 0}
                      for role, (pid, used) in procs.items()]
            write_fake_gpus(fake, [fake_gpu(mem_used=sum(p["used"] for p in listed), util=97 if busy else 0,
                                            power_w=640.0 if busy else 70.0, energy_mj=energy_mj,
                                            clock_sm_mhz=1755 if busy else 345,
                                            throttle=["sw_power_cap"] if busy else ["gpu_idle"], processes=listed)])

        def start_helper(probe: dict[str, Any], gib: float, role: str) -> HoldingProcess | None:
            try:
                helper = HoldingProcess(gib, 0, self.dry, self.base_env, self.tmp / f"hold-{role}.log")
            except Exception as exc:  # noqa: BLE001 - recorded for the section
                probe["error"] = f"helper: {type(exc).__name__}: {exc}"
                return None
            probe["helper_pid"] = helper.pid
            return helper

        def ready(probe: dict[str, Any], helper: HoldingProcess | None) -> HoldingProcess | None:
            if helper is None:
                return None
            try:
                probe["helper_bytes"] = helper.wait_ready()
                return helper
            except Exception as exc:  # noqa: BLE001
                probe["error"] = f"helper: {type(exc).__name__}: {exc}"
                helper.release()
                return None

        free_before = None
        if not self.dry:
            snap = sample_gpus()
            free_before = snap.gpus[0].mem_free if snap.available and snap.gpus else None
        hold_q = QUEUE_DRY_HOLD_GIB if self.dry else QUEUE_HOLD_GIB
        shared_helper = start_helper(sh, SHARED_HOLD_GIB, "shared") if sh is not None else None
        queue_helper = start_helper(q, hold_q, "queue") if q is not None else None
        shared_helper, queue_helper = ready(sh, shared_helper), ready(q, queue_helper)
        try:
            if self.dry:
                if shared_helper:
                    procs["shared"] = (shared_helper.pid, int(SHARED_HOLD_GIB * GIB))
                if queue_helper:
                    procs["queue"] = (queue_helper.pid, int(hold_q * GIB))
                fake_state()
                env[FAKE_GPUS_ENV] = str(fake)
            if queue_helper is not None:
                if self.dry:
                    need_gib, free_held = QUEUE_DRY_NEED_GIB, 80 * GIB - sum(used for _, used in procs.values())
                    env[QUEUE_POLL_ENV] = "0.3"
                    q["poll_s"] = 0.3
                else:
                    # Held, the run cannot start; once the queue helper leaves, it can (half its hold to spare).
                    need = (free_before or 0) - (SHARED_HOLD_GIB * GIB if shared_helper else 0) - hold_q / 2 * GIB
                    need_gib = int(need / GIB * 100) / 100
                    free_held = sample_gpus().gpus[0].mem_free or 0
                    q["poll_s"] = 5.0  # the queue's own default: the latency a user sees
                q.update(free_before=free_before, free_while_held=free_held, wait_memory_gb=need_gib)
                if need_gib <= 0 or free_held >= need_gib * GIB:
                    q["error"] = (f"the helper's {hold_q:g} GiB left {fmt_b(free_held)} free, not below the "
                                  f"{need_gib} GiB the run would wait for")
                    queue_helper.release()
                    queue_helper = None
                else:
                    over = {**over, "training__wait_for_gpu": True, "training__wait_memory_gb": need_gib,
                            "training__wait_timeout_min": 3}

            def fake_released() -> None:  # the queue helper's memory goes with it
                procs.pop("queue", None)
                fake_state()

            def fake_busy(busy: bool, energy_mj: int, worker_pid: int | None = None) -> None:
                if worker_pid:
                    procs["worker"] = (worker_pid, 3 * GIB)
                fake_state(busy, energy_mj)

            def during(proc, run) -> None:
                if queue_helper is not None:
                    self.timed_probe(q, self.queue_phase, queue_helper, proc, run,
                                     fake_released if self.dry else None)
                if shared_helper is not None:
                    self.timed_probe(sh, self.shared_phase, shared_helper, proc, run,
                                     fake_busy if self.dry else None, fake if self.dry else None)

            config = self.config(self.small, data__group_by_length="off", training__devices=[0], **over)
            r = self.worker_run(config, sample_nvml=True, env=env, during=during)
        finally:
            for helper in (queue_helper, shared_helper):
                if helper is not None:
                    helper.release()
        summary = {k: r[k] for k in ("final", "exit", "train_events", "states", "errors")}
        # NVML's "used" on GPU 0 includes the helpers' memory during this run.
        r["probed_by"] = [name for name, probe in (("queue", q), ("shared", sh)) if probe is not None]
        for probe in (q, sh):
            if probe is not None:
                probe["run_dir"], probe["run"] = r["run_dir"], summary
                if r.get("during_error") and not probe.get("error"):
                    probe["error"] = r["during_error"]
        return r

    def timed_probe(self, probe: dict[str, Any], phase: Callable[..., None], *args: Any) -> None:
        t = time.monotonic()
        try:
            phase(probe, *args)
        except Exception as exc:  # noqa: BLE001 - the probe's section reports it
            probe["error"] = f"{type(exc).__name__}: {exc}"
            probe["trace"] = traceback.format_exc()[-2000:]
        finally:
            probe["probe_s"] = round(time.monotonic() - t, 1)

    def queue_phase(self, q: dict[str, Any], helper: HoldingProcess, proc, run,
                    released: Callable[[], Any] | None) -> None:
        """The run must queue while the helper holds GPU 0, and start once it has gone."""
        from sft_tui.core.run.processes import process_tree

        def alive() -> bool:  # never proc.poll(): worker_run reaps the worker with os.wait4
            return bool(process_tree(proc.pid))

        def status_times(state: str, with_gpus: bool = False) -> list[float]:
            return [e["time"] for e in run.events() if e["type"] == "status" and e.get("state") == state
                    and (not with_gpus or e.get("gpus") is not None)]

        def queued_or_past() -> Any:
            st = run.status()
            if st.state not in ("new", "starting") or not alive():
                return st
            return None

        try:
            st = wait_until("the run to queue", queued_or_past, timeout=180, every=0.1)
            q["state_while_held"], q["reason"] = st.state, st.extra.get("queued_reason")
            queued = status_times("queued")
            q["queued_at"] = queued[0] if queued else None
        finally:
            if released is not None:
                released()
            q["released_at"] = helper.release()
        try:
            started = wait_until("the run to start once the GPU was free",
                                 lambda: status_times("starting", with_gpus=True) or (not alive() and [None]),
                                 timeout=60, every=0.1)
        except TimeoutError:
            run.send("start")  # the queue did not let it go: start it by hand, so the run itself goes on
            q["forced_start"] = True
            raise
        q["started_at"] = started[-1]
        if q["queued_at"] and q["started_at"]:
            q["waited_s"] = round(q["started_at"] - q["queued_at"], 2)
            q["start_latency_s"] = round(q["started_at"] - q["released_at"], 2)

    def shared_phase(self, probe: dict[str, Any], helper: HoldingProcess, proc, run,
                     fake_busy: Callable[..., Any] | None, fake: Path | None) -> None:
        """While our worker trains: GPU 0's holders in this process and through ``sft-tui gpus --json``."""
        from sft_tui.core.run.processes import process_tree
        from sft_tui.core.system.energy import EnergyMeter
        from sft_tui.core.system.gpus import GpuSampler, default_sampler
        from sft_tui.core.system.holders import holders

        def alive() -> bool:
            return bool(process_tree(proc.pid))

        probe["worker_pid"] = proc.pid
        cli_env = dict(self.base_env)
        if fake_busy is not None and fake is not None:
            from sft_tui.core.system.fakegpu import FakeNvml

            fake_busy(True, 10_000_000, proc.pid)  # our worker on the fake GPU's process list, busy
            sampler = GpuSampler(FakeNvml(fake))
            cli_env[FAKE_GPUS_ENV] = str(fake)
        else:
            sampler = default_sampler()

            def listed() -> bool:
                snap = sampler.sample()
                tree = set(process_tree(proc.pid))
                return not tree or any(pid in tree for g in snap.gpus if g.index == 0 for pid, _ in g.processes)

            wait_until("our worker on GPU 0's NVML process list", listed, timeout=300, every=0.2)
        meter = EnergyMeter(sampler, [0])
        meter.sample()
        t = time.monotonic()
        probe["in_process"] = [h.to_dict() for h in holders(sampler.sample(), run.path.parent).get(0, [])]
        cli = subprocess.run([sys.executable, "-m", "sft_tui", "gpus", "--json", "--runs-dir", str(run.path.parent)],
                             capture_output=True, text=True, env=cli_env, timeout=120, cwd=str(ROOT), check=False)
        probe["cli_s"] = round(time.monotonic() - t, 2)
        probe["worker_alive_after_cli"] = alive()
        if cli.returncode != 0:
            raise RuntimeError(f"sft-tui gpus --json exited {cli.returncode}: {cli.stderr[-1500:]}")
        data = json.loads(cli.stdout)
        gpu = next((g for g in data.get("gpus", []) if g.get("index") == 0), None)
        if gpu is None:
            raise RuntimeError(f"sft-tui gpus --json shows no GPU 0: {data.get('reason')}")
        probe["gpu"] = {k: gpu.get(k) for k in ("name", "mem_used", "mem_total", "util_percent", "power_w",
                                                 "power_limit_w", "clock_sm_mhz", "clock_sm_max_mhz", "throttle",
                                                 "throttled_by", "energy_mj")}
        probe["holders"] = gpu.get("holders", [])
        probe["worker"] = next((h for h in probe["holders"] if h.get("pid") == proc.pid
                                or h.get("run_name") == run.name), None)
        probe["helper"] = next((h for h in probe["holders"] if h.get("pid") == helper.pid), None)
        # Clocks and throttling under load, once the run trains (the fake GPU: 5 kJ later).
        if fake_busy is not None:
            fake_busy(True, 15_000_000)
        else:
            wait_until("the run to train", lambda: not alive() or run.status().state not in
                       ("new", "starting", "queued", "loading", "tokenizing"), timeout=300, every=0.2)
        g = next((g for g in sampler.sample().gpus if g.index == 0), None)
        if g is not None:
            probe["under_load"] = {"state": run.status().state, "clock_sm_mhz": g.clock_sm_mhz,
                                   "clock_sm_max_mhz": g.clock_sm_max_mhz, "throttle": g.throttle,
                                   "throttled_by": g.throttled_by, "util_percent": g.util_percent,
                                   "power_w": g.power_w, "energy_mj": g.energy_mj}
        meter.sample()
        probe["meter"] = meter  # sampled again once the run has ended (shared)

    def own_probed_run(self, name: str) -> bool:
        """``--only`` without the runs section: the probe gets a short run of its own."""
        if self.over_budget(name):
            return False
        self.say(f"{name}: no probed LoRA run from the runs section; a short one of its own")
        self.probed_run({"training__max_steps": 2 if self.dry else 6, "training__save_steps": 1000},
                        queue=name == "queue", shared=name == "shared")
        return True

    def shared(self) -> None:
        """The shared-GPU proof: what the probe beside the LoRA run saw, then the run's energy."""
        sec = self.new_section("shared")
        if self.shared_probe is None and not self.own_probed_run("shared"):
            sec["status"] = "skipped: time budget spent"
            return
        probe = self.shared_probe
        run = probe.pop("run_dir", None)
        meter = probe.pop("meter", None)
        self.extra_time["shared"] = probe.get("probe_s", 0.0)
        sec.update(probe)  # with the probe's own traceback, when it failed
        if probe.get("error"):
            raise RuntimeError(f"shared probe: {probe['error']}")
        worker, helper, gpu = probe.get("worker"), probe.get("helper"), probe.get("gpu") or {}
        me = {getpass.getuser(), str(os.getuid())}
        checks = {
            "our worker listed with its run name": bool(worker) and worker.get("run_name") == run.name,
            "our worker marked ours": bool(worker) and bool(worker.get("ours")),
            "the helper listed": bool(helper),
            "the helper's user": bool(helper) and helper.get("user") in me,
            "the helper's command": bool(helper) and HOLD_FLAG in (helper.get("command") or ""),
            # NVML counts the helper's CUDA context on top of its block
            "the helper's memory": bool(helper) and (helper.get("used_bytes") or 0) >= 0.98 * SHARED_HOLD_GIB * GIB,
            "the worker was alive when sampled": bool(probe.get("worker_alive_after_cli")),
        }
        sec["checks"] = checks
        sec["available"] = {"throttle_reasons": gpu.get("throttle") is not None,
                            "sm_clock": gpu.get("clock_sm_mhz") is not None,
                            "sm_max_clock": gpu.get("clock_sm_max_mhz") is not None,
                            "energy_counter": gpu.get("energy_mj") is not None}
        # The run's own energy figure: the worker's EnergyCallback (rank 0, CUDA only).
        events = [e for e in run.events() if e["type"] == "energy"]
        kwh = run.status().extra.get("energy_kwh")
        sec["energy"] = {"events": len(events), "last": events[-1] if events else None, "status_energy_kwh": kwh}
        if meter is not None:
            meter.sample()
            sec["energy"]["gpu0_joules_while_probed"] = meter.joules  # GPU 0, from the probe to the run's end
        if self.cuda:
            checks["energy events written"] = bool(events)
            checks["RunStatus energy_kwh > 0"] = isinstance(kwh, (int, float)) and kwh > 0
        else:
            self.skip("shared/energy events", "the worker measures energy only on an NVIDIA GPU (CUDA); none here")
        u = probe.get("under_load") or {}
        self.say(f"shared: worker pid {probe.get('worker_pid')} as run {worker and worker.get('run_name')} "
                 f"({fmt_b(worker and worker.get('used_bytes'))}); helper pid {probe.get('helper_pid')} of "
                 f"{helper and helper.get('user')}: {helper and helper.get('command')} "
                 f"({fmt_b(helper and helper.get('used_bytes'))}); SM {u.get('clock_sm_mhz')}/{u.get('clock_sm_max_mhz')} "
                 f"MHz, throttled by {u.get('throttled_by')}; energy counter {sec['available']['energy_counter']}; "
                 f"run energy {kwh} kWh ({len(events)} events)")
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise RuntimeError(f"shared: {', '.join(failed)} failed; GPU 0 holders: {probe.get('holders')}")

    def queue(self) -> None:
        """The queue proof: the probed run waited while GPU 0 was held, started when freed, finished."""
        sec = self.new_section("queue")
        if self.queue_probe is None and not self.own_probed_run("queue"):
            sec["status"] = "skipped: time budget spent"
            return
        probe = self.queue_probe
        run = probe.pop("run_dir", None)
        self.extra_time["queue"] = probe.get("probe_s", 0.0)
        sec.update(probe)  # with the probe's own traceback, when it failed
        if probe.get("error"):
            raise RuntimeError(f"queue probe: {probe['error']}")
        reason, r = probe.get("reason") or "", probe.get("run") or {}
        me = (getpass.getuser(), str(os.getuid()))
        checks = {"queued while held": probe.get("state_while_held") == "queued",
                  "the reason names GPU 0": "GPU 0" in reason,
                  "the reason names the holder's command": HOLD_FLAG in reason,
                  "the reason names the holder's user": any(f"held by {u}" in reason for u in me),
                  "started after the helper left": bool(probe.get("started_at"))
                  and probe["started_at"] >= probe["released_at"] - 0.5,
                  "finished": r.get("exit") == 0 and r.get("final") == "done" and (r.get("train_events") or 0) > 0}
        sec["checks"] = checks
        self.say(f"queue: {probe.get('state_while_held')} ({reason}); waited {probe.get('waited_s')} s, started "
                 f"{probe.get('start_latency_s')} s after the holder left (poll {probe.get('poll_s')} s); {r.get('final')}")
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise RuntimeError(f"queue: {', '.join(failed)} failed (reason {reason!r}, states {r.get('states')}, "
                               f"errors {r.get('errors')}); see {run.log_path if run else '?'}")

    # ------------------------------------------------------------------ multi_gpu: torchrun ranks
    def multi_gpu(self) -> None:
        """2-rank runs through the real worker (``devices: 2``): DDP, FSDP and QLoRA per rank on ≥ 2 GPUs;
        one gloo DDP run on CPU in the dry run."""
        sec = self.new_section("multi_gpu")
        sec["runs"] = {}
        if self.cuda:
            import torch

            from sft_tui.core.system.gpus import sample_gpus

            snap = sample_gpus()
            n = len(snap.gpus) if snap.available else torch.cuda.device_count()
            sec["gpus_visible"] = n
            if n < 2:
                self.skip_section(sec, "multi_gpu", f"{n} GPU visible (needs 2)")
                return
            variants = [("ddp-lora", {"training__strategy": "ddp"}),
                        ("fsdp-lora", {"training__strategy": "fsdp"}),
                        ("qlora-ddp", {"training__strategy": "ddp", "method__type": "qlora",
                                       "method__quantization_bits": 4})]
        else:
            if self.no_dry_ddp:
                self.skip_section(sec, "multi_gpu", "no GPU, and the dry run's 2-process gloo DDP run was turned off "
                                                    "(--no-dry-ddp)")
                return
            variants = [("ddp-lora-gloo", {"training__strategy": "ddp"})]
            self.skip("multi_gpu/fsdp-lora", "2-rank FSDP is proven on 2 NVIDIA GPUs; the dry run keeps to one "
                                             "2-process gloo DDP run (CPU time)")
            self.skip("multi_gpu/qlora-ddp", "needs CUDA (bitsandbytes)")
        failed = []
        for name, over in variants:
            if self.over_budget(f"multi_gpu/{name}"):
                continue
            cfg = self.config(self.small, data__group_by_length="off", training__devices=2,
                              training__max_steps=2 if self.dry else 8, training__logging_steps=1 if self.dry else 2,
                              training__save_steps=1000, training__batch_size=2 if self.dry else 4, **over)
            r = self.worker_run(cfg, sample_nvml=True, runs_dir=self.tmp / "multi-runs",
                                env=self.private_cache_env("multi") if self.dry else None)
            run = r.pop("run_dir")
            row = self.ranks_summary(run, r)
            sec["runs"][name] = row
            ranks = row["ranks"]
            self.say(f"multi_gpu {name}: {r['final']}, world {row['world_size']}, tokens/s per rank "
                     + ", ".join(f"{k}: {v['tokens_per_s']:.0f}" for k, v in ranks.items())
                     + ", peak per rank " + ", ".join(f"{k}: {fmt_b(v['peak_memory'])}" for k, v in ranks.items())
                     + (f", NVML per GPU {row['gpu_peak']}" if row.get("gpu_peak") else "")
                     + (f"; WRONG GPU {row['misplaced']}" if row.get("misplaced") else ""))
            if not row["ok"]:
                failed.append(f"{name}: {r['errors'] or r['states']} (see {run.log_path})")
        if failed:
            raise RuntimeError("multi_gpu: " + "; ".join(failed))

    def ranks_summary(self, run, r: dict[str, Any]) -> dict[str, Any]:
        """Per rank: tokens/s (last ``ranks`` event and mean), peak memory; per GPU: NVML's peak; and
        which GPU each rank's process was seen on against the one it should use."""
        launch = json.loads((run.path / "launch.json").read_text()) if (run.path / "launch.json").exists() else {}
        world = launch.get("world", launch)
        gpu_indices = world.get("gpu_indices") or []
        per_rank: dict[int, dict[str, Any]] = {}
        events = [e for e in run.events() if e["type"] == "ranks"]
        for ev in events:
            for row in ev.get("ranks") or []:
                d = per_rank.setdefault(int(row["rank"]), {"tps": [], "peak_memory": 0, "pid": row.get("pid"),
                                                            "local_rank": row.get("local_rank")})
                d["tps"].append(row.get("tokens_per_s") or 0)
                d["peak_memory"] = max(d["peak_memory"], row.get("memory") or 0)
        ranks = {k: {"tokens_per_s": v["tps"][-1], "tokens_per_s_mean": sum(v["tps"]) / len(v["tps"]),
                     "peak_memory": v["peak_memory"], "pid": v["pid"], "local_rank": v["local_rank"]}
                 for k, v in sorted(per_rank.items())}
        out: dict[str, Any] = {"final": r["final"], "exit": r["exit"], "adapter": r["adapter"],
                               "world_size": events[-1].get("world_size") if events else None,
                               "strategy": world.get("strategy"), "backend": world.get("backend"),
                               "gpu_indices": gpu_indices, "ranks_events": len(events), "ranks": ranks,
                               "tokens_per_s_total": events[-1].get("tokens_per_s") if events else None,
                               "stragglers": events[-1].get("stragglers") if events else None,
                               "loss": r["loss"], "errors": r["errors"]}
        per_gpu = r.get("per_gpu") or {}
        if per_gpu:
            out["gpu_peak"] = {i: fmt_b(d["worker_bytes_max"]) for i, d in sorted(per_gpu.items())}
            out["gpu_peak_bytes"] = {i: d["worker_bytes_max"] for i, d in sorted(per_gpu.items())}
            # A rank whose process holds memory on another GPU than its own (QLoRA's per-rank device_map).
            seen, misplaced = {}, {}
            for k, v in ranks.items():
                where = {i: d["pids"][v["pid"]] for i, d in per_gpu.items() if v["pid"] in d["pids"]}
                seen[k] = {i: fmt_b(b) for i, b in where.items()}
                local = v["local_rank"]
                own = gpu_indices[local] if isinstance(local, int) and local < len(gpu_indices) else None
                stray = {i: b for i, b in where.items() if i != own and b > GIB}  # a stray CUDA context is less
                if stray:
                    misplaced[k] = {"own": own, "also": {i: fmt_b(b) for i, b in stray.items()}}
            out["rank_gpus"], out["misplaced"] = seen, misplaced
            # NVML lists host pids in some containers: then where each rank sat cannot be told from here.
            out["placement_verified"] = bool(seen) and all(seen.values())
        out["ok"] = bool(r["exit"] == 0 and r["final"] == "done" and r["adapter"] and len(ranks) == 2
                         and all(v["tokens_per_s"] > 0 for v in ranks.values()) and not out.get("misplaced"))
        return out

    def merge_and_generate(self, run, merge) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t = time.monotonic()
        out = self.tmp / "merged"
        merge(run, out)
        dtype = json.loads((out / "config.json").read_text()).get("dtype") or \
            json.loads((out / "config.json").read_text()).get("torch_dtype")
        tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True,
                                                     dtype=torch.bfloat16 if self.cuda else torch.float32)
        if self.cuda:
            model = model.to("cuda")
        ids = tok("Summarise review 1.", return_tensors="pt").to(model.device)
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
        new = int(gen.shape[1] - ids["input_ids"].shape[1])
        del model
        if self.cuda:
            torch.cuda.empty_cache()
        self.say(f"merged into {out} (dtype {dtype}), reloaded, generated {new} tokens")
        return {"dir": str(out), "dtype": dtype, "generated_tokens": new, "seconds": round(time.monotonic() - t, 1)}

    # ------------------------------------------------------------------ memory: estimate / pre-flight / real
    def memory(self) -> None:
        from sft_tui.core.models.describe import describe_model
        from sft_tui.core.models.memory import estimate_for_config
        from sft_tui.core.train.measure import measure_config

        L = (96, 160) if self.dry else (512, 2048)
        grid = [("lora", L[0], 4, False), ("lora", L[1], 2, False), ("lora", L[1], 4, True),
                ("qlora", L[1], 4, True), ("qlora", L[0], 8, False), ("full", L[0], 2, True)]
        if self.dry:
            grid = [g for g in grid if g[0] != "qlora"][:2]
            self.skip("memory/qlora rows and the remaining grid", "needs CUDA; the dry run measures 2 rows")
        info = describe_model(self.models[self.small])
        rows = []
        for method, length, batch, gc in grid:
            if self.over_budget(f"memory/{method}-{length}-{batch}-{gc}"):
                break
            cfg = self.config(self.small, method__type=method, data__max_length=length, training__batch_size=batch,
                              training__gradient_checkpointing=gc, training__max_steps=3, training__save_steps=1000,
                              data__group_by_length="off")
            est = estimate_for_config(cfg, info)
            if self.dry:
                # On CPU both figures are each process's own peak RSS, so the pre-flight child runs beside
                # the real run (on a GPU they take turns: each would see the other's memory and time).
                box: dict[str, Any] = {}

                def preflight(cfg: Any, box: dict[str, Any]) -> None:
                    box["pre"] = measure_config(cfg, steps=2, env={**self.base_env, **self.private_cache_env("preflight")})

                beside = threading.Thread(target=preflight, args=(cfg, box))
                beside.start()
                real = self.worker_run(cfg)
                beside.join()
                if "pre" not in box:
                    raise RuntimeError("the pre-flight measurement raised (see the trace above)")
                pre = box["pre"]
            else:
                pre = measure_config(cfg, steps=2, env=self.base_env)
                real = self.worker_run(cfg)
            real.pop("run_dir")
            if self.cuda:
                real_peak, est_v, pre_v = real["torch_peak_reserved"], est.reserved, pre.peak_reserved
            else:
                real_peak, est_v, pre_v = real["rss_peak"], est.total, pre.peak_rss
            err = lambda v: None if not v or not real_peak else round((v - real_peak) / real_peak, 4)  # noqa: E731
            row = {"method": method, "max_length": length, "batch_size": batch, "gradient_checkpointing": gc,
                   "estimate": est_v, "preflight": pre_v, "real_peak": real_peak, "estimate_error": err(est_v),
                   "preflight_error": err(pre_v), "preflight_ok": pre.ok, "real_ok": real["final"] == "done",
                   "preflight_failure": pre.error, "real_failure": (real["errors"] or [None])[0],
                   "measure": "torch max_memory_reserved" if self.cuda else "process RSS peak (estimate is GPU bytes)"}
            rows.append(row)
            self.say(f"memory {method} len {length} batch {batch} gc {gc}: estimate {fmt_b(est_v)} "
                     f"({pct(row['estimate_error'])}), pre-flight {fmt_b(pre_v)} ({pct(row['preflight_error'])}), "
                     f"real {fmt_b(real_peak)}")
        self.result["sections"]["memory"] = rows
        broken = [r for r in rows if not (r["real_ok"] and r["preflight_ok"])]
        if broken:
            raise RuntimeError(f"{len(broken)} memory row(s) failed: "
                               f"{broken[0]['preflight_failure'] or broken[0]['real_failure']}")

    # ------------------------------------------------------------------ throughput
    def throughput(self) -> None:
        from bench.bench_overhead import run_trl  # noqa: WPS433 - the same baseline as bench/run_all.py

        section: dict[str, Any] = {"ours_vs_trl": [], "fast_paths": []}
        env = dict(self.base_env)
        for model in ((self.small,) if self.dry else (self.small, self.large)):
            if self.over_budget(f"throughput/{model}"):
                break
            cfg = self.config(model, data__group_by_length="off", training__max_steps=6 if self.dry else 20,
                              training__save_steps=1000, training__logging_steps=2 if self.dry else 5)
            cfg_path = self.tmp / f"tp-{model}.yaml"
            from sft_tui.core.config import save_config

            save_config(cfg, cfg_path, comments=False)
            ours = self.worker_run(cfg)
            ours.pop("run_dir")
            trl = run_trl(cfg_path, env)
            ratio = (ours["tokens_per_s"] or 0) / max(trl["tokens_per_s"], 1e-9)
            row = {"model": model, "ours_tokens_per_s": ours["tokens_per_s"], "trl_tokens_per_s": trl["tokens_per_s"],
                   "ratio": ratio, "mfu": ours["mfu"], "fast_paths": ours["fast_paths"],
                   "trl_peak_reserved": trl.get("peak_reserved"), "ours_peak_reserved": ours["torch_peak_reserved"]}
            section["ours_vs_trl"].append(row)
            self.say(f"throughput {model}: ours {ours['tokens_per_s']:.0f} tok/s vs plain TRL "
                     f"{trl['tokens_per_s']:.0f} tok/s = {ratio:.2f}x, MFU {ours['mfu']}")
        if not self.over_budget("throughput/fast paths"):
            section["fast_paths"] = self.fast_path_grid()
        self.result["sections"]["throughput"] = section

    def fast_path_grid(self) -> list[dict[str, Any]]:
        """Each fast path on/off, in one child process (one import), fresh model per variant."""
        model = self.small if self.dry else self.large
        variants = {
            "defaults": {},
            "no length grouping": {"data__group_by_length": "off"},
            "packing": {"data__packing": True},
            "padding-free on": {"data__padding_free": "on"},
            "padding-free off": {"data__padding_free": "off"},
            "liger on": {"training__liger": "on"},
            "liger off": {"training__liger": "off"},
            "standard loss": {"training__loss": "standard"},
            "gradient checkpointing": {"training__gradient_checkpointing": True},
        }
        spec = []
        for name, over in variants.items():
            cfg = self.config(model, training__max_steps=6 if self.dry else 15, training__save_steps=1000, **over)
            p = self.tmp / f"fp-{len(spec)}.yaml"
            from sft_tui.core.config import save_config

            save_config(cfg, p, comments=False)
            spec.append({"name": name, "config": str(p)})
        spec_path = self.tmp / "fast-paths.json"
        spec_path.write_text(json.dumps(spec))
        out = self.tmp / "fast-paths-out.json"
        proc = subprocess.run([sys.executable, __file__, "--_fast-paths", str(spec_path), str(out)],
                              capture_output=True, text=True, timeout=900, env=self.base_env)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError("fast-path grid failed:\n" + proc.stdout[-2000:] + proc.stderr[-3000:])
        rows = json.loads(out.read_text())
        for r in rows:
            self.say(f"fast path {r['name']:<24} {r.get('tokens_per_s') or 0:8.0f} tok/s  peak "
                     f"{fmt_b(r.get('peak_reserved'))}  {r.get('chosen')}" + (f"  WARN {r['warnings']}" if r.get('warnings') else "")
                     + (f"  ERROR {r['error']}" if r.get("error") else ""))
        if not self.cuda:
            self.skip("fast paths: peak memory per variant, liger, flash-attention", "needs CUDA (tokens/s measured on CPU)")
        return rows

    # ------------------------------------------------------------------ report
    def write(self) -> tuple[Path, Path]:
        self.result["total_s"] = round(time.monotonic() - self.start, 1)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.out_dir / f"gpu-{'dryrun-' if self.dry else ''}{stamp}.json"
        path.write_text(json.dumps(self.result, indent=2, default=str))
        md = markdown(self.result)
        self.results_md.parent.mkdir(parents=True, exist_ok=True)
        with open(self.results_md, "a", encoding="utf-8") as fh:
            fh.write(md)
        return path, self.results_md


def fmt_b(v: Any) -> str:
    return "n/a" if not v else f"{v / 2**30:.2f} GiB" if v >= 2**30 else f"{v / 2**20:.0f} MiB"


def pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:+.1%}"


def markdown(r: dict[str, Any]) -> str:
    env = r.get("env", {})
    v = env.get("versions", {})
    lines = [f"\n## GPU check{' (dry run on CPU)' if r['dry_run'] else ''} — {r['date']}\n",
             f"- machine: {env.get('gpu', 'CPU only')} (driver {env.get('driver')}, CUDA {env.get('cuda')}), "
             f"{env.get('cpus')} CPUs; torch {v.get('torch')}, transformers {v.get('transformers')}, peft {v.get('peft')}, "
             f"TRL {v.get('trl')}, bitsandbytes {v.get('bitsandbytes')}, flash-attn {v.get('flash-attn')}, "
             f"kernels {v.get('kernels')}, liger {v.get('liger-kernel')}",
             f"- total {r.get('total_s')} s; sections: " + ", ".join(f"{k} {s} s" for k, s in r["timings"].items())]
    runs = r["sections"].get("runs", {})
    for name, x in runs.items():
        nv = x.get("nvml")
        lines.append(f"- run {name}: {x['final']}, checkpoints {x['checkpoints']}, adapter {x['adapter']}, "
                     f"{(x['tokens_per_s'] or 0):.0f} tok/s, MFU {x.get('mfu')}"
                     + (f", merged+reloaded, generated {x['merge']['generated_tokens']} tokens" if x.get("merge") else "")
                     + (f" (probed by {' and '.join(x['probed_by'])}: NVML's used includes the helpers)"
                        if x.get("probed_by") else "")
                     + (f"; NVML used max {fmt_b(nv['mem_used_max'])}, worker listed {nv['worker_listed']} "
                        f"({fmt_b(nv['worker_bytes_max'])}), torch reserved peak {fmt_b(x['torch_peak_reserved'])}"
                        if nv else ""))
    lines += shared_lines(r["sections"])
    mem = r["sections"].get("memory", [])
    if mem:
        lines += ["", "| method | length | batch | grad ckpt | real peak | estimate | error | pre-flight | error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m in mem:
            lines.append(f"| {m['method']} | {m['max_length']} | {m['batch_size']} | {m['gradient_checkpointing']} | "
                         f"{fmt_b(m['real_peak'])} | {fmt_b(m['estimate'])} | {pct(m['estimate_error'])} | "
                         f"{fmt_b(m['preflight'])} | {pct(m['preflight_error'])} |")
        lines.append(f"\n(real peak: {mem[0]['measure']})")
    tp = r["sections"].get("throughput", {})
    for row in tp.get("ours_vs_trl", []):
        lines.append(f"- throughput {row['model']}: ours {row['ours_tokens_per_s']:.0f} tok/s vs plain TRL "
                     f"{row['trl_tokens_per_s']:.0f} tok/s = {row['ratio']:.2f}x, MFU {row['mfu']}")
    if tp.get("fast_paths"):
        lines += ["", "| variant | tokens/s | peak reserved | chosen | warnings |", "|---|---|---|---|---|"]
        for f in tp["fast_paths"]:
            lines.append(f"| {f['name']} | {(f.get('tokens_per_s') or 0):.0f} | {fmt_b(f.get('peak_reserved'))} | "
                         f"{f.get('chosen', '')} | {'; '.join(f.get('warnings') or []) or f.get('error') or ''} |")
    for s in r["skipped"]:
        lines.append(f"- skipped {s['what']}: {s['why']}")
    for f in r["failures"]:
        lines.append(f"- FAILED {f['section']}: {f['error']}")
    return "\n".join(lines) + "\n"


def shared_lines(sections: dict[str, Any]) -> list[str]:
    """RESULTS.md lines of the shared, queue and multi_gpu sections."""
    lines = []
    sh = sections.get("shared")
    if sh and not str(sh.get("status")).startswith("skipped"):
        w, h, e = sh.get("worker") or {}, sh.get("helper") or {}, sh.get("energy") or {}
        g = sh.get("under_load") or sh.get("gpu") or {}
        lines.append(f"- shared GPU 0 ({sh['status']}): `sft-tui gpus --json` ({sh.get('cli_s')} s) listed our worker "
                     f"pid {sh.get('worker_pid')} as run {w.get('run_name')} ({fmt_b(w.get('used_bytes'))}) and the "
                     f"helper pid {sh.get('helper_pid')} of {h.get('user')} `{h.get('command')}` "
                     f"({fmt_b(h.get('used_bytes'))}); SM clock {g.get('clock_sm_mhz')}/{g.get('clock_sm_max_mhz')} MHz, "
                     f"throttled by {', '.join(g.get('throttled_by') or []) or 'nothing'}; energy counter "
                     f"{'read' if (sh.get('available') or {}).get('energy_counter') else 'n/a'}; the run's energy "
                     f"{e.get('status_energy_kwh')} kWh from {e.get('events')} `energy` event(s)")
    elif sh:
        lines.append(f"- shared GPU: {sh['status']}")
    q = sections.get("queue")
    if q and not str(q.get("status")).startswith("skipped"):
        run = q.get("run") or {}
        lines.append(f"- queue ({q['status']}): waited {q.get('waited_s')} s in `{q.get('state_while_held')}` "
                     f"(\"{q.get('reason')}\"), started {q.get('start_latency_s')} s after the holder left "
                     f"(poll {q.get('poll_s')} s), run {run.get('final')}")
    elif q:
        lines.append(f"- queue: {q['status']}")
    mg = sections.get("multi_gpu")
    if mg and mg.get("runs"):
        lines += [f"\nmulti-GPU ({mg['status']}):\n",
                  "| run | strategy | final | tokens/s per rank | peak memory per rank | NVML peak per GPU | rank on GPU |",
                  "|---|---|---|---|---|---|---|"]
        for name, x in mg["runs"].items():
            ranks = x.get("ranks") or {}
            lines.append(f"| {name} | {x.get('strategy')} ({x.get('backend')}) | {x.get('final')} | "
                         + ", ".join(f"{k}: {v['tokens_per_s']:.0f}" for k, v in ranks.items()) + " | "
                         + ", ".join(f"{k}: {fmt_b(v['peak_memory'])}" for k, v in ranks.items()) + " | "
                         + ", ".join(f"{i}: {b}" for i, b in (x.get("gpu_peak") or {}).items()) + " | "
                         + "; ".join(f"{k} → {list(v)}" for k, v in (x.get("rank_gpus") or {}).items()) + " |")
    elif mg:
        lines.append(f"- multi-GPU: {mg['status']}")
    return lines


# --------------------------------------------------------------------------- the fast-path child


def fast_path_child(spec_path: str, out_path: str) -> int:
    from types import SimpleNamespace

    import torch

    from plain_trl import make_clock  # bench/ is on sys.path: this file runs as a script
    from sft_tui.core.config import load_config
    from sft_tui.core.data import prepare_datasets
    from sft_tui.core.models.load import load_tokenizer, model_folder
    from sft_tui.core.train.recipe import (
        Device, build_model, build_trainer, choose_fast_paths, data_config_for, resolve_precision, training_arguments)

    rows = []
    for item in json.loads(Path(spec_path).read_text()):
        row: dict[str, Any] = {"name": item["name"]}
        try:
            config = load_config(item["config"])
            device = Device.detect()
            precision = resolve_precision(config, device)
            path = model_folder(config)
            tok = load_tokenizer(path)
            fast = choose_fast_paths(config, path)
            row["chosen"] = fast.summary().replace("fast paths: ", "")
            row["warnings"] = fast.warnings
            model = build_model(config, path, device, precision, fast.attn_implementation)
            data = prepare_datasets(data_config_for(config, fast), tok)
            work = Path(tempfile.mkdtemp(prefix="sft-fp-"))
            args = training_arguments(config, SimpleNamespace(checkpoints_dir=work), device, precision, False, fast)
            args.save_strategy, args.report_to = "no", []
            clock = make_clock()
            trainer = build_trainer(config, model, tok, SimpleNamespace(train=data.train, eval=None), args, fast, [clock])
            if device.kind == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            trainer.train()
            row["tokens_per_s"] = clock.tokens / max(clock.last - clock.begin, 1e-9)
            row["peak_reserved"] = int(torch.cuda.max_memory_reserved()) if device.kind == "cuda" else None
            del trainer, model
        except Exception as exc:  # noqa: BLE001 - one variant failing is a row, not the end
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    Path(out_path).write_text(json.dumps(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_fast-paths"]:
        return fast_path_child(argv[1], argv[2])
    if argv[:1] == [HOLD_FLAG]:
        return hold_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU with tiny shapes (CUDA-only parts skipped)")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--results-md", default=None, help="Markdown file to append to (default: bench/RESULTS.md, "
                                                           "or OUT_DIR/RESULTS.md when --out-dir is given)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip what is left after this many seconds")
    parser.add_argument("--no-dry-ddp", action="store_true", help="skip the dry run's 2-process gloo DDP run "
                        "(multi_gpu; measured to add ~8 s on 2 CPUs)")
    parser.add_argument("--only", default=None, help="comma-separated sections of " + ",".join(SECTIONS)
                        + " (env and models always run)")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    out_dir = Path(args.out_dir)
    results_md = Path(args.results_md) if args.results_md else (
        ROOT / "bench" / "RESULTS.md" if out_dir == ROOT / "bench" / "results" else out_dir / "RESULTS.md")
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - set(SECTIONS) - {"env", "models"})
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    check = Check(args.dry_run, out_dir, results_md, args.budget_s, only, args.no_dry_ddp)
    check.section("env", check.env)
    check.section("models", check.build_models)
    background = [name for name in DRY_BACKGROUND if args.dry_run and check.want(name)]
    beside = threading.Thread(target=lambda: [check.section(name, getattr(check, name)) for name in background],
                              daemon=True)
    if background:
        beside.start()
    for name in SECTIONS:
        if check.want(name) and name not in background:
            check.section(name, getattr(check, name))
    if background:
        beside.join()
    path, md = check.write()
    check.say(f"wrote {path} and appended to {md}")
    failures = check.result["failures"]
    check.say("GPU check " + ("passed" if not failures else f"FAILED ({len(failures)} section(s))")
              + f" in {check.result['total_s']} s; skipped {len(check.result['skipped'])} item(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
