"""Exporting what a run trained: a model card, a merged model, the hub, and GGUF via llama.cpp.

- The adapter is already saved in ``adapter/`` by training; ``write_model_card`` adds a README.md
  (base model, data, config, training summary, latest evaluation) beside it.
- ``merge`` folds a LoRA into the base weights (``merge_and_unload``) and writes safetensors plus
  the tokenizer, so plain ``AutoModelForCausalLM.from_pretrained(folder)`` loads it. A QLoRA run is
  merged into the base loaded in 16 bits (merging into 4-bit weights would lose the adapter's
  precision), and the card and the result say so.
- ``push_to_hub`` uploads a folder only when online and a token exists (from the environment or
  ``hf auth login``; sft-tui never writes a token anywhere); otherwise it raises a clear UserError.
- ``convert_gguf`` runs llama.cpp's ``convert_hf_to_gguf.py`` on a merged folder when a checkout
  is configured (``SFT_TUI_LLAMA_CPP``), and ``gguf_instructions`` explains how otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sft_tui.core.errors import UserError
from sft_tui.core.models.load import hub_offline, looks_like_hub_id
from sft_tui.core.run.rundir import RunDir

Say = Callable[[str], None]
LLAMA_CPP_ENV = "SFT_TUI_LLAMA_CPP"
GGUF_SCRIPT = "convert_hf_to_gguf.py"
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "auto")


# --------------------------------------------------------------------------- model card


def _hub_id(path: str) -> str | None:
    """The base model's hub id for the card's ``base_model`` (none for demo or a local folder)."""
    if path == "demo" or Path(path).expanduser().exists():
        return None
    return path if looks_like_hub_id(path, namespace=True) else None


def _data_event(run: RunDir) -> dict[str, Any]:
    for ev in reversed(run.events()):
        if ev.get("type") == "data":
            return ev
    return {}


def model_card(run: RunDir, merged: bool = False, note: str | None = None) -> str:
    """README.md text for the adapter (or, with ``merged``, the merged model) of a run."""
    from sft_tui import __version__
    from sft_tui.core.config import dump_yaml
    from sft_tui.core.eval.evaluate import latest_result

    config = run.load_config()
    status = run.status()
    base = config.model.path
    hub = _hub_id(base)
    method = config.method.type
    lines = ["---"]
    if hub:
        lines.append(f"base_model: {hub}")
    lines.append("library_name: " + ("transformers" if merged or method == "full" else "peft"))
    lines.append("pipeline_tag: text-generation")
    lines += ["tags:", "- sft-tui", "- sft", f"- {method}" if method != "full" else "- full-fine-tune"]
    if merged:
        lines.append("- merged")
    lines += ["---", ""]
    what = "merged model" if merged else ("fine-tuned model" if method == "full" else "LoRA adapter")
    lines.append(f"# {run.name} — {what}")
    lines.append("")
    base_text = "the sft-tui built-in demo model (a tiny Llama)" if base == "demo" else f"`{base}`"
    lines.append(f"Supervised fine-tune of {base_text} with **{method}**, trained with sft-tui {__version__}.")
    if note:
        lines += ["", f"> {note}"]
    lines += ["", "## Training", ""]
    data = config.data.path if isinstance(config.data.path, str) else ", ".join(config.data.path)
    ev = _data_event(run)
    rows = f" ({ev.get('train_rows')} training rows, {ev.get('eval_rows')} held out)" if ev else ""
    report = ev.get("report") or {}
    lines.append(f"- base model: {base_text}")
    lines.append(f"- data: `{data}`{rows}, format {report.get('format', config.data.format)}, "
                 f"template {report.get('template') or config.data.template}")
    if method in ("lora", "qlora"):
        m = config.method
        lines.append(f"- LoRA: r={m.lora_r}, alpha={m.lora_alpha}, dropout={m.lora_dropout}, "
                     f"target modules {m.target_modules}" + (f", {m.bits}-bit base (QLoRA)" if method == "qlora" else ""))
    t = config.training
    lines.append(f"- steps: {status.step}" + (f"/{status.max_steps}" if status.max_steps else "")
                 + f", learning rate {t.learning_rate}, batch {t.batch_size}×{t.gradient_accumulation}")
    if status.last_loss is not None:
        lines.append(f"- final training loss: {status.last_loss:.4f}")
    if status.best_eval_loss is not None:
        lines.append(f"- best eval loss during training: {status.best_eval_loss:.4f}")
    lines.append(f"- state: {status.state}")
    result = latest_result(run)
    if result is not None:
        lines += ["", "## Evaluation", "",
                  f"On {result.data}: loss over {result.rows_loss} rows, generation on {result.rows_generated} "
                  f"rows ({'greedy' if not result.settings.get('temperature') else 'sampled'}, "
                  f"max {result.settings.get('max_new_tokens')} new tokens).", ""]
        cols = result.columns()
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for label, cells in result.table():
            lines.append("| " + " | ".join([label, *cells]) + " |")
    lines += ["", "## Use it", "", "```python"]
    if merged or method == "full":
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(\"PATH\")",
                  "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")"]
    else:
        lines += ["from peft import AutoPeftModelForCausalLM",
                  "from transformers import AutoTokenizer",
                  "model = AutoPeftModelForCausalLM.from_pretrained(\"PATH\")  # loads the base, then this adapter",
                  "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")"]
    lines += ["```", "", "Prompts must use the chat template saved with the tokenizer "
              "(`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`)." if not config.data.template
              or config.data.template == "auto" else f"Prompts must use the `{config.data.template}` template, as in training.",
              "", "## Config", "", "```yaml", dump_yaml(config).rstrip(), "```", ""]
    return "\n".join(lines)


def write_model_card(run: RunDir, folder: str | Path | None = None, merged: bool = False,
                     note: str | None = None) -> Path:
    folder = Path(folder) if folder is not None else run.adapter_dir
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist", "train the run to the end first (the adapter is saved last)")
    path = folder / "README.md"
    path.write_text(model_card(run, merged=merged, note=note), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- merge


@dataclass
class MergeResult:
    path: Path
    dtype: str
    note: str | None
    seconds: float
    files: list[str]


def merge(run: RunDir, out_dir: str | Path | None = None, overwrite: bool = False,
          progress: Say | None = None) -> MergeResult:
    """Write base+adapter as one plain transformers model (safetensors + tokenizer + card)."""
    import torch

    from sft_tui.core.eval.generate import base_model_path, load_tokenizer, tuned_source

    say = progress or (lambda msg: None)
    start = time.perf_counter()
    config = run.load_config()
    kind, folder = tuned_source(run, "adapter")
    out = Path(out_dir).expanduser().resolve() if out_dir else run.merged_dir
    if out == folder.resolve():
        raise UserError("the merged model cannot go into the adapter folder", f"choose another folder, e.g. {run.merged_dir}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists and is not empty", "choose a new folder, or pass --force to replace it")
    method = config.method.type
    note = None
    kwargs: dict[str, Any] = dict(trust_remote_code=config.model.trust_remote_code, local_files_only=hub_offline())
    from transformers import AutoModelForCausalLM

    if method == "full":
        say(f"loading the fine-tuned model from {folder}")
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto", **kwargs)
    else:
        if method == "qlora":
            dtype = torch.bfloat16 if (not torch.cuda.is_available() or torch.cuda.is_bf16_supported()) else torch.float16
            note = (f"QLoRA run: the adapter was merged into the base model loaded in 16-bit "
                    f"({str(dtype).replace('torch.', '')}), not into the 4-bit quantized weights it trained against; "
                    "the merged model is a 16-bit model")
            kwargs["dtype"] = dtype
        else:
            kwargs["dtype"] = "auto"
        from sft_tui.core.eval.generate import quiet_optional_kernels

        quiet_optional_kernels()
        from peft import PeftModel

        base_path = base_model_path(run, config)
        say(f"loading the base model {config.model.path}")
        try:
            base = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
        except OSError as exc:
            raise UserError(f"could not load the base model {config.model.path!r}: {str(exc).splitlines()[0]}",
                            "merging needs the base model the run trained on") from None
        say("applying the adapter")
        model = PeftModel.from_pretrained(base, str(folder))
        say("merging the LoRA weights into the base weights")
        model = model.merge_and_unload()
    model.config.use_cache = True
    tokenizer = load_tokenizer(folder, config)
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    dtype_name = str(next(model.parameters()).dtype).replace("torch.", "")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        say(f"saving safetensors to {out}")
        model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(model_card(run, merged=True, note=note), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p.name for p in out.iterdir())
    say(f"merged model saved in {out}")
    return MergeResult(out, dtype_name, note, round(time.perf_counter() - start, 2), files)


# --------------------------------------------------------------------------- hub


def hub_token() -> str | None:
    """The token huggingface_hub would use (HF_TOKEN or a saved login); never stored by sft-tui."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.environ.get("HF_TOKEN") or None


def hub_readiness() -> tuple[bool, str]:
    """(ready, message) without touching the network: for showing before anyone presses push."""
    if hub_offline():
        return False, ("offline: HF_HUB_OFFLINE is set, so pushing to the hub is switched off. "
                       "Unset it on a machine with internet access to push.")
    if not hub_token():
        return False, ("no Hugging Face token: run `hf auth login` or set HF_TOKEN in the environment "
                       "(sft-tui never stores tokens).")
    return True, "a Hugging Face token is available; pushing uploads the folder to the repo you name."


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True, progress: Say | None = None) -> str:
    """Upload ``folder`` to ``repo_id`` (created if missing); returns the repo URL."""
    say = progress or (lambda msg: None)
    folder = Path(folder)
    if not looks_like_hub_id(repo_id or "", namespace=True):
        raise UserError(f"{repo_id!r} is not a hub repo id", "write it as USER/NAME or ORG/NAME")
    if not folder.is_dir() or not any(folder.iterdir()):
        raise UserError(f"nothing to push: {folder} is missing or empty", "export the adapter or merge first")
    if hub_offline():
        raise UserError("cannot push to the Hugging Face hub while offline (HF_HUB_OFFLINE is set)",
                        f"unset HF_HUB_OFFLINE on a machine with internet, or copy {folder} there and run "
                        f"`hf upload {repo_id} {folder}`")
    token = hub_token()
    if not token:
        raise UserError("no Hugging Face token found, so nothing was pushed",
                        "run `hf auth login` or set HF_TOKEN in the environment, then push again")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        say(f"creating {repo_id} (if needed)")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        say(f"uploading {folder}")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload from sft-tui")
    except Exception as exc:  # network, auth, permissions: all reported the same readable way
        raise UserError(f"pushing to {repo_id} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                        "check the network, that the token may write to this repo, and the repo name") from None
    return str(url)


# --------------------------------------------------------------------------- GGUF


def find_llama_cpp() -> Path | None:
    """A llama.cpp checkout holding convert_hf_to_gguf.py: $SFT_TUI_LLAMA_CPP, then usual places."""
    candidates = []
    env = os.environ.get(LLAMA_CPP_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    else:
        home = Path.home()
        candidates += [home / "llama.cpp", home / "src" / "llama.cpp", home / "code" / "llama.cpp", Path("/opt/llama.cpp")]
    for path in candidates:
        if (path / GGUF_SCRIPT).is_file():
            return path
    return None


def gguf_instructions(merged_dir: str | Path | None = None) -> str:
    merged = str(merged_dir or "MERGED_DIR")
    return (
        "GGUF conversion uses llama.cpp's converter, and no llama.cpp checkout was found.\n"
        "1. git clone https://github.com/ggml-org/llama.cpp\n"
        "2. pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt\n"
        f"3. export {LLAMA_CPP_ENV}=/path/to/llama.cpp   (then sft-tui offers the conversion)\n"
        f"   or run it yourself: python llama.cpp/{GGUF_SCRIPT} {merged} --outfile model.gguf --outtype q8_0\n"
        "GGUF needs the merged model (export with merge first)."
    )


def convert_gguf(merged_dir: str | Path, outfile: str | Path | None = None, outtype: str = "f16",
                 llama_cpp: str | Path | None = None, progress: Say | None = None) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py on a merged model folder; returns the .gguf path."""
    say = progress or (lambda msg: None)
    merged = Path(merged_dir)
    if not (merged / "config.json").exists():
        raise UserError(f"{merged} holds no merged model", "merge first: sft-tui export RUN --merge OUT_DIR")
    if outtype not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {outtype!r}", f"use one of: {', '.join(GGUF_TYPES)}")
    root = Path(llama_cpp).expanduser() if llama_cpp else find_llama_cpp()
    if root is None or not (root / GGUF_SCRIPT).is_file():
        raise UserError("no llama.cpp checkout with convert_hf_to_gguf.py was found", gguf_instructions(merged))
    out = Path(outfile) if outfile else merged / f"{merged.name}-{outtype}.gguf"
    cmd = [sys.executable, str(root / GGUF_SCRIPT), str(merged), "--outfile", str(out), "--outtype", outtype]
    say("running " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(root))
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        say(line)
    code = proc.wait()
    if code != 0 or not out.exists():
        last = next((ln for ln in reversed(tail) if ln.strip()), "no output")
        hint = ("install the converter's requirements: pip install -r "
                f"{root}/requirements/requirements-convert_hf_to_gguf.txt")
        if "ModuleNotFoundError" not in "\n".join(tail):
            hint = "see the converter's output above; the model's architecture may not be supported by this llama.cpp"
        raise UserError(f"GGUF conversion failed (exit {code}): {last}", hint)
    return out
