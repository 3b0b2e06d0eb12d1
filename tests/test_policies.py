"""Policies: the loader, action parsing, the baselines, and each model backend on the same conversation."""

from __future__ import annotations

import pytest

from eexp.envs.base import Env
from eexp.policies import PolicyError, Reply, derive_seed, load_policy
from eexp.policies.actions import match_admissible, reply_from_text

ADMISSIBLE = ["go north", "go south", "take lamp", "open door"]


class TinyEnv(Env):
    """A two-room world just big enough for the baselines: the expert takes the lamp, then goes north."""

    name = "tiny"
    closed_actions = True

    def tasks(self, split):
        return [{"id": "t0", "split": split, "goal": "take the lamp and go north"}]

    def reset(self, task):
        self.steps = []
        return "You are in a hall. A lamp is here."

    def step(self, action):
        self.steps.append(action)
        return "ok", 0.0, False, {"valid": True}

    def expert(self, task):
        return ["take  lamp", "go north"]

    def success(self):
        return self.steps == ["take lamp", "go north"]

    def admissible(self):
        return ADMISSIBLE

    def canonicalize(self, action):
        return " ".join(action.lower().split())


# --- action parsing -------------------------------------------------------------------------------------------

def test_reply_parsing_matches_admissible_and_keeps_unparseable():
    r = reply_from_text("Thought: the lamp first.\nAction:  Take   Lamp ", ADMISSIBLE)
    assert (r.action, r.thought, r.valid) == ("take lamp", "the lamp first.", True)
    # not in the list: kept (canonicalized) and marked invalid, so eval can count it
    r = reply_from_text("Action: dance", ADMISSIBLE)
    assert (r.action, r.valid) == ("dance", False)
    # no Action line: recorded with its raw text, action None
    r = reply_from_text("I think I would go north eventually", ADMISSIBLE)
    assert r.action is None and r.valid is False and r.text == "I think I would go north eventually"
    # a bare admissible action is unambiguous
    assert reply_from_text("open door\n", ADMISSIBLE).action == "open door"
    # open action space: canonical text, validity unknown
    r = reply_from_text("Action: search[red  shoes]", None)
    assert (r.action, r.valid) == ("search[red shoes]", None)


def test_matching_uses_the_context_envs_canonicalization():
    env = TinyEnv()
    r = reply_from_text("Action: GO NORTH", ADMISSIBLE, context={"env": env})
    assert r.action == "go north" and r.valid
    assert match_admissible("go  north", ["go north"], str.strip) is None  # strip alone keeps inner spaces


# --- loader ---------------------------------------------------------------------------------------------------

def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(str(tmp_path / "missing"))
    with pytest.raises(PolicyError, match="no such GGUF file"):
        load_policy(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="neither a transformers checkpoint"):
        load_policy(str(tmp_path / "empty"))
    with pytest.raises(PolicyError, match="takes no --policy-arg"):
        load_policy("random", {"n_ctx": "10"})
    with pytest.raises(PolicyError, match="unknown --act"):
        load_policy("random", act="guess")


# --- baselines ------------------------------------------------------------------------------------------------

def test_random_is_uniform_and_seeded():
    policy = load_policy("random")
    seeds = [derive_seed(0, "traj#0", k) for k in range(200)]
    replies = policy.sample([], admissible=ADMISSIBLE, seeds=seeds)
    assert all(r.valid and r.action in ADMISSIBLE for r in replies)
    assert [r.seed for r in replies] == seeds
    assert {r.action for r in replies} == set(ADMISSIBLE)  # 200 draws over 4 actions hit every one
    again = policy.sample([], admissible=ADMISSIBLE, seeds=seeds)
    assert [r.action for r in again] == [r.action for r in replies]
    # no list and no environment to ask: a failed reply, not an exception
    r = policy.act([], admissible=None, seed=5)
    assert r.action is None and r.finish_reason.startswith("error:")
    # an open state with an environment that lists actions: uniform over those
    r = policy.act([], admissible=None, seed=5, context={"env": TinyEnv()})
    assert r.action in ADMISSIBLE


def test_oracle_follows_the_expert():
    env, policy = TinyEnv(), load_policy("oracle")
    task = env.tasks("train")[0]
    env.reset(task)
    for step in range(2):
        r = policy.act([], admissible=env.admissible(), seed=0, context={"env": env, "task": task, "step": step})
        assert r.valid
        env.step(r.action)
    assert env.success()
    r = policy.act([], admissible=ADMISSIBLE, seed=0, context={"env": env, "task": task, "step": 2})
    assert r.action is None and "no action at step 2" in r.finish_reason
    assert policy.act([], admissible=ADMISSIBLE, seed=0).finish_reason.startswith("error:")
