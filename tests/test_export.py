"""Export: model card, merge (logits equal base+adapter), hub push refusals, GGUF via a fake llama.cpp
(the real converter is tested in test_gguf.py)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from sft_tui.core.errors import UserError
from sft_tui.core.run.rundir import RunDir
from test_eval_support import cached_trained_run, copy_run, one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def run(demo_model_dir, tmp_path_factory) -> RunDir:
    return RunDir(copy_run(cached_trained_run(demo_model_dir), tmp_path_factory.mktemp("export-runs")))


@pytest.fixture(scope="module")
def merged(run, tmp_path_factory):
    from sft_tui.core.eval.export import merge

    messages = []
    res = merge(run, tmp_path_factory.mktemp("merged") / "out", progress=messages.append)
    res.messages = messages  # type: ignore[attr-defined]
    return res


def _fake_eval(run: RunDir) -> None:
    from sft_tui.core.eval.evaluate import EvalResult, save_result

    result = EvalResult(run=run.name, source="adapter", data="held-out rows", rows_loss=10, rows_generated=5,
                        settings={"max_new_tokens": 16, "temperature": 0.0})
    result.models = {"base": {"eval_loss": 9.5, "perplexity": 13000.0, "exact_match": 0.0, "rouge_l": 0.05, "bleu": 0.1},
                     "tuned": {"eval_loss": 2.1, "perplexity": 8.2, "exact_match": 1.0, "rouge_l": 1.0, "bleu": 100.0}}
    save_result(run, result)


def test_model_card_names_base_data_config_and_metrics(run):
    from sft_tui.core.eval.export import write_model_card

    _fake_eval(run)
    path = write_model_card(run)
    text = path.read_text()
    assert path == run.adapter_dir / "README.md"
    assert text.startswith("---\n") and "library_name: peft" in text
    assert "demo model" in text and "reviews_alpaca.jsonl" in text
    assert "1800 training rows" in text and "LoRA: r=16" in text
    assert "| exact match | 0.0% | 100.0% |" in text
    assert "```yaml" in text and "max_steps: 200" in text
    assert "AutoPeftModelForCausalLM" in text


def test_merged_model_loads_with_plain_transformers_and_matches_base_plus_adapter(run, merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_tui.core.eval.generate import base_model_path

    out = merged.path
    assert any(name.endswith(".safetensors") for name in merged.files)
    assert {"config.json", "tokenizer.json", "README.md"} <= set(merged.files)
    assert not any(name.startswith("adapter_") for name in merged.files)
    assert merged.note is None and merged.dtype == "float32"
    assert any("merging" in m for m in merged.messages)

    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_model_path(run)), str(run.adapter_dir)).eval()
    text = ["<|im_start|>user\nRead the review and give its sentiment and topic.\n\nThe room was clean.<|im_end|>\n"
            "<|im_start|>assistant\n", "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nSentiment:"]
    batch = tokenizer(text, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        a = plain(**batch).logits
        b = reference(**batch).logits
        with reference.disable_adapter():
            base = reference(**batch).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, base, atol=1e-2)  # the merge really changed the weights
    assert "merged" in (out / "README.md").read_text()


def test_eval_can_use_the_merged_model(run, merged, tmp_path):
    import shutil

    from sft_tui.core.eval.generate import GenSettings, ModelPair

    shutil.copytree(merged.path, run.merged_dir, dirs_exist_ok=True)
    pair = ModelPair(run, "merged")
    assert pair.source == "merged" and pair._base is not None
    prompt = "Read the review and give its sentiment and topic.\n\nThe screen was bright and the camera was superb."
    answer = "".join(pair.stream("tuned", prompt, GenSettings(max_new_tokens=16)))
    assert answer.startswith("Sentiment:")


def test_full_fine_tune_runs_evaluate_and_export_as_plain_models(run, merged, tmp_path):
    """method full saves the whole model in adapter/: it is compared with a separately loaded base."""
    import shutil

    import yaml

    from sft_tui.core.eval.export import merge, model_card
    from sft_tui.core.eval.generate import GenSettings, ModelPair

    full = tmp_path / "full-run"
    full.mkdir()
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    config["method"]["type"] = "full"
    (full / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copytree(merged.path, full / "adapter")
    frun = RunDir(full)
    pair = ModelPair(frun)
    assert not pair.peft and pair._base is not None
    prompt = "Read the review and give its sentiment and topic.\n\nThe room was clean."
    assert "".join(pair.stream("tuned", prompt, GenSettings(max_new_tokens=12))).startswith("Sentiment:")
    assert not "".join(pair.stream("base", prompt, GenSettings(max_new_tokens=12))).startswith("Sentiment:")
    res = merge(frun, tmp_path / "out")
    assert (res.path / "config.json").exists() and res.note is None
    assert "library_name: transformers" in model_card(frun)


def test_cli_export_merge(run, tmp_path, capsys):
    from sft_tui.cli import main

    out = tmp_path / "m"
    assert main(["export", str(run.path), "--merge", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "merged:" in printed and (out / "config.json").exists()
    assert main(["export", str(run.path), "--merge", str(out), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(run.path), "--merge", str(out), "-q", "--force"]) == 0


def test_merge_refuses_the_adapter_folder_and_runs_without_adapter(run, tmp_path):
    from sft_tui.core.config import Config
    from sft_tui.core.eval.export import merge

    with pytest.raises(UserError, match="adapter folder"):
        merge(run, run.adapter_dir)
    empty = RunDir.create(Config(), runs_dir=tmp_path)
    with pytest.raises(UserError, match="no trained adapter"):
        merge(empty, tmp_path / "x")


def test_push_offline_or_without_token_is_a_clear_message(run, monkeypatch, capsys):
    from sft_tui.cli import main
    from sft_tui.core.eval import export

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline") as info:
        export.push_to_hub(run.adapter_dir, "me/demo")
    assert "hf upload me/demo" in info.value.hint
    ready, message = export.hub_readiness()
    assert not ready and "offline" in message
    assert main(["export", str(run.path), "--push", "me/demo", "-q"]) == 2
    assert "offline" in capsys.readouterr().err

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(export, "hub_token", lambda: None)
    with pytest.raises(UserError, match="no Hugging Face token") as info:
        export.push_to_hub(run.adapter_dir, "me/demo")
    assert "hf auth login" in info.value.hint
    with pytest.raises(UserError, match="not a hub repo id"):
        export.push_to_hub(run.adapter_dir, "not a repo")


def test_push_uploads_with_the_hub_client(run, monkeypatch):
    from sft_tui.core.eval import export

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw["private"]))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload", folder_path, repo_id))

    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(export, "hub_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = export.push_to_hub(run.adapter_dir, "me/demo")
    assert url.endswith("me/demo")
    assert calls == [("init", "hf_test"), ("create", "me/demo", True), ("upload", str(run.adapter_dir), "me/demo")]


def test_gguf_with_a_wrong_llama_cpp_override_explains_how(run, merged, monkeypatch, tmp_path, capsys):
    from sft_tui.cli import main
    from sft_tui.core.eval import export

    monkeypatch.setenv("SFT_TUI_LLAMA_CPP", str(tmp_path / "nowhere"))
    assert export.find_converter() is None  # a wrong override is not silently replaced by the package
    with pytest.raises(UserError, match="SFT_TUI_LLAMA_CPP names .* holds no convert_hf_to_gguf.py") as info:
        export.convert_gguf(merged.path)
    assert "sft-tui[gguf]" in info.value.hint
    assert main(["export", str(run.path), "--merge", str(tmp_path / "mm"), "--gguf", "-q"]) == 1
    err = capsys.readouterr().err
    assert "SFT_TUI_LLAMA_CPP" in err and 'pip install "sft-tui[gguf]"' in err


def test_gguf_runs_a_llama_cpp_checkouts_converter(merged, monkeypatch, tmp_path):
    from sft_tui.core.eval import export

    root = tmp_path / "llama.cpp"
    root.mkdir()
    (root / "convert_hf_to_gguf.py").write_text(textwrap.dedent("""
        import argparse, pathlib
        p = argparse.ArgumentParser()
        p.add_argument("model"); p.add_argument("--outfile"); p.add_argument("--outtype"); p.add_argument("--model-name")
        a = p.parse_args()
        assert (pathlib.Path(a.model) / "config.json").exists()
        print("converting", a.model, a.outtype, a.model_name)
        pathlib.Path(a.outfile).write_bytes(b"GGUF" + a.outtype.encode())
    """))
    monkeypatch.setenv("SFT_TUI_LLAMA_CPP", str(root))
    conv = export.find_converter()
    assert conv.kind == "checkout" and conv.root == root and conv.origin == "SFT_TUI_LLAMA_CPP"
    lines = []
    out = export.convert_gguf(merged.path, tmp_path / "model.gguf", "q8_0", progress=lines.append)
    assert out.read_bytes() == b"GGUFq8_0"
    assert any("converting" in ln for ln in lines) and sys.executable in lines[0] and str(root) in lines[0]
    # The default name is <folder>-<type>.gguf inside the merged folder.
    assert export.convert_gguf(merged.path, outtype="f16") == merged.path / f"{merged.path.name}-f16.gguf"
    # A file that is not GGUF fails the read-back check instead of being reported as written.
    with pytest.raises(UserError, match="not a readable GGUF file|gguf package is not installed"):
        export.export_gguf(merged.path, ["q8_0"])
    (root / "convert_hf_to_gguf.py").write_text("import sys\nprint('unsupported architecture')\nsys.exit(3)\n")
    with pytest.raises(UserError, match="exit 3.*unsupported architecture"):
        export.convert_gguf(merged.path, tmp_path / "model2.gguf")
