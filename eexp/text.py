"""Plain-text helpers that environments, the serializer and the stages share. Nothing here imports eexp."""

from __future__ import annotations


def normalize_space(text: str) -> str:
    """Runs of whitespace as one space, none at the ends: the one whitespace canonicalization (the state check
    compares observations with it, `Env.canonicalize` and the policies' default apply it to actions)."""
    return " ".join(text.split())
