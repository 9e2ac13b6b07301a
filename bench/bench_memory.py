"""Measure the memory estimate against the real peak on a CUDA GPU.

For each configuration a ~270M-parameter Llama is built from a config (random weights, no download),
trained for a few steps with the HF Trainer (bf16, as the worker does), and
``torch.cuda.max_memory_reserved`` is compared with ``MemoryEstimate.reserved`` (the estimate less
the CUDA context, which the allocator does not see). Each configuration runs in its own process so
one run's cached blocks do not inflate the next. Results go to bench/results/memory_estimate.json.

    python bench/bench_memory.py            # all configurations
    python bench/bench_memory.py --steps 3  # fewer steps

On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "memory_estimate.json"

MODEL = {  # Llama-shaped, ~270M params: big enough that weights and activations both matter
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816,
    "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 32000,
    "max_position_embeddings": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}

CONFIGS = [
    {"name": "full-b4-s512", "method": "full", "bits": None, "batch_size": 4, "max_length": 512,
     "gradient_checkpointing": False, "optimizer": "adamw_torch"},
    {"name": "lora-b4-s1024", "method": "lora", "bits": None, "batch_size": 4, "max_length": 1024,
     "gradient_checkpointing": False, "optimizer": "adamw_torch"},
    {"name": "lora-gc-b8-s2048", "method": "lora", "bits": None, "batch_size": 8, "max_length": 2048,
     "gradient_checkpointing": True, "optimizer": "adamw_torch"},
    {"name": "qlora4-gc-b4-s1024", "method": "qlora", "bits": 4, "batch_size": 4, "max_length": 1024,
     "gradient_checkpointing": True, "optimizer": "adamw_torch"},
    {"name": "full-gc-8bit-b2-s1024", "method": "full", "bits": None, "batch_size": 2, "max_length": 1024,
     "gradient_checkpointing": True, "optimizer": "adamw_8bit"},
]


def _model_dir(tmp: Path) -> Path:
    folder = tmp / "bench-llama"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(MODEL))
    return folder


def measure(cfg: dict, tmp: Path, steps: int = 4) -> dict:
    """Train ``steps`` steps of one configuration in this process and compare peak with estimate."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

    from sft_tui.core.models.memory import estimate_memory
    from sft_tui.core.models.describe import describe_model

    folder = _model_dir(tmp)
    info = describe_model(folder)
    est = estimate_memory(info, cfg["method"], cfg["bits"], cfg["batch_size"], cfg["max_length"], "bf16",
                          cfg["gradient_checkpointing"], cfg["optimizer"], lora_r=16)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(str(folder))
    if cfg["method"] == "qlora":
        from transformers import BitsAndBytesConfig

        weights = tmp / "bench-llama-weights"
        if not (weights / "config.json").exists():
            AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(str(weights))
        quant = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.bfloat16)
                 if cfg["bits"] == 4 else BitsAndBytesConfig(load_in_8bit=True))
        torch.cuda.reset_peak_memory_stats()
        model = AutoModelForCausalLM.from_pretrained(str(weights), quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": 0})
    else:
        torch.cuda.reset_peak_memory_stats()
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to("cuda")
    model.config.use_cache = False
    if cfg["method"] != "full":
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if cfg["method"] == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg["gradient_checkpointing"])
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    n, s = cfg["batch_size"] * steps, cfg["max_length"]
    ids = torch.randint(0, MODEL["vocab_size"], (n, s))
    data = [{"input_ids": row, "labels": row, "attention_mask": torch.ones_like(row)} for row in ids]
    args = TrainingArguments(output_dir=str(tmp / "out"), per_device_train_batch_size=cfg["batch_size"],
                             max_steps=steps, bf16=True, gradient_checkpointing=cfg["gradient_checkpointing"],
                             optim=cfg["optimizer"], learning_rate=1e-4, report_to=[], save_strategy="no",
                             logging_steps=steps, dataloader_num_workers=0)
    start = time.time()
    Trainer(model=model, args=args, train_dataset=data).train()
    torch.cuda.synchronize()
    reserved = torch.cuda.max_memory_reserved()
    allocated = torch.cuda.max_memory_allocated()
    return {**cfg, "estimate_reserved": est.reserved, "estimate_total": est.total, "estimate_parts": est.parts,
            "estimate_sizes": est.sizes, "peak_phase": est.peak_phase, "measured_reserved": reserved,
            "measured_allocated": allocated, "error": (est.reserved - reserved) / reserved,
            "param_count": info.param_count, "seconds": round(time.time() - start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one configuration, JSON out
    parser.add_argument("--only", help="comma-separated configuration names")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_memory needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured.")
        return 0
    if args.one is not None:
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(measure(CONFIGS[args.one], Path(tmp), args.steps)))
        return 0
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    for i, cfg in enumerate(CONFIGS):
        if wanted and cfg["name"] not in wanted:
            continue
        proc = subprocess.run([sys.executable, __file__, "--one", str(i), "--steps", str(args.steps)],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            rows.append({**cfg, "failed": " | ".join(tail)})
            print(f"{cfg['name']:<24} failed: {' | '.join(tail)}")
            continue
        row = json.loads(line[7:])
        rows.append(row)
        print(f"{cfg['name']:<24} estimate {row['estimate_reserved'] / 2**30:6.2f} GiB  measured "
              f"{row['measured_reserved'] / 2**30:6.2f} GiB  error {row['error'] * 100:+6.1f}%")
    errors = [abs(r["error"]) for r in rows if "error" in r]
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
               "steps": args.steps, "max_abs_error": max(errors) if errors else None,
               "within_20_percent": sum(e <= 0.2 for e in errors), "measured": len(errors), "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(f"max |error| {summary['max_abs_error']}; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
