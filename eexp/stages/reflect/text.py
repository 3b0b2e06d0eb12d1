"""Words shared by the reflection template, the grounded writer and the filters."""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+", re.IGNORECASE)

# Words of a goal that say nothing about what to look for: function words and the generic verbs of instructions.
STOP = frozenset(
    "a an the and or of to in on for with from by at is are be me my i you your it this that need "
    "find want get some any under over than less more please looking look take put go make use "
    "first then will task actions cause costs priced dollars".split()
)


def content_words(text: str) -> list[str]:
    out = []
    for w in WORD.findall(text.lower()):
        if w not in STOP and w not in out:
            out.append(w)
    return out
