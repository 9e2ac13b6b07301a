"""Training, as a recipe: build the model → prepare the data → build the trainer → train → save.

Only the worker process calls ``run_training``; everything it learns is written to the run
directory as events, so the UI and CLI never need to share memory with it. Heavy libraries are
imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_tui.core.config import Config, Environment, cross_check
from sft_tui.core.errors import NanLossError, UserError
from sft_tui.core.run.events import EventWriter
from sft_tui.core.run.rundir import RunDir


@dataclass
class Device:
    kind: str  # "cuda" | "cpu"
    bf16: bool
    fp16: bool

    @classmethod
    def detect(cls) -> "Device":
        import torch

        if torch.cuda.is_available():
            bf16 = torch.cuda.is_bf16_supported()
            return cls("cuda", bf16=bf16, fp16=not bf16)
        return cls("cpu", bf16=False, fp16=False)


def resolve_precision(config: Config, device: Device) -> str:
    """'auto' → bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    wanted = config.training.precision
    if wanted != "auto":
        return wanted
    if device.kind == "cuda":
        return "bf16" if device.bf16 else "fp16"
    return "fp32"


def model_path(config: Config) -> str:
    """'demo' → the built demo model; a local folder stays a folder; anything else is a hub id."""
    if config.model.path == "demo":
        from sft_tui.core.models.demo import ensure_demo_model

        return str(ensure_demo_model())
    local = Path(config.model.path).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise UserError(f"{local} has no config.json, so it is not a Hugging Face model folder",
                            "point model.path at the folder that holds config.json and the weights")
        return str(local)
    return config.model.path


def _local_only() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def build_tokenizer(config: Config, path: str, *, from_run: bool = False):
    """The tokenizer for ``path``: the base model's, or (``from_run``) the one saved beside an adapter.

    A run's folder is local and was written by us, so no hub revision applies to it.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=config.model.trust_remote_code,
            revision=None if from_run else config.model.revision, local_files_only=_local_only(),
        )
    except OSError as exc:
        reason = str(exc).splitlines()[0]
        if from_run:
            raise UserError(f"could not load the tokenizer in {path}: {reason}",
                            "the run's adapter folder should hold the tokenizer it was trained with") from None
        raise UserError(f"could not load a tokenizer for {config.model.path!r}: {reason}",
                        "give a local model folder with tokenizer files, 'demo', or a hub id while online") from None
    if tokenizer.pad_token is None:
        # Padding positions are masked out of the loss, so reusing eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(config: Config, path: str, device: Device, precision: str):
    """Load the base model (quantized for qlora) and wrap it with LoRA adapters unless full."""
    import torch
    from transformers import AutoModelForCausalLM

    method = config.method
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if config.model.dtype != "auto":
        dtype = getattr(torch, config.model.dtype)
    kwargs: dict[str, Any] = dict(
        dtype=dtype, trust_remote_code=config.model.trust_remote_code, revision=config.model.revision,
        local_files_only=_local_only(),
    )
    if config.model.attn_implementation != "auto":
        kwargs["attn_implementation"] = config.model.attn_implementation
    if method.type == "qlora":
        if device.kind != "cuda":
            raise UserError("qlora needs an NVIDIA GPU with CUDA, and none was found",
                            "use method.type: lora on this machine")
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if device.bf16 else torch.float16
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
            if method.bits == 4 else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise UserError(f"could not load model {config.model.path!r}: {str(exc).splitlines()[0]}",
                        "give a local model folder, 'demo', or a hub id while online (see `sft-tui models`)") from None
    except ValueError as exc:
        raise UserError(f"{config.model.path!r} cannot be fine-tuned as a causal language model: {exc}",
                        "choose a decoder-only (causal LM) model such as Llama, Mistral, Qwen or Phi") from None
    model.config.use_cache = False  # the KV cache only costs memory during training

    if method.type == "full":
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.training.gradient_checkpointing
        )
    lora = LoraConfig(
        r=method.lora_r, lora_alpha=method.lora_alpha, lora_dropout=method.lora_dropout,
        target_modules=method.target_modules, use_dora=method.use_dora, use_rslora=method.use_rslora,
        task_type="CAUSAL_LM", bias="none",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise UserError(f"LoRA could not attach to the model: {exc}",
                        "set method.target_modules to 'all-linear' or to layer names this model has "
                        "(`sft-tui models inspect MODEL` lists them)") from None


def training_arguments(config: Config, run: RunDir, device: Device, precision: str, has_eval: bool):
    from transformers import TrainingArguments

    t = config.training
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if t.eval_steps else "epoch"
    return TrainingArguments(
        output_dir=str(run.checkpoints_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of total steps
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        gradient_checkpointing=t.gradient_checkpointing,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN must reach our callback, not be hidden
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=bool(t.early_stopping_patience and has_eval),
        metric_for_best_model="eval_loss" if t.early_stopping_patience and has_eval else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.kind == "cpu",
        report_to="none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def make_callback(run: RunDir, writer: EventWriter, device: Device):
    """The one TrainerCallback: metrics out as flat events, control commands in."""
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        def __init__(self) -> None:
            self.seq_done = int(run.read_control().get("seq", 0))
            self.control_mtime = 0.0
            self.stop_requested = False
            self.last_log_time = time.monotonic()
            self.last_tokens = 0
            self.start_time = time.monotonic()

        # -- control ---------------------------------------------------------
        def _poll_control(self, control) -> None:
            try:
                mtime = run.control_path.stat().st_mtime
            except FileNotFoundError:
                return
            if mtime == self.control_mtime:
                return  # stat only: reading JSON every step would cost more than the step
            self.control_mtime = mtime
            cmd = run.read_control()
            seq = int(cmd.get("seq", 0))
            if seq <= self.seq_done:
                return
            self.seq_done = seq
            if cmd.get("command") == "stop":
                self.stop_requested = True
                control.should_save = True
                control.should_training_stop = True
                writer.write("log", level="info", msg="stop requested: saving a checkpoint and ending")
            elif cmd.get("command") == "save":
                control.should_save = True
                writer.write("log", level="info", msg="save requested: writing a checkpoint")

        def request_stop(self) -> None:
            self.stop_requested = True

        def on_step_end(self, args, state, control, **kwargs):
            self._poll_control(control)
            if self.stop_requested:
                control.should_save = True
                control.should_training_stop = True
            return control

        # -- metrics ---------------------------------------------------------
        def on_train_begin(self, args, state, control, **kwargs):
            writer.write("log", level="info",
                         msg=f"training for {state.max_steps} steps on {device.kind}")
            self.start_time = self.last_log_time = time.monotonic()
            self.last_tokens = state.num_input_tokens_seen or 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            now = time.monotonic()
            if "loss" in logs:
                loss = logs["loss"]
                if loss is None or (isinstance(loss, float) and (math.isnan(loss) or math.isinf(loss))):
                    raise NanLossError(f"the training loss became NaN/inf at step {state.global_step}")
                tokens = state.num_input_tokens_seen or 0
                elapsed = max(now - self.last_log_time, 1e-6)
                tps = (tokens - self.last_tokens) / elapsed if tokens >= self.last_tokens else None
                self.last_tokens, self.last_log_time = tokens, now
                writer.write(
                    "train", step=state.global_step, max_steps=state.max_steps, epoch=state.epoch,
                    loss=loss, lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                    tokens_per_s=tps, tokens_seen=tokens, elapsed_s=now - self.start_time,
                )
                writer.write("memory", **memory_snapshot(device))
            if "eval_loss" in logs:
                ev = {k: v for k, v in logs.items() if k.startswith("eval_")}
                if "eval_loss" in ev and ev["eval_loss"] is not None:
                    try:
                        ev["eval_perplexity"] = math.exp(min(ev["eval_loss"], 50))
                    except OverflowError:
                        pass
                writer.write("eval", step=state.global_step, epoch=state.epoch, **ev)

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            writer.write("checkpoint", step=state.global_step, path=str(path))

    return EventCallback()


def memory_snapshot(device: Device) -> dict[str, Any]:
    if device.kind == "cuda":
        import torch

        return {
            "device": "cuda:0",
            "allocated": torch.cuda.memory_allocated(),
            "reserved": torch.cuda.memory_reserved(),
            "peak": torch.cuda.max_memory_reserved(),
        }
    import psutil

    rss = psutil.Process().memory_info().rss
    return {"device": "cpu", "allocated": rss, "reserved": rss, "peak": rss}


def run_training(run: RunDir, resume: bool = False, stop_flag: list[Any] | None = None) -> str:
    """Train the run's config; returns the final state ('done' or 'stopped'). Raises on failure."""
    writer = run.writer()
    config = run.load_config()
    device = Device.detect()
    problems = cross_check(config, Environment(cuda_available=device.kind == "cuda", bf16_supported=device.bf16))
    if problems:
        from sft_tui.core.config import ConfigError

        raise ConfigError(problems, str(run.config_path))
    resume_from = None
    if resume:
        resume_from = run.latest_checkpoint()
        if resume_from is None:
            raise UserError(f"run {run.name} has no checkpoint to resume from",
                            "start it again without --resume, or lower training.save_steps next time")

    precision = resolve_precision(config, device)
    path = model_path(config)
    # The resolved folder, not just 'demo' or a hub id: what this run was trained from, exactly.
    writer.status("loading", device=device.kind, precision=precision, model_path=path)
    tokenizer = build_tokenizer(config, path)
    model = build_model(config, path, device, precision)
    trainable, total = _count_params(model)
    writer.write("log", level="info", msg=f"model {config.model.path}: {total / 1e6:.2f}M parameters, "
                 f"{trainable / 1e6:.3f}M trainable ({100 * trainable / max(total, 1):.2f}%)",
                 trainable_params=trainable, total_params=total)

    writer.status("tokenizing")
    from sft_tui.core.data import make_collator, prepare_datasets

    last = [0.0]

    def progress(stage: str, fraction: float) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - last[0] > 1.0:
            last[0] = now
            writer.write("progress", stage=stage, fraction=round(float(fraction), 4))

    data = prepare_datasets(config, tokenizer, progress=progress)
    for warning in data.warnings:
        writer.write("log", level="warning", msg=warning)
    writer.write("data", **_data_summary(data))

    from transformers import EarlyStoppingCallback, Trainer

    has_eval = data.eval is not None and len(data.eval) > 0
    args = training_arguments(config, run, device, precision, has_eval)
    callback = make_callback(run, writer, device)
    if stop_flag is not None:
        stop_flag.append(callback)
    callbacks = [callback]
    if config.training.early_stopping_patience and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    trainer = Trainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval if has_eval else None,
        data_collator=make_collator(
            tokenizer, packing=config.data.packing,
            # one flat row per batch is only safe where attention honours position_ids resets
            padding_free=config.data.packing and config.model.attn_implementation == "flash_attention_2",
        ),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    writer.status("training", resumed_from=str(resume_from) if resume_from else None)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    writer.status("saving")
    save_final(trainer, tokenizer, run, config)
    writer.write("saved", path=str(run.adapter_dir), method=config.method.type)
    return "stopped" if callback.stop_requested else "done"


def save_final(trainer, tokenizer, run: RunDir, config: Config) -> None:
    """LoRA runs save the adapter; full runs save the whole model in the same folder name."""
    trainer.model.save_pretrained(str(run.adapter_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(run.adapter_dir))


def _count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _data_summary(data) -> dict[str, Any]:
    report = data.report.to_dict() if hasattr(data.report, "to_dict") else {}
    return {
        "train_rows": len(data.train),
        "eval_rows": len(data.eval) if data.eval is not None else 0,
        "report": report,
    }
