"""The one serialization of a state, and the one action format.

The policy prompt in `branch`, the inputs of IL, IWM and SR examples and the prompt in `eval` are all made here, so
a model sees states the same way in training and at inference. The settings are recorded in every example's meta and
in every checkpoint (`Serializer.to_dict`), and `eval` reads them back.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Callable

import orjson

from eexp.errors import SerializerError

# Short on purpose: every example carries one, and for a small model trained from scratch it is pure cost.
POLICY_SYSTEM = (
    "Choose the next action for the task. Answer `Action: <action>`, optionally after `Thought: <reasoning>`."
)
WORLD_MODEL_SYSTEM = "Predict what the environment shows after the action. Answer `Observation: <next observation>`."
# A critic (critic-data, eexp.policies.critic) judges one proposed action of a state; its answer is one of VERDICTS.
CRITIC_SYSTEM = "Is the proposed action the one an expert takes next in this state? Answer `Yes` or `No`."
CRITIC_VERDICTS = ("Yes", "No")  # the expert's action, any other
PROPOSED_ACTION = "Proposed action: "
# The section headings of a rendered state: `render_state` writes them and `shorten` finds them again.
HISTORY_HEADING = "Recent steps:\n"
OBSERVATION_HEADING = "Current observation:\n"
ADMISSIBLE_HEADING = "Admissible actions:\n"


@dataclass(frozen=True)
class Serializer:
    """How a raw state becomes chat messages. The paper keeps recent history only, hence `history`."""

    history: int = 3  # how many previous steps to show (0: none)
    max_observation_chars: int = 1500  # the current observation
    max_history_chars: int = 300  # each observation in the history
    show_admissible: bool = True  # list the admissible actions when the state has them
    max_admissible: int = 60  # at most this many, in the environment's order

    def to_dict(self) -> dict:
        return asdict(self)

    @cached_property
    def json(self) -> str:
        """The settings as compact JSON, as example meta records them (computed once)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "serializer settings") -> "Serializer":
        """Settings as `to_dict` writes them (missing ones take their defaults), strictly: an unknown setting or a
        value of the wrong type is a SerializerError naming it after `where` (whose settings they are), never
        silently dropped, as the model card parses them (eexp/card.py)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise SerializerError(f"{where}: must be a mapping of settings, not {type(data).__name__}")
        defaults = {f.name: f.default for f in fields(cls)}
        for key, value in data.items():
            if key not in defaults:
                raise SerializerError(f"{where}: unknown setting {key!r} (settings: {', '.join(defaults)})")
            kind = type(defaults[key])
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise SerializerError(
                    f"{where}: {key} must be {'true or false' if kind is bool else 'an integer'}, not {value!r}"
                )
        return cls(**data)

    # --- rendering ---------------------------------------------------------------------------------------------

    def render_state(self, state: dict) -> str:
        parts = [f"Task: {state['goal']}"]
        history = state.get("history") or []
        shown = history[-self.history :] if self.history > 0 else []
        if shown:
            lines = []
            if len(history) > len(shown):
                lines.append(not_shown_note(len(history) - len(shown)))
            for step in shown:
                lines.append(f"Observation: {clip(step['observation'], self.max_history_chars)}")
                lines.append(f"Action: {step['action']}")
            parts.append(HISTORY_HEADING + "\n".join(lines))
        parts.append(OBSERVATION_HEADING + clip(state["observation"], self.max_observation_chars))
        admissible = state.get("admissible")
        if self.show_admissible and admissible:
            listed = admissible[: self.max_admissible]
            more = len(admissible) - len(listed)
            text = "\n".join(listed) + (f"\n(and {more} more)" if more > 0 else "")
            parts.append(ADMISSIBLE_HEADING + text)
        return "\n\n".join(parts)

    def policy_messages(self, state: dict) -> list[dict]:
        """The prompt a policy answers: system + user. The answer is `format_action(...)`."""
        return [{"role": "system", "content": POLICY_SYSTEM}, {"role": "user", "content": self.render_state(state)}]

    def world_model_messages(self, state: dict, action: str, rendered: str | None = None) -> list[dict]:
        """The prompt of an IWM example; its target is `format_observation(next_observation)`. Pass `rendered`
        (render_state of the same state) when making several examples from one state."""
        rendered = self.render_state(state) if rendered is None else rendered
        return [
            {"role": "system", "content": WORLD_MODEL_SYSTEM},
            {"role": "user", "content": f"{rendered}\n\nAction: {action}"},
        ]

    def critic_messages(self, state: dict, action: str, rendered: str | None = None) -> list[dict]:
        """The prompt of a critic example: the rendered state (the IL user turn, unchanged) and the proposed action
        after it, in one user turn (so an over-long one is shortened like any state: the action is never cut); the
        answer is one of CRITIC_VERDICTS. `rendered` as in world_model_messages."""
        rendered = self.render_state(state) if rendered is None else rendered
        return [
            {"role": "system", "content": CRITIC_SYSTEM},
            {"role": "user", "content": f"{rendered}\n\n{PROPOSED_ACTION}{action}"},
        ]


# --- a state over a token budget -------------------------------------------------------------------------------
# Training (`eexp.training.data.encode`, --max-length) and inference (`ModelPolicy.fit`, the context size) shorten a
# state that
# does not fit in the same way, so a model sees a long state as it was trained on it: the oldest history goes first,
# then the current observation and the admissible list are clipped; the task is never touched.


def not_shown_note(hidden: int) -> str:
    """The line that stands for the `hidden` oldest history steps a rendered state leaves out (`render_state`, past
    its `history` setting; `shorten`, over a budget): "(1 earlier step not shown)", "(2 earlier steps not shown)"."""
    return f"({hidden} earlier step{'' if hidden == 1 else 's'} not shown)"


_HISTORY_STEP = re.compile(r"Observation: .*?\nAction: [^\n]*(?:\n|$)", re.DOTALL)
_NOT_SHOWN = re.compile(r"^\((\d+) earlier steps? not shown\)\n?", re.MULTILINE)
MIN_SECTION_CHARS = 40  # an observation or admissible list is not clipped below this


def fit_messages(messages: list[dict], length: Callable[[list[dict]], int], budget: int) -> tuple[list[dict], int]:
    """The messages shortened by `shorten` until `length(messages) <= budget`, and how many steps that took. When
    they cannot be shortened further they are returned as they are; the caller decides what happens then. The last
    call of `length` is on the messages returned, so a caller may keep what it measured (ModelPolicy.fit)."""
    steps = 0
    while length(messages) > budget:
        shorter = shorten(messages)
        if shorter is None:
            break
        messages, steps = shorter, steps + 1
    return messages, steps


def shorten(messages: list[dict]) -> list[dict] | None:
    """One step shorter, or None: the oldest user/assistant pair of a multi-turn conversation, unless that pair holds
    its last rendered state; else, in the last user turn that can be shortened so, the oldest history step (the
    "(N earlier steps not shown)" line counts it), then the longer of its current observation and admissible list,
    clipped by a quarter. The pair that holds the last state stays because what follows it depends on it: an
    `imitation-data --observation-loss` example is the state, its action, then a question and the next observation,
    and without its first pair it would teach the observation from the question alone."""
    body = [i for i, m in enumerate(messages) if m["role"] != "system"]
    states = [i for i in body if messages[i]["role"] == "user" and _holds_state(messages[i]["content"])]
    if len(body) > 2 and not (states and states[-1] in body[:2]):
        first = body[0]
        return messages[:first] + messages[first + 2 :]
    for i in reversed(body):
        if messages[i]["role"] != "user":
            continue
        content = messages[i]["content"]
        new = _drop_oldest_step(content)
        if new is None:
            new = _clip_state(content)
        if new is not None:
            return messages[:i] + [{**messages[i], "content": new}] + messages[i + 1 :]
    return None


def _holds_state(content: str) -> bool:
    """Whether a user turn is a rendered state (`render_state`): it has one of a state's sections."""
    return any(heading in content for heading in (HISTORY_HEADING, OBSERVATION_HEADING, ADMISSIBLE_HEADING))


def _section(content: str, heading: str) -> tuple[int, int] | None:
    """(start, end) of a section's body in a rendered state: after its heading, up to the next blank line."""
    at = content.find(heading)
    if at < 0:
        return None
    start = at + len(heading)
    end = content.find("\n\n", start)
    return start, len(content) if end < 0 else end


def _drop_oldest_step(content: str) -> str | None:
    span = _section(content, HISTORY_HEADING)
    if span is None:
        return None
    start, end = span
    block = content[start:end]
    step = _HISTORY_STEP.search(block)
    if not step:
        return None
    shown = _NOT_SHOWN.search(block)
    hidden = int(shown.group(1)) if shown else 0
    rest = _NOT_SHOWN.sub("", block[: step.start()] + block[step.end() :]).strip("\n")
    return content[:start] + not_shown_note(hidden + 1) + ("\n" + rest if rest else "") + content[end:]


def _clip_state(content: str) -> str | None:
    spans = [
        s
        for s in (_section(content, OBSERVATION_HEADING), _section(content, ADMISSIBLE_HEADING))
        if s is not None and s[1] - s[0] > MIN_SECTION_CHARS
    ]
    if not spans:
        return None
    start, end = max(spans, key=lambda s: s[1] - s[0])
    body = content[start:end].rstrip("…")
    return content[:start] + clip(body, max(MIN_SECTION_CHARS, len(body) * 3 // 4)) + content[end:]


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


_OBSERVATION_LABEL = re.compile(r"\s*Observation\s*:[ \t]*", re.IGNORECASE)


def read_observation(text: str) -> tuple[str, bool]:
    """(the observation a world model's reply or an IWM target states, whether it carried the `Observation:` label):
    the label taken off and whitespace stripped, as `clip` strips a target. world-model-eval scores what it reads
    and the dream environment (eexp.envs.dream) shows it as the next observation."""
    match = _OBSERVATION_LABEL.match(text or "")
    if match:
        return clip(text[match.end() :], 0), True
    return clip(text or "", 0), False


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
