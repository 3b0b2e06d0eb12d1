"""Where eexp keeps what it makes once and reuses: $EEXP_CACHE, else ~/.cache/eexp (TextWorld games, ScienceWorld
goals, ALFWorld's game listings and PDDL translations, models imported from GGUF)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$EEXP_CACHE, else the user's cache directory (XDG_CACHE_HOME or ~/.cache) / eexp."""
    if os.environ.get("EEXP_CACHE"):
        return Path(os.environ["EEXP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eexp"
