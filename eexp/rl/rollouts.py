"""Where the samples come from: the transformers policy over the weights being trained (`LivePolicy`),
recording the tokens each call produced; the tasks of a step (a pure function of seed and step); the objective of
outcome RL (`Episodes`: GRPO over whole episodes), episode rewards and group-relative advantages."""

from __future__ import annotations

import math
import random

import orjson

from eexp.errors import MAX_FAILED_SHARE, EnvError, TrainingError
from eexp.policies.chat import ACTION_LINE
from eexp.policies.hf import TransformersPolicy
from eexp.records import short_hash
from eexp.rl.config import ENCODE_CACHE_SIZE, ZERO_START_ADVICE


class LivePolicy(TransformersPolicy):
    """The transformers policy over the weights being trained (`TransformersPolicy.from_model`), recording what each
    call produced: the prompt ids and the candidate replies (score) or the sampled reply ids (generate)."""

    @classmethod
    def over(cls, model, tokenizer, *, start: str, act: str, max_tokens: int, device) -> "LivePolicy":
        """The policy of an RL run that started from `start` (its name and serializer settings in records)."""
        policy = cls.from_model(
            model, tokenizer, spec=start, device=device, act=act, max_tokens=max_tokens, batch_size=64
        )
        policy.trace = []  # what the calls since it was last emptied produced, one record a call
        policy._calls = []  # the model passes of the current call
        policy._encoded = {}  # messages -> token ids (bounded: ENCODE_CACHE_SIZE)
        policy._scores = {}  # (prompt ids, candidates) -> scores, for the current weights
        return policy

    def weights_changed(self) -> None:
        """After an update: no cached prompt KV or scores of the old weights may be used again."""
        self._cache_key, self._cache, self._score_cache = None, None, None
        self._scores.clear()

    def forget(self) -> None:
        """Every cache, tokens included (for measurements that repeat the same episodes)."""
        self.weights_changed()
        self._encoded.clear()

    def encode_chat(self, messages, add_generation_prompt=True):
        """The template's ids, remembered: a group's episodes revisit the same states, and scoring tokenizes
        every admissible reply after the prompt (tokens do not depend on the weights, so this outlives an
        update; bounded)."""
        key = orjson.dumps([messages, add_generation_prompt])
        ids = self._encoded.get(key)
        if ids is None:
            if len(self._encoded) >= ENCODE_CACHE_SIZE:
                self._encoded.clear()
            ids = self._encoded[key] = tuple(super().encode_chat(messages, add_generation_prompt))
        return list(ids)

    def scores_for(self, ids, candidates):
        """Eval's scoring, remembered for every state of the weights in use: the episodes of a group start in
        the same state and often reach the same later ones (the same function of the same weights gives the
        same numbers, so a hit changes nothing; forgotten at each update)."""
        self._calls.append({"mode": "score", "ids": list(ids), "candidates": [list(c) for c in candidates]})
        key = (tuple(ids), tuple(map(tuple, candidates)))
        if key not in self._scores:
            self._scores[key] = super().scores_for(ids, candidates)
        return self._scores[key]

    def _new_ids(self, ids, **kwargs):
        """The generated ids, recorded with the prompt's for the loss."""
        new = super()._new_ids(ids, **kwargs)
        self._calls.append({"mode": "generate", "ids": list(ids), "reply": new})
        return new

    def sample(self, messages, *, admissible, seeds, temperature=1.0, context=None):
        """One action (RL asks for one seed at a time), and a trace record of the tokens it produced."""
        self._calls = []
        mode = self.mode_for(admissible, context)
        replies = super().sample(messages, admissible=admissible, seeds=seeds, temperature=temperature, context=context)
        calls, reply = self._calls, replies[0]
        if mode == "think":
            first = calls[0]
            if calls[-1]["mode"] == "score":
                # closed: the thought is the sampled tokens before the reply's `Action:` line (all of them when
                # it never got there); the decision is then taken over the admissible replies after it
                parts = [
                    {**first, "reply": self._before_action(first["reply"])},
                    {**calls[-1], "chosen": admissible.index(reply.action)},
                ]
            else:  # open: every sampled token (thought and action line), and the action generated after it
                parts = calls
            record = {"mode": "think", "parts": [p for p in parts if p["mode"] == "score" or p["reply"]]}
        elif calls:
            record = calls[-1]
            if mode == "score":
                record["chosen"] = admissible.index(reply.action)
        else:
            return replies
        self.trace.append(record)
        return replies

    def _before_action(self, reply: list[int]) -> list[int]:
        """The longest prefix of the sampled tokens whose text ends before the first `Action:` line."""
        found = ACTION_LINE.search(self.tokenizer.decode(reply, skip_special_tokens=True))
        if not found:
            return reply
        j = 0
        while j < len(reply) and len(self.tokenizer.decode(reply[: j + 1], skip_special_tokens=True)) <= found.start():
            j += 1
        return reply[:j]


def group_advantages(rewards: list[float | None], scale: bool) -> list[float]:
    """GRPO: each episode's reward minus its group's mean, divided by the group's std (population) when `scale`. An
    episode without a reward (None: the environment failed it, so it is no outcome) gets no advantage, and the
    group's mean and std are the other episodes'."""
    scored = [r for r in rewards if r is not None]
    if not scored:
        return [0.0] * len(rewards)
    mean = sum(scored) / len(scored)
    centred = [r - mean for r in scored]
    if scale:
        std = math.sqrt(sum(c * c for c in centred) / len(centred))
        centred = [c / (std + 1e-6) for c in centred]
    advantages = iter(centred)
    return [0.0 if r is None else next(advantages) for r in rewards]


def episode_reward(episode: dict, kind: str) -> float:
    success = 1.0 if episode["success"] else 0.0
    if kind == "success":
        return success
    if kind == "score":
        return float(episode["score"])
    return success + float(episode["score"])


def step_tasks(tasks: list[dict], seed: int, step: int, per_step: int) -> list[dict]:
    """The tasks of RL step `step` (1-based): consecutive slices of seeded permutations of the split, one
    permutation per pass. A pure function of (seed, step), so --resume needs no sampler state."""
    out = []
    for k in range((step - 1) * per_step, step * per_step):
        epoch, i = divmod(k, len(tasks))
        order = list(range(len(tasks)))
        random.Random(f"{seed}/rl-tasks/{epoch}").shuffle(order)
        out.append(tasks[order[i]])
    return out


def play_episodes(run, step: int) -> list[tuple[dict, list[dict]]]:
    """The episodes of RL step `step` with the run's live policy, grouped by task: --group-size episodes of each of
    the step's tasks, [(episode record, its trace of policy calls)]."""
    rl, policy = run.rl, run.policy
    out = []
    with run.autocast():
        for t, task in enumerate(step_tasks(run.tasks, rl.seed, step, rl.tasks_per_step)):
            for k in range(rl.group_size):
                policy.trace = []
                episode_id = short_hash("rl", rl.seed, step, t, task.get("split", ""), task["id"], k)
                episode, _ = run.evaluator.run(task, episode_id)
                out.append((episode, policy.trace))
    policy.trace = []
    return out


class Episodes:
    """The objective of outcome RL (--reward success, score or success+score; GRPO): each step plays --group-size
    episodes of each of --tasks-per-step tasks; an episode's reward comes at its end, its advantage from its group.

    An RL objective (eexp.rl.objective.RLObjective); it takes no option of its own."""

    OPTIONS = ()
    phase = "rl"
    unit = "episodes"
    act = None  # the environment's: score where its action set is closed, else generate

    def check(self, rl) -> None:
        """Nothing beyond the recipe's own checks."""

    def setup(self, run) -> None:
        run.states = []

    def fingerprint_data(self, run) -> list:
        return [t["id"] for t in run.tasks]

    def collect(self, run, step: int) -> list[tuple[dict, list[dict]]]:
        episodes = play_episodes(run, step)
        self.check_environment(run, episodes)
        return episodes

    @staticmethod
    def check_environment(run, episodes: list) -> None:
        """Episodes the environment failed (stop_reason `error`: a world model out of reach, a dead game engine)
        are counted, and train nothing (rewards: None); once more than MAX_FAILED_SHARE of the run's episodes have
        failed, the run stops (exit 1), removing OUT if it is the first step and this run made it, rather than
        train on what is not a result."""
        failed = [episode for episode, _ in episodes if episode["stop_reason"] == "error"]
        run.state["env_errors"] = run.state.get("env_errors", 0) + len(failed)
        total = run.state["episodes"] + len(episodes)
        if failed and run.state["env_errors"] / total > MAX_FAILED_SHARE:
            if run.state["global_step"] == 0:
                run._discard_output()
            reason = failed[0].get("meta", {}).get("error", "no reason recorded")
            raise EnvError(
                f"{run.state['env_errors']} of {total} episodes on {run.rl.env} failed in the "
                f"environment, more than the {100 * MAX_FAILED_SHARE:g}% a run may lose; the first of "
                f"this step: {reason}. Fix the environment and rerun"
            )

    def probe(self, run, episodes: list) -> None:
        """The first rollout batch: recorded; refused when no episode succeeded (unless --allow-zero-start), OUT
        removed when this run made it."""
        if run.state["probe"] is not None:
            return
        rl = run.rl
        successes = sum(bool(e["success"]) for e, _ in episodes)
        run.state["probe"] = {
            "episodes": len(episodes),
            "successes": successes,
            "success_rate": round(successes / len(episodes), 4),
        }
        run.echo(
            f"probe (the first rollout batch, sampled at temperature {rl.temperature}): {successes} of "
            f"{len(episodes)} episodes succeeded"
        )
        if successes == 0 and not rl.allow_zero_start:
            run._discard_output()
            raise TrainingError(
                f"{rl.model}: 0 of {len(episodes)} sampled episodes on {rl.env} "
                f"{rl.split} succeeded. {ZERO_START_ADVICE}"
            )

    def rewards(self, run, episodes: list) -> list[float | None]:
        return [None if e["stop_reason"] == "error" else episode_reward(e, run.rl.reward) for e, _ in episodes]

    def account(self, run, episodes: list, rewards: list[float | None]) -> dict:
        """The step's metrics; the mean reward is over the episodes that have one (env_errors: those that do not)."""
        successes = sum(bool(e["success"]) for e, _ in episodes)
        env_steps = sum(e["steps"] for e, _ in episodes)
        scored = [r for r in rewards if r is not None]
        run.state["episodes"] += len(episodes)
        run.state["env_steps"] += env_steps
        return {
            "episodes": run.state["episodes"],
            "success_rate": round(successes / len(episodes), 4),
            "mean_reward": round(sum(scored) / len(scored), 6) if scored else 0.0,
            "mean_score": round(sum(float(e["score"]) for e, _ in episodes) / len(episodes), 6),
            "env_steps": env_steps,
            "env_errors": len(episodes) - len(scored),
        }

    @staticmethod
    def postfix(row: dict) -> dict:
        return {"success": f"{row['success_rate']:.2f}"}

    def config(self, run) -> dict:
        return {}
