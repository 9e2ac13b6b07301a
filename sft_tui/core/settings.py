"""App preferences (theme, keymap, extra model folders, a llama.cpp checkout), kept apart from run configs.

A run config describes one training run and travels with it; these settings describe one person's
machine, so they live in the platform's config dir (``paths.settings_path()``, overridable with
``SFT_TUI_SETTINGS``). A broken settings file must never stop the app from starting: the lenient
loader falls back to defaults and says what was wrong, the strict one raises ``UserError``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft_tui.core.errors import UserError
from sft_tui.core.paths import settings_path

DEFAULT_THEME = "sft-dark"


@dataclass
class Settings:
    model_dirs: list[str] = field(default_factory=list)
    theme: str = DEFAULT_THEME
    keymap: dict[str, str] = field(default_factory=dict)
    # A llama.cpp checkout whose convert_hf_to_gguf.py converts to GGUF, instead of the installed
    # converter package; $SFT_TUI_LLAMA_CPP overrides it in turn.
    llama_cpp: str | None = None
    # What a kWh costs (a number) and the currency to print it in ("€", "USD"; "" prints none): for
    # the energy line of model cards and run summaries.
    energy_price: float | None = None
    energy_currency: str = ""
    # Desktop notifications through the terminal when a watched run ends, fails or stalls: "auto"
    # (wherever the terminal can show them), "on" or "off"; and a shell command the worker runs for
    # each (the notification as JSON on stdin), e.g. 'curl -d "$SFT_TUI_BODY" ntfy.sh/my-topic'.
    notify: str = "auto"
    notify_command: str | None = None
    # Set by a lenient load when the file could not be used; shown to the user, never saved.
    warning: str | None = field(default=None, compare=False)

    def model_dir_paths(self) -> list[Path]:
        return [Path(d).expanduser() for d in self.model_dirs]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("warning")
        if data["llama_cpp"] is None:
            data.pop("llama_cpp")  # unset: the file stays as short as before the key existed
        for key, unset in (("energy_price", None), ("energy_currency", ""), ("notify", "auto"),
                           ("notify_command", None)):
            if data.get(key) == unset:
                data.pop(key)
        return data

    def llama_cpp_path(self) -> Path | None:
        return Path(self.llama_cpp).expanduser() if self.llama_cpp else None


def _parse(raw: Any, path: Path) -> Settings:
    """Validate by hand: four keys do not justify a schema, but each mistake needs a fix."""
    if raw is None:
        return Settings()
    if not isinstance(raw, dict):
        raise UserError(f"Settings file {path} must be a mapping of keys, not {type(raw).__name__}.",
                        "write it as 'model_dirs: [...]', 'theme: NAME', 'keymap: {action: key}', "
                        "'llama_cpp: FOLDER'")
    unknown = sorted(set(raw) - {"model_dirs", "theme", "keymap", "llama_cpp"} - set(ENERGY_KEYS) - set(NOTIFY_KEYS))
    if unknown:
        raise UserError(f"Settings file {path} has unknown key(s): {', '.join(map(str, unknown))}.",
                        "known keys are model_dirs, theme, keymap, llama_cpp, "
                        + ", ".join(ENERGY_KEYS + NOTIFY_KEYS))
    dirs = raw.get("model_dirs") or []
    if isinstance(dirs, str):
        dirs = [dirs]
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise UserError(f"Settings file {path}: model_dirs must be a list of folder paths.",
                        "e.g. model_dirs: [~/models, /data/checkpoints]")
    theme = raw.get("theme", DEFAULT_THEME)
    if not isinstance(theme, str) or not theme:
        raise UserError(f"Settings file {path}: theme must be a theme name.", f"e.g. theme: {DEFAULT_THEME}")
    keymap = raw.get("keymap") or {}
    if not isinstance(keymap, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keymap.items()):
        raise UserError(f"Settings file {path}: keymap must map binding ids to keys.",
                        "e.g. keymap: {quit: ctrl+q, start_training: f5}")
    llama_cpp = raw.get("llama_cpp")
    if llama_cpp is not None and (not isinstance(llama_cpp, str) or not llama_cpp.strip()):
        raise UserError(f"Settings file {path}: llama_cpp must be the folder of a llama.cpp checkout.",
                        "e.g. llama_cpp: ~/src/llama.cpp (or leave it out to use the installed converter)")
    return Settings(model_dirs=list(dirs), theme=theme, keymap=dict(keymap),
                    llama_cpp=llama_cpp.strip() if llama_cpp else None, **_energy(raw, path), **_notify(raw, path))


ENERGY_KEYS = ("energy_price", "energy_currency")


def _energy(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``energy_price`` (per kWh, a number ≥ 0) and ``energy_currency`` (text), checked."""
    price = raw.get("energy_price")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))
                              or not 0 <= price < float("inf")):
        raise UserError(f"Settings file {path}: energy_price must be what a kWh costs, a number ≥ 0.",
                        "e.g. energy_price: 0.30 (and energy_currency: €)")
    currency = raw.get("energy_currency")
    if currency is None:
        currency = ""
    if not isinstance(currency, str) or len(currency.strip()) > 8:
        raise UserError(f"Settings file {path}: energy_currency must be a short text such as € or USD.",
                        "e.g. energy_currency: €")
    return {"energy_price": float(price) if price is not None else None, "energy_currency": currency.strip()}


NOTIFY_KEYS = ("notify", "notify_command")
NOTIFY_MODES = ("auto", "on", "off")


def _notify(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``notify`` (auto|on|off; YAML's bare on/off arrive as booleans) and ``notify_command``, checked."""
    mode = raw.get("notify", "auto")
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode is None:
        mode = "auto"
    if not isinstance(mode, str) or mode.strip().lower() not in NOTIFY_MODES:
        raise UserError(f"Settings file {path}: notify must be auto, on or off, not {mode!r}.",
                        "auto notifies wherever the terminal can show it; e.g. notify: auto")
    command = raw.get("notify_command")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise UserError(f"Settings file {path}: notify_command must be a shell command line.",
                        "e.g. notify_command: 'curl -s -d \"$SFT_TUI_BODY\" ntfy.sh/my-topic' "
                        "(or leave it out)")
    return {"notify": mode.strip().lower(), "notify_command": command.strip() if command else None}


def load_settings(path: str | Path | None = None, strict: bool = False) -> Settings:
    """Read the settings file; a missing file is simply the defaults.

    ``strict=False`` (the app's default) turns a broken file into defaults plus ``.warning``, so a
    typo in a preferences file costs a message rather than the whole session.
    """
    path = Path(path) if path is not None else settings_path()
    if not path.exists():
        return Settings()
    try:
        text = path.read_text(encoding="utf-8")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"Settings file {path} is not valid YAML{where}.",
                            "fix it or delete it to go back to the defaults") from None
        return _parse(raw, path)
    except (UserError, OSError) as exc:
        if strict:
            if isinstance(exc, OSError):
                raise UserError(f"Cannot read settings file {path}: {exc.strerror or exc}.",
                                "check its permissions") from None
            raise
        message = exc.message if isinstance(exc, UserError) else f"Cannot read settings file {path}: {exc}"
        return Settings(warning=f"{message} Using default settings.")


def save_settings(settings: Settings, path: str | Path | None = None) -> Path:
    path = Path(path) if path is not None else settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(settings.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
        tmp.replace(path)  # atomic: a crash mid-write must not leave a half file the next start rejects
    except OSError as exc:
        raise UserError(f"Cannot write settings file {path}: {exc.strerror or exc}.",
                        "check that the folder is writable, or set SFT_TUI_SETTINGS to another path") from None
    return path
