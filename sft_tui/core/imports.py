"""Heavy libraries imported once, in a fixed order, from whichever worker thread needs them first.

Two UI workers importing ``datasets`` and ``transformers`` at the same moment can see a
half-initialised lazy module (``cannot import name 'AutoTokenizer'``); one lock makes the first
import of each library happen in one thread while the others wait.
"""

from __future__ import annotations

import importlib
import sys
import threading

_lock = threading.Lock()
ORDER = ("datasets", "torch", "transformers")


def preload(*names: str) -> None:
    """Import ``names`` (in the order of ORDER) unless already imported; safe from any thread."""
    wanted = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
    if all(n in sys.modules and getattr(sys.modules[n], "__spec__", None) is not None for n in wanted) \
            and not _lock.locked():
        return
    with _lock:
        for name in wanted:
            module = importlib.import_module(name)
            if name == "transformers":
                getattr(module, "AutoTokenizer")  # finish the lazy import inside the lock
