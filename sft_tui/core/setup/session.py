"""The setup in progress: the config being built across screens, and whether it is saved.

Held by the app and shared by every screen, so going back and forth never loses what the user
typed, and quitting can tell whether anything would be lost. UI-free so it is testable alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_tui.core.config import Config, dump_yaml, load_config, save_config
from sft_tui.core.run.rundir import RunDir


@dataclass
class Session:
    config: Config = field(default_factory=Config)
    config_path: Path | None = None
    run: RunDir | None = None
    runs_dir: Path | None = None
    # What the screens learned, kept so returning to a screen is instant.
    model_info: Any = None
    data_report: Any = None
    _saved_yaml: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self._saved_yaml = dump_yaml(self.config)

    @classmethod
    def from_file(cls, path: str | Path) -> "Session":
        path = Path(path)
        session = cls(config=load_config(path), config_path=path)
        return session

    @property
    def dirty(self) -> bool:
        """True when the config differs from the last loaded or saved version."""
        return dump_yaml(self.config) != self._saved_yaml

    def save(self, path: str | Path | None = None) -> Path:
        target = Path(path) if path is not None else self.config_path
        if target is None:
            raise ValueError("no path to save to")
        save_config(self.config, target, comments=True)
        self.config_path = target
        self.mark_saved()
        return target

    def load(self, path: str | Path) -> None:
        self.config = load_config(path)
        self.config_path = Path(path)
        self.mark_saved()

    def mark_saved(self) -> None:
        self._saved_yaml = dump_yaml(self.config)
