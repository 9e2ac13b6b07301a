"""sft-tui's UI-free core: everything the CLI, the worker and the TUI share. Never imports textual."""

import logging

# bitsandbytes logs a warning on every CPU import about an optional hub-downloaded kernel that we
# never want (and cannot fetch offline); it reads like an error to users. Our own messages say
# when 4/8-bit is unavailable and why (see `sft-tui doctor`).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
