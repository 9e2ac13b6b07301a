"""Find base models on this machine and turn a name the user typed into a local folder.

Sources, in the order they are listed: the built-in demo model (always, so a newcomer has something
to pick), the Hugging Face cache (via ``huggingface_hub.scan_cache_dir``, honouring ``HF_HUB_CACHE``
and ``HF_HOME`` as they are *now*, not when huggingface_hub was imported), the folders listed in the
settings file's ``model_dirs``, and any extra folders the caller passes. Nothing here downloads unless
asked to, and nothing imports torch or transformers.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from sft_tui.core.config import DEMO_MODEL
from sft_tui.core.errors import UserError

Source = Literal["demo", "hf-cache", "dir", "path"]

# A hub id: "name" or "org/name", letters, digits, '-', '_', '.'; no leading/trailing separators.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "on", "yes", "true"}


@dataclass
class ModelEntry:
    name: str
    path: Path | None  # None only for the demo model before it has been built
    source: Source
    size_bytes: int | None = None
    revision: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path) if self.path is not None else None
        return data


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


def hub_offline() -> bool:
    """True when the user asked for no hub traffic (either variable, checked at call time)."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a hard dependency
        return False


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _dir_size(path: Path) -> int:
    """Bytes on disk of the top-level files, following symlinks (the HF cache links to blobs)."""
    total = 0
    try:
        for child in path.iterdir():
            try:
                if child.is_file():
                    total += child.stat().st_size
            except OSError:
                continue
    except OSError:
        return 0
    return total


def _demo_entry() -> ModelEntry:
    path = None
    try:  # the demo module may expose where it keeps the model without building it
        from sft_tui.core.models import demo

        for attr in ("demo_model_path", "demo_model_dir"):
            fn = getattr(demo, attr, None)
            if callable(fn):
                candidate = Path(fn())
                path = candidate if _is_model_dir(candidate) else None
                break
    except Exception:
        path = None
    return ModelEntry(DEMO_MODEL, path, "demo", detail="built-in tiny Llama, trains on CPU in seconds")


def scan_hf_cache(cache_dir: str | Path | None = None) -> list[ModelEntry]:
    """Model repos in the hub cache that have a config.json in their chosen snapshot.

    A repo with several snapshots is listed once, at the revision ``main`` points to (else the
    newest), because that is what ``from_pretrained(repo_id)`` would load offline.
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    try:
        info = scan_cache_dir(cache)
    except (CacheNotFound, ValueError, OSError):
        return []
    entries: list[ModelEntry] = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revs = sorted(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
        rev = revs[0]
        if not any(f.file_name == "config.json" for f in rev.files):
            continue  # a tokenizer-only or adapter-only repo is not a base model
        entries.append(ModelEntry(repo.repo_id, Path(rev.snapshot_path), "hf-cache", size_bytes=rev.size_on_disk,
                                  revision=rev.commit_hash[:12], detail=", ".join(sorted(rev.refs))))
    return sorted(entries, key=lambda e: e.name.lower())


def scan_model_dir(folder: str | Path, source: Source = "dir") -> list[ModelEntry]:
    """Models in ``folder`` itself, its children, or grandchildren (the ``org/name`` layout)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    if _is_model_dir(root):
        return [ModelEntry(root.name, root, source, size_bytes=_dir_size(root))]
    found: list[ModelEntry] = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        if _is_model_dir(child):
            found.append(ModelEntry(child.name, child, source, size_bytes=_dir_size(child)))
            continue
        try:
            grand = sorted(p for p in child.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for g in grand:
            if _is_model_dir(g):
                found.append(ModelEntry(f"{child.name}/{g.name}", g, source, size_bytes=_dir_size(g)))
    return found


def discover_models(extra_dirs: Iterable[str | Path] | None = None, include_settings: bool = True) -> list[ModelEntry]:
    """Every model we can offer, demo first; a folder reached by two routes is listed once."""
    entries = [_demo_entry()]
    entries += scan_hf_cache()
    dirs: list[Path] = []
    if include_settings:
        from sft_tui.core.settings import load_settings

        dirs += load_settings().model_dir_paths()
    dirs += [Path(d).expanduser() for d in (extra_dirs or [])]
    for folder in dirs:
        entries += scan_model_dir(folder, "dir")
    seen: set[Path] = set()
    unique: list[ModelEntry] = []
    for entry in entries:
        key = entry.path.resolve() if entry.path is not None else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        unique.append(entry)
    return unique


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "~")) and ".." not in text


def _cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hf_cache_dir()), revision=revision)
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def resolve_model(name_or_path: str | Path, allow_download: bool = False, revision: str | None = None,
                  metadata_only: bool = False) -> Path:
    """Map 'demo', a folder, a name from ``model_dirs`` or a hub id to a local model folder.

    Downloads only with ``allow_download`` and while online; ``metadata_only`` fetches config and
    tokenizer files but no weights, which is all ``describe_model`` needs.
    """
    text = str(name_or_path).strip()
    if not text:
        raise UserError("No model given.", "use 'demo', a model folder, or a hub id such as Qwen/Qwen2.5-0.5B")
    if text == DEMO_MODEL:
        from sft_tui.core.models.demo import ensure_demo_model

        return Path(ensure_demo_model())
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file():
            if path.name == "config.json":
                path = path.parent
            else:
                raise UserError(f"{path} is a file, not a model folder.",
                                "give the folder that holds config.json and the weights")
        if not _is_model_dir(path):
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
