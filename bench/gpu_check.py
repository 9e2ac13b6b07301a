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
  memory      the formula's estimate and the measured pre-flight against the real run's peak for ≥ 5
              configurations (method × length × batch × gradient checkpointing): the error table
  throughput  ours (the real worker) vs a plain TRL SFTTrainer script with SDPA on the same model, rows
              and settings: tokens/s, ratio, MFU; then each fast path on/off (packing, padding-free,
              Liger, gradient checkpointing, chunked loss) with tokens/s and peak memory

Writes ``OUT/gpu-<date>.json`` and appends a section to ``OUT/RESULTS.md`` (OUT = bench/results and
bench/RESULTS.md by default). ``--dry-run`` runs every step on CPU with tiny shapes, skipping only what
needs CUDA and saying so; the test suite runs it (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
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


class Check:
    def __init__(self, dry: bool, out_dir: Path, results_md: Path, budget_s: float) -> None:
        self.dry, self.out_dir, self.results_md, self.budget_s = dry, out_dir, results_md, budget_s
        self.start = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="sft-gpu-check-"))
        self.result: dict[str, Any] = {"dry_run": dry, "date": dt.datetime.now().isoformat(timespec="seconds"),
                                       "sections": {}, "skipped": [], "failures": [], "timings": {}}
        self.cuda = False

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
        self.result["timings"][name] = round(time.monotonic() - t, 1)

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
    def worker_run(self, config, sample_nvml: bool = False) -> dict[str, Any]:
        from sft_tui.core.run.launch import start_worker
        from sft_tui.core.run.rundir import RunDir

        run = RunDir.create(config, runs_dir=self.tmp / "runs")
        proc = start_worker(run)
        samples: list[dict[str, Any]] = []
        stop = threading.Event()

        def sampler() -> None:
            from sft_tui.core.system.gpus import sample_gpus

            while not stop.is_set():
                snap = sample_gpus()
                if snap.available and snap.gpus:
                    g = snap.gpus[0]
                    samples.append({"t": time.time(), "mem_used": g.mem_used, "util": g.util_percent,
                                    "worker_bytes": g.memory_of([proc.pid]),
                                    "worker_listed": any(pid == proc.pid for pid, _ in g.processes)})
                stop.wait(0.5)

        thread = threading.Thread(target=sampler, daemon=True) if sample_nvml and self.cuda else None
        if thread:
            thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        if thread:
            thread.join(2)
        events = run.events()
        train = [e for e in events if e["type"] == "train"]
        memory = [e for e in events if e["type"] == "memory"]
        states = [e["state"] for e in events if e["type"] == "status"]
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
               "mfu": train[-1].get("mfu") if train else None, "loss": [e["loss"] for e in train]}
        if samples:
            out["nvml"] = {"samples": len(samples), "mem_used_max": max(s["mem_used"] or 0 for s in samples),
                           "worker_bytes_max": max(s["worker_bytes"] for s in samples),
                           "worker_listed": any(s["worker_listed"] for s in samples),
                           "util_max": max(s["util"] or 0 for s in samples)}
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
            pre = measure_config(cfg, steps=2)
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
        env = dict(os.environ)
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
                              capture_output=True, text=True, timeout=900)
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
                     + (f"; NVML used max {fmt_b(nv['mem_used_max'])}, worker listed {nv['worker_listed']} "
                        f"({fmt_b(nv['worker_bytes_max'])}), torch reserved peak {fmt_b(x['torch_peak_reserved'])}"
                        if nv else ""))
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU with tiny shapes (CUDA-only parts skipped)")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--results-md", default=None, help="Markdown file to append to (default: bench/RESULTS.md, "
                                                           "or OUT_DIR/RESULTS.md when --out-dir is given)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip what is left after this many seconds")
    parser.add_argument("--only", default=None, help="comma-separated sections: env,models,runs,memory,throughput")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    out_dir = Path(args.out_dir)
    results_md = Path(args.results_md) if args.results_md else (
        ROOT / "bench" / "RESULTS.md" if out_dir == ROOT / "bench" / "results" else out_dir / "RESULTS.md")
    check = Check(args.dry_run, out_dir, results_md, args.budget_s)
    only = set(args.only.split(",")) if args.only else None
    check.section("env", check.env)
    check.section("models", check.build_models)
    for name in ("runs", "memory", "throughput"):
        if only is None or name in only:
            check.section(name, getattr(check, name))
    path, md = check.write()
    check.say(f"wrote {path} and appended to {md}")
    failures = check.result["failures"]
    check.say("GPU check " + ("passed" if not failures else f"FAILED ({len(failures)} section(s))")
              + f" in {check.result['total_s']} s; skipped {len(check.result['skipped'])} item(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
