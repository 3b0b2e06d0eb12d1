"""The SkyRL adapter against skyrl-gym's own BaseTextEnv: an oracle episode of shop reaches reward 1, an invalid
reply is the environment's error and no reward, the turn limit ends an episode, prompts are eexp's."""

from __future__ import annotations

import pytest

skyrl_gym = pytest.importorskip(
    "skyrl_gym", reason="skyrl-gym is in the dev extra: ./install.sh --dev, or pip install 'skyrl-gym>=0.4.0,<0.5'"
)

from skyrl_gym.envs.base_text_env import BaseTextEnv  # noqa: E402

from eexp.envs.base import make_env  # noqa: E402
from eexp.errors import EnvError  # noqa: E402
from eexp.integrations.skyrl import EexpTextEnv, dataset_rows, main, register  # noqa: E402
from eexp.prompts import Serializer, format_action  # noqa: E402

SERIALIZER = {"history": 0, "show_admissible": False}


@pytest.fixture(scope="module")
def rows():
    return dataset_rows("shop", "train", 3, serializer=SERIALIZER)


def made(row, **extra):
    """The environment as SkyRL makes it: skyrl_gym.make with the row's fields as extras."""
    register()
    extras = {k: v for k, v in row.items() if k not in ("prompt", "env_class")}
    extras["extra_info"] = {**extras["extra_info"], **extra}
    return skyrl_gym.make(row["env_class"], env_config={}, extras=extras)


def test_rows_carry_eexps_own_first_prompt(rows):
    shop = make_env("shop")
    task = shop.tasks("train")[0]
    state = {"goal": task["goal"], "observation": shop.reset(task), "history": [], "admissible": shop.admissible()}
    assert rows[0]["prompt"] == Serializer.from_dict(SERIALIZER).policy_messages(state)
    assert rows[0]["env_class"] == "eexp" and rows[0]["extra_info"]["task_id"] == task["id"]


def test_oracle_episode_reaches_reward_one(rows):
    env = made(rows[1])
    assert isinstance(env, BaseTextEnv) and isinstance(env, EexpTextEnv)
    prompt, info = env.init(rows[1]["prompt"])
    assert prompt == rows[1]["prompt"] and info["task_id"] == rows[1]["extra_info"]["task_id"]
    expert = make_env("shop").expert(env.task)
    for i, action in enumerate(expert):
        out = env.step(format_action(action, thought="the oracle knows") if i == 0 else format_action(action))
        assert out["metadata"]["valid"] and out["postprocessed_action"] == action
        if i < len(expert) - 1:
            assert out["reward"] == 0.0 and not out["done"]
            assert out["observations"][0]["role"] == "user"
            assert out["observations"][0]["content"].startswith("Task: ")  # the next state, rendered by eexp
    assert out["done"] and out["reward"] == 1.0 and out["observations"] == []
    assert env.get_metrics() == {"success": 1.0, "score": 1.0, "steps": len(expert), "invalid_actions": 0}


def test_invalid_reply_gets_the_environments_error_and_no_reward(rows):
    env = made(rows[0], reward="score")
    env.init(rows[0]["prompt"])
    out = env.step("I would like to look around first")  # no Action: line
    assert out["reward"] == 0.0 and not out["done"] and out["metadata"]["valid"] is False
    assert "invalid action" in out["observations"][0]["content"]
    out = env.step("Action: click[buy now]")  # parsed, but not on the search page
    assert out["metadata"]["valid"] is False and out["reward"] == 0.0
    assert env.get_metrics()["invalid_actions"] == 2


def test_turn_limit_ends_the_episode_with_the_reward_at_the_end(rows):
    env = made(rows[2], max_turns=2, reward="success+score")
    env.init(rows[2]["prompt"])
    expert = make_env("shop").expert(env.task)
    assert not env.step(format_action(expert[0]))["done"]
    out = env.step(format_action(expert[1]))
    assert out["done"] and out["reward"] == 0.0  # nothing bought within two turns


def test_the_base_class_is_skyrl_gyms_own():
    """The adapter subclasses the class of the skyrl-gym distribution installed from PyPI (the dev extra's range),
    not a stand-in."""
    from importlib.metadata import version

    assert version("skyrl-gym").startswith("0.4.")
    assert BaseTextEnv in EexpTextEnv.__mro__ and BaseTextEnv.__module__ == "skyrl_gym.envs.base_text_env"
    assert skyrl_gym.__file__.endswith("skyrl_gym/__init__.py")


def test_rows_without_the_task_are_an_error():
    with pytest.raises(EnvError, match="no 'task_id'"):
        EexpTextEnv(extras={"extra_info": {"env": "shop"}})


def test_dataset_file(tmp_path):
    out = tmp_path / "train.jsonl"
    assert main(["--env", "shop", "-n", "2", "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
