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
from collections import Counter
from typing import Callable

from eexp.errors import TrainingError, UsageProblem
from eexp.io import Reader
from eexp.policies.base import derive_seed
from eexp.records import expect, trajectory_states
from eexp.rl.rollouts import step_tasks
from eexp.stages.expert import expert_trajectory

EXPERT_MATCHES = ("exact", "f1")
_WORD = re.compile(r"\w+")


def token_f1(a: str, b: str) -> float:
    """The F1 of the two texts' words (\\w+, lowercased) as multisets, SQuAD's token F1: 2PR / (P + R) with P the
    share of a's words found in b, R the share of b's found in a; 0 when either has no word."""
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
    return [
        {"id": f"{t['id']}#{step}", "task": t["task"], "state": state, "action": action}
        for t in trajectories
        for step, state, action in trajectory_states(t)
    ]


def records_of_split(path: str, kind: str, what: str, env, split: str):
    """(line, record) for each record of `split` in FILE, every record of the file checked first: one that is not a
    `kind` record, or one of another environment or world than the run's (`what` names it), is `FILE:LINE: ...`."""
    check = expect(kind)
    for line in Reader([path]):
        record = line.record
        problem = check(record)
        if problem:
            raise line.error(problem)
        recorded = record["env"]
        if recorded["name"] != env.name or (recorded.get("kwargs") or {}) != dict(env.kwargs):
            raise line.error(
                f"{what} of {recorded['name']} {recorded.get('kwargs') or {}}, and this run acts "
                f"in {env.name} {dict(env.kwargs)}"
            )
        if record["task"]["split"] == split:
            yield line, record


def read_expert(path: str, env, split: str, n: int | None) -> tuple[list[dict], int]:
    """(the successful trajectories of `split` in FILE, the first n of them; how many unsuccessful ones were left
    out). A record that is not a trajectory, or one of another environment or world, is `FILE:LINE: ...`."""
    kept, failed = [], 0
    for line, record in records_of_split(path, "trajectory", "a trajectory", env, split):
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
    made = [expert_trajectory(env, task) for task in tasks]
    kept = [t for t in made if t["success"] and t["steps"]]
    return kept, len(made) - len(kept)


class ExpertStep:
    """The objective of --reward expert-step (an RL objective: eexp.rl.objective.RLObjective): each step samples
    --group-size actions at each of --tasks-per-step expert states, each rewarded by its match with the expert's
    action; the first step's match rate is recorded as the probe (nothing is refused)."""

    OPTIONS = ("expert", "expert_match")
    phase = "rl-expert-step"
    unit = "actions"
    act = None  # the environment's

    def check(self, rl) -> None:
        if rl.expert_match not in EXPERT_MATCHES:
            raise UsageProblem(f"--expert-match {rl.expert_match}: choose from {', '.join(EXPERT_MATCHES)}")

    def setup(self, run) -> None:
        """The expert states: from --expert FILE, or the oracle's trajectories of the run's tasks."""
        rl = run.rl
        if rl.expert is not None:
            trajectories, failed = read_expert(rl.expert, run.env, rl.split, rl.tasks)
            where = rl.expert
        else:
            trajectories, failed = oracle_trajectories(run.env, run.tasks)
            where = f"the {rl.env} oracle on {len(run.tasks)} {rl.split} tasks"
        if failed:
            run.echo(f"expert-step: {failed} unsuccessful expert trajectories of {where} left out")
        if not trajectories:
            raise TrainingError(
                f"{where}: no successful {rl.split} trajectory of {rl.env}, so no expert state to "
                f"act at (--split {rl.split})"
            )
        run.states = expert_states(trajectories)
        run.echo(f"expert-step: {len(run.states)} expert states of {len(trajectories)} trajectories ({where})")

    def fingerprint_data(self, run) -> list:
        return [[s["id"], s["action"]] for s in run.states]

    def collect(self, run, step: int) -> list[tuple[dict, list[dict]]]:
        """The actions of one step, grouped by state: --tasks-per-step expert states (a seeded permutation, as the
        tasks of outcome RL), --group-size actions sampled at each from the current weights:
        [({state, action, expert, reward, match}, its trace of policy calls)]."""
        rl, serializer, policy, env = run.rl, run.evaluator.serializer, run.policy, run.env
        out = []
        with run.autocast():
            for i, item in enumerate(step_tasks(run.states, rl.seed, step, rl.tasks_per_step)):
                state = item["state"]
                messages = serializer.policy_messages(state)
                context = {"env": env, "task": item["task"], "step": len(state["history"])}
                for k in range(rl.group_size):
                    policy.trace = []
                    seed = derive_seed(rl.seed, f"rl-expert-step\x1f{step}\x1f{i}\x1f{item['id']}", k)
                    reply = policy.sample(
                        messages,
                        admissible=state.get("admissible"),
                        seeds=[seed],
                        temperature=rl.temperature,
                        context=context,
                    )[0]
                    match = reply.action is not None and env.canonicalize(reply.action) == env.canonicalize(
                        item["action"]
                    )
                    out.append(
                        (
                            {
                                "state": item["id"],
                                "action": reply.action,
                                "expert": item["action"],
                                "reward": match_reward(reply.action, item["action"], env.canonicalize, rl.expert_match),
                                "match": match,
                            },
                            policy.trace,
                        )
                    )
        policy.trace = []
        return out

    def probe(self, run, drawn: list) -> None:
        if run.state["probe"] is not None:
            return
        matches = sum(d["match"] for d, _ in drawn)
        run.state["probe"] = {"actions": len(drawn), "matches": matches, "match_rate": round(matches / len(drawn), 4)}
        run.echo(
            f"probe (the first batch of actions at expert states, sampled at temperature "
            f"{run.rl.temperature}): {matches} of {len(drawn)} match the expert's"
        )

    def rewards(self, run, drawn: list) -> list[float]:
        return [d["reward"] for d, _ in drawn]

    def account(self, run, drawn: list, rewards: list[float]) -> dict:
        matches = sum(d["match"] for d, _ in drawn)
        run.state["actions"] = run.state.get("actions", 0) + len(drawn)
        return {
            "actions": run.state["actions"],
            "states": len(drawn) // run.rl.group_size,
            "match_rate": round(matches / len(drawn), 4),
            "mean_reward": round(sum(rewards) / len(rewards), 6),
        }

    @staticmethod
    def postfix(row: dict) -> dict:
        return {"match": f"{row['match_rate']:.2f}"}

    def config(self, run) -> dict:
        return {"actions": run.state.get("actions", 0), "expert_states": len(run.states)}
