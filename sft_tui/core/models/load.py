"""Base models from name to memory: hub/offline state, name → local folder, tokenizer and model loading.

Training, evaluation, export, the Data screen and ``data inspect`` all load through here, so a
model folder is found the same way (``demo`` built on demand, a folder checked for config.json,
a hub id taken from the cache or downloaded only while online), ``HF_HUB_OFFLINE`` means the same
thing everywhere, and a tokenizer always gets a pad token. Heavy libraries are imported inside
functions: importing this module costs nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sft_tui.core.imports import preload
from sft_tui.core.config import DEMO_MODEL
from sft_tui.core.errors import UserError

if TYPE_CHECKING:
    from sft_tui.core.config import Config

# A hub id: "name" or "org/name", letters, digits, '-', '_', '.'; no leading/trailing separators.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
# huggingface_hub's own reading of a boolean variable: anything else (0, no, false, empty) is off.
_TRUE = {"1", "on", "yes", "true"}


def _env_true(*names: str) -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def hub_offline() -> bool:
    """True when the user asked for no hub traffic: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, read now.

    Values are read as huggingface_hub reads them: 1/on/yes/true is offline, anything else online.
    """
    return _env_true("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def datasets_offline() -> bool:
    """Hub datasets are off when the hub is, or when HF_DATASETS_OFFLINE says so."""
    return hub_offline() or _env_true("HF_DATASETS_OFFLINE")


def hf_cache_dir() -> Path:
    """The hub cache as huggingface_hub would compute it from the current environment.

    ``huggingface_hub.constants`` freezes these at import time; reading the variables here lets
    tests and a user who exports HF_HOME late get what they asked for.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def looks_like_hub_id(text: str, namespace: bool = False) -> bool:
    """'name' or 'org/name' as the hub spells ids (``namespace`` demands the 'org/' part).

    Data paths, model names and the export's repo field all ask this one question.
    """
    text = str(text)
    if text.startswith((".", "~", "/")) or ".." in text or not _HUB_ID.match(text):
        return False
    return "/" in text or not namespace


def _cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hf_cache_dir()), revision=revision)
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def resolve_model(name_or_path: str | Path, allow_download: bool = False, revision: str | None = None,
                  metadata_only: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """Map 'demo', a folder, a name from ``model_dirs`` or a hub id to a local model folder.

    Downloads only with ``allow_download`` and while online; ``metadata_only`` fetches config and
    tokenizer files but no weights, which is all ``describe_model`` needs.
    """
    from sft_tui.core.models.discovery import discover_models, scan_model_dir

    text = str(name_or_path).strip()
    if not text:
        raise UserError("No model given.", "use 'demo', a model folder, or a hub id such as Qwen/Qwen2.5-0.5B")
    if text == DEMO_MODEL:
        from sft_tui.core.models.demo import demo_model_dir, ensure_demo_model

        if not (demo_model_dir() / "config.json").exists():
            quiet_transformers()  # building it saves a model ("Writing model shards")
        return Path(ensure_demo_model(progress=progress))
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file():
            if path.name == "config.json":
                path = path.parent
            else:
                raise UserError(f"{path} is a file, not a model folder.",
                                "give the folder that holds config.json and the weights")
        if not is_model_dir(path):
            nested = scan_model_dir(path)
            hint = (f"it contains models, e.g. {nested[0].path}" if nested
                    else "a model folder holds config.json, the *.safetensors weights and the tokenizer files")
            raise UserError(f"{path} has no config.json, so it is not a Hugging Face model folder.", hint)
        return path
    # A bare name the user keeps in one of their model_dirs.
    for entry in discover_models():
        if entry.source == "dir" and entry.name == text and entry.path is not None:
            return entry.path
    looks_like_path = text.startswith(("/", ".", "~")) or os.sep in text.replace("/", "", 1) or text.count("/") > 1
    if looks_like_path or not looks_like_hub_id(text):
        raise UserError(f"Model folder not found: {text}",
                        "check the path, or run `sft-tui models` to list the models on this machine")
    cached = _cached_snapshot(text, revision)
    if cached is not None:
        return cached
    if hub_offline():
        raise UserError(
            f"'{text}' is not in the local Hugging Face cache ({hf_cache_dir()}) and the hub is offline "
            "(HF_HUB_OFFLINE is set).",
            "download it on a connected machine (`hf download " + text + "`) and copy the cache, "
            "or unset HF_HUB_OFFLINE",
        )
    if not allow_download:
        raise UserError(f"'{text}' looks like a Hugging Face hub id but is not downloaded yet.",
                        f"download it first (`hf download {text}`), or allow the download when asked")
    if progress is not None:
        progress(f"downloading {text} from the Hugging Face hub" + (" (config and tokenizer only)" if metadata_only else ""))
    return _download(text, revision, metadata_only)


def _download(repo_id: str, revision: str | None, metadata_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"] if metadata_only else None
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=str(hf_cache_dir()),
                                      allow_patterns=patterns))
    except Exception as exc:
        name = exc.__class__.__name__
        if name in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            hint = ("the model is gated: accept its licence on huggingface.co and run `hf auth login`"
                    if name == "GatedRepoError" else "check the spelling of the hub id")
            raise UserError(f"Cannot get '{repo_id}' from the Hugging Face hub: {str(exc).splitlines()[0]}", hint) from None
        raise UserError(f"Downloading '{repo_id}' failed: {name}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        "check the network connection, or set HF_HUB_OFFLINE=1 and use local models") from None


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model folder is one with config.json (weights and tokenizer are checked later)."""
    return (path / "config.json").is_file()


def model_folder(config: "Config", progress: Callable[[str], None] | None = None) -> str:
    """The local folder of ``config.model``, downloading a hub id only while online (the worker's rule)."""
    return str(resolve_model(config.model.path, allow_download=not hub_offline(), revision=config.model.revision,
                             progress=progress))


# --------------------------------------------------------------------------- tokenizer

# Model types transformers checks for the Mistral tokenizer regex flaw (tokenization_utils_tokenizers).
_MISTRAL_TYPES = {"mistral", "mistral3", "voxtral", "ministral", "pixtral"}


def quiet_transformers() -> None:
    """transformers' tqdm bars ("Loading weights", "Writing model shards") would land on the user's
    terminal, over the TUI and the CLI's own progress lines; sft-tui says what it loads itself.
    Process-wide and left off on purpose: loads run in several threads."""
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def mistral_regex_flag(path: str | Path) -> bool | None:
    """``fix_mistral_regex`` for a local folder, or None where transformers does not ask for it.

    transformers warns (and tokenizes with a flawed split pattern) for a folder whose config.json
    names a Mistral model type and a transformers version before 5. The fix swaps in the corrected
    split regex, which only makes sense for a byte-level (tekken) tokenizer; a sentencepiece one
    (Mistral 7B) has no such regex, and the fix would replace its pre-tokenizer, so there the flag
    is False: no change, and no false warning.
    """
    import json

    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("model_type") not in _MISTRAL_TYPES:
        return None
    version = str(config.get("transformers_version") or "0")
    try:
        from packaging.version import Version

        if Version(version) >= Version("5.0.0"):
            return None
    except Exception:  # an unparsable version: transformers treats it like an old one
        pass
    try:
        pre = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(pre, dict):
        return False
    parts = pre.get("pretokenizers") or [pre]
    return any(isinstance(p, dict) and p.get("type") == "Split" for p in parts)


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, revision: str | None = None,
                   what: str | None = None):
    """A tokenizer from a local folder, with a pad token (padding is masked out of the loss, so eos is safe).

    ``what`` names the folder in the error ("the run's adapter folder", "'demo'"); it defaults to
    the path itself.
    """
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers import AutoTokenizer

    quiet_transformers()
    kwargs: dict[str, Any] = {}
    flag = mistral_regex_flag(path)
    if flag is not None:
        kwargs["fix_mistral_regex"] = flag
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code,
                                                  revision=revision, local_files_only=hub_offline(), **kwargs)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"could not load a tokenizer from {what or path}: {reason}",
                        "a model folder holds tokenizer.json or tokenizer.model with tokenizer_config.json; "
                        "give 'demo', a local model folder, or a hub id while online") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_for(config: "Config", folder: str | Path | None = None):
    """The tokenizer of the config's base model, or of a run's own ``folder`` (its adapter)."""
    if folder is not None:
        return load_tokenizer(folder, trust_remote_code=config.model.trust_remote_code,
                              what=f"the run folder {folder} (it should hold the tokenizer it was trained with)")
    return load_tokenizer(model_folder(config), trust_remote_code=config.model.trust_remote_code,
                          revision=config.model.revision, what=repr(config.model.path))


# --------------------------------------------------------------------------- model


def quantization_config(bits: int, compute_dtype: Any, sharded: bool = False):
    """bitsandbytes settings for a qlora base: NF4 with double quantization, or 8-bit.

    ``sharded`` (QLoRA under FSDP): the 4-bit weights are stored in the compute dtype's element type,
    so FSDP can flatten and shard them with the other parameters (bitsandbytes' quant_storage).
    """
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers import BitsAndBytesConfig

    if bits == 4:
        extra = {"bnb_4bit_quant_storage": compute_dtype} if sharded else {}
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, **extra)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_causal_lm(path: str | Path, config: "Config", dtype: Any, *, bits: int | None = None,
                   attn_implementation: str | None = None, revision: str | None = None, what: str | None = None):
    """A causal LM from a local folder; ``bits`` loads it 4/8-bit on CUDA device 0 (as qlora trains).

    Errors name the model and what to do: a folder that cannot be read, or a model that is not a
    causal language model.
    """
    import torch
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    kwargs: dict[str, Any] = dict(dtype=dtype, trust_remote_code=config.model.trust_remote_code,
                                  local_files_only=hub_offline(), revision=revision)
    if attn_implementation and attn_implementation != "auto":
        kwargs["attn_implementation"] = attn_implementation
    if bits is not None:
        if not torch.cuda.is_available():
            raise UserError("qlora loads the base model 4/8-bit, which needs an NVIDIA GPU with CUDA, and none was found",
                            "use method.type: lora on this machine, or run on a CUDA machine")
        compute = dtype if dtype not in (None, torch.float32) else torch.bfloat16
        ranks = int(os.environ.get("WORLD_SIZE", 1))
        sharded = ranks > 1 and config.training.strategy == "fsdp"
        if sharded and bits != 4:
            raise UserError("FSDP shards only 4-bit QLoRA weights; 8-bit weights cannot be sharded",
                            "use method.quantization_bits: 4, or training.strategy: ddp")
        kwargs["quantization_config"] = quantization_config(bits, compute, sharded=sharded)
        if not sharded:
            # Each rank of a DDP run holds its whole quantized model on its own GPU; under torchrun
            # LOCAL_RANK says which one. One process: GPU 0 of those visible to it. (FSDP places
            # the shards itself.)
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    name = what or repr(str(path))
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except OSError as exc:
        raise UserError(f"could not load the model {name}: {str(exc).splitlines()[0]}",
                        "check that the folder holds config.json and the weights (*.safetensors); "
                        "see `sft-tui models`") from None
    except ValueError as exc:
        raise UserError(f"{name} cannot be fine-tuned as a causal language model: {str(exc).splitlines()[0]}",
                        "choose a decoder-only (causal LM) model such as Llama, Mistral, Qwen or Phi") from None
