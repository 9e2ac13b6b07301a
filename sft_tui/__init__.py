"""sft-tui: fine-tune language models from a terminal, with training in a detachable worker."""

__version__ = "0.1.0"
