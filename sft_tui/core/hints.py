"""Hints in the words of the screen a person is looking at.

Hints are written once, in config words ("set data.skip_bad_rows: true"), because the CLI and the
YAML file speak them. The app shows the same hint with each config key turned into the label of the
field that edits it and where that field is: "turn on 'skip bad rows' on the Data screen's Mapping
tab". Keys no screen edits, and everything else in the hint, are left as they are.
"""

from __future__ import annotations

import re

# Fields the Data and Model screens edit themselves (sft_tui/screens/data.py labels them; the
# training form's fields are described in sft_tui/core/setup/forms.py).
DATA_SCREEN = "the Data screen"
MAPPING_TAB = "the Data screen's Mapping tab"
TRAINING_SCREEN = "the Training screen"
MODEL_SCREEN = "the Model screen"

SCREEN_FIELDS: dict[str, tuple[str, str]] = {
    "data.path": ("data", DATA_SCREEN),
    "data.format": ("format", DATA_SCREEN),
    "data.template": ("template", MAPPING_TAB),
    "data.system_prompt": ("system prompt", MAPPING_TAB),
    "data.skip_bad_rows": ("skip bad rows", MAPPING_TAB),
    "data.columns": ("column mapping", MAPPING_TAB),
    "model.path": ("model", MODEL_SCREEN),
}

_KEY = r"(?:model|data|method|training|output)\.[a-z][a-z0-9_]*"
_MENTION = re.compile(rf"(?P<verb>\b(?:set|use) )?(?P<key>{_KEY})(?::[ \t]*(?P<value>[\w.+\-]+))?")


def field_place(key: str) -> tuple[str, str] | None:
    """(label, where) of the field that edits config ``key`` in the app, or None when no screen does."""
    if key in SCREEN_FIELDS:
        return SCREEN_FIELDS[key]
    from sft_tui.core.setup.forms import FIELDS

    field = FIELDS.get(key)
    return (field.label, TRAINING_SCREEN) if field is not None else None


def screen_hint(hint: str) -> str:
    """``hint`` as the app should show it: config keys become the on-screen field and where it is.

    "fix the line, or set data.skip_bad_rows: true to leave bad lines out" becomes
    "fix the line, or turn on 'skip bad rows' on the Data screen's Mapping tab to leave bad lines out".
    ``set KEY: true/false`` reads "turn on/off 'label'", ``set KEY: value`` reads "set 'label' to value",
    a bare key reads "'label'". Where a field is, is said once for each place, after the last field
    the hint names there ("lower 'batch size' or 'max length' on the Training screen").
    """
    if not hint:
        return hint
    mentions = [m for m in _MENTION.finditer(hint) if field_place(m.group("key")) is not None]
    if not mentions:
        return hint
    last_at: dict[str, int] = {}
    for i, m in enumerate(mentions):
        last_at[field_place(m.group("key"))[1]] = i  # type: ignore[index]
    out: list[str] = []
    pos = 0
    for i, m in enumerate(mentions):
        label, where = field_place(m.group("key"))  # type: ignore[misc]
        verb, value = m.group("verb"), m.group("value")
        tail = ""
        if value and value.endswith("."):  # the sentence's full stop, not part of the value
            value, tail = value[:-1], "."
        if value in ("true", "false"):
            state = "on" if value == "true" else "off"
            phrase = f"turn {state} '{label}'" if verb else f"'{label}' turned {state}"
        elif value:
            phrase = f"set '{label}' to {value}" if verb else f"'{label}' set to {value}"
        else:
            phrase = f"{verb or ''}'{label}'"
        if last_at[where] == i:
            phrase += f" on {where}"
        out.append(hint[pos:m.start()] + phrase + tail)
        pos = m.end()
    out.append(hint[pos:])
    return "".join(out)
