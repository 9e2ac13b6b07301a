"""sft-tui's training throughput against a plain TRL script, on this machine (CPU or GPU).

Ours is the real worker (``python -m sft_tui.worker``, exactly as ``sft-tui train`` starts it: events,
control watcher, fast paths); the baseline is ``bench/plain_trl.py`` (a plain ``SFTTrainer`` with SDPA
on the same model, the same tokenized rows and labels, the same LoRA, batch, steps and seed). Both
measure tokens/s from the start of training to the last logged step, non-padding tokens. Runs are
interleaved (ours, TRL, ours, TRL, …) because the machine is shared, and the median and spread of each
side are reported. Length grouping is off on both sides so both do the same work (it is on by default
in sft-tui; ``--ours-defaults`` measures that too).

Run: python bench/bench_overhead.py [--reps 3] [--steps 60] [--model demo] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def write_config(path: Path, model: str, steps: int, batch: int, max_length: int, group: str = "off",
                 extra: dict | None = None) -> Path:
    import yaml

    cfg = {"model": model,
           "data": {"path": "sample:reviews_alpaca.jsonl", "validation_split": 0.0, "max_length": max_length,
                    "group_by_length": group},
           "training": {"logging_steps": 5, "batch_size": batch, "max_steps": steps, "save_steps": 100000}}
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_ours(config_path: Path, runs: Path, env: dict) -> dict:
    """The real worker on ``config_path``; tokens/s from its last train event."""
    from sft_tui.core.config import load_config
    from sft_tui.core.run.launch import start_run

    run = start_run(load_config(config_path), runs_dir=runs)
    pid = int((run.path / "worker.pid").read_text().split()[0])
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            break
        time.sleep(0.2)
    train = [e for e in run.events() if e["type"] == "train"]
    errors = [e for e in run.events() if e["type"] == "error"]
    if errors or not train:
        raise RuntimeError(f"our run failed: {errors or 'no train events'}; see {run.log_path}")
    last = train[-1]
    return {"tokens": last["tokens_seen"], "seconds": last["elapsed_s"],
            "tokens_per_s": last["tokens_seen"] / max(last["elapsed_s"], 1e-9), "steps": last["step"],
            "mfu": last.get("mfu"), "run": str(run.path)}


def run_trl(config_path: Path, env: dict, flags: list[str] | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "plain_trl.py"), str(config_path), "--out", out,
                           *(flags or [])], capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError("plain TRL failed:\n" + proc.stdout[-2000:] + proc.stderr[-4000:])
    return json.loads(Path(out).read_text())


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}–{max(values):.0f}"


def measure(reps: int, steps: int, model: str, batch: int, max_length: int, ours_defaults: bool = False,
            say=print) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    os.environ.update({k: env[k] for k in ("OMP_NUM_THREADS",)})
    tmp = Path(tempfile.mkdtemp(prefix="sft-bench-overhead-"))
    matched = write_config(tmp / "matched.yaml", model, steps, batch, max_length, "off")
    default = write_config(tmp / "defaults.yaml", model, steps, batch, max_length, "auto")
    ours, trl, ours_def = [], [], []
    for i in range(reps):
        order = [("ours", matched), ("trl", matched)] if i % 2 == 0 else [("trl", matched), ("ours", matched)]
        if ours_defaults:
            order.append(("ours-defaults", default))
        for name, cfg in order:
            if name == "trl":
                r = run_trl(cfg, env)
                trl.append(r["tokens_per_s"])
            else:
                r = run_ours(cfg, tmp / "runs", env)
                (ours if name == "ours" else ours_def).append(r["tokens_per_s"])
            say(f"  rep {i + 1} {name}: {r['tokens_per_s']:.0f} tok/s ({r['tokens']} tokens in {r['seconds']:.2f} s)")
    result = {"ours": ours, "trl": trl, "ours_defaults": ours_def,
              "ours_median": statistics.median(ours), "trl_median": statistics.median(trl),
              "ratio": statistics.median(ours) / statistics.median(trl), "reps": reps, "steps": steps,
              "model": model, "batch_size": batch, "max_length": max_length,
              "threads": env.get("OMP_NUM_THREADS")}
    if ours_def:
        result["ours_defaults_median"] = statistics.median(ours_def)
    return result


def line(result: dict) -> str:
    text = (f"overhead: {result['ratio']:.2f}x (ours {result['ours_median']:.0f} tok/s, plain TRL "
            f"{result['trl_median']:.0f} tok/s; medians of {result['reps']} interleaved runs, spread ours "
            f"{spread(result['ours'])}, TRL {spread(result['trl'])})")
    if result.get("ours_defaults"):
        text += f"; ours with default length grouping {result['ours_defaults_median']:.0f} tok/s"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--ours-defaults", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    from sft_tui.core.models.demo import ensure_demo_model

    ensure_demo_model()
    result = measure(args.reps, args.steps, args.model, args.batch_size, args.max_length, args.ours_defaults)
    print(line(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
