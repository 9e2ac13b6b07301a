"""Which speed-ups a run uses, decided once from the config and the machine, each one visible.

``decide(config, caps)`` is a pure function (tests pass a hand-made ``Capabilities``); the worker
calls it with ``Capabilities.detect(...)`` and writes every choice as an ``info`` log event and every
requested-but-impossible one as a ``warning`` event, so nothing is ever a silent no-op.

The decision table
==================
attention      model.attn_implementation 'auto' → flash_attention_2 on CUDA with 16-bit compute when the
               ``flash_attn`` package imports; otherwise transformers' own choice (sdpa).
boundaries     a kernel "keeps packed rows apart" when it is flash-attention 2/3 (varlen from position ids),
               or sdpa/eager/flex on a model whose mask is built by transformers' ``create_causal_mask``
               (transformers ≥ 5 detects packed sequences from position ids and builds a block-causal mask).
packing        data.packing: true → best-fit packing when boundaries are kept; else a warning and
               length-grouped batches instead (rows would attend to their neighbours).
padding-free   data.padding_free 'auto' → on with flash-attention (no pad tokens at all, varlen kernel);
               'on' → on wherever boundaries are kept (sdpa computes the flattened square: correct, not
               faster), else a warning.
length groups  data.group_by_length 'auto' → on when batches are padded (batch size > 1, not packed, not
               padding-free); 'on' → on unless packing/padding-free make it moot (noted).
liger          training.liger 'auto' → on with CUDA + liger-kernel installed + a supported model type; a CUDA
               run without the package gets a warning with the install line; 'on' warns for each reason
               it cannot apply (not installed, no CUDA, unsupported model).
loss           training.loss 'auto' → Liger's fused linear cross-entropy when Liger is on, else the chunked
               loss below when the model is a plain decoder + lm_head, else the standard loss;
               'chunked' on an unsupported model → warning, standard loss.
allocator      PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True for CUDA workers (set before the first
               CUDA allocation), unless the user set the variable.

Padding is always to the longest row of the batch, never to max_length (``make_collator``).

The chunked loss computes, for one slice of tokens at a time, the lm_head projection, log-softmax, the
loss and its gradients with respect to the hidden states (and to the lm_head weight when it trains),
all in the forward pass, so the fp32 logits (12·V bytes a token with transformers' upcast) are never
held for the batch. The sum is divided by ``num_items_in_batch`` (the trainer's count of target tokens
over the whole accumulated batch) exactly as transformers' ForCausalLMLoss does, so the loss scale under
gradient accumulation is unchanged.
"""

from __future__ import annotations

from sft_tui.core.imports import preload

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

ALLOC_CONF = "expandable_segments:True"

# Plain decoder + lm_head families whose CausalLM forward is ``lm_head(decoder(x))`` with no logit
# soft-capping or scaling: the chunked loss reproduces their loss exactly.
CHUNKED_LOSS_MODEL_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "gemma", "starcoder2",
    "helium", "glm", "ministral",
})
# liger_kernel.transformers.monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN when the package is absent.
LIGER_MODEL_TYPES_FALLBACK = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi3",
    "granite", "olmo2", "glm4", "smollm3",
})

# Dense (no sparsity) peak bf16 tensor TFLOPS by GPU name; V100/T4 have no bf16, their fp16 peak is used.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GB200", 2500.0), ("B200", 2250.0), ("B100", 1750.0),
    ("H200", 989.0), ("GH200", 989.0), ("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("H20", 148.0),
    ("A100", 312.0), ("A800", 312.0), ("A10G", 70.0), ("A10", 125.0), ("A30", 165.0), ("A40", 150.0),
    ("A6000", 155.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("RTX 6000 ADA", 364.0), ("RTX 5090", 209.0), ("RTX 4090", 165.0), ("RTX 4080", 97.0),
    ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
]


def peak_tflops(device_name: str | None) -> float | None:
    """Peak dense bf16 TFLOPS of a GPU from its name (``torch.cuda.get_device_name``); None if unknown."""
    if not device_name:
        return None
    name = device_name.upper().replace("-", " ")
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


def flops_per_token(params: int, method: str, layers: int = 0, hidden: int = 0, seq_len: float = 0.0,
                    embedding_params: int = 0) -> float:
    """Model FLOPs per trained token: 6·N for full fine-tuning (forward 2N, backward 4N), 4·N for LoRA
    (frozen weights get no weight gradients), N without the input embedding lookup, plus causal attention
    6·L·h·s. Recomputation (gradient checkpointing) is not counted: this is MFU, not hardware utilisation."""
    n = max(int(params) - int(embedding_params), 0)
    per = (6.0 if method == "full" else 4.0) * n
    return per + 6.0 * layers * hidden * seq_len


def mfu(tokens_per_s: float | None, flops_token: float | None, peak: float | None) -> float | None:
    if not tokens_per_s or not flops_token or not peak:
        return None
    return float(tokens_per_s) * float(flops_token) / (peak * 1e12)


# --------------------------------------------------------------------------- capabilities


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Capabilities:
    """What this machine and these libraries offer; ``detect`` probes, tests construct one by hand."""

    cuda: bool = False
    bf16: bool = False
    flash_attn: bool = False        # the flash_attn package (flash_attention_2)
    flash_attn3: bool = False       # flash_attn_interface (flash_attention_3, Hopper)
    liger: bool = False             # liger_kernel importable
    liger_model_types: frozenset[str] = LIGER_MODEL_TYPES_FALLBACK
    packed_masks: bool = False      # transformers builds block-causal masks from position ids for this model
    model_type: str | None = None
    chunked_loss_ok: bool = False   # the model is decoder + plain lm_head (see CHUNKED_LOSS_MODEL_TYPES)
    gpu_name: str | None = None

    @classmethod
    def detect(cls, model_type: str | None = None, model_config: Any = None) -> "Capabilities":
        import torch

        cuda = bool(torch.cuda.is_available())
        liger = _importable("liger_kernel")
        types = LIGER_MODEL_TYPES_FALLBACK
        if liger:
            try:
                from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

                types = frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)
            except Exception:  # noqa: BLE001 - an unusual liger build: keep the static list
                pass
        return cls(
            cuda=cuda, bf16=bool(cuda and torch.cuda.is_bf16_supported()),
            flash_attn=cuda and _importable("flash_attn"), flash_attn3=cuda and _importable("flash_attn_interface"),
            liger=liger, liger_model_types=types, packed_masks=packed_masks_supported(model_type),
            model_type=model_type, chunked_loss_ok=chunked_loss_supported(model_type, model_config),
            gpu_name=torch.cuda.get_device_name(0) if cuda else None,
        )


def packed_masks_supported(model_type: str | None) -> bool:
    """Does transformers build this model's mask with ``create_causal_mask`` (packed-sequence aware)?"""
    if not model_type:
        return False
    try:
        preload("transformers")  # a first import racing another thread sees a half-made module
        from transformers import masking_utils

        if not hasattr(masking_utils, "find_packed_sequence_indices"):
            return False
        preload("transformers")  # a first import racing another thread sees a half-made module
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        cls_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        if not cls_name:
            return False
        import importlib

        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        return hasattr(module, "create_causal_mask")
    except Exception:  # noqa: BLE001 - unknown layout: do not claim support
        return False


def chunked_loss_supported(model_type: str | None, model_config: Any = None) -> bool:
    if model_type not in CHUNKED_LOSS_MODEL_TYPES:
        return False
    if model_config is not None:
        for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
            if getattr(model_config, attr, None) not in (None, 1, 1.0):
                return False
    return True


# --------------------------------------------------------------------------- the decision


@dataclass
class FastPaths:
    attn_implementation: str = "auto"
    boundaries: bool = False        # the attention kernel keeps packed/flattened rows apart
    packing: bool = False
    padding_free: bool = False
    group_by_length: bool = False
    liger: bool = False
    loss: str = "standard"          # standard | chunked | liger
    expandable_segments: bool = False
    notes: list[str] = field(default_factory=list)     # info: what was chosen and why
    warnings: list[str] = field(default_factory=list)  # requested but cannot apply

    def summary(self) -> str:
        on = [name for name, flag in (("packing", self.packing), ("padding-free", self.padding_free),
                                      ("length-grouped batches", self.group_by_length), ("liger", self.liger),
                                      ("expandable segments", self.expandable_segments)) if flag]
        return (f"fast paths: attention {self.attn_implementation}, loss {self.loss}, "
                + (", ".join(on) if on else "no batching fast path") + "; pad to longest in batch")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("attn_implementation", "boundaries", "packing", "padding_free",
                                              "group_by_length", "liger", "loss", "expandable_segments")}


def decide(config: Any, caps: Capabilities) -> FastPaths:
    """The fast paths for ``config`` on a machine with ``caps`` (see the module docstring's table)."""
    fp = FastPaths()
    d, t, m = config.data, config.training, config.method
    compute16 = caps.cuda and (t.precision in ("bf16", "fp16") or (t.precision == "auto") or m.type == "qlora")

    # attention
    attn = config.model.attn_implementation
    if attn == "auto" and caps.cuda and compute16 and caps.flash_attn:
        attn = "flash_attention_2"
        fp.notes.append("attention: flash_attention_2 (flash-attn is installed)")
    fp.attn_implementation = attn
    flash = attn in ("flash_attention_2", "flash_attention_3") or attn.endswith("flash-attn2") or \
        attn.endswith("flash-attn3")
    fp.boundaries = flash or (attn in ("auto", "sdpa", "eager", "flex_attention") and caps.packed_masks)

    # packing / padding-free / length grouping
    if d.packing:
        if fp.boundaries:
            fp.packing = True
            fp.notes.append("packing: best-fit, rows kept apart by position ids"
                            + (" (flash-attention varlen)" if flash else " (block-causal mask)"))
        else:
            fp.warnings.append(f"packing was requested but the attention kernel ({attn}) would let packed rows "
                               "attend to each other on this model: not packing, using length-grouped batches "
                               "instead (set model.attn_implementation: flash_attention_2 on CUDA to pack)")
    if d.padding_free == "on":
        if fp.boundaries:
            fp.padding_free = True
            if not flash:
                fp.notes.append("padding-free with sdpa: correct (block-causal mask) but attention runs over the "
                                "whole flattened batch; flash-attention makes it faster")
        else:
            fp.warnings.append(f"padding-free was requested but the attention kernel ({attn}) cannot keep "
                               "flattened rows apart on this model: batches are padded to their longest row")
    elif d.padding_free == "auto" and flash:
        fp.padding_free = True
        fp.notes.append("padding-free: rows are joined with no padding (flash-attention varlen)")
    batched = t.batch_size > 1
    if d.group_by_length == "on":
        if fp.packing or fp.padding_free:
            fp.notes.append("length-grouped batches: not needed, batches carry no padding")
        else:
            fp.group_by_length = True
    elif d.group_by_length == "auto" and batched and not (fp.packing or fp.padding_free):
        fp.group_by_length = True
    if fp.group_by_length:
        fp.notes.append("length-grouped batches: rows of similar length are batched together (less padding)")

    # liger
    supported = caps.model_type in caps.liger_model_types if caps.model_type else False
    if t.liger == "on":
        reasons = []
        if not caps.liger:
            reasons.append("the liger-kernel package is not installed (pip install liger-kernel)")
        if not caps.cuda:
            reasons.append("it needs an NVIDIA GPU (Triton kernels)")
        if not supported:
            reasons.append(f"it does not support the model type {caps.model_type!r}")
        if reasons:
            fp.warnings.append("liger was requested but cannot apply: " + "; ".join(reasons))
        else:
            fp.liger = True
    elif t.liger == "auto" and caps.cuda:
        if caps.liger and supported:
            fp.liger = True
        elif not caps.liger:
            fp.warnings.append("liger kernels would make this run faster and leaner but the liger-kernel package "
                               "is not installed: pip install liger-kernel (or set training.liger: off)")
        else:
            fp.warnings.append(f"liger-kernel does not support the model type {caps.model_type!r}: "
                               "running without it")
    if fp.liger:
        fp.notes.append("liger: fused RMSNorm/RoPE/SwiGLU and fused linear cross-entropy")

    # loss
    if fp.liger and t.loss != "standard":
        fp.loss = "liger"
    elif t.loss in ("auto", "chunked"):
        if caps.chunked_loss_ok:
            fp.loss = "chunked"
            fp.notes.append("loss: chunked cross-entropy (the full logits are never held)")
        elif t.loss == "chunked":
            fp.warnings.append(f"the chunked loss was requested but the model type {caps.model_type!r} is not a "
                               "plain decoder + lm_head it supports: using the standard loss")
    fp.expandable_segments = caps.cuda
    return fp


def set_alloc_conf(environ: dict[str, str] | None = None) -> bool:
    """PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless the user set it; before CUDA starts."""
    env = os.environ if environ is None else environ
    if "PYTORCH_CUDA_ALLOC_CONF" in env or "PYTORCH_ALLOC_CONF" in env:
        return False
    env["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
    return True


# --------------------------------------------------------------------------- the chunked loss


def chunk_tokens(vocab: int, budget_bytes: int = 256 * 1024**2) -> int:
    """Tokens per slice so one slice's fp32 logits stay near ``budget_bytes``."""
    return int(min(8192, max(128, budget_bytes // max(4 * int(vocab), 1))))


def _chunked_ce_function():
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """sum over targets of CE(hidden @ weightᵀ, target); gradients computed in forward, slice by slice."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk: int):
            n = hidden.shape[0]
            need_h, need_w = hidden.requires_grad, weight.requires_grad
            w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            for start in range(0, n, chunk):
                h = hidden[start:start + chunk]
                tgt = targets[start:start + chunk]
                valid = tgt.ne(-100)
                if not bool(valid.any()):
                    if grad_h is not None:
                        grad_h[start:start + chunk].zero_()
                    continue
                logits = (h @ w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                safe = tgt.clamp_min(0)
                picked = logits.gather(1, safe[:, None]).squeeze(1)
                total += torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
                # d(sum CE)/d logits = softmax - one_hot, zero for ignored positions (in place on logits)
                grad = logits.sub_(lse[:, None]).exp_()
                grad[torch.arange(grad.shape[0], device=grad.device), safe] -= 1.0
                grad.mul_(valid[:, None])
                g = grad.to(hidden.dtype)
                if grad_h is not None:
                    grad_h[start:start + chunk] = g @ w
                if grad_w is not None:
                    grad_w += grad.t() @ h.float()
                del logits, grad, g
            ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
            ctx.need = (need_h, need_w)
            ctx.weight_dtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx, grad_out):
            saved = list(ctx.saved_tensors)
            need_h, need_w = ctx.need
            gh = gw = None
            if need_h:
                t = saved.pop(0)
                gh = t * grad_out.to(t.dtype)
            if need_w:
                gw = (saved.pop(0) * grad_out).to(ctx.weight_dtype)
            return gh, gw, None, None

    return ChunkedLinearCrossEntropy


_CE = None


def chunked_linear_cross_entropy(hidden, weight, targets, chunk: int):
    """Σ CE over ``targets`` != -100 (hidden: (N, h); weight: (V, h); targets: (N,))."""
    global _CE
    if _CE is None:
        _CE = _chunked_ce_function()
    return _CE.apply(hidden, weight, targets, int(chunk))


def _unwrap(model):
    inner = model
    for attr in ("module",):  # DDP / accelerate wrappers
        while hasattr(inner, attr) and not hasattr(inner, "get_decoder"):
            inner = getattr(inner, attr)
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return inner


def chunked_causal_lm_loss(model, inputs: dict[str, Any], num_items_in_batch=None):
    """The causal-LM loss of ``model`` on ``inputs`` without materialising the logits; None if the model's
    shape is not the plain decoder + nn.Linear lm_head this supports (the caller falls back)."""
    import torch
    import torch.nn.functional as F

    base = _unwrap(model)
    lm_head = getattr(base, "lm_head", None)
    decoder = getattr(base, "model", None)
    if type(lm_head) is not torch.nn.Linear or decoder is None or getattr(lm_head, "bias", None) is not None:
        return None
    labels = inputs["labels"]
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    out = decoder(**kwargs, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    targets = F.pad(labels, (0, 1), value=-100)[..., 1:]
    if "shift_labels" in inputs:
        targets = inputs["shift_labels"]
    flat = hidden.reshape(-1, hidden.shape[-1])
    total = chunked_linear_cross_entropy(flat, lm_head.weight, targets.reshape(-1).to(flat.device),
                                         chunk_tokens(lm_head.weight.shape[0]))
    if num_items_in_batch is None:
        denom = targets.ne(-100).sum()
    else:
        denom = num_items_in_batch
    if torch.is_tensor(denom):
        denom = denom.to(total.device)
    return total / denom


def trainer_class(loss: str):
    """transformers' Trainer, with ``compute_loss`` replaced by the chunked loss during training."""
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers import Trainer

    if loss != "chunked":
        return Trainer

    class ChunkedLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and not return_outputs and "labels" in inputs:
                loss = chunked_causal_lm_loss(model, inputs, num_items_in_batch)
                if loss is not None:
                    procs = getattr(self.accelerator, "num_processes", 1)
                    if self.args.average_tokens_across_devices and num_items_in_batch is not None and procs > 1:
                        loss = loss * procs  # as Trainer.compute_loss does for a count gathered over ranks
                    return loss
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return ChunkedLossTrainer
