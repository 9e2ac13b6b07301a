"""Structural promises: the core has no UI, the app starts without heavy imports, packaging works."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sft_tui.core

ROOT = Path(__file__).resolve().parent.parent


def test_core_never_imports_textual():
    modules = [m.name for m in pkgutil.walk_packages(sft_tui.core.__path__, "sft_tui.core.")]
    assert "sft_tui.core.config" in modules and "sft_tui.core.data.pipeline" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print('TEXTUAL', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TEXTUAL []" in out.stdout


def test_cli_and_app_import_without_torch():
    code = ("import sys, sft_tui.cli, sft_tui.app\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_installed_wheel_finds_sample_data_and_themes(tmp_path):
    """A non-editable install must carry sample_data/ and themes/ inside the package."""
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr[-200:]}")
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("sft_tui-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sft_tui/_bundled/sample_data/reviews_alpaca.jsonl" in names
    assert "sft_tui/_bundled/themes/sft-dark.yaml" in names
    assert "sft_tui/app.tcss" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import sft_tui.core.paths as p; print(p.sample_data_dir()); print(p.themes_dir())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target)}, timeout=60)
    assert out.returncode == 0, out.stderr
    sample, themes = out.stdout.split()
    assert sample.startswith(str(target)) and themes.startswith(str(target))
