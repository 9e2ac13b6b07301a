"""Heavy libraries imported once, in a fixed order, from whichever worker thread needs them first.

Two UI workers importing ``datasets`` and ``transformers`` at the same moment can see a
half-initialised lazy module (``cannot import name 'AutoTokenizer'``); one lock makes the first
import of each library happen in one thread while the others wait.
"""

from __future__ import annotations

import importlib
import threading

# Reentrant, and also held by the data loader (loading.DATASETS_LOCK): datasets reads
# ``transformers.PreTrainedTokenizerBase`` when transformers is in sys.modules, so a load must not
# run while another thread is still importing transformers.
_lock = threading.RLock()
HEAVY_LOCK = _lock
ORDER = ("datasets", "torch", "transformers")


def preload(*names: str) -> None:
    """Import ``names`` (in the order of ORDER) unless already imported; safe from any thread."""
    wanted = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
    with _lock:  # uncontended when all is imported: a dictionary look-up each
        for name in wanted:
            module = importlib.import_module(name)
            if name == "transformers":
                getattr(module, "AutoTokenizer")  # finish the lazy import inside the lock
