"""Tiny tokenizers built in a second from the sample data, for tests.

Two tokenizers whose chat templates differ in shape (chatml with ``{% generation %}`` markers,
llama-3 headers without) show that label masking does not depend on one template's quirks.
Nothing here touches the hub.
"""

from __future__ import annotations

import json

from sft_tui.core.models.demo import CHAT_TEMPLATE as DEMO_CHAT_TEMPLATE
from sft_tui.core.paths import sample_data_dir

# The demo tokenizer's template: chatml with {% generation %} markers.
CHATML_TEMPLATE = DEMO_CHAT_TEMPLATE

# Llama-3 style: a BOS in the text, role headers, <|eot_id|> ends every turn, no generation markers.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _texts(limit: int = 3000) -> list[str]:
    out: list[str] = []
    for name in ("reviews_text.jsonl", "reviews_alpaca.jsonl", "reviews_chat.jsonl"):
        for line in (sample_data_dir() / name).read_text(encoding="utf-8").splitlines()[: limit // 3]:
            out.append(line if name != "reviews_text.jsonl" else json.loads(line)["text"])
    return out


def build_toy_tokenizer(style: str = "chatml", vocab_size: int = 600):
    """A byte-level BPE fast tokenizer with a chat template of the given style ('chatml'|'llama3'|'none')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        kwargs = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>")
        template = LLAMA3_TEMPLATE
    else:
        specials = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
        kwargs = dict(bos_token=None, eos_token="<|im_end|>" if style == "chatml" else "<|endoftext|>",
                      pad_token="<|pad|>")
        template = CHATML_TEMPLATE if style == "chatml" else None
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_texts(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=None, model_max_length=4096,
                                  additional_special_tokens=[s for s in specials if s not in kwargs.values()],
                                  **kwargs)
    if template:
        tok.chat_template = template
    return tok
