"""The reflection prompt: a template with `{slot}` placeholders (a built-in one or a file), and what the reflector
is shown in it (the state, the chosen action and what it led to, the first few executed alternatives and theirs)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

from eexp.errors import InputError
from eexp.prompts import Serializer, clip
from eexp.stages.reflect.settings import Settings
from eexp.stages.reflect.text import WORD

REQUIRED_SLOTS = ("situation", "chosen_action", "chosen_outcome", "alternatives")
# Templates shipped with eexp, by name. `short` is for small models (~100M-1B parameters): the default asks for 40-120
# words of prose (it asked for 150-300 when `short` was written, which SmolLM2-135M-Instruct answered with rambling
# that ran into --max-tokens: 9 of 12 states cut off at 1,024 tokens, 15 s each); with one worked example and two or
# three sentences asked for, it stays on the task more often and a reflection costs ~2.5 s.
BUILTIN_TEMPLATES = {"default": "reflect.txt", "short": "reflect-short.txt"}
_SLOT = re.compile(r"\{([a-z_]+)\}")
COPY_RUN = 5  # words in a row shared with the template that count as copying it
# The closing every reflection ends with, and the move after it (the worked example's): never counted as a copy.
_CLOSING = re.compile(r"so my move is\s*\S*", re.IGNORECASE)


@dataclass(frozen=True)
class Template:
    """A reflection prompt with `{slot}` placeholders. Only the slot names below are replaced, so any other braces
    in a user's template (JSON examples, say) stay as written."""

    text: str
    source: str = "default"

    @classmethod
    def load(cls, path: str | None = None) -> "Template":
        """A built-in template by name (default, short), or a template file."""
        path = path or "default"
        if path in BUILTIN_TEMPLATES and not os.path.exists(path):
            name = BUILTIN_TEMPLATES[path]
            return cls(resources.files("eexp").joinpath(f"templates/{name}").read_text(encoding="utf-8"), path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise InputError("no such template file", path) from None
        except UnicodeDecodeError:
            raise InputError("the template is not UTF-8 text", path) from None
        except OSError as e:
            raise InputError(f"cannot read the template ({e.strerror})", path) from None
        template = cls(text, path)
        missing = [s for s in REQUIRED_SLOTS if "{" + s + "}" not in text]
        if missing:
            names = ", ".join("{" + s + "}" for s in missing)
            raise InputError(
                f"the template has no {names} slot{'s' if len(missing) > 1 else ''} (a reflection "
                f"template needs {', '.join('{' + s + '}' for s in REQUIRED_SLOTS)})",
                path,
            )
        return template

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def fill(self, **values: str) -> str:
        return _SLOT.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), self.text)

    @cached_property
    def phrases(self) -> frozenset[tuple[str, ...]]:
        """Every run of COPY_RUN words in the template's own text (slots excluded): a reflection that repeats one
        is copying the instructions or the worked example instead of reasoning about its own state. The closing
        the templates ask for (`So my move is <move>.`) is a slot too: every reflection is meant to end with it."""
        runs = set()
        for part in _SLOT.split(self.text)[::2]:  # split() alternates text and slot names
            for piece in _CLOSING.split(part):
                words = [w.lower() for w in WORD.findall(piece)]
                runs.update(tuple(words[i : i + COPY_RUN]) for i in range(len(words) - COPY_RUN + 1))
        return frozenset(runs)


def executed(alternative: dict) -> bool:
    """Rollout tried it: it has an outcome (an observation, or the error that stopped it)."""
    return alternative.get("next_observation") is not None or bool(alternative.get("error"))


def shown_alternatives(outcome: dict, limit: int) -> list[dict]:
    """The first `limit` executed alternatives, valid or not, errors included, in the record's order."""
    return [a for a in outcome["alternatives"] if executed(a)][:limit]


def render_outcome(alternative: dict, max_chars: int) -> str:
    if alternative.get("error"):
        return f"It could not be carried out: {clip(alternative['error'], max_chars)}"
    text = clip(alternative["next_observation"], max_chars)
    if alternative.get("valid") is False:
        return f"(not accepted here) {text}"
    return text


def render_alternatives(alternatives: list[dict], max_chars: int) -> str:
    """Each alternative under its own action text: no numbers and no labels a monologue could copy."""
    blocks = []
    for alt in alternatives:
        body = render_outcome(alt, max_chars).replace("\n", "\n  ")
        blocks.append(f"- {alt['action']}\n  What followed: {body}")
    return "\n".join(blocks)


def reflection_prompt(
    outcome: dict, shown: list[dict], template: Template, serializer: Serializer, settings: Settings
) -> list[dict]:
    state = outcome["state"]
    text = template.fill(
        situation=serializer.render_state(state),
        goal=state["goal"],
        chosen_action=outcome["expert"]["action"],
        chosen_outcome=clip(outcome["expert"]["next_observation"], settings.max_outcome_chars),
        alternatives=render_alternatives(shown, settings.max_outcome_chars),
        max_words=str(settings.max_words),
    )
    return [{"role": "user", "content": text}]
