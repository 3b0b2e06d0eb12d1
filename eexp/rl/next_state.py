"""`--reward next-state`: RL on the world model's task, rewarded by the similarity of a predicted next state to the
recorded one (RWML, Reinforcement World Model Learning, arXiv 2602.05842, with token F1 as the similarity).

IWM (`eexp world-model-data`) trains the policy by likelihood on (state, action) -> `Observation: <next
observation>`. Here the same prompts are asked of the live weights instead, and what they generate is rewarded:
each transition of the outcome records (`eexp rollout`'s: the expert's action and every executed alternative at a
recorded state) is rendered exactly as world-model-data renders it (`world_model_transitions`, with the start's
serializer: the world-model system prompt, the state, `Action: <action>`), so an IWM-trained start is asked what it
was trained on. --group-size predictions are sampled at each, and each is rewarded by its token F1 with the recorded
next observation, read and scored as `eexp world-model-eval` reads and scores them (`read_observation`: the
`Observation:` label taken off, whitespace stripped; `token_f1`: case folded, runs of letters, digits and
underscores and every other non-space character one token each, multisets). The group is the transition's
predictions, advantages are the outcome reward's (group-relative), and the update trains the predictions' tokens as
`--act generate` trains a reply. No environment step is taken, and no success is needed.

RWML rewards with a binarized embedding similarity; token F1 is what eexp measures a world model by
(world-model-eval), needs no second model, and is what this reward is. RWML's combination with the task reward is
sequential (world-model RL first, then policy RL from its checkpoint): `eexp rl --reward success --model OUT`
continues from this objective's OUT like from any checkpoint.

Outcome records whose state could not be reached (`error` on the record) have no transition and are left out,
counted; a record that is not an outcome, or one of another environment or world, is `FILE:LINE: ...`.
"""

from __future__ import annotations

from eexp.errors import TrainingError, UsageProblem
from eexp.policies.base import derive_seed
from eexp.prompts import Serializer, read_observation
from eexp.rl.expert_step import records_of_split
from eexp.rl.rollouts import step_tasks
from eexp.stages.world_model import world_model_transitions
from eexp.stages.world_model_eval import token_f1


def prediction_reward(reply: str, target: str) -> float:
    """The reward of one generated prediction: its token F1 with the recorded next observation (`target`, as
    `read_observation` reads an IWM target), the reply read as world-model-eval reads it (label off, stripped)."""
    prediction, _ = read_observation(reply)
    return token_f1(prediction, target)


def read_outcomes(path: str, env, split: str, n: int | None) -> tuple[list[dict], int]:
    """(the outcome records of `split` in FILE whose state was reached, the first n of them; how many were not
    reached). A record that is not an outcome, or one of another environment or world, is `FILE:LINE: ...`."""
    kept, unreached = [], 0
    for _, record in records_of_split(path, "outcome", "an outcome record", env, split):
        if record.get("error"):
            unreached += 1
            continue
        if n is None or len(kept) < n:
            kept.append(record)
    return kept, unreached


def next_state_transitions(outcomes: list[dict], serializer: Serializer) -> list[dict]:
    """Every IWM example world-model-data makes of the outcomes, in its order, as {id (the example's), source_id,
    action, messages (its prompt), target (the recorded next observation, as `read_observation` reads the
    example's target)}."""
    out = []
    for outcome in outcomes:
        for _, executed, example in world_model_transitions(outcome, serializer):
            target, _ = read_observation(example["messages"][-1]["content"])
            out.append(
                {
                    "id": example["id"],
                    "source_id": outcome["id"],
                    "action": executed["action"],
                    "messages": example["messages"][:-1],
                    "target": target,
                }
            )
    return out


class NextState:
    """The objective of --reward next-state (an RL objective: eexp.rl.objective.RLObjective): each step samples
    --group-size predictions at each of --tasks-per-step transitions of the outcome records, each rewarded by its
    token F1 with the recorded next observation; the first step's mean F1 is recorded as the probe (nothing is
    refused)."""

    OPTIONS = ("outcomes",)
    phase = "rl-next-state"
    unit = "predictions"
    act = "generate"  # a prediction is generated text, whatever the environment's action set

    def check(self, rl) -> None:
        if rl.outcomes is None:
            raise UsageProblem(
                "--reward next-state needs --outcomes FILE: the outcome records (as `eexp rollout` "
                "writes them) whose next states the policy predicts"
            )
        if rl.act not in (None, "generate"):
            raise UsageProblem(
                f"--act {rl.act}: --reward next-state generates its predictions (--act generate, the default there)"
            )

    def setup(self, run) -> None:
        """The outcome records of --outcomes FILE (their transitions are rendered once the start's serializer is
        known: `transitions`)."""
        rl = run.rl
        outcomes, unreached = read_outcomes(rl.outcomes, run.env, rl.split, rl.tasks)
        if unreached:
            run.echo(f"next-state: {unreached} outcome records of {rl.outcomes} whose state was not reached left out")
        if not outcomes:
            raise TrainingError(
                f"{rl.outcomes}: no reached {rl.split} outcome record of {rl.env}, so no transition "
                f"to predict (--split {rl.split})"
            )
        run.outcomes = outcomes
        run.states = []

    @staticmethod
    def transitions(run) -> list[dict]:
        """The transitions of the outcome records, rendered with the start's serializer (once)."""
        if not run.states:
            run.states = next_state_transitions(run.outcomes, run.evaluator.serializer)
            if not run.states:
                raise TrainingError(
                    f"{run.rl.outcomes}: no executed transition (every action of its "
                    f"{run.rl.split} outcome records failed), so nothing to predict"
                )
            run.echo(
                f"next-state: {len(run.states)} transitions of {len(run.outcomes)} outcome records ({run.rl.outcomes})"
            )
        return run.states

    def fingerprint_data(self, run) -> list:
        return [[t["id"], t["messages"], t["target"]] for t in self.transitions(run)]

    def collect(self, run, step: int) -> list[tuple[dict, list[dict]]]:
        """The predictions of one step, grouped by transition: --tasks-per-step transitions (a seeded permutation,
        as the tasks of outcome RL), --group-size predictions generated at each from the current weights:
        [({transition, prediction, target, reward, exact}, its trace of policy calls)]."""
        rl, policy = run.rl, run.policy
        out = []
        with run.autocast():
            for i, item in enumerate(step_tasks(self.transitions(run), rl.seed, step, rl.tasks_per_step)):
                for k in range(rl.group_size):
                    policy._calls = []
                    seed = derive_seed(rl.seed, f"rl-next-state\x1f{step}\x1f{i}\x1f{item['id']}", k)
                    reply = policy.generate(
                        item["messages"], seed=seed, temperature=rl.temperature, top_p=1.0, max_tokens=rl.max_tokens
                    )
                    prediction, _ = read_observation(reply.text)
                    out.append(
                        (
                            {
                                "transition": item["id"],
                                "prediction": prediction,
                                "target": item["target"],
                                "reward": prediction_reward(reply.text, item["target"]),
                                "exact": prediction == item["target"],
                            },
                            list(policy._calls),
                        )
                    )
        policy._calls = []
        return out

    def probe(self, run, drawn: list) -> None:
        if run.state["probe"] is not None:
            return
        mean = sum(d["reward"] for d, _ in drawn) / len(drawn)
        exact = sum(d["exact"] for d, _ in drawn)
        run.state["probe"] = {"predictions": len(drawn), "exact": exact, "mean_f1": round(mean, 4)}
        run.echo(
            f"probe (the first batch of next-state predictions, sampled at temperature {run.rl.temperature}): "
            f"mean token F1 {mean:.3f}, {exact} of {len(drawn)} exact"
        )

    def rewards(self, run, drawn: list) -> list[float]:
        return [d["reward"] for d, _ in drawn]

    def account(self, run, drawn: list, rewards: list[float]) -> dict:
        run.state["predictions"] = run.state.get("predictions", 0) + len(drawn)
        return {
            "predictions": run.state["predictions"],
            "transitions": len(drawn) // run.rl.group_size,
            "exact_rate": round(sum(d["exact"] for d, _ in drawn) / len(drawn), 4),
            "mean_reward": round(sum(rewards) / len(rewards), 6),
        }

    @staticmethod
    def postfix(row: dict) -> dict:
        return {"f1": f"{row['mean_reward']:.3f}"}

    def config(self, run) -> dict:
        return {
            "predictions": run.state.get("predictions", 0),
            "transitions": len(run.states),
            "outcome_records": len(run.outcomes),
        }
