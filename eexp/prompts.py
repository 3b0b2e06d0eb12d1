"""The one serialization of a state, and the one action format.

The policy prompt in `branch`, the inputs of IL, IWM and SR examples and the prompt in `eval` are all made here, so
a model sees states the same way in training and at inference. The settings are recorded in every example's meta and
in every checkpoint (`Serializer.to_dict`), and `eval` reads them back.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from functools import cached_property

import orjson

# Short on purpose: every example carries one, and for a small model trained from scratch it is pure cost.
POLICY_SYSTEM = ("Choose the next action for the task. Answer `Action: <action>`, optionally after "
                 "`Thought: <reasoning>`.")
WORLD_MODEL_SYSTEM = "Predict what the environment shows after the action. Answer `Observation: <next observation>`."


@dataclass(frozen=True)
class Serializer:
    """How a raw state becomes chat messages. The paper keeps recent history only, hence `history`."""

    history: int = 3                   # how many previous steps to show (0: none)
    max_observation_chars: int = 1500  # the current observation
    max_history_chars: int = 300       # each observation in the history
    show_admissible: bool = True       # list the admissible actions when the state has them
    max_admissible: int = 60           # at most this many, in the environment's order

    def to_dict(self) -> dict:
        return asdict(self)

    @cached_property
    def json(self) -> str:
        """The settings as compact JSON, as example meta records them (computed once)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS).decode()

    def to_json(self) -> str:
        return self.json

    @classmethod
    def from_dict(cls, data: dict | None) -> "Serializer":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    # --- rendering ---------------------------------------------------------------------------------------------

    def render_state(self, state: dict) -> str:
        parts = [f"Task: {state['goal']}"]
        history = state.get("history") or []
        shown = history[-self.history:] if self.history > 0 else []
        if shown:
            lines = []
            if len(history) > len(shown):
                lines.append(f"({len(history) - len(shown)} earlier steps not shown)")
            for step in shown:
                lines.append(f"Observation: {clip(step['observation'], self.max_history_chars)}")
                lines.append(f"Action: {step['action']}")
            parts.append("Recent steps:\n" + "\n".join(lines))
        parts.append("Current observation:\n" + clip(state["observation"], self.max_observation_chars))
        admissible = state.get("admissible")
        if self.show_admissible and admissible:
            listed = admissible[: self.max_admissible]
            more = len(admissible) - len(listed)
            text = "\n".join(listed) + (f"\n(and {more} more)" if more > 0 else "")
            parts.append("Admissible actions:\n" + text)
        return "\n\n".join(parts)

    def policy_messages(self, state: dict) -> list[dict]:
        """The prompt a policy answers: system + user. The answer is `format_action(...)`."""
        return [{"role": "system", "content": POLICY_SYSTEM},
                {"role": "user", "content": self.render_state(state)}]

    def world_model_messages(self, state: dict, action: str, rendered: str | None = None) -> list[dict]:
        """The prompt of an IWM example; its target is `format_observation(next_observation)`. Pass `rendered`
        (render_state of the same state) when making several examples from one state."""
        rendered = self.render_state(state) if rendered is None else rendered
        return [{"role": "system", "content": WORLD_MODEL_SYSTEM},
                {"role": "user", "content": f"{rendered}\n\nAction: {action}"}]


def clip(text: str, limit: int) -> str:
    """Keep the start of a long text and say that it was cut."""
    text = text.strip()
    if limit <= 0 or len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)].rstrip() + "…"


def format_action(action: str, thought: str | None = None) -> str:
    if thought:
        return f"Thought: {thought.strip()}\n\nAction: {action}"
    return f"Action: {action}"


def format_observation(observation: str, max_chars: int = 0) -> str:
    return "Observation: " + clip(observation, max_chars)


_ACTION = re.compile(r"^\s*Action\s*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_THOUGHT = re.compile(r"Thought\s*:\s*(.*?)(?=^\s*Action\s*:|\Z)", re.IGNORECASE | re.DOTALL | re.MULTILINE)


def parse_reply(text: str) -> tuple[str | None, str | None]:
    """(action, thought) from a model's reply; action is None when the reply has no `Action:` line.

    The last `Action:` line wins, since a reasoning model may mention earlier candidates.
    """
    actions = [a for a in _ACTION.findall(text or "") if a]
    thought_match = _THOUGHT.search(text or "")
    thought = thought_match.group(1).strip() if thought_match else None
    return (actions[-1] if actions else None), (thought or None)


def normalize_space(text: str) -> str:
    """The comparison used for the state check: whitespace-normalized equality."""
    return " ".join(text.split())
