"""Estimate the GPU memory a training run will need, before loading anything.

The point is to answer "will this fit, and if not, what should I change?" in the model screen and
``sft-tui models inspect``, in milliseconds and from a ``ModelInfo`` alone.

The formula
===========
All sizes in bytes; P = parameters, T = trainable parameters, N = batch_size × max_length tokens,
h = hidden size, kv = key/value width (kv heads × head dim), I = MLP width, L = layers, V = vocabulary,
a = activation bytes per element (2 for bf16/fp16, 4 for fp32).

weights
    full:  P × w, with w = 2 for bf16 (the model is loaded in bf16 and trained in bf16, as HF does
           when ``dtype`` is bf16), 4 for fp32, and 4 for fp16 (GradScaler refuses fp16 parameters,
           so fp16 training keeps fp32 weights and autocasts).
    lora:  P × (2, or 4 for fp32) + T × 4 (peft keeps adapters in fp32: ``autocast_adapter_dtype``).
    qlora: Q × (0.5 + 1/64 + 4/(64·256)) for NF4 with double quantization (bnb blocksize 64) or Q × 1
           for 8-bit, where Q = the params of the linear layers inside the blocks; the rest
           (embeddings, lm_head, norms) is fp32, because the worker calls peft's
           ``prepare_model_for_kbit_training``, which upcasts every non-quantized parameter.
           Adapters fp32 as for lora.
gradients
    T × (bytes of the trainable params' dtype): 2 for bf16 full fine-tuning, else 4.
optimizer states
    adamw_torch: 2 × T × param bytes (exp_avg, exp_avg_sq in the param dtype) and, during the step,
    one more state-sized temporary (the foreach implementation's sqrt buffer).
    adamw_8bit / paged_adamw_8bit: 2 × T × 1 byte (+ a few quantile maps).
    sgd (no momentum, the HF default): 0.  adafactor: factored second moments, ≈ 0.5 byte per param.
activations (measured on CPU with ``saved_tensors_hooks`` on Llama-shaped models, bf16, sdpa)
    per layer and token: 20·h + 4·kv + 8·I bytes at a = 2 (the fp32 RMSNorm input, the q/k/v/o
    tensors kept by attention, the SwiGLU intermediates); LoRA adds ≈ 4 bytes per input feature of
    each adapted layer (dropout mask + cast input) + 12·r per adapted layer.
    outside the layers: 8·h per token (final norm, lm_head input) and 12·V per token for the logits
    (4 bytes saved by log-softmax, 8 bytes of fp32 gradients at the start of backward: transformers
    upcasts the logits to fp32 for the loss). Plus a b × s² boolean attention mask when padding is
    present (the conservative case).
    gradient checkpointing keeps only each layer's input (2·h·a/2 per token and layer) plus one layer
    recomputed at a time.
    fp32 compute scales the per-layer terms by a/2.
peak
    gradients and activations are not held at the same time: activations peak at the start of
    backward (weights + optimizer states + activations), gradients at the optimizer step (weights +
    gradients + optimizer states + step temporaries). The estimate takes the larger phase, and its
    parts are reported *as held at that moment*, so they add up to the total.
overhead
    caching-allocator slack of 8% of the peak + 64 MiB (cuBLAS workspaces, rounding) — this and the
    rest is what ``torch.cuda.max_memory_reserved`` reports — plus ~500 MiB of CUDA context, which
    the allocator does not see but ``nvidia-smi`` and the free-memory comparison do.

several processes (``world_size`` W > 1, the number per device)
    ddp: every device holds the whole model, its gradients and optimizer states, plus DDP's gradient
         buckets (a second copy of the gradients: the Trainer leaves ``gradient_as_bucket_view`` off).
    fsdp (FSDP2 through accelerate): weights, gradients and optimizer states are sharded over W; with
         bf16/fp16 the trainable parameters are upcast to fp32 (accelerate keeps fp32 masters when
         mixed precision is on), and during forward/backward the gathered weights of two blocks
         (the one computing, the one prefetched) plus the root unit (embeddings, untied head) are held
         whole, in the compute dtype.
    deepspeed ZeRO: stage 1 shards the optimizer states, 2 also the gradients, 3 also the weights (with
         the same gathered blocks as FSDP). With bf16/fp16 DeepSpeed casts the whole model, trainable
         parameters included, to 16 bits and keeps fp32 master copies inside the optimizer: 4 bytes a
         trainable parameter plus fp32 moments, all sharded.
    4/8-bit base weights (qlora, or a quantized checkpoint) are never sharded (integer storage cannot
    be split by FSDP or ZeRO-3 without extra setup), only the adapters, gradients and optimizer states.
    Activations are per device (each rank has its own batch). With one process the strategy is ignored.

Assumptions: one GPU unless ``world_size`` says otherwise, sequences padded to ``max_length`` (packing gives the same),
attention through sdpa/flash (no s² score matrix), Llama-like blocks. ``bench/bench_memory.py``
measures the error against ``torch.cuda.max_memory_reserved`` and writes it to
``bench/results/memory_estimate.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from sft_tui.core.errors import UserError
from sft_tui.core.format import human_bytes

if TYPE_CHECKING:  # pragma: no cover
    from sft_tui.core.config import Config
    from sft_tui.core.models.describe import ModelInfo

MiB = 1024**2
GiB = 1024**3
CUDA_CONTEXT = 500 * MiB
ALLOCATOR_SLACK = 0.08
ALLOCATOR_FIXED = 64 * MiB
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor")
_PRECISIONS = {"auto": "bf16", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
               "fp32": "fp32", "float32": "fp32"}
PARTS = ("weights", "gradients", "optimizer", "activations", "overhead")
STRATEGIES = ("ddp", "fsdp", "deepspeed")


@dataclass
class Verdict:
    level: Literal["fits", "tight", "does-not-fit", "no-gpu"]
    text: str
    gpu_index: int | None = None
    spare_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MemoryEstimate:
    """Bytes by part at the peak moment (they add up to ``total``), with the inputs kept for advice."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    total: int
    peak_phase: Literal["backward", "optimizer step"]
    cuda_context: int
    # Each part's own size, whether or not it is held at the peak: for a fuller breakdown.
    sizes: dict[str, int] = field(default_factory=dict)
    trainable_params: int = 0
    inputs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _info: Any = field(default=None, repr=False, compare=False)

    @property
    def parts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in PARTS}

    @property
    def reserved(self) -> int:
        """What ``torch.cuda.max_memory_reserved`` should show: the total without the CUDA context."""
        return self.total - self.cuda_context

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "_info"}
        data["reserved"] = self.reserved
        return data

    def verdict(self, gpus: Any, devices: Sequence[int] | int | None = None) -> Verdict:
        return verdict(self, gpus, devices)


def _norm_precision(precision: str) -> str:
    try:
        return _PRECISIONS[precision]
    except KeyError:
        raise UserError(f"Unknown precision '{precision}'.", "use one of: auto, bf16, fp16, fp32") from None


def _lora_shapes(info: "ModelInfo", target_modules: str | list[str]) -> tuple[int, int, int]:
    """(Σ in+out, Σ in, layer count) over the adapted layers; Llama-shaped guesses if unknown."""
    layers = info.linear_layers
    if not layers:
        from sft_tui.core.models.describe import _linear_from_config

        layers = _linear_from_config({"hidden_size": info.hidden_size, "num_hidden_layers": info.num_layers,
                                      "intermediate_size": info.intermediate_size,
                                      "num_attention_heads": info.num_attention_heads,
                                      "num_key_value_heads": info.num_key_value_heads})
    if target_modules == "all-linear":
        chosen = list(layers.values())
    else:
        wanted = {t.split(".")[-1] for t in target_modules}
        chosen = [v for k, v in layers.items() if k in wanted]
    return (sum(v.sum_in_out for v in chosen), sum(v.count * v.in_features for v in chosen),
            sum(v.count for v in chosen))


def estimate_memory(info: "ModelInfo", method: str = "lora", bits: int | None = None, batch_size: int = 1,
                    max_length: int = 512, precision: str = "bf16", gradient_checkpointing: bool = False,
                    optimizer: str = "adamw_torch", lora_r: int = 16,
                    target_modules: str | list[str] = "all-linear", world_size: int = 1,
                    strategy: str = "ddp", zero_stage: int = 2) -> MemoryEstimate:
    """Peak GPU memory for one training step on each device; see the module docstring for the formula.

    ``world_size`` is the number of processes (one per GPU) and ``strategy`` how they share the model:
    ddp, fsdp or deepspeed with ``zero_stage`` 1-3 ('auto' is ddp).
    """
    if method not in METHODS:
        raise UserError(f"Unknown training method '{method}'.", "use one of: full, lora, qlora")
    if optimizer not in OPTIMIZERS:
        raise UserError(f"Unknown optimizer '{optimizer}'.", f"use one of: {', '.join(OPTIMIZERS)}")
    strategy = "ddp" if strategy == "auto" else strategy
    if strategy not in STRATEGIES:
        raise UserError(f"Unknown strategy '{strategy}'.", "use one of: auto, ddp, fsdp, deepspeed")
    if zero_stage not in (1, 2, 3):
        raise UserError(f"ZeRO stage {zero_stage} does not exist.", "use zero_stage 1, 2 or 3")
    if world_size < 1:
        raise UserError("world_size must be at least 1.", "give the number of processes (one per GPU)")
    if batch_size < 1 or max_length < 1 or lora_r < 1:
        raise UserError("batch size, max length and LoRA rank must be at least 1.", "check the numbers you gave")
    if not info.param_count:
        raise UserError(f"The parameter count of {info.name} is unknown, so its memory cannot be estimated.",
                        "the model folder needs safetensors weights or a config transformers can build")
    if method == "full" and info.quantization:
        raise UserError(f"{info.name} is already quantized ({info.quantization}); its weights cannot be fully fine-tuned.",
                        "use method lora on it, or start from the unquantized model")
    if method == "qlora":
        bits = bits or 4
        if bits not in (4, 8):
            raise UserError(f"qlora supports 4 or 8 bits, not {bits}.", "use --bits 4 (NF4) or 8")
    else:
        bits = None
    prec = _norm_precision(precision)
    notes: list[str] = []
    W = world_size
    sharding = strategy if W > 1 else "ddp"  # one process shards nothing, whatever the strategy

    P = int(info.param_count)
    h = int(info.hidden_size or 0)
    L = int(info.num_layers or 0)
    V = int(info.vocab_size or 0)
    inter = int(info.intermediate_size or 4 * h)
    heads = int(info.num_attention_heads or 1)
    kv = h * int(info.num_key_value_heads or heads) // heads if h else 0
    N = batch_size * max_length
    act = 4 if prec == "fp32" else 2
    base16 = 4 if prec == "fp32" else 2  # bytes per frozen/base weight that is not quantized

    # ---- trainable parameters and weights
    if method == "full":
        T = P
        wbytes = 4 if prec in ("fp32", "fp16") else 2
        if prec == "fp16" and sharding != "deepspeed":
            notes.append("fp16 full fine-tuning keeps fp32 weights (GradScaler needs them); bf16 halves that")
        frozen, trainable_w = 0.0, P * wbytes
        tbytes = wbytes
        lora_in = lora_count = 0
    else:
        sum_io, lora_in, lora_count = _lora_shapes(info, target_modules)
        T = lora_r * sum_io
        tbytes = 4
        if not lora_count:
            raise UserError(f"None of the target modules {target_modules} exist in {info.name}.",
                            f"choose from: {', '.join(info.lora_targets) or 'all-linear'}")
        if info.quantization and info.quantization_bits:
            base = P * info.quantization_bits / 8
            notes.append(f"base weights stay {info.quantization} as stored")
        elif method == "qlora":
            q = sum(v.params for v in info.linear_layers.values()) or max(P - info.embedding_params, 0)
            per = NF4_BYTES if bits == 4 else 1.0
            base = q * per + (P - q) * 4  # prepare_model_for_kbit_training upcasts the rest to fp32
        else:
            base = P * base16
        frozen, trainable_w = base, T * 4

    # ---- how several processes change dtypes (see "several processes" in the module docstring)
    state_bytes, master = tbytes, 0
    if sharding == "fsdp" and prec != "fp32" and method == "full":
        trainable_w, tbytes, state_bytes = P * 4, 4, 4
    elif sharding == "deepspeed" and prec != "fp32":
        trainable_w, tbytes, state_bytes, master = T * 2, 2, 4, 4 * T

    # ---- gradients and optimizer
    gradients = T * tbytes
    states, step_temp = _optimizer_bytes(optimizer, T, state_bytes)
    states += master

    # ---- sharding over the W processes
    shard_w = W if sharding == "fsdp" or (sharding == "deepspeed" and zero_stage == 3) else 1
    shard_g = W if sharding == "fsdp" or (sharding == "deepspeed" and zero_stage >= 2) else 1
    shard_o = W if sharding in ("fsdp", "deepspeed") else 1
    packed = method == "qlora" or bool(info.quantization)  # integer storage is never sharded
    weights = int(frozen / (1 if packed else shard_w) + trainable_w / shard_w)
    gradients = int(gradients / shard_g)
    states, step_temp = int(states / shard_o), int(step_temp / shard_o)
    buckets = T * tbytes if sharding == "ddp" and W > 1 else 0
    gathered = 0
    if shard_w > 1:
        compute = 4 if prec == "fp32" else 2
        if packed:
            unit_params, root_params = 2 * T / max(L, 1), 0
        else:
            unit_params, root_params = 2 * max(P - info.embedding_params, 0) / max(L, 1), info.embedding_params
        gathered = int((unit_params + root_params) * compute)

    # ---- activations
    scale = act / 2
    per_layer = (20 * h + 4 * kv + 8 * inter) * scale
    if method != "full":
        per_layer += 4 * lora_in / max(L, 1) + 12 * lora_r * lora_count / max(L, 1)
    outside = 8 * h * scale + 12 * V
    if gradient_checkpointing:
        layer_total = L * 2 * h * scale + per_layer  # inputs kept + one layer recomputed
    else:
        layer_total = L * per_layer
    mask = batch_size * max_length * max_length  # bool b×1×s×s, shared by all layers
    activations = int(N * (layer_total + outside) + mask)

    # ---- the two peaks
    head_grads = int(V * h * tbytes / shard_g) if (method == "full" and not info.tie_word_embeddings) else 0
    backward = weights + gathered + states + activations + head_grads + buckets
    step = weights + gradients + buckets + states + step_temp
    if backward >= step:
        phase = "backward"
        held = {"weights": weights + gathered, "gradients": head_grads + buckets, "optimizer": states,
                "activations": activations}
    else:
        phase = "optimizer step"
        held = {"weights": weights, "gradients": gradients + buckets, "optimizer": states + step_temp,
                "activations": 0}
    peak = sum(held.values())
    overhead = int(peak * ALLOCATOR_SLACK + ALLOCATOR_FIXED + CUDA_CONTEXT)
    held = {k: int(v) for k, v in held.items()}
    sizes = {"weights": int(weights + gathered), "gradients": int(gradients + buckets),
             "optimizer": int(states + step_temp),
             "activations": activations, "overhead": overhead}
    inputs = {"method": method, "bits": bits, "batch_size": batch_size, "max_length": max_length,
              "precision": prec, "gradient_checkpointing": gradient_checkpointing, "optimizer": optimizer,
              "lora_r": lora_r, "target_modules": target_modules}
    if W > 1:  # kept out of one-process estimates, whose output stays as it was
        inputs.update(world_size=W, strategy=strategy, zero_stage=zero_stage)
        notes.append(f"per device, {W} processes with {strategy}"
                     + (f" (ZeRO stage {zero_stage})" if strategy == "deepspeed" else ""))
    return MemoryEstimate(weights=held["weights"], gradients=held["gradients"], optimizer=held["optimizer"],
                          activations=held["activations"], overhead=overhead, total=int(peak + overhead),
                          peak_phase=phase, cuda_context=CUDA_CONTEXT, sizes=sizes, trainable_params=int(T),
                          inputs=inputs, notes=notes, _info=info)


def _optimizer_bytes(optimizer: str, T: int, state_bytes: int) -> tuple[int, int]:
    """(states, step temporaries) for T trainable params whose states are ``state_bytes`` wide."""
    if optimizer == "adamw_torch":
        return 2 * T * state_bytes, T * state_bytes
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return 2 * T + 4 * MiB, 0
    if optimizer == "sgd":
        return 0, 0
    return T // 2, T * state_bytes // 8  # adafactor


def estimate_for_config(config: "Config", info: "ModelInfo", world_size: int = 1) -> MemoryEstimate:
    """The estimate for a run config on each of ``world_size`` devices; 'auto' precision is taken as
    bf16 (what a modern GPU uses). ``launcher.resolve_world(config, gpu_count).world_size`` is the
    world of a config on a machine."""
    m, t = config.method, config.training
    return estimate_memory(info, method=m.type, bits=m.bits, batch_size=t.batch_size,
                           max_length=config.data.max_length, precision=t.precision,
                           gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optimizer,
                           lora_r=m.lora_r, target_modules=m.target_modules, world_size=world_size,
                           strategy=t.strategy, zero_stage=t.zero_stage)


# --------------------------------------------------------------------------- verdict


def _gpu_list(gpus: Any) -> list[Any]:
    if gpus is None:
        return []
    if hasattr(gpus, "gpus"):  # a GpuSnapshot
        return list(gpus.gpus) if getattr(gpus, "available", True) else []
    return list(gpus)


def gpu_count(gpus: Any) -> int:
    """How many GPUs a snapshot (or a list of GPUs) holds; 0 for none or no NVML."""
    return len(_gpu_list(gpus))


def _free(gpu: Any) -> int | None:
    free = getattr(gpu, "mem_free", None)
    if free is not None:
        return int(free)
    used, total = getattr(gpu, "mem_used", None), getattr(gpu, "mem_total", None)
    return int(total - used) if used is not None and total is not None else None


def _remedies(est: MemoryEstimate) -> Iterable[tuple[str, dict[str, Any]]]:
    """Cheaper settings in the order a person would try them (least change to the run first)."""
    i = est.inputs
    if not i.get("gradient_checkpointing"):
        yield "gradient checkpointing", {"gradient_checkpointing": True}
    if i.get("world_size", 1) > 1 and i.get("strategy") == "ddp":
        yield f"strategy fsdp (shards the model over the {i['world_size']} GPUs)", {"strategy": "fsdp"}
    if i["batch_size"] > 1:
        yield f"batch size 1 (gradient accumulation ×{i['batch_size']})", {"batch_size": 1}
    if i["optimizer"] == "adamw_torch" and i["method"] == "full":
        yield "the adamw_8bit optimizer", {"optimizer": "adamw_8bit"}
    if i["method"] == "full":
        yield "lora", {"method": "lora"}
    if i["method"] != "qlora":
        yield "qlora (4-bit, gradient checkpointing)", {"method": "qlora", "bits": 4, "gradient_checkpointing": True}
    elif i.get("bits") == 8:
        yield "qlora with 4 bits", {"bits": 4}
    length = i["max_length"]
    while length > 256:
        length //= 2
        yield f"max_length {length}", {"max_length": length}
    yield "qlora with batch size 1 and max_length 512", {"method": "qlora", "bits": 4, "batch_size": 1,
                                                              "max_length": min(512, i["max_length"]),
                                                              "gradient_checkpointing": True}


def suggest(est: MemoryEstimate, budget: int) -> str | None:
    """Up to two single changes that each make the run fit ``budget``, else the smallest combination.

    Single changes come first because "try qlora or max_length 1024" is advice a person can act on;
    only when no one change is enough do we stack them in the order of ``_remedies``.
    """
    if est._info is None:
        return None

    def fits(inputs: dict[str, Any]) -> bool:
        try:
            return estimate_memory(est._info, **inputs).total <= budget
        except UserError:
            return False

    remedies = list(_remedies(est))
    singles = [label for label, change in remedies if fits({**est.inputs, **change})]
    if singles:
        return " or ".join(singles[:2])
    inputs = dict(est.inputs)
    steps: list[str] = []
    for label, change in remedies:
        inputs.update(change)
        steps.append(label)
        if fits(inputs):
            return " + ".join(steps)
    return None


def verdict(est: MemoryEstimate, gpus: Any, devices: Sequence[int] | int | None = None) -> Verdict:
    """Compare the per-device estimate with the free memory of the GPUs the run would use.

    ``devices``: None or 1 — the roomiest GPU decides (one process); a count N — the N roomiest,
    one process each; a list — exactly those GPU indices. With several GPUs the tightest one decides,
    since every process needs the estimate on its own device.
    """
    need = est.total
    listed = [g for g in _gpu_list(gpus) if _free(g) is not None]
    if not listed:
        return Verdict("no-gpu", f"no NVIDIA GPU found: training needs ~{human_bytes(need)} of GPU memory "
                                 "(on CPU it uses system RAM and is much slower)")
    roomiest = sorted(listed, key=lambda g: _free(g) or 0, reverse=True)
    if isinstance(devices, list | tuple):
        by_index = {getattr(g, "index", n): g for n, g in enumerate(listed)}
        missing = [i for i in devices if i not in by_index]
        if missing:
            return Verdict("does-not-fit", f"GPU {', '.join(map(str, missing))} not found: the run needs "
                                           f"~{human_bytes(need)} on each of GPUs {', '.join(map(str, devices))}")
        used = [by_index[i] for i in devices]
    else:
        count = max(int(devices or 1), 1)
        if count > len(listed):
            return Verdict("does-not-fit", f"needs {count} GPUs with ~{human_bytes(need)} each, but "
                                           f"{len(listed)} {'is' if len(listed) == 1 else 'are'} found")
        used = roomiest[:count]
    if len(used) == 1:
        return _one_gpu_verdict(est, used[0])
    tightest = min(used, key=lambda g: _free(g) or 0)
    free = _free(tightest) or 0
    idx = getattr(tightest, "index", 0)
    spare = free - need
    names = ", ".join(str(getattr(g, "index", "?")) for g in used)
    if need <= free * 0.9:
        return Verdict("fits", f"fits on GPUs {names} with at least {human_bytes(spare)} to spare on each "
                               f"(needs ~{human_bytes(need)} per GPU)", idx, spare)
    if need <= free:
        return Verdict("tight", f"tight on GPU {idx} (of {names}): needs ~{human_bytes(need)} per GPU and it has "
                                f"{human_bytes(free)} free; the estimate is ±20%, so consider gradient "
                                f"checkpointing or a smaller batch", idx, spare)
    advice = suggest(est, int(free * 0.9))
    tail = f"; try {advice}" if advice else "; it does not fit even with qlora at batch 1 — use a smaller model"
    return Verdict("does-not-fit", f"needs ~{human_bytes(need)} per GPU but GPU {idx} has {human_bytes(free)} "
                                   f"free{tail}", idx, spare)


def _one_gpu_verdict(est: MemoryEstimate, gpu: Any) -> Verdict:
    need = est.total
    free = _free(gpu) or 0
    idx = getattr(gpu, "index", 0)
    spare = free - need
    if need <= free * 0.9:
        return Verdict("fits", f"fits on GPU {idx} with {human_bytes(spare)} to spare (needs ~{human_bytes(need)})", idx, spare)
    if need <= free:
        return Verdict("tight", f"tight on GPU {idx}: needs ~{human_bytes(need)} of {human_bytes(free)} free; the estimate is "
                                f"±20%, so consider gradient checkpointing or a smaller batch", idx, spare)
    advice = suggest(est, int(free * 0.9))
    tail = f"; try {advice}" if advice else "; it does not fit even with qlora at batch 1 — use a smaller model"
    return Verdict("does-not-fit", f"needs ~{human_bytes(need)} but GPU {idx} has {human_bytes(free)} free{tail}", idx, spare)
