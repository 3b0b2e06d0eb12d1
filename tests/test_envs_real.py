"""The real third-party environments: textworld, scienceworld (Java) and bfcl, run for real on this machine.

Skipped (with the reason) only where the package or Java is missing. tests/data/textworld/ holds the four
train games of seed 0 as eexp makes them (PYTHONHASHSEED fixed, serial number pinned) with their `.game.json`
records, so most TextWorld tests need no generation.
"""

from __future__ import annotations

import collections
import gc
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import orjson
import pytest

from eexp.cli import cli
from eexp.envs import make_env
from eexp.envs.reach import StateMismatch, StepTimeout, guarded, reach
from eexp.errors import EnvError
from eexp.stages.rollout import EnvPool, Walk

DATA = Path(__file__).parent / "data" / "textworld"


def _need(module: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{module} is not installed (pip install 'eexp[all]')"
    )


needs_textworld = _need("textworld")
needs_bfcl = _need("bfcl_eval")
needs_scienceworld = pytest.mark.skipif(
    importlib.util.find_spec("scienceworld") is None or shutil.which("java") is None,
    reason="scienceworld is not installed or java is not on PATH (ScienceWorld's simulator is Java)",
)


def walk_over(env, task) -> Walk:
    """rollout's Walk over one given instance: how rollout reaches the states of one trajectory, step by step."""
    return Walk(EnvPool(lambda name, **kwargs: env), env.env_record(), task, collections.Counter())


def _expert_records(runner, *args) -> list[dict]:
    result = runner.invoke(cli, ["expert", "-q", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.stdout.splitlines()]


# --- textworld ------------------------------------------------------------------------------------------------


@pytest.fixture
def tw(monkeypatch, tmp_path):
    """A textworld env (1 game per train family) whose cache holds the committed games."""
    import textworld

    monkeypatch.setenv("EEXP_CACHE", str(tmp_path))
    cache = tmp_path / "textworld" / textworld.__version__
    cache.mkdir(parents=True)
    for f in DATA.iterdir():
        shutil.copy(f, cache / f.name)
    env = make_env("textworld", games=1)
    yield env
    env.close()


@needs_textworld
def test_textworld_tasks_goals_and_clean_observations(tw):
    tasks = tw.tasks("train")
    assert [t["id"] for t in tasks] == [
        "treasure-easy-00000",
        "treasure-medium-00000",
        "cooking-easy-00000",
        "cooking-medium-00000",
    ]
    assert {t["category"] for t in tasks} == {"treasure-easy", "treasure-medium", "cooking-easy", "cooking-medium"}
    assert all(t["game_seed"] == 0 for t in tasks)  # seed 0 makes every game: no fallback
    observation = tw.reset(tasks[2])
    assert observation.startswith(tasks[2]["goal"][:30])  # banner gone, objective first
    assert "$$" not in observation and not observation.endswith(" ")
    assert "look" in tw.admissible()
    obs, _, _, info = tw.step("inventory")
    assert info["valid"] and "-= " not in obs and ">" not in obs  # prompt and status bar stripped


@needs_textworld
def test_textworld_splits_are_disjoint_and_ood_holds_out_families(tw):
    train = {t["id"] for t in tw.tasks("train")}
    ood_families = {spec["family"] for spec in tw._specs("ood")}
    test_ids = {f"{s['family']}-{s['seed']:05d}" for s in tw._specs("test")}
    assert not train & test_ids
    assert not ood_families & {t.split("-0")[0] for t in train}


@needs_textworld
def test_textworld_snapshot_branches_independently_and_replay_is_deterministic(tw):
    task = tw.tasks("train")[3]  # cooking-medium: a longer walkthrough
    actions = tw.expert(task)
    assert len(actions) >= 4
    walk = tw.replay(task, actions[:2])
    snap = tw.snapshot()
    other = next(a for a in tw.admissible() if a != actions[2])
    branch_obs = tw.step(other)[0]
    tw.restore(snap)
    assert tw.step(actions[2])[0] == tw.replay(task, actions[:3])  # restored state = replayed state
    tw.restore(snap)
    assert tw.step(other)[0] == branch_obs  # the snapshot stays reusable
    assert tw.replay(task, actions[:2]) == walk


def _tw_full_state(env) -> dict:
    """Everything a TextWorld episode carries: eexp's view, TextWorld's GameStates and progression, the z-machine."""
    tracking, inform7, _, jericho = env._layers()

    def plain(state):
        d = {k: v for k, v in (state or {}).items() if k not in ("game", "_game_progression")}
        if "_facts" in d:  # a set's iteration order: it differs between two processes replaying the same game too
            d["_facts"] = sorted(map(str, d["_facts"]))
        return d

    ram, stack, pc, sp, *registers = jericho._jericho.get_state()
    progression = tracking._game_progression
    return {
        "admissible": env.admissible(),
        "score": env.score(),
        "success": env.success(),
        "state": plain(tracking.state),
        "previous state": plain(inform7._prev_state),
        "state refers to the live progression": tracking.state["_game_progression"] is progression,
        "facts": sorted(map(str, progression.state.facts)),
        "valid actions": list(map(str, progression.valid_actions)),
        "policy": tracking._current_winning_policy,
        "previous policy": tracking._previous_winning_policy,
        "moves": tracking._moves,
        "last action": tracking._last_action,
        "tracked infos": inform7._tracked_infos,
        "ram": ram.tobytes(),
        "stack in use": stack.tobytes()[2 * sp :],
        "pc, sp, fp, frames, opcode, rng, text": (pc, sp, *registers),
    }


@needs_textworld
def test_textworld_restore_equals_replay_in_the_whole_state(tw):
    """restore() (jericho's get_state/set_state plus TextWorld's Python state) gives what replay gives: eexp's view,
    TextWorld's GameState (score, moves, admissible and policy commands, won/lost, feedback), the quest progression
    and the z-machine's memory and registers; also after another game ran, after the engine was dropped, in another
    instance, and at the end of the game; the snapshot stays reusable."""
    tasks = tw.tasks("train")
    task, other_task = tasks[3], tasks[0]
    actions = tw.expert(task)
    replayed = make_env("textworld", games=1)
    try:
        tw.reset(task)
        snaps = [(0, tw.snapshot())]
        for i, action in enumerate(actions):
            tw.step(action)
            snaps.append((i + 1, tw.snapshot()))
        assert tw.success()
        tw.reset(other_task)
        tw.step("look")
        for n, snap in reversed(snaps):
            for how in ("after another game", "again", "after the engine was dropped", "in another instance"):
                env = replayed if how == "in another instance" else tw
                if how == "after the engine was dropped":
                    tw.restart()
                env.restore(snap)
                state = _tw_full_state(env)
                follow = (actions[n:] or ["look"])[:2] + ["inventory"]
                after = [env.step(a) for a in follow] + [_tw_full_state(env)]
                ref = make_env("textworld", games=1)
                try:
                    ref.replay(task, actions[:n])
                    expected = _tw_full_state(ref)
                    expected_after = [ref.step(a) for a in follow] + [_tw_full_state(ref)]
                finally:
                    ref.close()
                assert [k for k in state if state[k] != expected[k]] == [], (n, how)
                assert after == expected_after, (n, how)
    finally:
        replayed.close()


@needs_textworld
def test_textworld_state_mismatch_is_detected(tw):
    task = tw.tasks("train")[3]
    actions = tw.expert(task)
    good = tw.replay(task, actions[:2])
    reach(tw, task, actions[:2], good)
    with pytest.raises(StateMismatch):
        reach(tw, task, actions[:2], good + " (not what the game said)")
    expected = [tw.replay(task, actions[:i]) for i in range(len(actions))]
    walk = walk_over(tw, task)
    for i in range(len(actions)):
        walk.reach(tuple(actions[:i]), expected[i], i)


@needs_textworld
def test_textworld_engine_exception_becomes_env_error_and_reset_recovers(tw, monkeypatch):
    task = tw.tasks("train")[0]
    first = tw.reset(task)
    monkeypatch.setattr(tw._env, "step", lambda a: (_ for _ in ()).throw(RuntimeError("engine crashed")))
    with pytest.raises(EnvError, match="engine failed"):
        tw.step("look")
    with pytest.raises(EnvError, match="reset"):
        tw.step("look")  # broken until reset
    assert tw.reset(task) == first


@needs_textworld
def test_textworld_hung_step_times_out_and_reset_recovers(tw, monkeypatch):
    task = tw.tasks("train")[0]
    first = tw.reset(task)
    monkeypatch.setattr(tw._env, "step", lambda a: time.sleep(5))
    with pytest.raises(StepTimeout):
        guarded(lambda: tw.step("look"), "step", timeout=0.3)
    assert tw._env is None  # the interrupted engine was dropped
    assert tw.reset(task) == first


@needs_textworld
def test_textworld_generation_is_byte_stable(tmp_path):
    """The generator subprocess reproduces the committed game byte for byte, on any machine and any day.

    Inform 7 writes the compile date as the story file's serial number (header bytes 0x12-0x17); it is pinned, so a
    game made on another day (the committed one was first made with serial 261121) is the same file."""
    from eexp.envs.textworld_env import SERIAL, generate_games, stamp_serial, z_checksum

    record = generate_games([{"family": "treasure-easy", "seed": 0}], tmp_path)["treasure-easy-00000"]
    assert record["game_seed"] == 0 and record["tried"] == []
    made = (tmp_path / "treasure-easy-00000.z8").read_bytes()
    assert made[0x12:0x18] == SERIAL.encode() and z_checksum(made) == int.from_bytes(made[0x1C:0x1E], "big")
    for suffix in (".z8", ".game.json"):  # the story file, and ours
        name = "treasure-easy-00000" + suffix
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
    # TextWorld's own record of the game (quest, walkthrough) is the same but for one field: where the textworld
    # package is installed (KB.text_grammars_path), which differs from one virtual environment to the next
    made_json, committed = (json.loads((d / "treasure-easy-00000.json").read_text()) for d in (tmp_path, DATA))
    assert os.path.isdir(made_json["KB"].pop("text_grammars_path"))
    committed["KB"].pop("text_grammars_path")
    assert made_json == committed
    dated = bytearray(made)
    dated[0x12:0x18] = b"261121"  # as compiled on 2026-11-21: only the serial differs
    (tmp_path / "dated.z8").write_bytes(bytes(dated))
    stamp_serial(tmp_path / "dated.z8")
    assert (tmp_path / "dated.z8").read_bytes() == made


@needs_textworld
def test_textworld_seed_that_makes_no_game_is_an_error_naming_family_and_seeds(tmp_path):
    """treasure-easy seed 8 makes no game (QuestGenerationError, on every machine); with one try allowed, the error
    names the family and the seeds tried, and the other games of the batch are still made."""
    from eexp.envs.textworld_env import generate_games

    with pytest.raises(EnvError, match=r"1 of 2 games .*treasure-easy-00008 \(treasure-easy\).*seeds tried: 8;"):
        generate_games(
            [{"family": "treasure-easy", "seed": 8}, {"family": "treasure-easy", "seed": 0}], tmp_path, tries=1
        )
    assert (tmp_path / "treasure-easy-00000.game.json").exists()
    assert not (tmp_path / "treasure-easy-00008.game.json").exists()


@needs_textworld
def test_textworld_seed_that_makes_no_game_falls_back_to_the_next_game_seed(tmp_path):
    """treasure-easy seed 9 makes no game; task treasure-easy-00009 is made with game seed 100009 and says so."""
    from eexp.envs.textworld_env import SERIAL, generate_games

    record = generate_games([{"family": "treasure-easy", "seed": 9}], tmp_path)["treasure-easy-00009"]
    assert (record["id"], record["seed"], record["game_seed"], record["tried"]) == (
        "treasure-easy-00009",
        9,
        100009,
        [9],
    )
    assert json.loads((tmp_path / "treasure-easy-00009.game.json").read_text()) == record
    assert (tmp_path / "treasure-easy-00009.z8").read_bytes()[0x12:0x18] == SERIAL.encode()
    level = json.loads((tmp_path / "treasure-easy-00009.json").read_text())["metadata"]
    assert (level["mode"], level["quest_length"]) == ("easy", 5)  # the settings of seed 9 (level 10) are kept


@pytest.fixture(scope="module")
def tw_cold_cache(tmp_path_factory):
    """An EEXP_CACHE that starts empty, shared by the slow tests below (the first one pays for the 100 games)."""
    return tmp_path_factory.mktemp("tw-cold-cache")


@needs_textworld
@pytest.mark.slow
@pytest.mark.parametrize("seed", ["1", "7"])
def test_textworld_expert_20_from_an_empty_cache(runner, tw_cold_cache, monkeypatch, seed):
    """`eexp expert --env textworld -n 20 --seed S` on a fresh machine: the whole train split is generated (two of
    its seeds make no game and fall back), every trajectory succeeds."""
    monkeypatch.setenv("EEXP_CACHE", str(tw_cold_cache))
    records = _expert_records(runner, "--env", "textworld", "-n", "20", "--seed", seed)
    assert len(records) == 20
    assert all(r["success"] and "error" not in r for r in records), [r["id"] for r in records if not r["success"]]
    assert all(s.get("admissible") for r in records for s in r["steps"])
    assert all(r["task"]["game_seed"] >= int(r["task"]["id"][-5:]) for r in records)  # how each game was made


@needs_textworld
@pytest.mark.slow
def test_textworld_fallback_seed_is_used_recorded_and_deterministic(tw_cold_cache, monkeypatch, tmp_path):
    """The train split's seeds 8 and 9 of treasure-easy make no game: treasure-easy-00008 is made with game seed
    200008 (8 and 100008 make none), treasure-easy-00009 with 100009. The tasks keep their ids and record the game
    seed; made alone in another process, the game is the same file as made inside the whole split's batch."""
    from eexp.envs.textworld_env import generate_games

    monkeypatch.setenv("EEXP_CACHE", str(tw_cold_cache))
    env = make_env("textworld")
    try:
        tasks = {t["id"]: t for t in env.tasks("train")}
        assert len(tasks) == 100
        fallbacks = {i: t["game_seed"] for i, t in tasks.items() if t["game_seed"] != int(i[-5:])}
        assert fallbacks == {"treasure-easy-00008": 200008, "treasure-easy-00009": 100009}
        assert env.game("treasure-easy-00008")["tried"] == [8, 100008]
        assert env.expert(tasks["treasure-easy-00008"])  # a playable game
        wrong = {**tasks["treasure-easy-00008"], "game_seed": 8}
        with pytest.raises(EnvError, match="recorded with game seed 8"):
            env.reset(wrong)
        cache = env.game_dir
    finally:
        env.close()
    alone = generate_games([{"family": "treasure-easy", "seed": 8}], tmp_path)["treasure-easy-00008"]
    assert alone == json.loads((cache / "treasure-easy-00008.game.json").read_text())
    for suffix in (".z8", ".json"):
        name = "treasure-easy-00008" + suffix
        assert (tmp_path / name).read_bytes() == (cache / name).read_bytes(), name


# --- scienceworld ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sw(tmp_path_factory):
    # module scope: one JVM, one index; EEXP_CACHE is put back after, or later modules' fixtures would use this one
    saved = os.environ.get("EEXP_CACHE")
    os.environ["EEXP_CACHE"] = str(tmp_path_factory.mktemp("sw-cache"))
    env = make_env("scienceworld", variations=1)
    yield env
    env.close()
    if saved is None:
        os.environ.pop("EEXP_CACHE", None)
    else:
        os.environ["EEXP_CACHE"] = saved


def _sw_task(env, name="boil"):
    return next(t for t in env.tasks("train") if t["category"] == name)


@needs_scienceworld
def test_scienceworld_splits(sw):
    train, ood = sw.tasks("train"), sw.tasks("ood")
    assert len(train) == 24 and len(ood) == 6
    assert not {t["category"] for t in train} & {t["category"] for t in ood}
    assert not {t["id"] for t in train} & {t["id"] for t in sw.tasks("test")}
    assert all(t["goal"].startswith("Your task is") for t in train)


@needs_scienceworld
def test_scienceworld_replay_matches_stepping_and_admissible_is_trimmed(sw):
    task = _sw_task(sw)
    gold = sw.expert(task)
    stepped = [sw.reset(task)]
    for a in gold[:8]:
        stepped.append(sw.step(a)[0])
    assert sw.replay(task, gold[:8]) == stepped[-1]
    assert sw.replay(task, gold[:5]) == stepped[5]  # deterministic, any prefix
    admissible = sw.admissible()
    assert 0 < len(admissible) <= 60 and not any("agent" in a or " air" in a for a in admissible)
    assert sw.step("fly to the moon")[3]["valid"] is False


@needs_scienceworld
def test_scienceworld_state_mismatch_is_detected(sw):
    task = _sw_task(sw)
    gold = sw.expert(task)
    good = sw.replay(task, gold[:3])
    reach(sw, task, gold[:3], good)
    with pytest.raises(StateMismatch):
        reach(sw, task, gold[:4], good)


@needs_scienceworld
def test_scienceworld_java_death_is_an_error_and_reset_restarts(sw, caplog):
    task = _sw_task(sw)
    first = sw.reset(task)
    old = sw.java_process()
    server, client = sw._sw.server, sw._sw._gateway._gateway_client  # a Java object of the JVM about to die
    old.kill()
    old.wait()
    with pytest.raises(EnvError, match="Java process died|simulator failed"):
        sw.step("look around")
    caplog.clear()
    # py4j is told the JVM is gone: collecting its objects later reconnects nowhere and logs no traceback (one,
    # formatted inside CI's ast.parse, failed a test with Python 3.11's SystemError)
    assert client.is_connected is False
    del server
    gc.collect()
    assert not [r for r in caplog.records if r.name.startswith("py4j") and r.levelno >= logging.WARNING]
    assert sw.reset(task) == first  # a fresh JVM
    assert sw.java_process().pid != old.pid


@needs_scienceworld
def test_scienceworld_hung_step_is_killed_by_the_watchdog(sw, monkeypatch):
    task = _sw_task(sw)
    first = sw.reset(task)
    monkeypatch.setattr(sw, "step_timeout", 0.5)

    class Slow:  # stands in for a server call that never answers
        def __getattr__(self, name):
            return lambda *a: time.sleep(3)

    monkeypatch.setattr(sw, "_server", lambda: Slow())
    with pytest.raises(EnvError, match="took longer than 0.5 s"):
        sw.step("look around")
    monkeypatch.undo()
    assert sw.reset(task) == first


@needs_scienceworld
@pytest.mark.slow
def test_scienceworld_expert_10_all_succeed(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("EEXP_CACHE", str(tmp_path))
    records = _expert_records(
        runner, "--env", "scienceworld", "-n", "10", "--env-arg", "variations=1", "--no-admissible"
    )
    assert len(records) == 10 and len({r["task"]["category"] for r in records}) >= 5
    assert all(r["success"] and "error" not in r for r in records), [(r["id"], r.get("score")) for r in records]


# --- bfcl -----------------------------------------------------------------------------------------------------


@pytest.fixture
def bfcl():
    return make_env("bfcl")


@needs_bfcl
def test_bfcl_splits_are_the_papers(bfcl):
    train, test, ood = bfcl.tasks("train"), bfcl.tasks("test"), bfcl.tasks("ood")
    assert (len(train), len(test), len(ood)) == (150, 50, 600)
    assert not {t["id"] for t in train} & {t["id"] for t in test}
    assert {t["category"] for t in ood} == {"long_context", "miss_func", "miss_param"}
    assert {t["category"] for t in train + test} == {"base"}


@needs_bfcl
def test_bfcl_expert_succeeds_on_every_train_task(runner):
    records = _expert_records(runner, "--env", "bfcl")
    assert len(records) == 150
    assert all(r["success"] for r in records), [r["id"] for r in records if not r["success"]]


@needs_bfcl
def test_bfcl_checker_rejects_a_wrong_trajectory(bfcl):
    task = bfcl.tasks("train")[0]
    bfcl.reset(task)
    for action in bfcl.expert(task):
        if "(" in action:
            continue  # skip every call: the user's requests are not done
        bfcl.step(action)
    assert not bfcl.success()


@needs_bfcl
def test_bfcl_executor_never_evaluates(bfcl, tmp_path):
    task = next(t for t in bfcl.tasks("train") if "GorillaFileSystem" in t["goal"] or "ls(" in t["goal"])
    bfcl.reset(task)
    marker = tmp_path / "pwned"
    obs, _, _, _ = bfcl.step(f"__import__('os').system('touch {marker}')")  # not a call by name: a reply
    assert not marker.exists()
    bfcl.reset(task)
    obs, _, _, info = bfcl.step(f"ls(a=open('{marker}', 'w'))")  # non-literal argument: a reply
    assert not marker.exists() and "User:" in obs
    bfcl.reset(task)
    obs, _, _, info = bfcl.step("_load_scenario({})")  # private: not a tool
    assert info["valid"] is False and "no tool" in obs


@needs_bfcl
def test_bfcl_snapshot_branches_are_independent_and_replay_is_deterministic(bfcl):
    task = next(t for t in bfcl.tasks("train") if "mkdir(" in t["goal"])
    actions = bfcl.expert(task)
    expected = [bfcl.replay(task, actions[:i]) for i in range(len(actions))]
    assert expected == [bfcl.replay(task, actions[:i]) for i in range(len(actions))]
    bfcl.replay(task, actions[:1])
    snap = bfcl.snapshot()
    bfcl.step("mkdir(dir_name='eexp_branch')")
    listing = bfcl.step("ls()")[0]
    bfcl.restore(snap)
    assert "eexp_branch" in listing and "eexp_branch" not in bfcl.step("ls()")[0]
    walk = walk_over(bfcl, task)
    for i in range(len(actions)):
        walk.reach(tuple(actions[:i]), expected[i], i)
    with pytest.raises(StateMismatch):
        reach(bfcl, task, actions[:2], expected[1] + " something else")


@needs_bfcl
def test_bfcl_tool_exception_and_setup_failure(bfcl, monkeypatch):
    task = bfcl.tasks("train")[0]
    bfcl.reset(task)
    name = bfcl.expert(task)[0].split("(")[0]
    obj = next(o for o in bfcl._ep["instances"].values() if hasattr(o, name))
    monkeypatch.setattr(obj, name, lambda *a, **k: 1 / 0)
    obs, _, done, _ = bfcl.step(bfcl.expert(task)[0])  # a tool's exception is its error message
    assert "Error during execution: division by zero" in obs and not done
    broken = json.loads(json.dumps(bfcl._entries[task["id"]][0]))
    broken["involved_classes"] = ["NoSuchAPI"]
    monkeypatch.setitem(bfcl._entries, task["id"], (broken, [], "base"))
    with pytest.raises(EnvError, match="cannot set up"):
        bfcl.reset(task)
