"""Describe a model without loading its weights.

Everything comes from ``config.json``, the tokenizer files and the safetensors *headers* (a JSON
block at the start of each file that lists every tensor's dtype and shape), so inspecting a 70B model
reads a few kilobytes. When there are no safetensors (a config-only folder, ``.bin`` weights, or a
pre-quantized checkpoint whose packed shapes say nothing about the real size) the model is built on
the meta device, which allocates no memory but gives exact parameter counts and layer names.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sft_tui.core.imports import preload
from sft_tui.core.errors import UserError
from sft_tui.core.paths import folder_size

# Bytes per element of the safetensors dtype codes.
_ST_DTYPES: dict[str, tuple[str, float]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "I64": ("int64", 8), "I32": ("int32", 4),
    "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1),
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
# Leaf names that are 2-D inside a block but are not nn.Linear (LoRA cannot target them).
_NOT_LINEAR = re.compile(r"(norm|embed|wte|wpe|ln_|layernorm|rotary|position)", re.I)
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                  "camembert", "ernie", "mpnet", "modernbert", "xlm", "flaubert", "funnel", "longformer"}
_VISION_TYPES = {"vit", "clip", "siglip", "dinov2", "convnext", "resnet", "swin", "beit", "deit", "sam",
                 "clip_vision_model", "siglip_vision_model", "detr", "yolos", "mobilevit", "segformer"}


@dataclass
class LinearShape:
    """One LoRA-targetable layer name: how often it occurs and its summed fan-in + fan-out."""

    count: int
    in_features: int
    out_features: int
    sum_in_out: int  # Σ (in + out) over every occurrence; LoRA params = r × this
    params: int = 0  # Σ (in × out): the weights a 4/8-bit load would quantize

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ModelInfo:
    name: str
    path: str
    architecture: str | None
    model_type: str | None
    is_causal_lm: bool
    param_count: int | None
    param_count_source: str  # 'safetensors' (exact), 'meta' (exact, built empty), 'estimate'
    hidden_size: int | None
    num_layers: int | None
    context_length: int | None
    dtype: str | None
    disk_bytes: int
    has_tokenizer: bool
    has_chat_template: bool
    quantization: str | None
    quantization_bits: int | None = None
    lora_targets: list[str] = field(default_factory=list)
    linear_layers: dict[str, LinearShape] = field(default_factory=dict)
    vocab_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    tie_word_embeddings: bool = False
    not_causal_reason: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["linear_layers"] = {k: v.to_dict() for k, v in self.linear_layers.items()}
        return data

    @property
    def embedding_params(self) -> int:
        """Input embedding plus an untied output head: the params a 4/8-bit load keeps in 16 bits."""
        if not (self.vocab_size and self.hidden_size):
            return 0
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)


# --------------------------------------------------------------------------- small readers


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg}).",
                        "the download may be incomplete; fetch the model again") from None
    except OSError as exc:
        raise UserError(f"Cannot read {what} {path}: {exc.strerror or exc}.", "check the file's permissions") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is not a JSON object.", "the file looks damaged; fetch the model again")
    return data


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of one .safetensors file, read without touching the tensor data.

    The format is an 8-byte little-endian length followed by that many bytes of JSON; parsing it
    directly avoids importing torch just to list shapes.
    """
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise UserError(f"{path} is too short to be a safetensors file.", "the download may be incomplete")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 1024 * 1024:
            raise UserError(f"{path} has an implausible header size; it is not a safetensors file.",
                            "the file looks damaged; fetch the model again")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} has a damaged safetensors header.", "fetch the model again") from None
    header.pop("__metadata__", None)
    return header


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs keep the language model's sizes under text_config.
    sub = cfg.get("text_config")
    return {**sub, **{k: v for k, v in cfg.items() if k not in sub}} if isinstance(sub, dict) else cfg


def _first(cfg: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    if (path / "additional_chat_templates").is_dir():
        return True
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            return bool(json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, json.JSONDecodeError, AttributeError):
            return False
    return False


def _quantization(cfg: dict[str, Any]) -> tuple[str | None, int | None]:
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return None, None
    method = str(q.get("quant_method", "unknown")).lower()
    if method == "bitsandbytes":
        if q.get("load_in_4bit") or q.get("_load_in_4bit"):
            return "bnb-4bit", 4
        return "bnb-8bit", 8
    bits = q.get("bits") or q.get("w_bit")
    if method in ("fp8", "fbgemm_fp8"):
        bits = bits or 8
    return method, int(bits) if isinstance(bits, (int, float)) else None


# --------------------------------------------------------------------------- causal or not


def classify(cfg: dict[str, Any]) -> tuple[bool, str | None]:
    """(is_causal_lm, why not) from the config alone.

    ``architectures`` is the reliable signal (what the checkpoint was trained as); only when it is
    missing do we ask transformers whether the model type has a causal-LM class, excluding encoders
    that merely ship an LM-head variant (BERT has ``BertLMHeadModel``).
    """
    archs = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
    model_type = str(cfg.get("model_type") or "").lower()
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) and model_type not in _ENCODER_TYPES:
        return True, None
    if model_type in _ENCODER_TYPES or any(a.endswith(("ForMaskedLM", "ForSequenceClassification",
                                                        "ForTokenClassification", "ForQuestionAnswering"))
                                           for a in archs):
        return False, (f"it is an encoder model ({archs[0] if archs else model_type}, BERT-style): it reads text "
                       "but cannot generate it")
    if "vision_config" in cfg or model_type in _VISION_TYPES or any("Vision" in a or "ForImage" in a for a in archs):
        return False, f"it is a vision or vision-language model ({archs[0] if archs else model_type})"
    if cfg.get("is_encoder_decoder") or any(a.endswith("ForConditionalGeneration") for a in archs):
        return False, (f"it is an encoder-decoder model ({archs[0] if archs else model_type}); sft-tui trains "
                       "decoder-only causal language models")
    if archs:
        return False, f"its architecture {archs[0]} has no causal language-model head"
    if model_type:
        try:
            preload("transformers")  # a first import racing another thread sees a half-made module
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

            if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
                return True, None
        except Exception:
            pass
        return False, f"transformers knows no causal language model for model_type '{model_type}'"
    return False, "its config.json names neither an architecture nor a model_type"


# --------------------------------------------------------------------------- parameters and layers


_HEADS = ("lm_head.weight", "model.lm_head.weight")


def _from_headers(files: list[Path], tied: bool | None = None) -> tuple[int, str | None, dict[str, LinearShape], bool]:
    """Count from the safetensors headers, and say whether the head is tied.

    A tied head saved as its own tensor anyway is the embedding again, so it is left out
    (transformers loads it as one shared matrix). ``tied`` None (config.json does not say): tied
    when the files hold an embedding but no head.
    """
    total = 0
    dtype_elems: Counter[str] = Counter()
    linear: dict[str, LinearShape] = {}
    headers = [read_safetensors_header(file) for file in files]
    names = {name for header in headers for name in header}
    has_embedding = any(n.endswith(("embed_tokens.weight", "wte.weight")) for n in names)
    if tied is None:
        tied = has_embedding and not any(n in names for n in _HEADS)
    for header in headers:
        for name, meta in header.items():
            if tied and has_embedding and name in _HEADS:
                continue
            shape = meta.get("shape") or []
            n = 1
            for d in shape:
                n *= int(d)
            total += n
            dtype_elems[meta.get("dtype", "?")] += n
            parts = name.split(".")
            if (len(shape) == 2 and parts[-1] == "weight" and len(parts) >= 3
                    and any(p.isdigit() for p in parts[:-2]) and not _NOT_LINEAR.search(parts[-2])):
                _add_linear(linear, parts[-2], int(shape[1]), int(shape[0]))
    top = dtype_elems.most_common(1)[0][0] if dtype_elems else None
    return total, _ST_DTYPES.get(top, (top, 0))[0] if top else None, linear, tied


def _add_linear(linear: dict[str, LinearShape], leaf: str, fan_in: int, fan_out: int) -> None:
    cur = linear.get(leaf)
    if cur is None:
        linear[leaf] = LinearShape(1, fan_in, fan_out, fan_in + fan_out, fan_in * fan_out)
    else:
        cur.count += 1
        cur.sum_in_out += fan_in + fan_out
        cur.params += fan_in * fan_out


def _from_meta(path: Path, trust_remote_code: bool) -> tuple[int, dict[str, LinearShape], bool]:
    """Build the model with no storage and count what it would hold; also whether the head is tied.

    ``init_empty_weights`` puts parameters on the meta device. Built from a config alone, the output
    head is not yet tied to the input embedding (transformers ties weights while loading them), so
    it is tied here first: ``parameters()`` then yields the shared matrix once, and the count
    matches what the published figures and safetensors files report (Qwen2.5-0.5B: 494M, not 630M).
    """
    import torch
    from accelerate import init_empty_weights
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        # Count the model as it was before quantization; packed int weights hide the real size.
        del config.quantization_config
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    try:
        model.tie_weights()
    except Exception:  # custom code without tying support: counted as built
        pass
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = bool(out_emb is not None and in_emb is not None
                and getattr(out_emb, "weight", None) is getattr(in_emb, "weight", False))
    total = sum(p.numel() for p in model.parameters())
    linear: dict[str, LinearShape] = {}
    try:
        preload("transformers")  # a first import racing another thread sees a half-made module
        from transformers.pytorch_utils import Conv1D
        kinds: tuple[type, ...] = (torch.nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        kinds = (torch.nn.Linear,)
    for name, module in model.named_modules():
        if isinstance(module, kinds) and module is not out_emb and name:
            w = module.weight
            fan_out, fan_in = (w.shape[0], w.shape[1]) if isinstance(module, torch.nn.Linear) else (w.shape[1], w.shape[0])
            _add_linear(linear, name.split(".")[-1], int(fan_in), int(fan_out))
    return int(total), linear, tied


def _estimate_params(cfg: dict[str, Any]) -> int | None:
    """Llama-shaped arithmetic for configs transformers cannot build (custom code, unknown type)."""
    h = _first(cfg, "hidden_size", "n_embd", "d_model")
    n_layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    vocab = cfg.get("vocab_size")
    if not (h and n_layers and vocab):
        return None
    inter = _first(cfg, "intermediate_size", "n_inner") or 4 * h
    heads = _first(cfg, "num_attention_heads", "n_head") or 1
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    attn = h * heads * head_dim * 2 + 2 * h * kv * head_dim
    if cfg.get("attention_bias") or (cfg.get("attention_bias") is None and cfg.get("model_type") in _QKV_BIAS):
        attn += heads * head_dim + 2 * kv * head_dim
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    # A tied output head is the input embedding itself: counted once.
    emb = vocab * h * (1 if _tied(cfg) else 2)
    return int(n_layers * per_layer + emb + h)


# Model types whose attention has q/k/v biases without saying so in config.json.
_QKV_BIAS = {"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl"}


def _says_tied(cfg: dict[str, Any], raw_cfg: dict[str, Any] | None = None) -> bool:
    return "tie_word_embeddings" in cfg or "tie_word_embeddings" in (raw_cfg or {})


def _tied(cfg: dict[str, Any], raw_cfg: dict[str, Any] | None = None) -> bool:
    """tie_word_embeddings from the text config, else the top level. When neither says, the default
    is the architecture's own (GPT-2 ties, Llama does not): building the model empty answers that,
    and without it the head is counted (an estimate that errs towards more memory)."""
    for source in (cfg, raw_cfg or {}):
        if "tie_word_embeddings" in source:
            return bool(source["tie_word_embeddings"])
    return False


def _linear_from_config(cfg: dict[str, Any]) -> dict[str, LinearShape]:
    h = _first(cfg, "hidden_size", "n_embd", "d_model")
    n_layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    if not (h and n_layers):
        return {}
    inter = _first(cfg, "intermediate_size", "n_inner") or 4 * h
    heads = _first(cfg, "num_attention_heads", "n_head") or 1
    head_dim = cfg.get("head_dim") or h // heads
    kvd = (cfg.get("num_key_value_heads") or heads) * head_dim
    shapes = {"q_proj": (h, heads * head_dim), "k_proj": (h, kvd), "v_proj": (h, kvd), "o_proj": (heads * head_dim, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    return {k: LinearShape(n_layers, i, o, n_layers * (i + o), n_layers * i * o) for k, (i, o) in shapes.items()}


# --------------------------------------------------------------------------- the entry point


def describe_model(path_or_id: str | Path, *, require_causal: bool = True, allow_download: bool = False,
                   trust_remote_code: bool = False) -> ModelInfo:
    """Everything the model screen and the memory estimate need, without loading weights.

    Raises ``UserError`` when the model cannot be found or read, and (with ``require_causal``)
    when it is not a causal language model, naming what it is instead.
    """
    from sft_tui.core.models.load import resolve_model

    path = resolve_model(path_or_id, allow_download=allow_download, metadata_only=True)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} has no config.json.", "a model folder needs config.json next to its weights")
    raw_cfg = _read_json(cfg_file, "Model config")
    cfg = _text_config(raw_cfg)
    archs = raw_cfg.get("architectures") or []
    is_causal, why_not = classify(raw_cfg)
    name = str(path_or_id)
    if require_causal and not is_causal:
        raise UserError(f"{name} is not a causal language model: {why_not}.",
                        "pick a decoder-only text model such as Llama, Mistral, Qwen or Gemma (…ForCausalLM)")

    quant, qbits = _quantization(raw_cfg)
    warnings: list[str] = []
    st_files = sorted(path.glob("*.safetensors"))
    param_count: int | None = None
    source = "estimate"
    st_dtype: str | None = None
    linear: dict[str, LinearShape] = {}
    tied = _tied(cfg, raw_cfg)
    if st_files and quant is None:
        said = tied if _says_tied(cfg, raw_cfg) else None
        param_count, st_dtype, linear, tied = _from_headers(st_files, said)
        source = "safetensors"
    if param_count is None or not linear:
        try:
            meta_count, meta_linear, tied = _from_meta(path, trust_remote_code)
            if param_count is None:
                param_count, source = meta_count, "meta"
            linear = linear or meta_linear
        except Exception as exc:  # unknown or custom architecture: fall back to arithmetic
            warnings.append(f"could not build the model empty ({exc.__class__.__name__}); sizes are estimated")
            param_count = param_count if param_count is not None else _estimate_params(cfg)
            linear = linear or _linear_from_config(cfg)

    dtype = st_dtype or _first(raw_cfg, "dtype", "torch_dtype") or _first(cfg, "dtype", "torch_dtype")
    ctx = _first(cfg, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
    heads = _first(cfg, "num_attention_heads", "n_head")
    tok_names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    has_tok = any(f in tok_names for f in _TOKENIZER_FILES) or any(n.endswith(".tiktoken") for n in tok_names)
    if not has_tok:
        warnings.append("no tokenizer files: training needs a tokenizer in the model folder")
    return ModelInfo(
        name=name,
        path=str(path),
        architecture=archs[0] if archs else None,
        model_type=raw_cfg.get("model_type"),
        is_causal_lm=is_causal,
        param_count=param_count,
        param_count_source=source,
        hidden_size=_first(cfg, "hidden_size", "n_embd", "d_model"),
        num_layers=_first(cfg, "num_hidden_layers", "n_layer", "num_layers"),
        context_length=int(ctx) if isinstance(ctx, (int, float)) else None,
        dtype=str(dtype) if dtype else None,
        disk_bytes=folder_size(path),
        has_tokenizer=has_tok,
        has_chat_template=_has_chat_template(path),
        quantization=quant,
        quantization_bits=qbits,
        lora_targets=sorted(linear),
        linear_layers=linear,
        vocab_size=cfg.get("vocab_size"),
        intermediate_size=_first(cfg, "intermediate_size", "n_inner"),
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        tie_word_embeddings=tied,
        not_causal_reason=why_not,
        warnings=warnings,
    )
