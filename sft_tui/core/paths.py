"""Where sft-tui keeps things on disk.

Everything path-like is decided here so the CLI, the worker and the TUI agree, and so tests can
redirect all of it with environment variables instead of monkeypatching module globals.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_config_dir, user_data_dir

APP_NAME = "sft-tui"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """Per-user data dir; ``SFT_TUI_HOME`` relocates it (tests, shared servers)."""
    return _env_path("SFT_TUI_HOME") or Path(user_data_dir(APP_NAME))


def default_runs_dir() -> Path:
    return _env_path("SFT_TUI_RUNS_DIR") or data_dir() / "runs"


def cache_dir() -> Path:
    return _env_path("SFT_TUI_CACHE_DIR") or Path(user_cache_dir(APP_NAME))


def settings_path() -> Path:
    return _env_path("SFT_TUI_SETTINGS") or Path(user_config_dir(APP_NAME)) / "settings.yaml"


def _bundled(name: str) -> Path:
    """Find a top-level resource folder in an installed wheel or beside a source checkout.

    The wheel ships them inside the package (``sft_tui/_bundled/<name>``, see pyproject); an
    editable install or a plain checkout has them next to the package.
    """
    inside = PACKAGE_DIR / "_bundled" / name
    if inside.is_dir():
        return inside
    beside = PACKAGE_DIR.parent / name
    if beside.is_dir():
        return beside
    raise FileNotFoundError(
        f"sft-tui's bundled '{name}' folder is missing (looked in {inside} and {beside}); "
        "reinstall the package."
    )


def sample_data_dir() -> Path:
    return _bundled("sample_data")


def themes_dir() -> Path:
    return _bundled("themes")


def folder_size(path: str | Path) -> int:
    """Bytes of every file under a folder, each blob counted once (the HF cache links files to blobs)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        items = list(Path(path).rglob("*"))
    except OSError:
        return 0
    for item in items:
        try:
            if not item.is_file():
                continue
            st = item.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def resolve_sample(path: str) -> Path:
    """Map ``sample:NAME`` to a bundled sample file so configs stay portable between machines."""
    if path.startswith("sample:"):
        return sample_data_dir() / path.split(":", 1)[1]
    return Path(path).expanduser()
