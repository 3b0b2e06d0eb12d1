"""`--reward expert-step`: RL at the expert's states, rewarded by agreement with the expert's action.

Outcome RL needs episodes that differ in success; a start that never succeeds gives it nothing (the probe refuses
it). Here the policy acts at the states of expert trajectories instead: each state is the recorded one (goal,
history, observation, admissible list) rendered with the start's serializer, as imitation-data renders it for IL,
so no environment step is taken, and each of the --group-size actions sampled there is rewarded by its match with
the expert's action: 1 where the two are equal after the environment's canonicalize, else 0 (`exact`), or their
token F1 (`f1`). The group is the state's samples, and advantages are the outcome reward's (group-relative). A
group earns signal as soon as some of its samples match and some do not, which needs no success at all.

The expert's states come from `--expert FILE` (trajectory records, as `eexp expert` writes them: the
demonstrations IL trained on) or, without it, from the environment's oracle run once over the first --tasks tasks
of --split when the run starts (`eexp expert`'s own loop, in memory). Unsuccessful trajectories are left out, as
imitation-data leaves them out.
"""

from __future__ import annotations

import re
from typing import Callable

from eexp.records import expect, trajectory_states

EXPERT_MATCHES = ("exact", "f1")
_WORD = re.compile(r"\w+")


def token_f1(a: str, b: str) -> float:
    """The F1 of the two texts' words (\\w+, lowercased) as multisets, SQuAD's token F1: 2PR / (P + R) with P the
    share of a's words found in b, R the share of b's found in a; 0 when either has no word."""
    from collections import Counter
    x, y = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    common = sum((x & y).values())
    if not common:
        return 0.0
    precision, recall = common / sum(x.values()), common / sum(y.values())
    return 2 * precision * recall / (precision + recall)


def match_reward(action: str | None, expert: str, canonicalize: Callable[[str], str], match: str) -> float:
    """The reward of one sampled action at an expert state: 1 where it equals the expert's action after the
    environment's canonicalize; otherwise 0 (`exact`) or the token F1 of the two canonical forms (`f1`). An
    unparseable reply (None) gets 0."""
    if action is None:
        return 0.0
    mine, theirs = canonicalize(action), canonicalize(expert)
    if mine == theirs:
        return 1.0
    return token_f1(mine, theirs) if match == "f1" else 0.0


def expert_states(trajectories: list[dict]) -> list[dict]:
    """Every step of the trajectories as {id: <trajectory id>#<step>, task, state (raw, history included), action}:
    the states and targets of IL (`trajectory_states`)."""
    return [{"id": f"{t['id']}#{step}", "task": t["task"], "state": state, "action": action}
            for t in trajectories for step, state, action in trajectory_states(t)]


def read_expert(path: str, env, split: str, n: int | None) -> tuple[list[dict], int]:
    """(the successful trajectories of `split` in FILE, the first n of them; how many unsuccessful ones were left
    out). A record that is not a trajectory, or one of another environment or world, is `FILE:LINE: ...`."""
    from eexp.io import Reader
    check = expect("trajectory")
    kept, failed = [], 0
    for line in Reader([path]):
        record = line.record
        problem = check(record)
        if problem:
            raise line.error(problem)
        recorded = record["env"]
        if recorded["name"] != env.name or (recorded.get("kwargs") or {}) != dict(env.kwargs):
            raise line.error(f"a trajectory of {recorded['name']} {recorded.get('kwargs') or {}}, and this run acts "
                             f"in {env.name} {dict(env.kwargs)}")
        if record["task"]["split"] != split:
            continue
        if not record["success"]:
            failed += 1
            continue
        if not record["steps"]:
            raise line.error("steps: empty, no expert state")
        if n is None or len(kept) < n:
            kept.append(record)
    return kept, failed


def oracle_trajectories(env, tasks: list[dict]) -> tuple[list[dict], int]:
    """(the oracle's successful trajectories of the tasks, as `eexp expert` makes them; how many were not)."""
    from eexp.stages.expert import expert_trajectory
    made = [expert_trajectory(env, task) for task in tasks]
    kept = [t for t in made if t["success"] and t["steps"]]
    return kept, len(made) - len(kept)
