"""From a model's reply to an action: parse the DESIGN.md action format, canonicalize, match to the admissible list.

Every backend ends here, so an action means the same thing whichever model produced it. A reply without an
`Action:` line gives `Reply(action=None)`: the stage records it (an invalid step, an unparseable proposal) rather
than dropping it.
"""

from __future__ import annotations

from typing import Callable

from eexp.policies.base import Reply
from eexp.prompts import parse_reply
from eexp.text import normalize_space


def canonicalizer(context: dict | None) -> Callable[[str], str]:
    """The context environment's canonicalization when a stage gave one, else whitespace normalization."""
    env = (context or {}).get("env")
    if env is not None and hasattr(env, "canonicalize"):
        return env.canonicalize
    return normalize_space


def open_space(context: dict | None) -> bool:
    """True when the context's environment lists only a sample of an open action space (closed_actions False):
    its list is a hint, not the set of valid actions."""
    env = (context or {}).get("env")
    return env is not None and getattr(env, "closed_actions", True) is False


def match_admissible(action: str, admissible: list[str], canonicalize: Callable[[str], str]) -> str | None:
    """The admissible action `action` denotes, or None. Exact after canonicalization first, then ignoring case
    (models often change the case of a label); never a fuzzy match, which would invent actions."""
    canon = canonicalize(action)
    by_canon = {}
    for a in admissible:
        by_canon.setdefault(canonicalize(a), a)
    if canon in by_canon:
        return by_canon[canon]
    folded = {}
    for c, a in by_canon.items():
        folded.setdefault(c.casefold(), a)
    return folded.get(canon.casefold())


def reply_from_text(
    text: str, admissible: list[str] | None, *, context: dict | None = None, seed: int = 0, finish_reason: str = "stop"
) -> Reply:
    """Parse a raw reply into a `Reply`: action (canonical, or the matching admissible string), thought, validity."""
    canonicalize = canonicalizer(context)
    action, thought = parse_reply(text)
    if action is None and admissible:
        # A bare reply that is exactly one admissible action (no `Action:` prefix) still names it unambiguously.
        bare = text.strip()
        if bare and "\n" not in bare and match_admissible(bare, admissible, canonicalize) is not None:
            action = bare
    if action is None:
        return Reply(
            text=text,
            action=None,
            thought=thought,
            valid=False if admissible is not None else None,
            seed=seed,
            finish_reason=finish_reason,
        )
    if admissible is None:
        return Reply(
            text=text, action=canonicalize(action), thought=thought, valid=None, seed=seed, finish_reason=finish_reason
        )
    matched = match_admissible(action, admissible, canonicalize)
    # outside a sample of an open space, validity is for the environment to say
    valid = True if matched is not None else (None if open_space(context) else False)
    return Reply(
        text=text,
        action=matched if matched is not None else canonicalize(action),
        thought=thought,
        valid=valid,
        seed=seed,
        finish_reason=finish_reason,
    )


def failed_reply(message: str, seed: int = 0, admissible: list[str] | None = None) -> Reply:
    """A call that could not be made (endpoint down after retries, ...): recorded as failed, the stage goes on."""
    return Reply(
        text="",
        action=None,
        valid=False if admissible is not None else None,
        seed=seed,
        finish_reason=f"error: {message}",
    )
