"""The built-in demo model: a tiny Llama trained from the bundled sample data, without network.

Why pre-train: LoRA on a randomly initialised model barely moves, so a newcomer's first run would
teach nothing. A few seconds of plain language-model training on prose in the task's vocabulary
(``sample_data/reviews_text.jsonl``) gives the base model words and grammar but not the
instruction format, which is exactly what supervised fine-tuning then adds — so the demo shows
what SFT is for.

The build is deterministic and cached under ``cache_dir()/demo-model/<version>``; concurrent
builders (tests, a CLI and the TUI) each build into a temporary folder and rename it into place.

It runs on one torch thread: at this size (hidden 128) a second thread buys little on an idle
machine, and on a busy 2-core one two threads were measured 7x slower per step (1.38 s vs 0.20 s),
which is what stretched the build past four minutes. One thread also keeps the arithmetic, and so
the built weights, the same on every machine. Measured on 2 cores shared with other jobs: 67-80 s
at a load average of 2-3, 133 s at 5 (``BUILD_ESTIMATE`` is what the UI should say beforehand); the
progress callbacks report each stage and the share of pre-training steps done, with the time left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from sft_tui.core.imports import preload
from sft_tui.core.paths import cache_dir, sample_data_dir

# Bump when anything below changes the built model, so old caches are not reused.
BUILD_VERSION = "6"

VOCAB_SIZE = 1024
HIDDEN = 128
LAYERS = 4
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 352
CONTEXT = 512
PRETRAIN_SECONDS_CAP = 600.0  # safety net only: a fixed step count keeps the build deterministic
PRETRAIN_STEPS = 400
PROGRESS_EVERY = 20  # a text message every this many pre-training steps (5%); fractions go out every step
PRETRAIN_SEQ = 96
PRETRAIN_BATCH = 16

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

# chatml with {% generation %} markers so transformers can return the assistant mask directly.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# What the UI may say before the build starts (measured on 2 shared CPU cores, see the docstring).
BUILD_ESTIMATE = "about 1-2 minutes on a CPU"

Progress = Callable[[str], None]
Fraction = Callable[[float], None]  # share of the build done, 0..1 (pre-training steps dominate)


def _sample_files() -> list[Path]:
    return sorted(p for p in sample_data_dir().iterdir() if p.suffix in (".jsonl", ".csv"))


def _fingerprint() -> str:
    digest = hashlib.sha256(BUILD_VERSION.encode())
    for path in _sample_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def demo_model_dir() -> Path:
    """Where the demo model for the current sample data lives (it may not be built yet)."""
    return cache_dir() / "demo-model" / f"v{BUILD_VERSION}-{_fingerprint()}"


def is_built() -> bool:
    return (demo_model_dir() / "config.json").exists()


def ensure_demo_model(progress: Progress | None = None, force: bool = False,
                      fraction: Fraction | None = None) -> Path:
    """Return the demo model folder, building it first if needed (``BUILD_ESTIMATE``).

    ``progress`` gets a line of text per stage and every ``PROGRESS_EVERY`` pre-training steps (with
    the share done and the time left); ``fraction`` gets the share of the build done after every step.
    """
    target = demo_model_dir()
    if (target / "config.json").exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build_demo_model(tmp, progress=progress, fraction=fraction)
        if force and target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its model is identical (deterministic build).
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _corpus_texts() -> list[str]:
    """Every string in the sample data, for the tokenizer: it must know the task's words."""
    texts: list[str] = []
    for path in _sample_files():
        if path.suffix == ".csv":
            import csv

            with open(path, encoding="utf-8", newline="") as fh:
                for row in csv.reader(fh):
                    texts.extend(row)
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            _collect_strings(json.loads(line), texts)
    return texts


def _collect_strings(value, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, out)


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        model_max_length=CONTEXT,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _pretrain_text(tokenizer) -> list[str]:
    """Documents for pre-training: prose, label strings alone, and generic chats.

    Every token the task uses must get a trained embedding here: a token the base never saw keeps
    a tiny random embedding that LoRA (which leaves embeddings alone) cannot make confident, so the
    fine-tune's loss would stall around 2 even with every answer right. Label strings appear only
    as isolated lines and the chats ask for reviews rather than labels, so the base model learns the
    words and the chat format but not the review → label task; that is left for fine-tuning.
    """
    import random

    path = sample_data_dir() / "reviews_text.jsonl"
    prose = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(0)
    sentiments = ["positive", "negative"]
    topics = ["restaurant", "hotel", "movie", "phone"]
    labels = [f"Sentiment: {s}. Topic: {t}." for s in sentiments for t in topics]
    labels += [f"Sentiment: {s}." for s in sentiments] + [f"Topic: {t}." for t in topics]
    docs = list(prose)
    docs += [rng.choice(labels) for _ in range(len(prose) // 3)]
    for text in rng.sample(prose, k=len(prose) // 2):
        review = text.split(" This ")[0]
        topic = next((t for t in topics if f"This {t} review" in text), "hotel")
        messages = [{"role": "user", "content": f"Write a short {topic} review."},
                    {"role": "assistant", "content": review}]
        docs.append(tokenizer.apply_chat_template(messages, tokenize=False))
    rng.shuffle(docs)
    return docs


def build_demo_model(out_dir: Path, progress: Progress | None = None, fraction: Fraction | None = None) -> Path:
    """Build tokenizer and model into ``out_dir`` (deterministic given the sample data)."""
    say = progress or (lambda msg: None)
    done = fraction or (lambda f: None)
    done(0.0)
    say("loading torch")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module docstring: faster on a busy machine, same bits everywhere
    try:
        return _build(out_dir, say, done)
    finally:
        torch.set_num_threads(threads)


def _build(out_dir: Path, say: Progress, done: Fraction) -> Path:
    import torch
    preload("transformers")  # a first import racing another thread sees a half-made module
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_tui.core.models.load import quiet_transformers

    quiet_transformers()  # its "Writing model shards" bar would land between our own progress lines

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say("training the demo tokenizer on the sample data")
    tokenizer = build_tokenizer(_corpus_texts())
    done(TOKENIZER_SHARE)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    say(f"pre-training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter Llama on plain review text")
    _pretrain(model, tokenizer, say, done)
    torch.random.set_rng_state(generator_state)

    say("saving the demo model")
    model.config.use_cache = True
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Generation ends at the end of the turn, and at the end of a document: pre-training separates
    # documents with <|endoftext|>, so the base model (and a lightly tuned one) writes it after an
    # answer and then a made-up next chat; stopping there is what real models' generation configs do.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        "# sft-tui demo model\n\nA tiny Llama-architecture causal LM and byte-level BPE tokenizer built by "
        "`sft_tui.core.models.demo` from the bundled sample data, pre-trained for a minute or two on plain review "
        "text. For trying sft-tui and for tests, not for real use.\n",
        encoding="utf-8",
    )
    done(1.0)
    return out_dir


TOKENIZER_SHARE = 0.03  # of the build's fraction; pre-training takes the rest up to SAVE_SHARE
SAVE_SHARE = 0.99


def _pretrain(model, tokenizer, say: Progress, done: Fraction) -> None:
    import torch

    ids: list[int] = []
    for text in _pretrain_text(tokenizer):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    stream = torch.tensor(ids, dtype=torch.long)
    n_windows = (len(stream) - 1) // PRETRAIN_SEQ
    windows = stream[: n_windows * PRETRAIN_SEQ].view(n_windows, PRETRAIN_SEQ)

    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=PRETRAIN_STEPS, pct_start=0.1)
    model.train()
    start = time.monotonic()
    for step in range(PRETRAIN_STEPS):
        batch = windows[torch.randint(0, n_windows, (PRETRAIN_BATCH,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        steps = step + 1
        done(TOKENIZER_SHARE + (SAVE_SHARE - TOKENIZER_SHARE) * steps / PRETRAIN_STEPS)
        if steps == 1 or steps % PROGRESS_EVERY == 0 or steps == PRETRAIN_STEPS:
            elapsed = time.monotonic() - start
            left = elapsed / steps * (PRETRAIN_STEPS - steps)
            say(f"pre-training step {steps}/{PRETRAIN_STEPS} ({100 * steps / PRETRAIN_STEPS:.0f}%), "
                f"loss {loss.item():.2f}" + (f", about {_seconds(left)} left" if steps < PRETRAIN_STEPS else ""))
        if time.monotonic() - start > PRETRAIN_SECONDS_CAP:
            # A slow machine still gets a usable (if weaker) model instead of a long wait.
            say(f"pre-training stopped at the {PRETRAIN_SECONDS_CAP:.0f} s cap")
            break
    model.eval()


def _seconds(value: float) -> str:
    value = max(int(round(value)), 1)
    return f"{value} s" if value < 90 else f"{value // 60} min {value % 60:02d} s"
