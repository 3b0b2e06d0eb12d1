"""`alfworld`: ALFWorld through the real `alfworld` package (eexp/envs/alfworld_env.py), on games written offline.

The release's games come from `alfworld-download`, which needs the internet; tests/alfworld_games.py writes small
ALFRED-style games (six task types, rooms from the layouts the package ships) in the layout it produces, once per test
session, so the real loading code runs on them. Skipped, with the reason, where alfworld or fast-downward is missing
(pip install 'eexp[alfworld]'; CI installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import orjson
import pytest

from eexp.cli import cli
from eexp.io import read_records


def _missing() -> str | None:
    for module in ("alfworld", "fast_downward", "textworld"):
        if importlib.util.find_spec(module) is None:
            return (f"{module} is not installed: pip install 'eexp[alfworld]' "
                    "(alfworld==0.4.2 'textworld[pddl]', fast-downward builds from source)")
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no ALFWorld: {MISSING}")


@pytest.fixture(scope="session")
def alfworld_data(tmp_path_factory):
    """The test games, written once per session: ALFWORLD_DATA for the whole module."""
    from alfworld_games import write_games
    root = tmp_path_factory.mktemp("alfworld-data")
    write_games(root)
    return root


@pytest.fixture(autouse=True)
def _data(alfworld_data, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(alfworld_data))


def run_cli(runner, args, input=None):
    result = runner.invoke(cli, args, input=input)
    assert result.exit_code == 0, result.output + str(result.exception)
    return result


@pytest.fixture(scope="module")
def expert_file(alfworld_data, tmp_path_factory):
    """Expert trajectories of every train game, made in a process of its own (another hash seed than the tests')."""
    path = tmp_path_factory.mktemp("alfworld-expert") / "expert.jsonl"
    env = {**os.environ, "ALFWORLD_DATA": str(alfworld_data), "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-m", "eexp", "expert", "--env", "alfworld", "-q", "-o", str(path)],
                         env=env, capture_output=True, text=True, cwd=path.parent, timeout=600)
    assert out.returncode == 0, out.stderr
    return path


def test_tasks_splits_and_goals(alfworld_data):
    from eexp.envs.alfworld_env import TASK_TYPES, AlfWorldEnv
    env = AlfWorldEnv()
    train, test, ood = env.tasks("train"), env.tasks("test"), env.tasks("ood")
    assert (len(train), len(test), len(ood)) == (6, 2, 2)
    assert {t["category"] for t in train} == set(TASK_TYPES)
    assert {t["id"] for t in train}.isdisjoint({t["id"] for t in test} | {t["id"] for t in ood})
    task = next(t for t in train if t["category"] == "pick_two_obj_and_place")
    assert task["id"].startswith("pick_two_obj_and_place-SoapBar-None-GarbageCan-401/trial_T")
    assert task["goal"] in ("put two soapbar in garbagecan", "find two soapbar and put them in garbagecan")
    first = env.reset(task)
    assert first.startswith("You are in the middle of a room.") and f"Your task is to: {task['goal']}." in first
    assert "garbagecan 1" in first and "go to garbagecan 1" in env.admissible()
    observation, reward, done, info = env.step("fly away")
    assert (observation, reward, done, info) == ("Nothing happens.", 0.0, False, {"valid": False})
    assert env.task("ood", ood[0]["id"]) == ood[0]
    env.close()


def test_expert_all_succeed_and_walkthrough_is_the_gold_one(runner, expert_file, alfworld_data):
    from eexp.envs.alfworld_env import AlfWorldEnv
    trajectories = list(read_records([expert_file]))
    assert len(trajectories) == 6 and all(t["success"] for t in trajectories)
    assert {t["task"]["category"] for t in trajectories} == {t["category"] for t in AlfWorldEnv().tasks("train")}
    env = AlfWorldEnv()
    for t in trajectories:   # the expert is the game file's walkthrough (the hand-coded expert's or planner's run)
        game = json.loads((alfworld_data / "json_2.1.1" / "train" / t["task"]["id"] / "game.tw-pddl").read_text())
        assert [s["action"] for s in t["steps"]] == game["walkthrough"] == env.expert(t["task"])
        assert all(s["action"] in s["admissible"] for s in t["steps"])
    # a hand-coded walkthrough explores; the planner goes straight there
    task = next(t["task"] for t in trajectories if t["task"]["category"] == "pick_cool_then_place_in_recep")
    planner = AlfWorldEnv(expert="planner")
    plan = planner.expert(task)
    assert plan != env.expert(task) and len(plan) <= len(env.expert(task))
    planner.reset(task)
    for action in plan:
        planner.step(action)
    assert planner.success()
    planner.close()


def test_a_game_without_walkthrough_gets_the_planners_plan(runner, tmp_path):
    path = tmp_path / "test.jsonl"
    run_cli(runner, ["expert", "--env", "alfworld", "--split", "test", "-q", "-o", str(path)])
    trajectories = list(read_records([path]))
    assert len(trajectories) == 2 and all(t["success"] for t in trajectories)


def test_branch_k3_every_state_rollout_no_mismatch(runner, expert_file, tmp_path):
    branches, outcomes, stats = tmp_path / "br.jsonl", tmp_path / "out.jsonl", tmp_path / "stats.json"
    run_cli(runner, ["branch", "--propose", "admissible", "-k", "3", "--seed", "1", str(expert_file), "-o",
                     str(branches)])
    trajectories = list(read_records([expert_file]))
    records = list(read_records([branches]))
    assert len(records) == sum(len(t["steps"]) for t in trajectories)
    assert all(len(r["alternatives"]) == 3 for r in records)    # every ALFWorld state has > 3 other actions
    run_cli(runner, ["rollout", str(branches), "-o", str(outcomes), "--stats", str(stats)])
    done = list(read_records([outcomes]))
    assert [o["id"] for o in done] == [r["id"] for r in records]
    assert all("error" not in o and "error" not in a for o in done for a in o["alternatives"])
    st = orjson.loads(stats.read_bytes())
    assert st["state_mismatches"] == 0 and st["errors"] == 0
    assert st["env_steps"] == 3 * len(records) + len(records)     # snapshots: K + 1 steps a state, no replay
    # every alternative was executed for real: its next observation is the engine's
    assert all(a["valid"] and a["next_observation"] != "Nothing happens." for o in done for a in o["alternatives"])
    assert any(a["next_observation"].startswith("You arrive at") for o in done for a in o["alternatives"])
    run_cli(runner, ["world-model-data", str(outcomes), "-o", str(tmp_path / "iwm.jsonl")])
    assert len(list(read_records([tmp_path / "iwm.jsonl"]))) >= 3 * len(records)


def test_state_check_catches_a_drift(runner, expert_file, tmp_path):
    branches, outcomes, stats = tmp_path / "br.jsonl", tmp_path / "out.jsonl", tmp_path / "stats.json"
    run_cli(runner, ["branch", "--propose", "admissible", "-k", "1", str(expert_file), "-o", str(branches)])
    records = list(read_records([branches]))
    records = [r for r in records if r["trajectory_id"] == records[0]["trajectory_id"]]   # one trajectory
    assert len(records) > 4
    records[3]["state"]["observation"] = "You arrive at fridge 1. The fridge 1 is closed."   # another state
    branches.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    run_cli(runner, ["rollout", str(branches), "-o", str(outcomes), "--stats", str(stats), "--on-error", "skip"])
    assert orjson.loads(stats.read_bytes())["state_mismatches"] == 1
    wrong = next(o for o in read_records([outcomes]) if o["id"] == records[3]["id"])
    assert "state mismatch" in (wrong.get("error") or wrong["alternatives"][0].get("error", ""))


@pytest.mark.parametrize("split", ["test", "ood"])
def test_eval_random_and_oracle(runner, tmp_path, split):
    for policy in ("random", "oracle"):
        summary = tmp_path / f"{policy}.json"
        run_cli(runner, ["eval", "--env", "alfworld", "--split", split, "--policy", policy, "--max-steps", "20",
                         "--summary", str(summary), "-q", "-o", str(tmp_path / f"{policy}.jsonl")])
        result = orjson.loads(summary.read_bytes())
        assert result["n"] == 2
        if policy == "oracle":
            assert result["success_rate"] == 1.0
        else:
            assert 0.0 <= result["success_rate"] <= 1.0


def test_envs_check_passes(runner):
    result = runner.invoke(cli, ["envs", "--check", "alfworld", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "snapshot/restore equals replay: admissible" in result.output
    listed = run_cli(runner, ["envs"]).output
    assert "alfworld" in listed


def test_missing_data_is_one_line_naming_alfworld_download(tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "nothing-here"))
    out = subprocess.run([sys.executable, "-m", "eexp", "expert", "--env", "alfworld", "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: alfworld: no ALFWorld games in ")
    assert "alfworld-download" in lines[0] and "ALFWORLD_DATA" in lines[0]
    assert not (tmp_path / "nothing-here").exists()   # nothing made on the way (alfworld's import would)


def test_snapshot_of_another_engine_is_replayed_and_faults_close_the_game(monkeypatch):
    from eexp.envs.alfworld_env import AlfWorldEnv
    from eexp.envs.base import EnvError
    env = AlfWorldEnv()
    first, second = env.tasks("test")
    plan = env.expert(first)
    env.reset(first)
    for action in plan[:3]:
        env.step(action)
    snap, here = env.snapshot(), env.admissible()
    after = env.step(plan[3])[0]
    env.reset(second)                      # another game: another engine, whose registry knows no such state
    env.restore(snap)
    assert env.admissible() == here and env.step(plan[3])[0] == after
    env.restore(snap)                      # the same engine again: restored, reusable
    assert env.step(plan[3])[0] == after

    def boom(command):
        raise RuntimeError("boom")
    monkeypatch.setattr(env._engine.env, "step", boom)
    with pytest.raises(EnvError, match="engine failed during step"):
        env.step("look")
    with pytest.raises(EnvError, match="call reset"):
        env.step("look")
    assert env.reset(first).startswith("You are in the middle of a room.")
    env.close()
    env.close()


def test_memoized_engine_calls_give_what_the_engine_gives(monkeypatch):
    """_engine_calls memoizes the PDDL translation and TextWorld's grammar parsing: the same texts, in order."""
    import random
    from eexp.envs.alfworld_env import AlfWorldEnv, _engine_calls

    def play():
        env, seen = AlfWorldEnv(), []
        for task in env.tasks("ood"):
            rng = random.Random(task["id"])
            seen += [env.reset(task), env.admissible()]
            for action in env.expert(task)[:-1] + [rng.choice(env.admissible()) for _ in range(4)] + ["bogus"]:
                seen += [env.step(action), env.admissible()]
        env.close()
        return seen

    memoized = play()
    monkeypatch.setattr(_engine_calls, "depth", 1)    # as if nested: the originals stay in place
    assert play() == memoized
