"""App settings: defaults, round trip, and a broken file that must not stop the app."""

from __future__ import annotations

import pytest

from sft_tui.core.errors import UserError
from sft_tui.core.paths import settings_path
from sft_tui.core.settings import Settings, load_settings, save_settings


def test_missing_file_gives_defaults():
    assert not settings_path().exists()
    s = load_settings()
    assert s == Settings() and s.warning is None


def test_round_trip_uses_settings_path():
    s = Settings(model_dirs=["~/models", "/data/ckpt"], theme="sft-light", keymap={"quit": "ctrl+q"})
    path = save_settings(s)
    assert path == settings_path() and path.exists()
    back = load_settings()
    assert back == s
    assert back.model_dir_paths()[1].as_posix() == "/data/ckpt"


def test_broken_yaml_lenient_and_strict():
    settings_path().write_text("model_dirs: [unclosed\n")
    s = load_settings()
    assert s.model_dirs == [] and "not valid YAML" in s.warning and "default" in s.warning
    with pytest.raises(UserError, match="line"):
        load_settings(strict=True)


@pytest.mark.parametrize("text, fragment", [
    ("- a\n- b\n", "mapping"),
    ("model_dirs: 3\n", "model_dirs"),
    ("colour: red\n", "unknown key"),
    ("keymap: [a]\n", "keymap"),
])
def test_wrong_shapes_are_named(text, fragment):
    settings_path().write_text(text)
    with pytest.raises(UserError, match=fragment):
        load_settings(strict=True)
    assert fragment in load_settings().warning


def test_single_dir_string_is_accepted():
    settings_path().write_text("model_dirs: /models\n")
    assert load_settings(strict=True).model_dirs == ["/models"]
