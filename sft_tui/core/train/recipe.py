"""Training, as a recipe: build the model → prepare the data → build the trainer → train → save.

Only the worker process calls ``run_training``; everything it learns is written to the run
directory as events, so the UI and CLI never need to share memory with it. Heavy libraries are
imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sft_tui.core.config import DEMO_MODEL, Config, Environment
from sft_tui.core.errors import UserError
from sft_tui.core.models.load import load_causal_lm, load_tokenizer, model_folder
from sft_tui.core.run.rundir import RunDir

if TYPE_CHECKING:
    from sft_tui.core.run.events import EventWriter
    from sft_tui.core.train.ranks import Rank
    from sft_tui.core.train.control import ControlWatcher
    from sft_tui.core.train.fastpaths import FastPaths

# The stages a run reports as ``progress`` events before training (``stage``, ``fraction`` 0..1), so
# ``sft-tui logs`` and the monitor say what a run is doing from its first second, not just "starting".
STAGE_WORKER = "starting the worker"
STAGE_LIBRARIES = "loading the training libraries"
STAGE_DEMO = "building the demo model (first use only)"
STAGE_MODEL = "loading the model"


class StageProgress:
    """Writes ``progress`` events: every change of stage and every finished stage at once, and
    within a stage at most one a second (a demo build reports after each of its 400 steps)."""

    def __init__(self, writer: "EventWriter", every: float = 1.0) -> None:
        self.writer, self.every = writer, every
        self.stage: str | None = None
        self.fraction = -1.0
        self.last = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        fraction = round(min(max(float(fraction), 0.0), 1.0), 4)
        if stage == self.stage and fraction == self.fraction:
            return  # nothing new (a stage's end reported twice)
        if stage != self.stage or fraction >= 1.0 or now - self.last >= self.every:
            self.stage, self.fraction, self.last = stage, fraction, now
            self.writer.write("progress", stage=stage, fraction=fraction)


# A CPU model this small gains little from a second torch thread, and on a busy machine two threads
# fight over the cores: quick-test on the demo model took 158 s with torch's default two threads and
# 24 s with one, on 2 cores shared with other jobs. Larger models keep torch's default.
SMALL_CPU_MODEL_PARAMS = 20_000_000


def pin_cpu_threads(total_params: int, device: "Device") -> str | None:
    """One torch thread for a small model on CPU, unless the user chose a count; returns what it did."""
    if device.kind != "cpu" or total_params >= SMALL_CPU_MODEL_PARAMS:
        return None
    if any(os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return None
    import torch

    if torch.get_num_threads() <= 1:
        return None
    torch.set_num_threads(1)
    return (f"CPU: training this {total_params / 1e6:.2f}M-parameter model on one torch thread (a second thread "
            "only adds contention at this size); set OMP_NUM_THREADS to choose")


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


def build_model(config: Config, path: str, device: Device, precision: str, attn_implementation: str | None = None):
    """Load the base model (quantized for qlora) and wrap it with LoRA adapters unless full.

    ``attn_implementation`` is the fast-path decision (``fastpaths.decide``); the config's value by default.
    """
    import torch
    from transformers import set_seed

    # The adapter's initial weights come from the global RNG: seeded, a run is repeatable.
    set_seed(config.training.seed)
    method = config.method
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if config.model.dtype != "auto":
        dtype = getattr(torch, config.model.dtype)
    if method.type == "qlora" and device.kind != "cuda":
        raise UserError("qlora needs an NVIDIA GPU with CUDA, and none was found",
                        "use method.type: lora on this machine")
    compute = dtype if method.type != "qlora" else (torch.bfloat16 if device.bf16 else torch.float16)
    model = load_causal_lm(path, config, compute if method.type == "qlora" else dtype, bits=method.bits,
                           attn_implementation=attn_implementation or config.model.attn_implementation,
                           what=repr(config.model.path))
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


def training_arguments(config: Config, run: RunDir, device: Device, precision: str, has_eval: bool,
                       fast: "FastPaths | None" = None, extra: dict[str, Any] | None = None):
    from transformers import TrainingArguments

    t = config.training
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if t.eval_steps else "epoch"
    from sft_tui.core.train.trackers import tracker_setup

    trackers = tracker_setup(config, getattr(run, "path", None) or run.checkpoints_dir.parent)
    trackers.apply()  # tracker folders inside the run dir, via the env vars the tracker libraries read
    kwargs = dict(
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
        **trackers.trainer_arguments(),  # report_to and run_name (sft_tui/core/train/trackers.py)
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if fast is not None and fast.group_by_length else "random",
        use_liger_kernel=bool(fast is not None and fast.liger),
    )
    kwargs.update(extra or {})  # a rank of a multi-process run: backend, timeout, FSDP/DeepSpeed files (launch.json)
    return TrainingArguments(**kwargs)


def choose_fast_paths(config: Config, path: str) -> "FastPaths":
    """The fast paths for this config on this machine (``fastpaths.decide`` on the model's own config)."""
    from transformers import AutoConfig

    from sft_tui.core.train.fastpaths import Capabilities, decide

    try:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
        model_type = getattr(model_config, "model_type", None)
    except Exception:  # noqa: BLE001 - the model load itself reports an unreadable config, precisely
        model_config, model_type = None, None
    return decide(config, Capabilities.detect(model_type, model_config))


def data_config_for(config: Config, fast: "FastPaths") -> Config:
    """The config the data pipeline sees: packing only where the fast paths keep packed rows apart."""
    if config.data.packing and not fast.packing:
        config = config.model_copy(deep=True)
        config.data.packing = False
    return config


def build_trainer(config: Config, model, tokenizer, data, args, fast: "FastPaths", callbacks: list):
    """The trainer: transformers' Trainer (with the chunked loss when chosen) and sft-tui's collator."""
    from sft_tui.core.data import make_collator
    from sft_tui.core.train.fastpaths import trainer_class

    has_eval = data.eval is not None and len(data.eval) > 0
    cls = trainer_class(fast.loss)
    return cls(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval if has_eval else None,
        data_collator=make_collator(tokenizer, packing=fast.packing, padding_free=fast.padding_free),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def mfu_basis(config: Config, model, data, total_params: int, device: Device) -> tuple[float | None, float | None]:
    """(model FLOPs per token, the GPU's peak bf16 TFLOPS) for MFU; (…, None) on CPU or an unknown GPU."""
    from sft_tui.core.train.fastpaths import flops_per_token, peak_tflops

    peak = None
    if device.kind == "cuda":
        import torch

        peak = peak_tflops(torch.cuda.get_device_name(0))
    mc = getattr(model, "config", None)
    layers = int(getattr(mc, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(mc, "hidden_size", 0) or 0)
    emb = 0
    try:
        emb_module = model.get_input_embeddings()
        out = model.get_output_embeddings()
        if out is None or out.weight is not emb_module.weight:
            emb = emb_module.weight.numel()
    except Exception:  # noqa: BLE001 - any model without the usual accessors: count everything
        emb = 0
    try:
        sample = data.train.select(range(min(len(data.train), 512)))["input_ids"]
        seq = sum(map(len, sample)) / max(len(sample), 1)
    except Exception:  # noqa: BLE001
        seq = float(config.data.max_length)
    return flops_per_token(total_params, config.method.type, layers, hidden, seq, emb), peak


def resolve_base(config: Config, writer: "EventWriter", stages: StageProgress, device: Device,
                 precision: str) -> str:
    """The base model's folder, with the ``loading`` status (carrying that folder) written as early as
    it is known: the demo model's folder is known before it is built, so a first run reports the
    build (``progress`` events with the share of pre-training steps done) under ``loading``."""
    from sft_tui.core.models.load import quiet_transformers

    def log(msg: str) -> None:
        writer.write("log", level="info", msg=msg)

    if config.model.path == DEMO_MODEL:
        from sft_tui.core.models.demo import demo_model_dir, ensure_demo_model, is_built

        path = str(demo_model_dir())
        writer.status("loading", device=device.kind, precision=precision, model_path=path)
        if not is_built():
            quiet_transformers()
            stages(STAGE_DEMO, 0.0)
            path = str(ensure_demo_model(progress=log, fraction=lambda f: stages(STAGE_DEMO, f)))
            stages(STAGE_DEMO, 1.0)
        stages(STAGE_MODEL, 0.0)
        return path
    stages(STAGE_MODEL, 0.0)
    path = model_folder(config, progress=log)
    # The resolved folder, not just a hub id: what this run was trained from, exactly.
    writer.status("loading", device=device.kind, precision=precision, model_path=path)
    return path


def build_demo_first(config: Config, writer: "EventWriter", stages: StageProgress) -> None:
    """Build the demo model in this process when a run needs it and it is not built yet: the ranks of
    a multi-process run then all find it, instead of each building its own at once."""
    if config.model.path != DEMO_MODEL:
        return
    from sft_tui.core.models.demo import is_built

    if not is_built():
        device = Device.detect()
        resolve_base(config, writer, stages, device, resolve_precision(config, device))


def run_training(run: RunDir, resume: bool = False, watcher: "ControlWatcher | None" = None,
                 stages: StageProgress | None = None, writer: "EventWriter | None" = None,
                 rank: "Rank | None" = None) -> str:
    """Train the run's config; returns the final state ('done' or 'stopped'). Raises on failure.

    ``watcher`` is the worker's control watcher (it has been reading control.json since the worker
    started); without one, commands are read from the first training step on. ``stages`` writes the
    ``progress`` events of the start (the worker passes the one it wrote its first event with).
    ``rank`` is set in each process of a multi-process run (``core/train/ranks.py``): only rank 0 moves
    files and saves, the others wait for it at a barrier; ``writer`` is then that rank's own.
    """
    writer = writer or run.writer()
    many = rank is not None and rank.world_size > 1
    main = rank is None or rank.main
    stages = stages or StageProgress(writer)
    stages(STAGE_LIBRARIES, 0.0)  # importing transformers and torch takes seconds on a busy machine
    from sft_tui.core.train import faults
    from sft_tui.core.train.callback import EventCallback
    from sft_tui.core.train.control import ControlWatcher, StopHandle

    config = run.load_config()
    watcher = watcher or ControlWatcher(run, writer, StopHandle(), run.control_seq())
    from sft_tui.core.train.fastpaths import set_alloc_conf

    set_alloc_conf()  # expandable segments, before the first CUDA allocation (unless the user set it)
    device = Device.detect()
    from sft_tui.core.train.preflight import preflight

    # The cheap pre-flight again (the files may have moved since `train` checked): every problem at once.
    env = Environment(cuda_available=device.kind == "cuda", bf16_supported=device.bf16)
    preflight(config, env, deep=False, runs_dir=run.path.parent).raise_if_blocked(force=True, source=str(run.config_path))
    plan = None
    if resume:
        from sft_tui.core.train.resume import plan_resume

        plan = plan_resume(run, world_size=rank.world_size if rank is not None else 1)
        if main:
            for moved, why in run.set_aside_incomplete():
                writer.write("log", level="warning", msg=f"{moved.name} is incomplete ({why}), resuming from "
                             f"{plan.checkpoint.name}; the partial folder was moved to {moved.parent.name}/")
        if many:
            from sft_tui.core.train.ranks import barrier

            barrier()
    faults.install(writer)
    stages(STAGE_LIBRARIES, 1.0)

    precision = resolve_precision(config, device)
    path = resolve_base(config, writer, stages, device, precision)
    tokenizer = load_tokenizer(path, trust_remote_code=config.model.trust_remote_code, what=repr(config.model.path))
    if plan is not None and plan.finish_only:
        from sft_tui.core.train.resume import finish_from_checkpoint

        writer.write("log", level="info", msg=plan.notes()[-1])
        writer.status("saving")
        finish_from_checkpoint(plan.checkpoint, tokenizer, run.adapter_dir)
        writer.write("saved", path=str(run.adapter_dir), method=config.method.type)
        return "done"
    fast = choose_fast_paths(config, path)
    if many:
        _fast_paths_for_ranks(fast, config)
    writer.write("log", level="info", msg=fast.summary(), fast_paths=fast.to_dict())
    for note in fast.notes:
        writer.write("log", level="info", msg=note)
    for warning in fast.warnings:
        writer.write("log", level="warning", msg=warning)
    model = build_model(config, path, device, precision, fast.attn_implementation)
    trainable, total = _count_params(model)
    stages(STAGE_MODEL, 1.0)
    writer.write("log", level="info", msg=f"model {config.model.path}: {total / 1e6:.2f}M parameters, "
                 f"{trainable / 1e6:.3f}M trainable ({100 * trainable / max(total, 1):.2f}%)",
                 trainable_params=trainable, total_params=total)
    threads = pin_cpu_threads(total, device)
    if threads:
        writer.write("log", level="info", msg=threads)

    writer.status("tokenizing")

    data = _prepare_data(config, fast, tokenizer, stages, many, main)
    for warning in data.warnings:
        writer.write("log", level="warning", msg=warning)
    writer.write("data", **_data_summary(data))

    from transformers import EarlyStoppingCallback

    has_eval = data.eval is not None and len(data.eval) > 0
    args = training_arguments(config, run, device, precision, has_eval, fast, _rank_arguments(run) if many else None)
    callback = EventCallback(run, writer, device.kind, watcher.stop, watcher)
    callback.flops_per_token, callback.peak_tflops = mfu_basis(config, model, data, total, device)
    from sft_tui.core.train.resume import data_identity

    callback.record = (config, data_identity(config), len(data.train), rank.world_size if rank is not None else 1)
    if plan is not None:
        from sft_tui.core.train.resume import read_record

        for note in plan.change_notes():
            writer.write("log", level="warning" if note.startswith("warning") else "info", msg=note)
        rows_then = read_record(plan.checkpoint).get("train_rows")
        if plan.data_changed and rows_then is not None:
            writer.write("log", level="warning", msg=f"training rows: {rows_then} at {plan.checkpoint.name}, "
                         f"{len(data.train)} now")
    from sft_tui.core.train.energy import EnergyCallback

    callbacks = [callback]
    if many:
        from sft_tui.core.train.ranks import make_callback

        # Right after EventCallback, whose stop/save it makes every rank's, and before the watchdog,
        # which must see an agreed save to give it a save's allowance.
        callbacks.append(make_callback(rank, writer, device.kind, watcher.stop, run.path))
    from sft_tui.core.train.trackers import config_callbacks
    from sft_tui.core.train.watchdog import WatchdogCallback

    callbacks += [EnergyCallback(writer, device.kind, run),  # GPU energy as `energy` events; none on CPU
                  WatchdogCallback(writer, config.training, device.kind), *config_callbacks(config, writer)]
    if config.training.early_stopping_patience and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    trainer = build_trainer(config, model, tokenizer, data, args, fast, callbacks)
    resume_from = str(plan.checkpoint) if plan is not None else None
    writer.status("training", resumed_from=resume_from)
    watcher.training_started()
    trainer.train(resume_from_checkpoint=resume_from)

    writer.status("saving")
    if many:
        save_final_ranks(trainer, tokenizer, run, main)
    else:
        save_final(trainer, tokenizer, run, writer)
    writer.write("saved", path=str(run.adapter_dir), method=config.method.type)
    return "stopped" if watcher.stop.requested else "done"


def _fast_paths_for_ranks(fast: "FastPaths", config: Config) -> None:
    """The chunked loss calls the decoder past the DDP/FSDP wrapper, which would skip the gradient
    all-reduce (each rank would train its own copy); with several ranks the loss goes through the
    wrapped model. Measured on 2 gloo ranks: the chunked path's losses drifted 0.02 from one process
    by step 8, the standard path matched to 4 decimals."""
    if fast.loss == "chunked":
        fast.loss = "standard"
        fast.notes = [n for n in fast.notes if not n.startswith("loss:")]
        note = "loss: standard with several processes (the chunked loss would bypass the gradient all-reduce)"
        (fast.warnings if config.training.loss == "chunked" else fast.notes).append(note)


def _rank_arguments(run: RunDir) -> dict[str, Any]:
    """The TrainingArguments the supervisor planned for every rank (``launch.json``, core/train/launcher.py)."""
    import json

    from sft_tui.core.train.launcher import launch_file

    plan = run.path / launch_file(int(os.environ.get("GROUP_RANK", 0)))  # torchrun: GROUP_RANK is the node's rank
    return dict(json.loads(plan.read_text(encoding="utf-8")).get("training_arguments") or {})


def _prepare_data(config: Config, fast: "FastPaths", tokenizer, stages: StageProgress, many: bool, main: bool):
    """Tokenize; with several ranks, rank 0 first (it fills the cache) and the others after it (they
    read it), so two processes never write the same cache files at once."""
    from sft_tui.core.data import prepare_datasets

    if not many:
        return prepare_datasets(data_config_for(config, fast), tokenizer, progress=stages)
    from sft_tui.core.train.ranks import barrier

    data = None
    if main:
        data = prepare_datasets(data_config_for(config, fast), tokenizer, progress=stages)
    barrier()
    if not main:
        data = prepare_datasets(data_config_for(config, fast), tokenizer, progress=stages)
    return data


def save_final_ranks(trainer, tokenizer, run: RunDir, main: bool) -> None:
    """The final model of a multi-process run: every rank takes part in gathering the weights
    (sharded strategies need them all), rank 0 writes them beside ``adapter/`` and swaps it in whole."""
    from sft_tui.core.train.ranks import barrier

    staging = run.path / ".adapter.ranks"
    if main and staging.exists():
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    barrier()
    trainer.save_model(str(staging))  # writes on rank 0 only; gathers from every rank where sharded
    barrier()
    if main:
        import shutil

        from sft_tui.core.train.resume import staged_folder

        with staged_folder(run.adapter_dir) as tmp:
            for item in staging.iterdir():
                if item.name == "training_args.bin":
                    continue
                shutil.move(str(item), str(tmp / item.name))
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(staging, ignore_errors=True)
    barrier()


def save_final(trainer, tokenizer, run: RunDir, writer=None) -> None:
    """LoRA runs save the adapter; full runs save the whole model in the same folder name.

    Written beside ``adapter/`` and swapped in whole, so a kill mid-save never leaves half a model.
    """
    from sft_tui.core.train import faults
    from sft_tui.core.train.resume import staged_folder

    with staged_folder(run.adapter_dir) as tmp:
        trainer.model.save_pretrained(str(tmp), safe_serialization=True)
        if writer is not None:
            faults.final_save_pause(writer)
        tokenizer.save_pretrained(str(tmp))


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
