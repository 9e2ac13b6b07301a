"""The dataset pipeline (no UI): load, detect, normalise, render, mask, tokenize, cache, split, pack.

See ``pipeline.py`` for the order things happen in and why the cache key is what it is.
"""

from .conversation import PROBLEM_KINDS, BadRow, Conversation, ProblemLog
from .formats import FORMATS, Detection, detect_for, detect_format, resolve_columns, to_conversation
from .loading import load_rows, load_rows_detailed, resolve_paths
from .masking import IGNORE_INDEX, TokenizedRow, tokenize_conversation
from .packing import make_collator, pack
from .pipeline import PreparedData, inspect_data, prepare_datasets, tokenized_cache_dir, tokenizer_fingerprint
from .report import DataReport
from .templates import NAMED_TEMPLATES, get_renderer, render_prompt

__all__ = [
    "BadRow", "Conversation", "DataReport", "Detection", "FORMATS", "IGNORE_INDEX", "NAMED_TEMPLATES",
    "PROBLEM_KINDS", "PreparedData", "ProblemLog", "TokenizedRow", "detect_for", "detect_format", "get_renderer",
    "inspect_data", "load_rows", "load_rows_detailed", "make_collator", "pack", "prepare_datasets",
    "render_prompt", "resolve_columns", "resolve_paths", "to_conversation",
    "tokenize_conversation", "tokenized_cache_dir", "tokenizer_fingerprint",
]
