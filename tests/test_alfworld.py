"""`alfworld`: ALFWorld through the real `alfworld` package (eexp/envs/alfworld_env.py), on games written offline.

The release's games come from `alfworld-download`, which needs the internet; tests/alfworld_games.py writes small
ALFRED-style games (six task types, rooms from the layouts the package ships) in the layout it produces, once per test
session, so the real loading code runs on them. The last tests generate a small data set with `eexp alfworld-games`
(eexp/envs/alfworld_gen.py: full rooms, ALFWorld's splits) and check it: same seed, same bytes; the splits' rooms and
task types; every walkthrough winning through --env alfworld; `envs --check`; the recipe's GAMES switch. Skipped, with
the reason, where alfworld or fast-downward is missing (pip install 'eexp[alfworld]'; CI installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from eexp.cli import cli
from eexp.io import read_records


def _missing() -> str | None:
    for module in ("alfworld", "fast_downward", "textworld"):
        if importlib.util.find_spec(module) is None:
            return (
                f"{module} is not installed: pip install 'eexp[alfworld]' "
                "(alfworld==0.4.2 'textworld[pddl]', fast-downward builds from source)"
            )
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
    out = subprocess.run(
        [sys.executable, "-m", "eexp", "expert", "--env", "alfworld", "-q", "-o", str(path)],
        env=env,
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=600,
    )
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
    for t in trajectories:  # the expert is the game file's walkthrough (the hand-coded expert's or planner's run)
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
    run_cli(
        runner, ["branch", "--propose", "admissible", "-k", "3", "--seed", "1", str(expert_file), "-o", str(branches)]
    )
    trajectories = list(read_records([expert_file]))
    records = list(read_records([branches]))
    assert len(records) == sum(len(t["steps"]) for t in trajectories)
    assert all(len(r["alternatives"]) == 3 for r in records)  # every ALFWorld state has > 3 other actions
    run_cli(runner, ["rollout", str(branches), "-o", str(outcomes), "--stats", str(stats)])
    done = list(read_records([outcomes]))
    assert [o["id"] for o in done] == [r["id"] for r in records]
    assert all("error" not in o and "error" not in a for o in done for a in o["alternatives"])
    st = orjson.loads(stats.read_bytes())
    assert st["state_mismatches"] == 0 and st["errors"] == 0
    assert st["env_steps"] == 3 * len(records) + len(records)  # snapshots: K + 1 steps a state, no replay
    # every alternative was executed for real: its next observation is the engine's
    assert all(a["valid"] and a["next_observation"] != "Nothing happens." for o in done for a in o["alternatives"])
    assert any(a["next_observation"].startswith("You arrive at") for o in done for a in o["alternatives"])
    run_cli(runner, ["world-model-data", str(outcomes), "-o", str(tmp_path / "iwm.jsonl")])
    assert len(list(read_records([tmp_path / "iwm.jsonl"]))) >= 3 * len(records)


def test_rollout_from_snapshots_writes_the_records_a_replay_writes(runner, expert_file, tmp_path, monkeypatch):
    """Rollout restores a state from its snapshot and writes the admissible list of only the states it is asked for
    (alternatives are stepped and left). Its outcome records are the ones today's replay writes: each execution a
    reset of the game and a replay of its prefix in an engine that writes every list (TextWorld's own
    _gather_infos), on these games the generator wrote."""
    from eexp.envs import alfworld_env
    from eexp.envs.alfworld_env import AlfWorldEnv
    from eexp.stages.rollout import EnvPool, rollout_group

    branches, outcomes, stats = tmp_path / "br.jsonl", tmp_path / "out.jsonl", tmp_path / "stats.json"
    run_cli(
        runner, ["branch", "--propose", "admissible", "-k", "3", "--seed", "2", str(expert_file), "-o", str(branches)]
    )
    records = list(read_records([branches]))
    written = []
    admissible = alfworld_env._admissible

    def counted(pddl):
        written.append("admissible_commands" not in pddl.state)
        return admissible(pddl)

    monkeypatch.setattr(alfworld_env, "_admissible", counted)
    run_cli(runner, ["rollout", str(branches), "-o", str(outcomes), "--stats", str(stats)])
    restored = list(read_records([outcomes]))
    st = orjson.loads(stats.read_bytes())
    assert st["env_steps"] == 4 * len(records) and st["state_mismatches"] == 0 and st["errors"] == 0
    assert sum(written) == len(records)  # one list a state (its snapshot's), none for the 4 states it steps to
    monkeypatch.setattr(alfworld_env, "_admissible", admissible)

    class Replayed(AlfWorldEnv):
        can_snapshot = False

    monkeypatch.setattr(alfworld_env, "_gather_infos_lazily", lambda pddl: type(pddl)._gather_infos(pddl))
    pool = EnvPool(lambda name, **kwargs: Replayed(**kwargs))
    replayed, counts = rollout_group(records, pool)
    pool.close()
    assert counts.get("state_mismatches", 0) == 0 and counts.get("errors", 0) == 0
    assert counts["env_steps"] > 4 * len(records)  # the resets' replays
    assert not any(r["meta"]["snapshots"] for r in replayed) and all(r["meta"]["snapshots"] for r in restored)
    assert len(restored) == len(replayed) == len(records)
    for a, b in zip(restored, replayed):  # every outcome record, the same but for how the state was reached
        assert {k: v for k, v in a.items() if k != "meta"} == {k: v for k, v in b.items() if k != "meta"}


def test_state_check_catches_a_drift(runner, expert_file, tmp_path):
    branches, outcomes, stats = tmp_path / "br.jsonl", tmp_path / "out.jsonl", tmp_path / "stats.json"
    run_cli(runner, ["branch", "--propose", "admissible", "-k", "1", str(expert_file), "-o", str(branches)])
    records = list(read_records([branches]))
    records = [r for r in records if r["trajectory_id"] == records[0]["trajectory_id"]]  # one trajectory
    assert len(records) > 4
    records[3]["state"]["observation"] = "You arrive at fridge 1. The fridge 1 is closed."  # another state
    branches.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    # the drifted record fails; 1 of 5 is more than the 5% a run may lose, so rollout exits 1 after writing everything
    result = runner.invoke(
        cli, ["rollout", str(branches), "-o", str(outcomes), "--stats", str(stats), "--on-error", "skip"]
    )
    assert result.exit_code == 1 and f"1 of {len(records)} outcome records" in result.output, result.output
    assert orjson.loads(stats.read_bytes())["state_mismatches"] == 1
    wrong = next(o for o in read_records([outcomes]) if o["id"] == records[3]["id"])
    assert "state mismatch" in (wrong.get("error") or wrong["alternatives"][0].get("error", ""))


@pytest.mark.parametrize("split", ["test", "ood"])
def test_eval_random_and_oracle(runner, tmp_path, split):
    for policy in ("random", "oracle"):
        summary = tmp_path / f"{policy}.json"
        run_cli(
            runner,
            [
                "eval",
                "--env",
                "alfworld",
                "--split",
                split,
                "--policy",
                policy,
                "--max-steps",
                "20",
                "--summary",
                str(summary),
                "-q",
                "-o",
                str(tmp_path / f"{policy}.jsonl"),
            ],
        )
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


def test_a_task_id_names_a_game_of_its_split_only(tmp_path, monkeypatch):
    """A record's task id is a folder of its split's: an absolute id (or one with `..`) would name a file elsewhere."""
    from eexp.envs.alfworld_env import AlfWorldEnv, split_folder
    from eexp.errors import EnvError

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "data"))
    inside, outside = split_folder("train") / "game-1", tmp_path / "elsewhere"
    for folder in (inside, outside):
        folder.mkdir(parents=True)
        (folder / "game.tw-pddl").write_text("{}")
    env = AlfWorldEnv()
    assert env._game_file({"split": "train", "id": "game-1"}) == inside / "game.tw-pddl"
    for task_id in (str(outside), "../../../elsewhere"):
        with pytest.raises(EnvError, match="no game"):
            env._game_file({"split": "train", "id": task_id})


def test_missing_data_is_one_line_naming_alfworld_download(tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "nothing-here"))
    out = subprocess.run(
        [sys.executable, "-m", "eexp", "expert", "--env", "alfworld", "-o", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: alfworld: no ALFWorld games in ")
    assert "alfworld-download" in lines[0] and "ALFWORLD_DATA" in lines[0]
    assert not (tmp_path / "nothing-here").exists()  # nothing made on the way (alfworld's import would)


def test_snapshot_of_another_engine_is_replayed_and_faults_close_the_game(monkeypatch):
    from eexp.envs.alfworld_env import AlfWorldEnv
    from eexp.errors import EnvError

    env = AlfWorldEnv()
    first, second = env.tasks("test")
    plan = env.expert(first)
    env.reset(first)
    for action in plan[:3]:
        env.step(action)
    snap, here = env.snapshot(), env.admissible()
    after = env.step(plan[3])[0]
    env.reset(second)  # another game: another engine, whose registry knows no such state
    env.restore(snap)
    assert env.admissible() == here and env.step(plan[3])[0] == after
    env.restore(snap)  # the same engine again: restored, reusable
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
    """_engine_calls memoizes the PDDL translation and TextWorld's parsing of grammar snippets and rules'
    conditions, and copies the grammar's contexts without deepcopy; the admissible lists are written only when asked:
    the same texts and lists, in order, as TextWorld's own code gives."""
    import random

    from eexp.envs import alfworld_env
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
    monkeypatch.setattr(_engine_calls, "depth", 1)  # as if nested: the originals stay in place
    assert play() == memoized
    # and the admissible lists written only when asked are the ones TextWorld writes at every step
    monkeypatch.setattr(alfworld_env, "_gather_infos_lazily", lambda pddl: type(pddl)._gather_infos(pddl))
    assert play() == memoized


def test_a_games_translation_is_kept_on_disk_and_played_the_same_from_there(monkeypatch, tmp_path):
    """Each game's two PDDL translations are kept in $EEXP_CACHE/alfworld/sas/ (its SAS text); a process that loads
    the game again reads them, runs no translation, and plays the same texts and lists; the task it parses is the one
    the translation returns; a torn file is translated again and written anew."""
    import contextlib
    import io
    import random

    import fast_downward

    from eexp.envs import alfworld_env
    from eexp.envs.alfworld_env import AlfWorldEnv

    monkeypatch.setenv("EEXP_CACHE", str(tmp_path))
    monkeypatch.setattr(fast_downward, "pddl2sas", fast_downward.pddl2sas)  # put back whatever the calls leave

    def play():
        alfworld_env._translate_once.cache_clear()  # as in a new process
        env, seen = AlfWorldEnv(), []
        for task in env.tasks("ood"):
            rng = random.Random(task["id"])
            seen += [env.reset(task), env.admissible()]
            for action in env.expert(task)[:2] + [rng.choice(env.admissible()) for _ in range(3)]:
                seen += [env.step(action), env.admissible()]
        env.close()
        return seen

    translated = play()
    kept = sorted((tmp_path / "alfworld" / "sas").rglob("*.sas.z"))
    games = len(AlfWorldEnv().tasks("ood"))
    assert len(kept) == 2 * games  # the full translation and the planner's optimized one
    real, calls = alfworld_env._ORIGINAL["pddl2sas"], []
    monkeypatch.setitem(alfworld_env._ORIGINAL, "pddl2sas", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert play() == translated and calls == []
    kept[0].write_bytes(b"torn")
    assert play() == translated and len(calls) == 1
    assert kept[0].read_bytes() != b"torn"

    def dumped(task) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            task.dump()
        return out.getvalue()

    domain, problem = calls[0][:2]
    with alfworld_env._engine_calls():
        alfworld_env._translate_once.cache_clear()
        read_back = alfworld_env._translate_once(domain, problem)  # from the disk
        alfworld_env._translate_once.cache_clear()
        monkeypatch.setattr(alfworld_env, "cache_root", lambda: tmp_path / "elsewhere")
        fresh = alfworld_env._translate_once(domain, problem)  # translated
    assert calls[-1][:2] == (domain, problem) and read_back[1] == fresh[1]
    assert dumped(read_back[0]) == dumped(fresh[0])


# --- generated games (eexp alfworld-games, eexp/envs/alfworld_gen.py) ------------------------------------------------
SMALL = {"train": 6, "valid_seen": 2, "valid_unseen": 2}


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _games(root, split):
    """(task folder, trial folder) of each game of a split; the folder names <type>-<object>-None-<recep>-<scene>."""
    return sorted(p.parent for p in (root / "json_2.1.1" / split).glob("*/*/game.tw-pddl"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A small generated data set, written by the command as a user runs it (one process)."""
    root = tmp_path_factory.mktemp("generated") / "games"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "eexp",
            "alfworld-games",
            str(root),
            "--train",
            "6",
            "--valid-seen",
            "2",
            "--valid-unseen",
            "2",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr
    assert "alfworld-games: wrote 6 train, 2 valid_seen, 2 valid_unseen games" in out.stderr
    return root


def test_generated_games_same_seed_same_bytes_whatever_the_jobs(generated, tmp_path):
    """A game depends on the seed, its split, task type and number alone: valid_unseen made again on its own, in 2
    worker processes instead of 1, is the same files byte for byte (the other splits are left out to save time)."""
    from eexp.envs.alfworld_gen import generate

    again = tmp_path / "again"
    summary = generate(again, {"train": 0, "valid_seen": 0, "valid_unseen": 2}, seed=3, jobs=2)
    unseen = "json_2.1.1/valid_unseen/"
    made = {name: data for name, data in _tree(generated).items() if name.startswith(unseen)}
    assert len(made) >= 2 * 3 and _tree(again / "json_2.1.1" / "valid_unseen") == {
        name.removeprefix(unseen): data for name, data in made.items()
    }
    assert summary["splits"]["valid_unseen"]["games"] == 2 and summary["seed"] == 3


def test_generated_splits_follow_alfworld(generated):
    from eexp.envs.alfworld_gen import RELEASED, TASK_TYPES, UNSEEN_ROOMS, allocate

    summary = json.loads((generated / "eexp-games.json").read_text())
    instances = {}
    for split in ("train", "valid_seen", "valid_unseen"):
        games = _games(generated, split)
        assert len(games) == SMALL[split] == summary["splits"][split]["games"]
        instances[split] = {g.parent.name for g in games}  # <type>-<object>-None-<receptacle>-<scene>
        kinds = [json.loads((g / "traj_data.json").read_text())["task_type"] for g in games]
        assert (
            {t: kinds.count(t) for t in TASK_TYPES}
            == allocate(SMALL[split], RELEASED[split])
            == summary["splits"][split]["task_types"]
        )
        for g in games:
            game = json.loads((g / "game.tw-pddl").read_text())
            traj = json.loads((g / "traj_data.json").read_text())
            assert game["solvable"] is True and game["walkthrough"]
            assert traj["eexp"]["walkthrough"] in ("handcoded", "planner") and traj["scene"]["scene_num"] == int(
                g.parent.name.rsplit("-", 1)[1]
            )
    rooms = {split: {int(name.rsplit("-", 1)[1]) for name in names} for split, names in instances.items()}
    assert rooms["valid_unseen"] <= set(UNSEEN_ROOMS) and rooms["train"].isdisjoint(rooms["valid_unseen"])
    assert instances["valid_seen"] <= instances["train"]  # seen: train's task instances, objects placed anew
    assert all(summary["splits"][s]["rooms"] == sorted(rooms[s]) for s in rooms)
    for name in instances["valid_seen"]:
        seen = [g for g in _games(generated, "valid_seen") if g.parent.name == name]
        trained = [g for g in _games(generated, "train") if g.parent.name == name]
        assert all(
            (s / "initial_state.pddl").read_bytes() != (t / "initial_state.pddl").read_bytes()
            for s in seen
            for t in trained
        )
    # at the release's sizes, the release's counts; at the default CPU scale, the same proportions
    assert all(allocate(sum(c.values()), c) == c for c in RELEASED.values())
    assert allocate(600, RELEASED["train"]) == {
        "pick_and_place_simple": 133,
        "look_at_obj_in_light": 52,
        "pick_clean_then_place_in_recep": 110,
        "pick_heat_then_place_in_recep": 78,
        "pick_cool_then_place_in_recep": 90,
        "pick_two_obj_and_place": 137,
    }


def test_generated_games_serve_env_alfworld(generated, monkeypatch, tmp_path, runner):
    """ALFWORLD_DATA=OUT_DIR: the walkthroughs of the evaluation splits' games win through eexp's own ALFWorld
    environment (the generator replayed every game's to a win in the engine before writing it), and the environment
    contract's check passes on them."""
    monkeypatch.setenv("ALFWORLD_DATA", str(generated))
    for split in ("test", "ood"):  # no step timeout: a full room's first load takes seconds on busy cores
        path = tmp_path / f"{split}.jsonl"
        run_cli(runner, ["expert", "--env", "alfworld", "--split", split, "--step-timeout", "0", "-q", "-o", str(path)])
        trajectories = list(read_records([path]))
        assert len(trajectories) == 2
        assert all(t["success"] for t in trajectories)
        assert all(s["action"] in s["admissible"] for t in trajectories for s in t["steps"])
    result = runner.invoke(cli, ["envs", "--check", "alfworld", "-n", "1", "--split", "ood", "--step-timeout", "0"])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "snapshot/restore equals replay: admissible" in result.output


def test_generated_games_bad_input_is_one_line(runner, tmp_path):
    there = tmp_path / "there"
    (there / "json_2.1.1" / "train").mkdir(parents=True)
    result = runner.invoke(cli, ["alfworld-games", str(there)])  # never over games already there
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {there / 'json_2.1.1'}: already exists (alfworld-games "
        "writes a new data folder; remove it or choose another OUT_DIR)"
    ]
    assert sorted(p.name for p in there.iterdir()) == ["json_2.1.1"]
    result = runner.invoke(
        cli, ["alfworld-games", str(tmp_path / "x"), "--train", "0", "--valid-seen", "0", "--valid-unseen", "0"]
    )
    assert result.exit_code == 2 and "nothing to generate: --train, --valid-seen and --valid-unseen are all 0" in (
        result.output
    )
    assert not (tmp_path / "x").exists()
    result = runner.invoke(cli, ["alfworld-games", str(tmp_path / "y"), "--train", "-1"])
    assert result.exit_code == 2 and "--train" in result.output


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_recipe_generates_the_games_first_only_when_asked(tmp_path):
    """configs/alfworld.mk: the released games by default; GAMES=generated writes them into $(OUT)/games first."""
    recipes = Path(__file__).parent.parent / "recipes"

    def dry(*args):
        return subprocess.run(
            ["make", "-n", "-C", str(recipes), "CONFIG=configs/alfworld.mk", f"OUT={tmp_path}", *args, "compare"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    real = dry()
    assert real.returncode == 0 and "alfworld-games" not in real.stdout
    generated = dry("GAMES=generated", "GAMES_TRAIN=12")
    lines = generated.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "eexp alfworld-games" in line)
    assert f"alfworld-games {tmp_path}/games --train 12 --valid-seen 140" in lines[first]
    assert first < next(i for i, line in enumerate(lines) if "expert --env alfworld" in line)
    wrong = dry("GAMES=downloaded")
    assert wrong.returncode == 2 and "GAMES must be real" in wrong.stderr


def test_eval_with_concurrency_writes_the_serial_runs_episodes(runner, stub, tmp_path):
    """`eval --concurrency N` against a server plays N episodes in threads of one process, each with an engine of its
    own; TextWorld's PDDL engine is not thread-safe (the translator and grammar parser are shared and eexp's memoizing
    patches them for the call), so the engine calls are serialised. Before they were, 59 of 60 episodes of a
    SmolLM2 eval with --concurrency 8 failed to load their game (IndexError, tatsu's FailedToken)."""
    server = stub("llamacpp", latency=0.2)  # longer than an engine step, so requests overlap while steps queue
    args = [
        "eval",
        "--policy",
        server.url,
        "--env",
        "alfworld",
        "--split",
        "train",
        "--max-steps",
        "6",
        "-q",
        "--temperature",
        "0.7",
    ]
    serial = run_cli(runner, args + ["--concurrency", "1"])
    many = run_cli(runner, args + ["--concurrency", "6"])
    assert server.most_in_flight >= 2
    serial_records, many_records = (
        [orjson.loads(line) for line in r.stdout.splitlines() if line.strip()] for r in (serial, many)
    )
    assert len(serial_records) == 6
    assert [r["task"]["id"] for r in many_records if r["stop_reason"] == "error"] == []
    strip = lambda rs: [
        {**r, "meta": {k: v for k, v in r["meta"].items() if k not in ("time", "created_utc")}} for r in rs
    ]
    assert strip(many_records) == strip(serial_records)
