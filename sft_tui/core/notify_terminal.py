"""Desktop notifications through the terminal: a few bytes that reach the person over SSH.

A process on a remote GPU server cannot reach the person's desktop, but it can reach the terminal
they are looking at. Two escape sequences ask the terminal to show a desktop notification:

* OSC 9 (``ESC ] 9 ; text BEL``), iTerm2's: also read by Windows Terminal, ConEmu, kitty, WezTerm,
  Ghostty and foot. ConEmu and Windows Terminal read ``9;<digit>;`` as commands (progress, message
  boxes), so the text here always starts with "sft-tui:".
* OSC 777 (``ESC ] 777 ; notify ; title ; body BEL``), from rxvt-unicode's notify extension: read by
  VTE terminals with the notify patch (GNOME Terminal, Tilix: ``$VTE_VERSION``), foot, Ghostty and
  WezTerm. ``;`` separates its fields, so titles and bodies lose theirs.

Terminals ignore OSC numbers they do not know, so where the terminal is unknown both are sent, plus
the bell (``BEL``), which every terminal and multiplexer understands as "look here". A terminal known
to read both gets only OSC 777 (one banner, with a title). Inside tmux (``$TMUX``) and GNU screen
(``$STY``) each OSC is wrapped in the multiplexer's passthrough so it reaches the terminal outside;
tmux 3.3+ forwards it only with ``set -g allow-passthrough on`` (the bell arrives either way).

Support facts come from the terminals' documentation and issue trackers (iTerm2, kitty, Ghostty,
Windows Terminal, tmux). Detection is by environment variables only: asking the terminal would mean
reading its answer from stdin mid-run. Over SSH little more than TERM (and, from macOS, LC_TERMINAL)
arrives, so an unknown terminal is the common case, and it gets both sequences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sft_tui.core.format import without_controls

ESC, BEL = "\x1b", "\x07"
ST = ESC + "\\"

MODES = ("auto", "on", "off")

TITLE_CHARS, BODY_CHARS = 120, 300

# Terminals whose TERM says they show raw bytes for unknown sequences (the Linux and BSD consoles,
# Emacs' term and shell buffers) or that are no terminal at all.
UNSUPPORTED_TERMS = ("dumb", "linux", "cons25", "eterm", "emacs")


def clean(text: Any, limit: int = BODY_CHARS, field: bool = False) -> str:
    """``text`` made safe inside an OSC: no control characters (and for OSC 777 fields no ';')."""
    out = without_controls(text)  # none may end the OSC early or start another
    if field:
        out = out.replace(";", ",")
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


def osc9(text: str) -> str:
    body = clean(text, TITLE_CHARS + BODY_CHARS)
    if body[:1].isdigit():
        body = "- " + body  # never "9;4;..." to ConEmu or Windows Terminal: that is a command there
    return f"{ESC}]9;{body}{BEL}"


def osc777(title: str, body: str) -> str:
    return f"{ESC}]777;notify;{clean(title, TITLE_CHARS, field=True)};{clean(body, BODY_CHARS, field=True)}{BEL}"


def tmux_passthrough(sequence: str) -> str:
    """tmux's DCS passthrough: ``ESC P tmux;`` + the sequence with every ESC doubled + ``ESC \\``."""
    return f"{ESC}Ptmux;{sequence.replace(ESC, ESC + ESC)}{ST}"


def screen_passthrough(sequence: str) -> str:
    """GNU screen's DCS passthrough: ``ESC P`` + the sequence as it is + ``ESC \\``."""
    return f"{ESC}P{sequence}{ST}"


def multiplexer(env: Mapping[str, str]) -> str | None:
    """'tmux' or 'screen' when running inside one (tmux first: it may run inside screen, not vice versa)."""
    if env.get("TMUX"):
        return "tmux"
    if env.get("STY"):
        return "screen"
    return None


@dataclass(frozen=True)
class TerminalSupport:
    """What to send to this terminal, and why (the reason is shown by nothing but tests and debugging)."""

    osc9: bool = False
    osc777: bool = False
    bell: bool = False
    multiplexer: str | None = None
    reason: str = ""

    @property
    def enabled(self) -> bool:
        return self.osc9 or self.osc777 or self.bell


def _term(env: Mapping[str, str]) -> str:
    return env.get("TERM", "").lower()


# Terminals that say who they are in the environment, and which sequences each shows as (osc9, osc777).
_KNOWN: tuple[tuple[str, Callable[[Mapping[str, str]], bool], tuple[bool, bool]], ...] = (
    ("iTerm2", lambda e: e.get("TERM_PROGRAM") == "iTerm.app" or e.get("LC_TERMINAL") == "iTerm2", (True, False)),
    ("Windows Terminal", lambda e: bool(e.get("WT_SESSION")), (True, False)),
    ("ConEmu", lambda e: bool(e.get("ConEmuPID")), (True, False)),
    ("kitty", lambda e: "kitty" in _term(e) or bool(e.get("KITTY_WINDOW_ID")), (True, False)),
    ("WezTerm", lambda e: e.get("TERM_PROGRAM") == "WezTerm" or _term(e).startswith("wezterm"), (False, True)),
    ("Ghostty", lambda e: e.get("TERM_PROGRAM") == "ghostty" or "ghostty" in _term(e), (False, True)),
    ("foot", lambda e: _term(e).startswith("foot"), (False, True)),
    ("rxvt-unicode", lambda e: _term(e).startswith("rxvt-unicode"), (False, True)),
    ("VTE", lambda e: bool(e.get("VTE_VERSION")), (False, True)),
)


def terminal_support(mode: str = "auto", env: Mapping[str, str] | None = None,
                     tty: bool = True) -> TerminalSupport:
    """Which sequences to send: ``off`` nothing; ``on`` always; ``auto`` unless known not to work.

    ``auto`` is off only where the terminal is known not to show them: output that is not a
    terminal (a pipe, a log file), TERM=dumb, the Linux console, Emacs, and VTE older than 0.46
    (which printed unknown OSCs as text).
    """
    env = os.environ if env is None else env
    mux = multiplexer(env)
    if mode == "off":
        return TerminalSupport(reason="notify: off")
    term = _term(env)
    if mode != "on":
        if not tty:
            return TerminalSupport(reason="output is not a terminal")
        if not term or any(term == t or term.startswith(t + "-") for t in UNSUPPORTED_TERMS):
            return TerminalSupport(reason=f"TERM={term or '(unset)'} does not show notifications")
        vte = env.get("VTE_VERSION", "")
        if vte.isdigit() and int(vte) < 4600:
            return TerminalSupport(bell=True, multiplexer=mux, reason="VTE before 0.46 prints unknown OSCs")
    for name, matches, (nine, seven) in _KNOWN:
        if matches(env):
            return TerminalSupport(osc9=nine, osc777=seven, bell=True, multiplexer=mux, reason=name)
    return TerminalSupport(osc9=True, osc777=True, bell=True, multiplexer=mux, reason="unknown terminal: both")


def escapes(title: str, body: str, support: TerminalSupport) -> str:
    """The exact text to write to the terminal for one notification (empty when nothing is sent)."""
    sequences = []
    if support.osc9:
        sequences.append(osc9(f"{title}: {body}" if body else title))
    if support.osc777:
        sequences.append(osc777(title, body))
    wrap = {"tmux": tmux_passthrough, "screen": screen_passthrough}.get(support.multiplexer or "")
    out = "".join(wrap(s) if wrap else s for s in sequences)
    return out + (BEL if support.bell else "")  # the bell needs no passthrough: multiplexers forward it


def write_raw(stream: Any, data: str) -> bool:
    """Write escape bytes to a terminal stream, past any text-layer encoding; never raises.

    A text stream whose encoding is ASCII (LANG=C) would refuse a non-ASCII run name, so the bytes go
    to its binary buffer as UTF-8. A closed or vanished terminal (the SSH link dropped) is not an error
    worth stopping a follow for.
    """
    if not data or stream is None:
        return False
    try:
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()
            buffer.write(data.encode("utf-8", "replace"))
            buffer.flush()
        else:
            stream.write(data)
            stream.flush()
        return True
    except (OSError, ValueError):
        return False
