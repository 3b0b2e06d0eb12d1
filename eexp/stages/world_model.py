"""world-model-data: one IWM example per executed transition (state + action -> next observation).

The expert transition is included, as in the paper's data (Appendix B), and so are invalid actions: the
environment's error message is the next state. Alternatives that could not be executed (an `error`) are skipped.
"""

from __future__ import annotations

from typing import Callable, Iterator

from eexp.errors import first_line
from eexp.prompts import Serializer, format_observation
from eexp.records import example_meta, outcome_origin
from eexp.runner import RecordError

Summarizer = Callable[[str, dict, str], str]  # (next_observation, state, action) -> text to predict


def world_model_examples(
    outcome: dict,
    serializer: Serializer,
    max_chars: int = 0,
    summarizer: Summarizer | None = None,
    count=lambda name: None,
) -> Iterator[dict]:
    for _, _, example in world_model_transitions(outcome, serializer, max_chars, summarizer, count):
        yield example


def world_model_transitions(
    outcome: dict,
    serializer: Serializer,
    max_chars: int = 0,
    summarizer: Summarizer | None = None,
    count=lambda name: None,
) -> Iterator[tuple[int, dict, dict]]:
    """(j, the executed transition, its IWM example) for every example of `world_model_examples`, in its order: j is
    the alternative's index in the outcome, -1 for the expert's. world-model-eval asks a model the prompts of these
    very examples and scores its answers against their targets."""
    if outcome.get("error"):
        # rollout could not reach the state: nothing was observed there. Counted and passed over, as reflect,
        # preference-data and critic-data do (rollout itself counted it, and fails a run that loses over 5%).
        count("unreachable")
        return
    state = outcome["state"]
    source_id = outcome["id"]
    # once per outcome: the rendered state and the meta its examples share (each adds its action)
    rendered = serializer.render_state(state)
    base_meta = example_meta(
        stage="world-model-data",
        kind="iwm",
        **outcome_origin(outcome),
        serializer=serializer.json,
        extra=_settings(max_chars, summarizer),
    )
    if not outcome["alternatives"]:
        count("no_alternatives")  # the expert transition alone: nothing the expert did not do
    transitions = [(-1, "expert", outcome["expert"], "expert")]
    transitions += [(j, str(j), alt, alt["source"]) for j, alt in enumerate(outcome["alternatives"])]
    for j, tag, executed, source in transitions:
        next_obs = executed.get("next_observation")
        if next_obs is None or executed.get("error"):
            count("not_executed")
            continue
        action = executed["action"]
        if summarizer is not None:
            next_obs = _summarized(summarizer, next_obs, state, action)
        if not executed.get("valid", True):
            count("invalid_actions")
        messages = serializer.world_model_messages(state, action, rendered)
        messages.append({"role": "assistant", "content": format_observation(next_obs, max_chars)})
        yield (
            j,
            executed,
            {
                "id": f"wm:{source_id}:{tag}",
                "source_id": source_id,
                "messages": messages,
                "meta": {**base_meta, "action": action, "action_source": source, "seed": executed.get("seed") or 0},
            },
        )


def _settings(max_chars: int, summarizer: Summarizer | None) -> dict:
    """The settings that change an example's target, for meta.extra: only those given, so a default run's records
    are what they were (and `--resume` with another --max-chars or --summarizer is refused, run_settings)."""
    settings: dict = {}
    if max_chars:
        settings["max_chars"] = max_chars
    if summarizer is not None:
        # MODULE:FUNCTION as --summarizer names it (`MODULE` alone is MODULE:summarize: the same name either way)
        module = getattr(summarizer, "__module__", None) or ""
        settings["summarizer"] = f"{module}:{getattr(summarizer, '__qualname__', type(summarizer).__qualname__)}"
    return settings


def _summarized(summarizer: Summarizer, observation: str, state: dict, action: str) -> str:
    """A --summarizer's text for one next observation. It is the user's code: an exception in it, or a reply that is
    not text, is this record's error (FILE:LINE, --on-error), not a traceback."""
    try:
        text = summarizer(observation, state, action)
    except Exception as e:
        raise RecordError(f"--summarizer failed on it: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(text, str):
        raise RecordError(f"--summarizer returned {type(text).__name__}, not text")
    return text
