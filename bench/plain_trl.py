"""The baseline: a plain TRL ``SFTTrainer`` script, fed the very rows sft-tui trains on.

What a user writes by hand with TRL: the model loaded with SDPA attention, peft LoRA, an SFTConfig,
and a dataset that is already tokenized (``input_ids`` + ``completion_mask``, so TRL does not
tokenize again). The rows come from sft-tui's own pipeline (``prepare_datasets``) before the clock
starts, so both sides train on identical tokens and labels. Timing is from ``on_train_begin`` to the
last ``on_log`` (as sft-tui's train events measure it), tokens are TRL's non-padding token count.

Run: python bench/plain_trl.py CONFIG.yaml [--out result.json] [--liger] [--padding-free] [--packing]
[--gradient-checkpointing]. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_clock():
    """A callback that records when training began, the last logged step's time and tokens seen.

    Shared with gpu_check.py, so both sides of a throughput comparison are timed the same way.
    """
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        begin = last = 0.0
        tokens = 0

        def on_train_begin(self, a, state, control, **kw):
            self.begin = time.monotonic()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.last, self.tokens = time.monotonic(), state.num_input_tokens_seen or 0

    return Clock()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--out")
    parser.add_argument("--liger", action="store_true")
    parser.add_argument("--padding-free", action="store_true")
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sft_tui.core.config import load_config
    from sft_tui.core.data import prepare_datasets
    from sft_tui.core.models.load import load_tokenizer, model_folder

    config = load_config(args.config)
    path = model_folder(config)
    tokenizer = load_tokenizer(path)
    cfg = config.model_copy(deep=True)
    cfg.data.packing = False
    data = prepare_datasets(cfg, tokenizer)
    rows = data.train.map(lambda r: {"completion_mask": [int(x != -100) for x in r["labels"]]},
                          remove_columns=["labels", "attention_mask"])
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else (torch.float16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if cuda:
        model = model.to("cuda")
    t, m = config.training, config.method
    lora = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=m.target_modules, task_type="CAUSAL_LM", bias="none")
    sft = SFTConfig(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"plain-trl-{os.getpid()}"),
        max_steps=t.max_steps or 20, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation, learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio, logging_steps=t.logging_steps,
        save_strategy="no", report_to=[], seed=t.seed, data_seed=t.seed, bf16=bf16, fp16=cuda and not bf16,
        use_cpu=not cuda, max_length=config.data.max_length, packing=args.packing,
        padding_free=args.padding_free, completion_only_loss=True, use_liger_kernel=args.liger,
        gradient_checkpointing=args.gradient_checkpointing or t.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, disable_tqdm=True,
        max_grad_norm=t.max_grad_norm, optim=t.optimizer, dataset_kwargs={"skip_prepare_dataset": False},
    )

    clock = make_clock()
    trainer = SFTTrainer(model=model, args=sft, train_dataset=rows, processing_class=tokenizer, peft_config=lora,
                         callbacks=[clock])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    elapsed = max(clock.last - clock.begin, 1e-9)
    result = {"tokens": int(clock.tokens), "seconds": elapsed, "tokens_per_s": clock.tokens / elapsed,
              "steps": trainer.state.global_step,
              "peak_reserved": int(torch.cuda.max_memory_reserved()) if cuda else None,
              "params": sum(p.numel() for p in model.parameters())}
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).write_text(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
