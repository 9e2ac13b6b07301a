"""Theme files: data in ``themes/*.yaml`` (bundled) and ``<config dir>/sft-tui/themes/`` (user).

Kept UI-free: this reads and checks the files; the app turns each mapping into a Textual theme.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sft_tui.core.paths import settings_path, themes_dir

THEME_KEYS = {
    "name", "dark", "primary", "secondary", "accent", "warning", "error", "success", "foreground",
    "background", "surface", "panel", "boost", "luminosity_spread", "text_alpha", "variables",
}


def theme_files() -> list[Path]:
    files = sorted(themes_dir().glob("*.yaml"))
    user = settings_path().parent / "themes"
    if user.is_dir():
        files += sorted(user.glob("*.yaml"))
    return files


def load_themes() -> tuple[list[dict[str, Any]], list[str]]:
    """Return (themes, warnings): a broken file is reported, not fatal."""
    themes, warnings = [], []
    for path in theme_files():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            warnings.append(f"theme {path.name}: unreadable ({exc.__class__.__name__})")
            continue
        if not isinstance(data, dict) or "name" not in data or "primary" not in data:
            warnings.append(f"theme {path.name}: needs at least 'name' and 'primary'")
            continue
        unknown = set(data) - THEME_KEYS
        if unknown:
            warnings.append(f"theme {path.name}: unknown keys {', '.join(sorted(unknown))} ignored")
        themes.append({k: v for k, v in data.items() if k in THEME_KEYS})
    return themes, warnings
