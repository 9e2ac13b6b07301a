"""Find base models on this machine and turn a name the user typed into a local folder.

Sources, in the order they are listed: the built-in demo model (always, so a newcomer has something
to pick), the Hugging Face cache (via ``huggingface_hub.scan_cache_dir``, honouring ``HF_HUB_CACHE``
and ``HF_HOME`` as they are *now*, not when huggingface_hub was imported), the folders listed in the
settings file's ``model_dirs``, and any extra folders the caller passes. Nothing here downloads unless
asked to, and nothing imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from sft_tui.core.config import DEMO_MODEL
from sft_tui.core.models.load import hf_cache_dir, is_model_dir
from sft_tui.core.paths import folder_size

Source = Literal["demo", "hf-cache", "dir", "path"]



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


def _demo_entry() -> ModelEntry:
    path = None
    try:  # the demo module may expose where it keeps the model without building it
        from sft_tui.core.models import demo

        for attr in ("demo_model_path", "demo_model_dir"):
            fn = getattr(demo, attr, None)
            if callable(fn):
                candidate = Path(fn())
                path = candidate if is_model_dir(candidate) else None
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
    if is_model_dir(root):
        return [ModelEntry(root.name, root, source, size_bytes=folder_size(root))]
    found: list[ModelEntry] = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        if is_model_dir(child):
            found.append(ModelEntry(child.name, child, source, size_bytes=folder_size(child)))
            continue
        try:
            grand = sorted(p for p in child.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for g in grand:
            if is_model_dir(g):
                found.append(ModelEntry(f"{child.name}/{g.name}", g, source, size_bytes=folder_size(g)))
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
