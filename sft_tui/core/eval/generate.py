"""Loading a run's base and tuned models once, and generating from them (batched or streamed).

A LoRA run loads the base weights a single time: the tuned answers come from the peft model and
the base answers from the same object inside ``disable_adapter()``, so comparing the two costs one
model's memory. Full fine-tunes (and evaluating a merged export) load two models. Every prompt is
rendered with the run's own template through ``render_prompt``, so generation sees exactly the
text the model was trained on up to the answer. Heavy libraries are imported inside functions.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from sft_tui.core.imports import preload
from sft_tui.core.data.profile import stop_strings, stop_token_ids
from sft_tui.core.errors import UserError
from sft_tui.core.run.rundir import RunDir

WHICH = ("base", "tuned")
SOURCES = ("auto", "adapter", "merged")


@dataclass
class GenSettings:
    """Decoding settings; temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0

    def validated(self) -> "GenSettings":
        problems = []
        if not 1 <= int(self.max_new_tokens) <= 32768:
            problems.append(f"max new tokens must be 1..32768, not {self.max_new_tokens}")
        if not 0.0 <= float(self.temperature) <= 10.0:
            problems.append(f"temperature must be 0..10 (0 = greedy), not {self.temperature}")
        if not 0.0 < float(self.top_p) <= 1.0:
            problems.append(f"top-p must be above 0 and at most 1, not {self.top_p}")
        if problems:
            raise UserError("; ".join(problems), "0 temperature gives greedy decoding; top-p 1 keeps every token")
        return GenSettings(int(self.max_new_tokens), float(self.temperature), float(self.top_p))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- loading


def quiet_optional_kernels() -> None:
    """bitsandbytes warns on CPU that an optional 4-bit kernel package is missing; irrelevant here."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _device_and_dtype(config) -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        device = "cuda"
    else:
        dtype, device = torch.float32, "cpu"
    wanted = getattr(config.training, "precision", "auto")
    if device == "cuda" and wanted in ("fp32", "bf16", "fp16"):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[wanted]
    if config.model.dtype != "auto":
        dtype = getattr(torch, config.model.dtype)
    return device, dtype


def load_causal_lm(path: str | Path, config, device: str, dtype: Any, quantize: bool = False):
    """A causal LM for inference on ``device``; ``quantize`` loads it as qlora trained it (CUDA)."""
    from sft_tui.core.models.load import load_causal_lm as load

    if quantize and device != "cuda":
        raise UserError("this is a qlora run: its base model loads 4/8-bit and needs an NVIDIA GPU",
                        "evaluate it on a CUDA machine, or export a 16-bit merge there first")
    attn = config.model.attn_implementation
    if attn == "flash_attention_2" and device != "cuda":
        attn = "auto"  # flash-attention is CUDA-only; inference on CPU falls back to the default kernel
    model = load(path, config, dtype, bits=(config.method.bits or 4) if quantize else None, attn_implementation=attn,
                 what=f"in {path} (or the base model is no longer where the run found it)")
    if not quantize:
        model.to(device)
    model.config.use_cache = True
    model.eval()
    return model


def load_tokenizer(path: str | Path, config):
    """The tokenizer saved with a run (same loader as training, run-folder wording)."""
    from sft_tui.core.models.load import tokenizer_for

    return tokenizer_for(config, folder=path)


def tuned_source(run: RunDir, source: str = "auto") -> tuple[str, Path]:
    """('adapter'|'merged', folder) for the tuned model; 'auto' prefers the adapter, then a merge."""
    if source not in SOURCES:
        raise UserError(f"unknown model source {source!r}", "use adapter, merged or auto")
    has_adapter, has_merged = run.has_adapter, run.has_merged
    if source == "adapter" or (source == "auto" and has_adapter):
        if not has_adapter:
            raise UserError(f"run {run.name} has no trained adapter in {run.adapter_dir}",
                            "wait for the run to finish (or resume it); `sft-tui runs` shows its state")
        return "adapter", run.adapter_dir
    if source == "merged" or (source == "auto" and has_merged):
        if not has_merged:
            raise UserError(f"run {run.name} has no merged model in {run.merged_dir}",
                            f"create it with: sft-tui export {run.name} --merge {run.merged_dir}")
        return "merged", run.merged_dir
    raise UserError(f"run {run.name} has no trained model yet (no {run.adapter_dir.name}/ folder)",
                    "wait for the run to finish, or resume it with `sft-tui train --resume RUN`")


def base_model_path(run: RunDir, config=None) -> str:
    """The base weights the run was trained on.

    'demo' names whatever demo build is current, and a rebuild (new sample data or build version)
    makes a new folder, so the adapter's own record (``base_model_name_or_path``) wins while that
    folder exists; an adapter applied to different base weights would give nonsense silently.
    """
    from sft_tui.core.models.load import model_folder

    config = config or run.load_config()
    if config.model.path != "demo":
        return model_folder(config)
    recorded = None
    try:
        recorded = json.loads((run.adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        pass
    from sft_tui.core.models.demo import demo_model_dir

    if not recorded or Path(recorded).name == demo_model_dir().name:
        return model_folder(config)
    if (Path(recorded) / "config.json").exists():
        return recorded
    raise UserError(f"run {run.name} was trained on an older build of the demo model ({Path(recorded).name}), "
                    "which is no longer in the cache",
                    "train the run again: the adapter only fits the base weights it was trained on")


def _is_raw_data(config) -> bool:
    """Raw formats (plain text, prompt/completion) were trained without a chat template."""
    fmt = config.data.format
    if fmt == "auto":
        try:
            from sft_tui.core.data import detect_format, load_rows_detailed

            ds = load_rows_detailed(config.data.path, skip_bad_rows=True).dataset
            fmt = detect_format(ds.select(range(min(len(ds), 50))), config.data.columns).format
        except Exception:  # the data may have moved; chat rendering is the safe default
            return False
    if fmt == "text":
        return True
    if fmt == "prompt_completion":
        try:
            from sft_tui.core.data import load_rows_detailed

            ds = load_rows_detailed(config.data.path, skip_bad_rows=True).dataset
            col = config.data.columns.get("prompt", "prompt")
            return isinstance(ds[0].get(col), str)
        except Exception:
            return True
    return False


class ModelPair:
    """The base and the tuned model of one run, loaded once and shared (thread-safe by a lock)."""

    def __init__(self, run: RunDir, source: str = "auto", progress: Callable[[str], None] | None = None) -> None:
        say = progress or (lambda msg: None)
        self.run = run
        self.config = run.load_config()
        self.source, self.tuned_dir = tuned_source(run, source)
        self.method = self.config.method.type
        self.base_path = base_model_path(run, self.config)
        self.device, self.dtype = _device_and_dtype(self.config)
        self.lock = threading.RLock()
        self.raw = _is_raw_data(self.config)
        say("loading the tokenizer")
        self.tokenizer = load_tokenizer(self.tuned_dir, self.config)
        quantize = self.method == "qlora"
        self._base = None
        self.peft = self.source == "adapter" and self.method in ("lora", "qlora")
        if self.peft:
            quiet_optional_kernels()
            from peft import PeftModel

            say(f"loading the base model {self.config.model.path}")
            base = load_causal_lm(self.base_path, self.config, self.device, self.dtype, quantize=quantize)
            say("attaching the adapter")
            self._tuned = PeftModel.from_pretrained(base, str(self.tuned_dir))
            self._tuned.eval()
        else:
            say(f"loading the tuned model from {self.tuned_dir}")
            self._tuned = load_causal_lm(self.tuned_dir, self.config, self.device, self.dtype)
            say(f"loading the base model {self.config.model.path}")
            self._base = load_causal_lm(self.base_path, self.config, self.device, self.dtype, quantize=quantize)
        # The same rule as training: a tiny model on CPU generates faster on one torch thread.
        from sft_tui.core.train.recipe import Device, pin_cpu_threads

        if self.device == "cpu":
            pin_cpu_threads(sum(p.numel() for p in self._tuned.parameters()), Device("cpu", False, False))
        template = self.config.data.template
        self.stop_ids = generation_stop_ids(self.tokenizer, template, self._tuned)
        self.stop_texts = stop_strings(self.tokenizer, template)
        # Stop ids cover one-token markers; a marker the tokenizer splits into pieces is matched as text.
        self._stop_strings = [s for s in self.stop_texts if len(self.encode(s)) > 1]

    @contextlib.contextmanager
    def use(self, which: str) -> Iterator[Any]:
        """The model to run for ``which`` ('base' or 'tuned'); holds the lock while in use."""
        if which not in WHICH:
            raise ValueError(f"which must be base or tuned, not {which!r}")
        import torch

        with self.lock, torch.inference_mode():
            if which == "tuned":
                yield self._tuned
            elif self._base is not None:
                yield self._base
            else:
                with self._tuned.disable_adapter():
                    yield self._tuned

    # ------------------------------------------------------------------ prompts
    def conversation(self, prompt: str, system: str | None = None):
        from sft_tui.core.data import Conversation

        if self.raw:
            return Conversation([{"role": "user", "content": prompt}], raw=True)
        system = system if system is not None else self.config.data.system_prompt
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return Conversation(turns)

    def render(self, conv_or_prompt: Any) -> str:
        """The exact generation prompt, as in training (conversations lose their last answer)."""
        from sft_tui.core.data import render_prompt

        conv = self.conversation(conv_or_prompt) if isinstance(conv_or_prompt, str) else conv_or_prompt
        return render_prompt(conv, self.tokenizer, self.config.data.template)

    def encode(self, text: str) -> list[int]:
        # Training tokenizes the rendered text without adding special tokens (the template has them).
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ generation
    def _gen_kwargs(self, settings: GenSettings) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=self.stop_ids,
                                      pad_token_id=self.tokenizer.pad_token_id)
        if self._stop_strings:
            kwargs.update(stop_strings=self._stop_strings, tokenizer=self.tokenizer)
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate(self, which: str, texts: list[str], settings: GenSettings | None = None,
                 batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
                 stopped: list[bool] | None = None) -> list[str]:
        """Answers for rendered prompt texts, batched with left padding (longest first).

        ``stopped``, when given, is filled with one flag per text: whether the answer ended on a
        stop token or stop text (False: it ran to ``max_new_tokens``, the answer never stopped).
        """
        import torch

        settings = (settings or GenSettings()).validated()
        encoded = [self.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        answers: list[str] = [""] * len(texts)
        ended: list[bool] = [False] * len(texts)
        pad = self.tokenizer.pad_token_id
        done = 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            longest = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), longest), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = encoded[i]
                if seq:
                    ids[row, longest - len(seq):] = torch.tensor(seq)
                    mask[row, longest - len(seq):] = 1
            with self.use(which) as model:
                out = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                     **self._gen_kwargs(settings))
            for row, i in enumerate(idx):
                answers[i] = self.decode_answer(out[row, longest:].tolist())
                ended[i] = self._ended(out[row, longest:].tolist(), settings.max_new_tokens)
            done += len(idx)
            if progress:
                progress(done, len(texts))
        if stopped is not None:
            stopped[:] = ended
        return answers

    def _ended(self, ids: list[int], max_new_tokens: int) -> bool:
        """An answer ended when it holds a stop token or a stop text, or is shorter than the cap
        (a batch runs on until its last sequence ends; the finished ones are padded)."""
        stops = set(self.stop_ids)
        if any(token in stops for token in ids) or len(ids) < max_new_tokens:
            return True
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return any(marker and marker in text for marker in self.stop_texts)

    def decode_answer(self, ids: list[int]) -> str:
        """The answer alone: up to the first stop token (a sequence in a batch runs on, or pads,
        after it), and up to a stop text that decoding leaves in (a marker that is no special token)."""
        stops = set(self.stop_ids)
        end = next((n for n, token in enumerate(ids) if token in stops), len(ids))
        return answer_only(self.tokenizer.decode(ids[:end], skip_special_tokens=True), self.stop_texts)

    def stream(self, which: str, prompt: str, settings: GenSettings | None = None,
               stop: threading.Event | None = None) -> Iterator[str]:
        """Yield the answer to a user prompt piece by piece as tokens are decoded."""
        preload("transformers")  # a first import racing another thread sees a half-made module
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        settings = (settings or GenSettings()).validated()
        text = self.render(prompt)
        ids = self.encode(text)
        import torch

        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        halt = threading.Event()  # set when the answer is complete (a stop text) or the reader left

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001
                return bool(halt.is_set() or (stop is not None and stop.is_set()))

        def target() -> None:
            try:
                with self.use(which) as model:
                    model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop()]),
                                   **self._gen_kwargs(settings))
            except BaseException as exc:  # surfaced to the reader below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=target, name=f"sft-tui-generate-{which}", daemon=True)
        thread.start()
        first = True
        cutter = _StopCutter(self.stop_texts)
        try:
            for piece in streamer:
                chunk = cutter.feed(piece)
                if first:
                    chunk, first = chunk.lstrip(), chunk.strip() == ""
                if chunk:
                    yield chunk
                if cutter.done:
                    break
            tail = "" if cutter.done else cutter.flush().rstrip()
            if first:
                tail = tail.lstrip()
            if tail:
                yield tail
        finally:
            halt.set()  # the generating thread stops at its next token
        thread.join()
        if errors:
            raise errors[0]


def generation_stop_ids(tokenizer: Any, template: str | None = "auto", model: Any = None) -> list[int]:
    """The ids generation stops on: the template's end-of-turn token, the EOS, then the model's own.

    A base model's EOS is often not the token that closes a chat turn (Qwen: ``<|endoftext|>`` vs
    ``<|im_end|>``): stopping on the EOS alone lets the model write the next, made-up, user turn.
    """
    # The profile keeps an end-of-turn marker only when it is one token (a split one is a stop text).
    ids = stop_token_ids(tokenizer, template)
    eos = getattr(tokenizer, "eos_token_id", None)
    cfg = getattr(model, "generation_config", None) if model is not None else None
    for value in (eos, getattr(cfg, "eos_token_id", None)):
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return ids


def answer_only(text: str, stops: list[str]) -> str:
    """The answer up to the first stop text, stripped: what is scored, shown and saved.

    Whatever follows an end-of-turn marker (a made-up next turn) is not part of the answer.
    """
    cut = len(text)
    for marker in stops:
        if marker:
            at = text.find(marker)
            if 0 <= at < cut:
                cut = at
    return text[:cut].strip()


class _StopCutter:
    """Streams text up to the first stop text, holding back a tail that could begin one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.done = False

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        self.buffer += piece
        cut = min((at for at in (self.buffer.find(s) for s in self.stops) if at >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.done = self.buffer[:cut], "", True
            return out
        keep = 0
        for marker in self.stops:  # the longest buffer tail that is the start of a marker
            for n in range(min(len(marker) - 1, len(self.buffer)), keep, -1):
                if self.buffer.endswith(marker[:n]):
                    keep = n
                    break
        out = self.buffer[:len(self.buffer) - keep]
        self.buffer = self.buffer[len(out):]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()


def load_pair(run: RunDir, source: str = "auto", progress: Callable[[str], None] | None = None) -> ModelPair:
    """A ModelPair for the run, reused while the run's tuned model on disk is unchanged (one kept)."""
    kind, folder = tuned_source(run, source)
    # Weights and configs only: writing a model card (README.md) must not force a reload.
    marker = max((p.stat().st_mtime for p in folder.iterdir()
                  if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")), default=0.0)
    key = f"{run.path}|{kind}|{marker}"
    with _CACHE_LOCK:
        pair = _CACHE.get(key)
        if pair is None:
            _CACHE.clear()  # one pair at a time: models are big
            pair = ModelPair(run, kind, progress=progress)
            _CACHE[key] = pair
        return pair


# --------------------------------------------------------------------------- chat history


def unescape_prompt(text: str) -> str:
    """One-line inputs (the REPL, the playground) write a newline as a literal backslash-n."""
    return text.replace("\\n", "\n")


@dataclass
class ChatRecord:
    prompt: str
    answers: dict[str, str]
    settings: dict[str, Any]
    time: float = field(default_factory=time.time)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chat_history_path(run: RunDir) -> Path:
    return run.path / "chat" / "history.jsonl"


def append_history(run: RunDir, record: ChatRecord) -> Path:
    path = chat_history_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    return path


def load_history(run: RunDir, limit: int | None = None) -> list[dict[str, Any]]:
    path = chat_history_path(run)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "prompt" in obj:
            out.append(obj)
    return out[-limit:] if limit else out


def compare(pair: ModelPair, prompt: str, settings: GenSettings | None = None,
            on_chunk: Callable[[str, str], None] | None = None, which: tuple[str, ...] = WHICH,
            stop: threading.Event | None = None, save: bool = True) -> ChatRecord:
    """Stream each model's answer in turn (base first), report chunks, and keep it in the history."""
    settings = (settings or GenSettings()).validated()
    answers: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in which:
        start = time.perf_counter()
        parts = []
        for chunk in pair.stream(name, prompt, settings, stop=stop):
            parts.append(chunk)
            if on_chunk:
                on_chunk(name, chunk)
        answers[name] = "".join(parts).strip()
        seconds[name] = round(time.perf_counter() - start, 3)
    record = ChatRecord(prompt, answers, settings.to_dict(), seconds=seconds)
    if save:
        append_history(pair.run, record)
    return record
