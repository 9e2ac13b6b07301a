"""Model discovery over a fake Hugging Face cache, settings model_dirs and plain paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_tui.core.models import load
from sft_tui.core.models.discovery import discover_models
from sft_tui.core.models.load import hf_cache_dir, resolve_model
from sft_tui.core.errors import UserError
from sft_tui.core.settings import Settings, save_settings

LLAMA_CFG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
             "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}


def make_cached_repo(cache: Path, repo_id: str, files: dict[str, str], commit: str = "a" * 40,
                     ref: str | None = "main") -> Path:
    """The hub cache layout: blobs hold content, snapshots link to them, refs name commits."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for i, (name, text) in enumerate(files.items()):
        blob = repo / "blobs" / f"{commit[:8]}{i:04d}"
        blob.write_text(text)
        (snap / name).symlink_to(blob)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_demo_always_listed_first_even_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "does-not-exist"))
    entries = discover_models()
    assert entries[0].name == "demo" and entries[0].source == "demo"
    assert [e.source for e in entries] == ["demo"]


def test_hf_cache_models_are_found(hf_cache):
    snap = make_cached_repo(hf_cache, "org/tiny-llama", {"config.json": json.dumps(LLAMA_CFG), "tokenizer.json": "{}"})
    make_cached_repo(hf_cache, "org/only-tokenizer", {"tokenizer.json": "{}"}, commit="b" * 40)
    (hf_cache / "models--broken").mkdir()  # no snapshots: scan_cache_dir reports a warning, we skip it
    entries = {e.name: e for e in discover_models()}
    assert "org/tiny-llama" in entries and "org/only-tokenizer" not in entries
    e = entries["org/tiny-llama"]
    assert e.source == "hf-cache" and e.path == snap and e.size_bytes > 0 and e.revision == "a" * 12
    assert e.to_dict()["path"] == str(snap)


def test_hf_home_is_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    make_cached_repo(tmp_path / "home" / "hub", "me/model", {"config.json": json.dumps(LLAMA_CFG)})
    assert "me/model" in [e.name for e in discover_models()]


def test_main_ref_wins_over_newer_snapshot(hf_cache):
    make_cached_repo(hf_cache, "org/m", {"config.json": "{}"}, commit="1" * 40)
    repo = hf_cache / "models--org--m"
    other = repo / "snapshots" / ("2" * 40)
    other.mkdir()
    (other / "config.json").write_text("{}")
    (entry,) = [e for e in discover_models() if e.name == "org/m"]
    assert entry.path.name == "1" * 40


def test_settings_dirs_and_extra_dirs(tmp_path, hf_cache):
    lib = tmp_path / "lib"
    for rel in ("alpha", "org/beta"):
        (lib / rel).mkdir(parents=True)
        (lib / rel / "config.json").write_text(json.dumps(LLAMA_CFG))
    (lib / "not-a-model").mkdir()
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text("{}")
    save_settings(Settings(model_dirs=[str(lib), str(tmp_path / "missing")]))
    entries = discover_models(extra_dirs=[single, lib])  # lib twice: listed once
    names = [e.name for e in entries if e.source == "dir"]
    assert sorted(names) == ["alpha", "org/beta", "single"]
    assert resolve_model("alpha") == lib / "alpha"


def test_resolve_paths_and_errors(tmp_path, hf_cache):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_model(str(model)) == model
    assert resolve_model(str(model / "config.json")) == model
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(UserError, match="not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="No model"):
        resolve_model("  ")


def test_hub_id_from_cache_and_offline_message(hf_cache):
    snap = make_cached_repo(hf_cache, "org/cached", {"config.json": json.dumps(LLAMA_CFG)})
    assert resolve_model("org/cached") == snap
    with pytest.raises(UserError) as err:
        resolve_model("org/not-cached")
    assert "offline" in err.value.message and "HF_HUB_OFFLINE" in err.value.message
    assert "hf download org/not-cached" in err.value.hint


def test_hub_id_online_needs_permission(hf_cache, monkeypatch):
    monkeypatch.setattr(load, "hub_offline", lambda: False)
    with pytest.raises(UserError, match="not downloaded yet"):
        resolve_model("org/not-cached")
    calls = []
    monkeypatch.setattr(load, "_download", lambda *a: calls.append(a) or Path("/x"))
    assert resolve_model("org/not-cached", allow_download=True, metadata_only=True) == Path("/x")
    assert calls == [("org/not-cached", None, True)]
