"""preference-data: preference pairs from executed alternatives (state -> the expert action over an alternative).

The assumption is SR's, reward-free: at an expert state the expert's action is the better one, so each alternative
that rollout executed from that state can be the rejected side of a pair whose chosen side is the expert action.
The prompt is the policy prompt of the one serializer (`Serializer.policy_messages`), the same two messages that
imitation-data puts before the expert action and that eval shows the model, so a model trained on the pairs is
asked what it is asked at inference. The record is the conversational shape TRL's DPOTrainer reads as it is:
`prompt` a list of messages, `chosen` and `rejected` a list of one assistant message each (`Action: ...`).

Which alternatives count as rejected (`--rejected`), from what an outcome record holds (`valid`, `done`, `reward`,
`next_observation`; no success or score per alternative):

- `invalid`: the environment rejected the action (`valid: false`).
- `no-progress`: the outcome shows no progress: the action was invalid, or it changed nothing (its next observation
  is the current one, whitespace-normalized), or it ended the episode (`done: true`) where the expert's action did
  not, or with a lower reward than the expert's action got. These are the alternatives whose outcome itself says
  they are worse; an alternative that moved somewhere else (a detour) is not one of them.
- `all`: every executed alternative (SR's assumption in full).

An alternative that could not be executed (its `error`) has no outcome and is never a rejected side. A state whose
expert action has no recorded outcome (rollout's `error` on it) or that could not be reached gives no pairs, as in
reflect. Every pair's meta says which alternative it is (`alternative`, its index in the outcome's list), its action
and source, and why it counts (`reason`: invalid, no_change, ended_episode, or executed for one that only `all`
takes).
"""

from __future__ import annotations

from typing import Iterator

from eexp.prompts import Serializer, format_action
from eexp.records import example_meta, outcome_origin
from eexp.text import normalize_space

REJECTED = ("invalid", "no-progress", "all")
# A pair's meta keys past the training example's (eexp.records.EXAMPLE_META), with their types.
PAIR_META = {
    "alternative": int,  # the rejected alternative's index in the outcome's list
    "rejected_action": str,
    "rejected_source": str,  # policy | admissible
    "reason": str,  # why it counts as worse: one of REASONS
    "rejected_filter": str,
}  # the --rejected choice that made the file
REASONS = ("invalid", "no_change", "ended_episode", "executed")  # most specific first
# the reasons each --rejected choice takes
TAKES = {"invalid": {"invalid"}, "no-progress": {"invalid", "no_change", "ended_episode"}, "all": set(REASONS)}


def _reward(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def reason(alternative: dict, state: dict, expert: dict) -> str:
    """Why an executed alternative is worse than the expert action, from its recorded outcome (see the module)."""
    if alternative.get("valid") is False:
        return "invalid"
    if normalize_space(alternative["next_observation"]) == normalize_space(state["observation"]):
        return "no_change"
    if alternative.get("done") and (
        not expert.get("done") or _reward(alternative.get("reward")) < _reward(expert.get("reward"))
    ):
        return "ended_episode"
    return "executed"


def pair_meta(meta: dict, **pair) -> dict:
    """A pair's meta: the training example's fixed keys (the seed is the rejected alternative's), then the pair's
    own, the same keys and types on every pair (`PAIR_META`), `created_utc` last."""
    created = meta.pop("created_utc")
    return {**meta, **{key: typ(pair[key]) for key, typ in PAIR_META.items()}, "created_utc": created}


def preference_pairs(
    outcome: dict, serializer: Serializer, rejected: str = "all", count=lambda name, n=1: None
) -> Iterator[dict]:
    """The preference pairs of one outcome record: one per executed alternative that `rejected` takes, in the
    outcome's order. Ids are `pref:<outcome id>:<j>`, j the alternative's index in the outcome."""
    if rejected not in TAKES:
        raise ValueError(f"rejected must be one of {', '.join(REJECTED)}, not {rejected!r}")
    if outcome.get("error"):
        count("unreachable")  # rollout could not reach the state: nothing was observed
        return
    expert = outcome["expert"]
    if expert.get("next_observation") is None or expert.get("error"):
        count("expert_not_executed")
        return
    alternatives = outcome["alternatives"]
    if not alternatives:
        count("no_alternatives")
        return
    state = outcome["state"]
    prompt = serializer.policy_messages(state)
    chosen = format_action(expert["action"])
    base = dict(
        stage="preference-data",
        kind="preference",
        **outcome_origin(outcome),
        action=expert["action"],
        action_source="expert",
        serializer=serializer.json,
    )
    made = 0
    for j, alternative in enumerate(alternatives):
        if alternative.get("error") or alternative.get("next_observation") is None:
            count("not_executed")
            continue
        why = reason(alternative, state, expert)
        text = format_action(alternative["action"])
        if why not in TAKES[rejected]:
            count("not_rejected")
            continue
        if text == chosen:  # branch never proposes the expert action; a hand-made file might
            count("same_as_expert")
            continue
        count(f"pairs_{why}")
        made += 1
        yield {
            "id": f"pref:{outcome['id']}:{j}",
            "source_id": outcome["id"],
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": text}],
            "meta": pair_meta(
                example_meta(**base, seed=alternative.get("seed") or 0),
                alternative=j,
                rejected_action=alternative["action"],
                rejected_source=alternative.get("source", ""),
                reason=why,
                rejected_filter=rejected,
            ),
        }
    if not made:
        count("states_without_pairs")
