"""Structural promises: the core has no UI, the app starts without heavy imports, packaging works."""

from __future__ import annotations

import ast
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


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at the top or inside functions (lazy imports count too)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / "sft_tui" / folder).rglob("*.py")):
        for line, name in _imports(path):
            if any(name == f or name.startswith(f + ".") or (f.endswith("*") and name.startswith(f[:-1]))
                   for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


def test_import_rules_core_has_no_ui_and_screens_do_not_use_the_cli():
    """The layering DESIGN.md draws: core ← (cli, worker, app/screens/widgets); screens never reach the CLI."""
    core = _violations("core", ("textual", "rich", "sft_tui.app", "sft_tui.screens", "sft_tui.widgets",
                                "sft_tui.cli*", "sft_tui.worker", "sft_tui.testing"))
    ui = _violations("screens", ("sft_tui.cli*", "sft_tui.worker")) + _violations("widgets", ("sft_tui.cli*",
                                                                                                "sft_tui.worker"))
    assert core == [] and ui == []


def test_import_rules_catch_a_violation(tmp_path):
    """The checker above can fail: a lazy textual import inside a function is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from textual.app import App\n    import rich.text\n")
    names = [name for _, name in _imports(bad)]
    assert "textual.app" in names and "rich.text" in names


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
    assert not [n for n in names if n.startswith("sft_tui/testing/")], "test fixtures must not ship in the wheel"
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import sft_tui.core.paths as p; print(p.sample_data_dir()); print(p.themes_dir())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target)}, timeout=60)
    assert out.returncode == 0, out.stderr
    sample, themes = out.stdout.split()
    assert sample.startswith(str(target)) and themes.startswith(str(target))


def test_every_package_ships_in_the_wheel_except_test_fixtures():
    """pyproject lists packages by hand; a new one missing from the list is missing after `pip install .`."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sft_tui").rglob("__init__.py")}
    assert found - listed == {"sft_tui.testing"}
