"""critic-data: examples that teach a model to tell the expert's action from the alternatives at an expert state, and
the accuracy of a critic on held-out outcome records (critic-eval).

From one outcome record come one example per candidate action: the expert's, whose answer is `Yes`, and one per
executed alternative that `rejected` takes (preference-data's filter and reasons, `eexp.stages.preference`), whose
answer is `No`. The prompt is the critic prompt of the one serializer (`Serializer.critic_messages`): the critic's
own system prompt, then one user turn holding the state exactly as imitation-data renders it, a blank line and
`Proposed action: <action>`. The answer is a single word, so a critic's judgement of an action is the softmax of the
log-likelihoods of the two verdicts (`eexp.policies.critic.Critic`).

Balance: a state has one expert action and up to K alternatives, so without help `No` outnumbers `Yes` K to 1 and
the model learns that prior. With `balance` (the default) the expert's example carries loss weight n, the number of
`No` examples of its state (`weight` on the assistant turn, which `eexp finetune` multiplies the loss by; other
trainers may ignore it), so each state puts as much weight on `Yes` as on `No` and a probability of 0.5 means
undecided. The examples themselves are the same either way.

A state gives examples only when at least one alternative is taken: a lone `Yes` teaches nothing about telling
actions apart. Alternatives that could not be executed (their `error`) and states that could not be reached are
skipped as in preference-data: nothing was observed.

Ids: `critic:<outcome id>:expert` and `critic:<outcome id>:<j>`, j the alternative's index in the outcome. meta is
the training example's fixed set (kind `critic`, `action` the candidate, `action_source` expert, policy or
admissible, `seed` the alternative's); meta.extra holds `verdict`, `alternative` (-1 for the expert's), `reason`
(`expert`, or preference-data's reason), `rejected_filter`, `balance` and `weight`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from eexp.prompts import CRITIC_VERDICTS, Serializer, format_action
from eexp.records import example_meta, outcome_origin
from eexp.stages.preference import REJECTED, TAKES, reason

YES, NO = CRITIC_VERDICTS
__all__ = ["REJECTED", "Candidates", "candidates", "critic_examples", "critic_accuracy"]


@dataclass
class Candidates:
    """The actions a critic is trained and evaluated on at one state: the expert's first, then the alternatives
    `rejected` takes, each with its index in the outcome, its source, seed and reason."""

    state: dict
    expert: str
    alternatives: list[tuple[int, dict, str]]  # (j, alternative, reason)

    @property
    def actions(self) -> list[str]:
        return [self.expert] + [alt["action"] for _, alt, _ in self.alternatives]


def candidates(outcome: dict, rejected: str = "all", count=lambda name, n=1: None) -> Candidates | None:
    """The candidates of one outcome record, or None (counted) for a state that gives none: unreachable, the expert
    action not executed, or no alternative that `rejected` takes."""
    if rejected not in TAKES:
        raise ValueError(f"rejected must be one of {', '.join(REJECTED)}, not {rejected!r}")
    if outcome.get("error"):
        count("unreachable")
        return None
    expert = outcome["expert"]
    if expert.get("next_observation") is None or expert.get("error"):
        count("expert_not_executed")
        return None
    if not outcome["alternatives"]:
        count("no_alternatives")
        return None
    state = outcome["state"]
    taken = []
    for j, alternative in enumerate(outcome["alternatives"]):
        if alternative.get("error") or alternative.get("next_observation") is None:
            count("not_executed")
            continue
        why = reason(alternative, state, expert)
        if why not in TAKES[rejected]:
            count("not_rejected")
            continue
        if format_action(alternative["action"]) == format_action(expert["action"]):  # a hand-made file might
            count("same_as_expert")
            continue
        taken.append((j, alternative, why))
    if not taken:
        count("states_without_alternatives")
        return None
    return Candidates(state, expert["action"], taken)


def critic_examples(
    outcome: dict, serializer: Serializer, rejected: str = "all", balance: bool = True, count=lambda name, n=1: None
) -> Iterator[dict]:
    """The critic examples of one outcome record: the expert's (`Yes`) first, then one `No` per alternative that
    `rejected` takes, in the outcome's order (see the module)."""
    found = candidates(outcome, rejected, count)
    if found is None:
        return
    rendered = serializer.render_state(found.state)
    source_id = outcome["id"]
    base = dict(
        stage="critic-data",
        kind="critic",
        **outcome_origin(outcome),
        serializer=serializer.json,
    )
    n_no = len(found.alternatives)
    weight = n_no if balance else 1
    rows = [("expert", -1, found.expert, "expert", 0, "expert", YES, weight)]
    rows += [
        (str(j), j, alt["action"], alt.get("source", ""), alt.get("seed") or 0, why, NO, 1)
        for j, alt, why in found.alternatives
    ]
    count("states")
    count("yes")
    count("no", n_no)
    for tag, j, action, source, seed, why, verdict, w in rows:
        answer = {"role": "assistant", "content": verdict}
        if w != 1:
            answer["weight"] = w
        extra = {
            "verdict": verdict,
            "alternative": j,
            "reason": why,
            "rejected_filter": rejected,
            "balance": balance,
            "weight": w,
        }
        yield {
            "id": f"critic:{source_id}:{tag}",
            "source_id": source_id,
            "messages": serializer.critic_messages(found.state, action, rendered) + [answer],
            "meta": example_meta(**base, action=action, action_source=source, seed=seed, extra=extra),
        }


def critic_accuracy(scored: Iterable[tuple[float, list[float]]]) -> dict:
    """How well a critic tells the expert's action apart, from (the expert's score, the alternatives' scores) per
    state, each score the critic's probability that the action is the expert's:

    - `top1`: the share of states where the expert's action scores above every alternative (a tie is a miss): how
      often the critic, choosing among the candidates, chooses the expert's. `chance_top1` is what picking one
      candidate at random gets (the mean of 1 / candidates).
    - `pair_accuracy`: the share of (expert, alternative) pairs ordered right, a tie counting half (chance: 0.5).
    - `accuracy`: the share of all examples answered right at 0.5 (the expert's at >= 0.5, an alternative's
      below); `expert_accuracy` and `alternative_accuracy` split it, `balanced_accuracy` is their mean (chance: 0.5
      whatever the mix of Yes and No).
    """
    states = examples = top1 = pairs = pairs_right = 0
    chance = expert_right = alt_right = alternatives = 0.0
    expert_sum = alt_sum = 0.0
    for expert, others in scored:
        if not others:
            continue
        states += 1
        examples += 1 + len(others)
        alternatives += len(others)
        chance += 1 / (1 + len(others))
        top1 += all(expert > s for s in others)
        pairs += len(others)
        pairs_right += sum(1.0 if expert > s else 0.5 if expert == s else 0.0 for s in others)
        expert_right += expert >= 0.5
        alt_right += sum(s < 0.5 for s in others)
        expert_sum += expert
        alt_sum += sum(others)

    def share(a, b):
        return round(a / b, 4) if b else None

    expert_acc, alt_acc = share(expert_right, states), share(alt_right, alternatives)
    return {
        "states": states,
        "examples": examples,
        "top1": share(top1, states),
        "chance_top1": share(chance, states),
        "pair_accuracy": share(pairs_right, pairs),
        "accuracy": share(expert_right + alt_right, examples),
        "expert_accuracy": expert_acc,
        "alternative_accuracy": alt_acc,
        "balanced_accuracy": round((expert_acc + alt_acc) / 2, 4) if states else None,
        "mean_expert_score": share(expert_sum, states),
        "mean_alternative_score": share(alt_sum, alternatives),
    }


def score_states(
    critic, outcomes: Iterable[dict], rejected: str = "all", count=lambda name, n=1: None
) -> Iterator[tuple[float, list[float]]]:
    """(the expert's score, the alternatives' scores) at every state of `outcomes` that gives candidates, scored by
    `critic` (an eexp.policies.critic.Critic): what critic_accuracy reads. The candidates are critic-data's for the
    same `rejected`, so a critic is measured on the kind of examples it was trained on."""
    for outcome in outcomes:
        found = candidates(outcome, rejected, count)
        if found is None:
            continue
        scores = critic.score(found.state, found.actions)
        yield scores[0], scores[1:]
