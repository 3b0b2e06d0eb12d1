"""The dream environment (issue 53, item 3): `--env dream:MODEL@WORLD`, WORLD's tasks and first observations, every
later observation the world model's prediction to IWM's prompt. A world model that answers the real next page (a stub
server) dreams the real episode, success included, and is asked exactly IWM's prompt; expert | branch | rollout and
eval run in a dream of a tiny checkpoint, every record says it was dreamed, and the same seed gives the same bytes;
a bad name is one line and exit 1; shop reads its own pages' text as it keeps its state."""

from __future__ import annotations

import re

import orjson
import pytest

from eexp.cli import cli
from eexp.envs.base import make_env
from eexp.envs.dream import prompt_key
from eexp.envs.shop import ShopEnv
from eexp.policies.base import derive_seed
from eexp.prompts import WORLD_MODEL_SYSTEM, Serializer
from eexp.records import validate

TASK = "train-00003"
SAMPLED = ["--env-arg", "dream_temperature=1.0", "--env-arg", "dream_max_tokens=8"]  # short, varied predictions


def records(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines()]


def untimed(data: str) -> str:
    """The output with every created_utc blanked: what the same run must reproduce byte for byte."""
    return re.sub(r'"created_utc":"[^"]*"', '"created_utc":""', data)


def real_episode(task_id: str = TASK) -> tuple[dict, list[str], list[str], list]:
    """(task, expert actions, the pages shop shows along them, its admissible lists before each action and at the
    end)."""
    shop = ShopEnv()
    task = shop.task("train", task_id)
    actions = shop.expert(task)
    pages, admissibles = [shop.reset(task)], [shop.admissible()]
    for action in actions:
        pages.append(shop.step(action)[0])
        admissibles.append(shop.admissible())
    return task, actions, pages, admissibles


def iwm_prompts(task: dict, actions: list[str], pages: list[str], admissibles: list) -> dict[str, str]:
    """The user turn of IWM's prompt at each expert step (as world-model-data writes it) -> the real next page."""
    serializer, answers = Serializer(), {}
    for i, action in enumerate(actions):
        state = {
            "goal": task["goal"],
            "observation": pages[i],
            "admissible": admissibles[i],
            "history": [{"observation": o, "action": a} for o, a in zip(pages[:i], actions[:i])],
        }
        answers[serializer.world_model_messages(state, action)[-1]["content"]] = pages[i + 1]
    return answers


def test_the_world_model_s_prediction_is_the_observation(stub, runner):
    task, actions, pages, admissibles = real_episode()
    answers = iwm_prompts(task, actions, pages, admissibles)
    # a perfect world model: the real next page for IWM's prompt of an expert step, a fixed text for anything else
    server = stub(
        free_text=lambda body: "Observation: " + answers.get(body["messages"][-1]["content"], "the shop is closed.")
    )
    env = make_env(f"dream:{server.url}@shop")
    assert env.reset(task) == pages[0] and env.admissible() == admissibles[0]  # WORLD's own first page
    for i, action in enumerate(actions):
        observation, reward, done, info = env.step(action)
        assert observation == pages[i + 1]  # what the model answered, label taken off
        assert env.admissible() == admissibles[i + 1]  # read by shop from the predicted page
        assert info["valid"] and done == (i == len(actions) - 1)
    assert env.success() and env.score() == 1.0 and reward == 1.0  # shop's grading of the predicted purchase
    # one request a step (besides the http backend's probes at start), IWM's prompt seeded from itself, at the
    # dream's default decoding
    asked = [body for body in server.chats if body["messages"][0]["content"] == WORLD_MODEL_SYSTEM]
    assert [body["messages"][-1]["content"] for body in asked] == list(answers)
    for body in asked:
        assert body["seed"] == derive_seed(0, prompt_key(body["messages"]), 0)
        assert body["temperature"] == 0.0 and body["max_tokens"] == 512
    # an answer shop cannot read: the dream shows it as it is; no list, no end, no success claimed
    env.reset(task)
    observation, reward, done, info = env.step("click[nowhere]")
    assert observation == "the shop is closed." and env.admissible() is None
    assert (reward, done, info["valid"], env.success(), env.score()) == (0.0, False, True, False, 0.0)
    env.close()

    # through a stage: the dreamed expert trajectory is the real one, and says it was dreamed
    result = runner.invoke(cli, ["expert", "--env", f"dream:{server.url}@shop", "--task", TASK])
    assert result.exit_code == 0, result.output
    [trajectory] = records(result.stdout)
    assert validate(trajectory, "trajectory") is None
    assert [s["observation"] for s in trajectory["steps"]] + [trajectory["final_observation"]] == pages
    assert trajectory["success"] and trajectory["env"]["name"] == f"dream:{server.url}@shop"
    dream = trajectory["meta"]["dream"]
    assert (dream["world_model"], dream["world"], dream["reads_text"]) == (server.url, "shop", True)


def test_eval_in_a_dream(runner, tiny_checkpoint, tmp_path):
    env = f"dream:{tiny_checkpoint}@shop"
    summary = tmp_path / "summary.json"
    args = [
        "eval",
        "--policy",
        "oracle",
        "--env",
        env,
        "-n",
        "2",
        "--max-steps",
        "3",
        "--env-arg",
        "dream_max_tokens=8",
        "--summary",
        str(summary),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    episodes = records(result.stdout)
    assert len(episodes) == 2
    for episode in episodes:
        assert validate(episode, "episode") is None
        # the tiny model never predicts a purchase page: no end before --max-steps, no success claimed
        assert (episode["steps"], episode["stop_reason"], episode["success"]) == (3, "max_steps", False)
        assert episode["observations"][0] == "search page. type a query with search[...]"
        assert episode["meta"]["dream"]["world_model"] == str(tiny_checkpoint)
        assert episode["meta"]["env"] == env
    assert orjson.loads(summary.read_bytes())["env"] == env
    assert untimed(runner.invoke(cli, args).stdout) == untimed(result.stdout)


def test_expert_branch_rollout_in_a_dream(runner, tiny_checkpoint, tmp_path):
    env = f"dream:{tiny_checkpoint}@shop"
    stats = tmp_path / "rollout.json"

    def pipeline() -> tuple[str, str, str]:
        expert = runner.invoke(cli, ["expert", "--env", env, "--task", TASK, *SAMPLED])
        assert expert.exit_code == 0, expert.output
        branches = runner.invoke(cli, ["branch", "-k", "2", "--max-steps-per-trajectory", "2"], input=expert.stdout)
        assert branches.exit_code == 0, branches.output
        outcomes = runner.invoke(cli, ["rollout", "--stats", str(stats)], input=branches.stdout)
        assert outcomes.exit_code == 0, outcomes.output
        return expert.stdout, branches.stdout, outcomes.stdout

    first = pipeline()
    counts = orjson.loads(stats.read_bytes())
    assert counts["errors"] == counts["state_mismatches"] == 0 and counts["env_steps"] > 2
    [trajectory] = records(first[0])
    _, _, pages, _ = real_episode()
    observations = [s["observation"] for s in trajectory["steps"]]
    assert observations[0] == pages[0]  # WORLD's first page
    assert all(o and o not in pages for o in observations[1:])  # then the tiny model's (sampled) text
    outcomes = records(first[2])
    assert len(outcomes) == 2 and all("error" not in o for o in outcomes)  # every dreamed state reached again
    for record in [trajectory, *records(first[1]), *outcomes]:
        dream = record["meta"]["dream"]
        assert dream["world_model"] == str(tiny_checkpoint) and dream["world"] == "shop"
        assert dream["model_sha256"] and dream["temperature"] == 1.0
    assert all(o["env"]["name"] == env for o in outcomes)
    assert [untimed(x) for x in pipeline()] == [untimed(x) for x in first]  # same seed, same bytes


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "dream:out/iwm",
            "dream:out/iwm: no WORLD: name the world model and the environment it dreams as dream:MODEL@WORLD",
        ),
        ("dream:@shop", "dream:@shop: no MODEL"),
        ("dream:out/iwm@nowhere", "dream:out/iwm@nowhere: WORLD: unknown environment 'nowhere' (known: "),
        (
            "dream:no/such/model@shop",
            "dream:no/such/model@shop: the world model 'no/such/model': no such file or directory",
        ),
        ("dream:random@shop", "dream:random@shop: the world model 'random' writes no text"),
        ("dream", "dream: name the world model and the environment it dreams as dream:MODEL@WORLD"),
    ],
)
def test_a_bad_dream_is_one_line_and_exit_1(runner, name, message):
    result = runner.invoke(cli, ["expert", "--env", name, "-n", "1"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.output.startswith("Error: " + message) and result.output.count("\n") == 1, result.output


def test_bad_dream_options_and_the_help(runner, tiny_checkpoint):
    result = runner.invoke(
        cli,
        [
            "eval",
            "--policy",
            "oracle",
            "--env",
            f"dream:{tiny_checkpoint}@shop",
            "-n",
            "1",
            "--env-arg",
            "dream_temperature=hot",
        ],
    )
    assert result.exit_code == 1 and "dream_temperature must be a number from 0, not 'hot'" in result.output
    result = runner.invoke(cli, ["expert", "--env", f"dream:{tiny_checkpoint}@shop", "-n", "1", "--env-arg", "size=3"])
    assert result.exit_code == 1 and "shop: unknown options size" in result.output  # WORLD's options are WORLD's
    result = runner.invoke(cli, ["envs", "dream"])
    assert result.exit_code == 0 and "success: WORLD's own check applied to the predicted text" in result.output
    assert re.search(r"^dream:MODEL@WORLD\s+1\s+yes\s+WORLD's$", runner.invoke(cli, ["envs"]).output, re.M)


def test_shop_reads_its_own_pages():
    """What shop reads from its pages' text (read_text) is what its own state says, along expert paths and refusals."""
    shop = ShopEnv()
    for task_id in ("train-00000", "train-00003", "train-00011", "test-00004"):
        task = shop.task(task_id.split("-")[0], task_id)
        pages = [shop.reset(task)]
        for action in ["click[next >]", *shop.expert(task)]:  # a refusal first: the search page has no buttons
            page, reward, done, info = shop.step(action)
            pages.append(page)
            read = shop.read_text(task, pages)
            assert read.get("admissible") == shop.admissible() and read.get("done", False) == done
            assert read["valid"] == info["valid"]
        assert read["success"] and read["score"] == shop.score() == 1.0
    # bought with the wrong size: graded from the item page's `selected:` line, as shop grades it
    task = shop.task("train", TASK)
    actions = shop.expert(task)
    pages = [shop.reset(task)] + [shop.step(a)[0] for a in actions[:-2] + actions[-1:]]
    assert shop.read_text(task, pages)["score"] == shop.score() < 1.0
