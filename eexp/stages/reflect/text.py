"""Words and quotes shared by the reflection template, the grounded writer and the filters."""

from __future__ import annotations

import re

from eexp.text import normalize_space

WORD = re.compile(r"[a-z0-9]+", re.IGNORECASE)

# Words of a goal that say nothing about what to look for: function words and the generic verbs of instructions.
STOP = frozenset("a an the and or of to in on for with from by at is are be me my i you your it this that need "
                 "find want get some any under over than less more please looking look take put go make use "
                 "first then will task actions cause costs priced dollars".split())


def content_words(text: str) -> list[str]:
    out = []
    for w in WORD.findall(text.lower()):
        if w not in STOP and w not in out:
            out.append(w)
    return out


def snippet(text: str, max_chars: int = 160) -> str:
    """One line of an observation, short enough to quote inside a sentence."""
    flat = normalize_space(text.replace('"', "'"))
    if len(flat) <= max_chars:
        return flat
    cut = flat[:max_chars].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " ..."
