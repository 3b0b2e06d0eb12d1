"""`miniwob`: MiniWoB++ pages in a real headless Chromium, through eexp's environment contract and stages.

Skipped, with the reason, where the miniwob package, Selenium, Chromium or ChromeDriver is missing (./install.sh
--browser installs the browser; .ci/run does). Chromium starts slowly on 2 shared cores, so most tests share one
environment (one browser) for the module; the tests of the browser's life start their own.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from eexp.cli import cli
from eexp.envs.miniwob_env import OOD_TYPES, TASK_TYPES
from eexp.errors import EnvError


def _browser_missing() -> str | None:
    for module in ("miniwob", "selenium"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'eexp[miniwob]')"
    from eexp.envs.browser import BrowserMissing, find_executables

    try:
        find_executables()
    except BrowserMissing as e:
        return str(e)
    return None


MISSING = _browser_missing()
needs_browser = pytest.mark.skipif(MISSING is not None, reason=f"no browser for MiniWoB: {MISSING}")
ROOT = Path(__file__).resolve().parent.parent


def gone(folder: str, seconds: float = 15.0) -> list[int]:
    """Wait until no live process names the browser folder; return those still alive after `seconds`."""
    from eexp.envs.browser import live_processes

    deadline = time.monotonic() + seconds
    while True:
        alive = live_processes(folder)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.fixture(scope="module")
def env():
    from eexp.envs.miniwob_env import MiniWobEnv

    instance = MiniWobEnv(train_seeds=2, test_seeds=2)
    folders = []
    try:
        yield instance
        folders.append(instance.browser_folder())
    finally:
        instance.close()
    for folder in filter(None, folders):
        assert gone(folder) == [], "the module's browser outlived close()"


def task_of(env, task_type: str, seed: int = 0, split: str = "train") -> dict:
    """A task as tasks() lists it, for any seed (its goal read from the page, or from the cache)."""
    task_id = f"{task_type}-{seed}"
    return {"id": task_id, "split": split, "goal": env._goals([(task_type, seed)])[task_id], "category": task_type}


def ref_of(observation: str, needle: str) -> int:
    line = next(line for line in observation.splitlines() if needle in line)
    return int(line[1 : line.index("]")])


# --- without a browser ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("miniwob") is None, reason="miniwob is not installed")
def test_a_missing_browser_is_one_line_with_the_install_command(runner, monkeypatch):
    monkeypatch.setenv("EEXP_CHROMIUM", "/nonexistent/chromium")
    from eexp.envs.miniwob_env import MiniWobEnv

    env = MiniWobEnv(train_seeds=1)
    with pytest.raises(EnvError) as e:
        env.reset({"id": "click-button-0", "split": "train"})
    message = str(e.value)
    assert "\n" not in message and "./install.sh --browser" in message and "chromium" in message
    env.close()
    result = runner.invoke(cli, ["expert", "-q", "--env", "miniwob", "-n", "1"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {message}"]


def test_options_and_splits_are_checked_before_any_browser():
    from eexp.envs.miniwob_env import MiniWobEnv

    with pytest.raises(EnvError, match="both in task_types and ood_types: unicode-test"):
        MiniWobEnv(task_types="click-button,unicode-test")
    with pytest.raises(EnvError, match="unknown options colour"):
        MiniWobEnv(colour="red")
    env = MiniWobEnv()
    assert env.kwargs == {} and MiniWobEnv(train_seeds=50).kwargs == {}  # defaults are not recorded
    with pytest.raises(EnvError, match="no split 'dev'"):
        env.tasks("dev")
    with pytest.raises(EnvError, match="not in this environment's task_types"):
        env.reset({"id": "drag-box-3", "split": "train"})
    assert env.canonicalize("  CLICK [ 12 ] ") == "click[12]"
    assert env.canonicalize("type[3] [Hello  World]") == "type[3][Hello  World]"  # the text is typed as given
    assert env.canonicalize(env.canonicalize("Select[4][Sudan]")) == "select[4][Sudan]"
    assert env.canonicalize("  press   enter ") == "press enter"
    assert env.browser_folder() is None  # nothing started
    from eexp.envs.miniwob_oracles import ORACLES

    assert set(ORACLES) == set(TASK_TYPES + OOD_TYPES)  # every oracle is one the slow test runs, and only those


# --- one browser for the module ------------------------------------------------------------------------------------


@needs_browser
def test_splits_by_seed_with_held_out_task_types(env):
    from eexp.envs.miniwob_env import OOD_TYPES, TASK_TYPES, TEST_SEED_BASE

    train, test, ood = env.tasks("train"), env.tasks("test"), env.tasks("ood")
    assert len(train) == len(test) == 2 * len(TASK_TYPES) and len(ood) == 2 * len(OOD_TYPES)
    assert {t["category"] for t in train} == {t["category"] for t in test} == set(TASK_TYPES)
    assert {t["category"] for t in ood} == set(OOD_TYPES)
    seeds = lambda tasks: {int(t["id"].rpartition("-")[2]) for t in tasks}
    assert seeds(train) == {0, 1} and seeds(test) == seeds(ood) == {TEST_SEED_BASE, TEST_SEED_BASE + 1}
    assert [t["category"] for t in train[: len(TASK_TYPES)]] == list(TASK_TYPES)  # round-robin over the types
    assert train[0]["goal"].startswith('Click on the "') and all(t["goal"] for t in train + test + ood)
    # the goal is the page's own utterance for that seed (reset checks it)
    observation = env.reset(task_of(env, "click-checkboxes", 7))
    assert observation.splitlines()[0] == task_of(env, "click-checkboxes", 7)["goal"]
    with pytest.raises(EnvError, match="not the task's goal"):
        env.reset({**task_of(env, "click-checkboxes", 7), "goal": "Select nothing."})


@needs_browser
def test_observation_actions_and_the_end_of_an_episode(env):
    task = task_of(env, "click-button", 3)
    observation = env.reset(task)
    lines = observation.splitlines()
    assert lines[0] == task["goal"] and all(line.startswith("[") for line in lines[1:])
    target = task["goal"].split('"')[1]
    button = ref_of(observation, f'button "{target}"')
    assert f"click[{button}]" in env.admissible()
    fields = [ref_of(observation, line) for line in lines[1:] if " input_text" in line]
    # typing is open: the list offers the instruction's quoted text for every text field, nothing else
    assert [a for a in env.admissible() if a.startswith("type[")] == [f"type[{f}][{target}]" for f in fields]
    digest = env.dom_digest()
    for bad, why in [
        ("click[999]", "there is no element [999]"),
        ("press[3]", "is not an action"),
        (f"type[{button}][hi]", "takes no text"),
        (f"click[{button}][x]", "click takes no text"),
        (f"select[{button}][x]", "not a list"),
    ]:
        out, reward, done, info = env.step(bad)
        assert info["valid"] is False and not done and reward == 0.0, bad
        assert out.startswith("Invalid action: ") and why in out.splitlines()[0], out
        assert out.splitlines()[1:] == lines  # the page again, unchanged
        assert env.dom_digest() == digest
    out, reward, done, info = env.step(f"  CLICK [ {button} ] ")
    assert (out, reward, done) == ("The episode is over: success (reward 1).", 1.0, True)
    assert info["raw_reward"] == 1 and 0.99 < info["env_reward"] <= 1  # the clock is off, nearly undiscounted
    assert env.success() and env.score() == 1.0 and env.admissible() == []
    assert env.step(f"click[{button}]")[3]["valid"] is False  # nothing after the end
    assert env.reset(task) == observation  # the same page again
    wrong = next(line for line in lines[1:] if " button " in line and f'"{target}"' not in line)
    out, reward, done, _ = env.step(f"click[{ref_of(observation, wrong)}]")
    assert done and reward == -1.0 and out == "The episode is over: failure (reward -1)."
    assert not env.success() and env.score() == 0.0


@needs_browser
def test_type_replaces_the_value_and_select_picks_an_option(env):
    task = task_of(env, "login-user", 2)
    observation = env.reset(task)
    user = ref_of(observation, "input_text#username")
    env.step(f"type[{user}][first]")
    out, _, _, info = env.step(f"type[{user}][Zoë x]")
    assert info["valid"] and f'[{user}] input_text#username value="Zoë x" focused' in out
    task = task_of(env, "choose-list", 1)
    observation = env.reset(task)
    box = ref_of(observation, "select")
    wanted = task["goal"].removeprefix("Select ").removesuffix(" from the list and click Submit.")
    assert f"select[{box}][{wanted}]" in env.admissible()
    assert "has no option" in env.step(f"select[{box}][Atlantis]")[0].splitlines()[0]
    out, _, _, info = env.step(f"select[{box}][{wanted}]")
    assert info["valid"] and f"selected={orjson.dumps(wanted).decode()}" in out


@needs_browser
def test_replay_reaches_the_same_dom_and_a_different_one_is_an_error(env):
    task = task_of(env, "enter-password", 5)
    plan = env.expert(task)
    assert len(plan) == 3 and plan[-1].startswith("click[")
    seen = []
    for i in range(len(plan)):
        first = env.replay(task, plan[:i])
        digest = env.dom_digest()
        assert env.replay(task, plan[:i]) == first and env.dom_digest() == digest
        seen.append(digest)
    assert len(set(seen)) == len(plan)  # every action changed the page
    env._digests[(task["id"], tuple(plan[:1]))] = "0" * 16  # as if the page had been another
    with pytest.raises(EnvError, match="differs from the one seen before"):
        env.replay(task, plan[:1])


@needs_browser
def test_expert_mid_episode_leaves_the_episode_as_it_was(env):
    task, other = task_of(env, "click-checkboxes", 11), task_of(env, "use-autocomplete-nodelay", 4)
    observation = env.reset(task)
    box = ref_of(observation, "input_checkbox")
    after = env.step(f"click[{box}]")[0]
    digest = env.dom_digest()
    env._plans.clear()
    assert env.expert(other) and env.expert(task)  # both played on this browser
    assert env.dom_digest() == digest and env.admissible() and f"[{box}] input_checkbox" in after
    assert env.step("click[999]")[0].splitlines()[1:] == after.splitlines()


@needs_browser
@pytest.mark.slow
@pytest.mark.parametrize("task_type", TASK_TYPES + OOD_TYPES)
def test_the_oracle_solves_20_seeds(env, task_type):
    """Every task type of the environment, held-out ones included, has an oracle that solves seeds 0-19: expert()
    plays each on a fresh page and raises (naming the task) unless the raw reward is 1."""
    for seed in range(20):
        task = {"id": f"{task_type}-{seed}", "split": "train"}
        plan = env.expert(task)
        assert plan
        if seed < 5:  # replay passes every state of the oracle's episode with the DOM digest seen there
            env.replay(task, plan)
            assert env.success()


@needs_browser
def test_the_loop_expert_branch_rollout_with_no_state_mismatch(runner, tmp_path):
    expert = tmp_path / "expert.jsonl"
    args = ["--env-arg", "train_seeds=1", "--env-arg", "task_types=login-user,click-checkboxes,choose-list"]
    result = runner.invoke(cli, ["expert", "-q", "--env", "miniwob", "-n", "3", *args, "-o", str(expert)])
    assert result.exit_code == 0, result.output
    records = [orjson.loads(line) for line in expert.read_text().splitlines()]
    assert len(records) == 3 and all(r["success"] for r in records)
    assert {r["task"]["category"] for r in records} == {"login-user", "click-checkboxes", "choose-list"}
    branches, outcomes, stats = tmp_path / "b.jsonl", tmp_path / "o.jsonl", tmp_path / "stats.json"
    assert runner.invoke(cli, ["branch", "-q", "-k", "2", str(expert), "-o", str(branches)]).exit_code == 0
    result = runner.invoke(cli, ["rollout", "-q", str(branches), "-o", str(outcomes), "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    out = [orjson.loads(line) for line in outcomes.read_text().splitlines()]
    assert len(out) == sum(len(r["steps"]) for r in records)
    assert not any("error" in r or any("error" in a for a in r["alternatives"]) for r in out)
    assert orjson.loads(stats.read_bytes())["state_mismatches"] == 0
    executed = [a for r in out for a in r["alternatives"]]
    assert executed and all(a["next_observation"] for a in executed)


@needs_browser
@pytest.mark.slow
def test_envs_check_passes(runner):
    result = runner.invoke(cli, ["envs", "--check", "miniwob", "--env-arg", "train_seeds=2", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output


# --- the browser's life ----------------------------------------------------------------------------------------------


def interruptible() -> None:
    """In the child before exec: SIGINT as a terminal gives it (a background job, as pytest may be, ignores SIGINT,
    and Python then never turns it into KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


OWNER = """
import sys, time
from eexp.envs.miniwob_env import MiniWobEnv
env = MiniWobEnv(train_seeds=1, task_types="click-test", ood_types="")
env.reset(env.tasks("train")[0])
print(env.browser_folder(), flush=True)
if sys.argv[1] == "exit":
    sys.stdin.readline()             # the test counts the browser's processes first (exiting at once raced it)
    sys.exit(0)                      # no close(): the interpreter's exit closes it
time.sleep(600)
"""


@needs_browser
@pytest.mark.parametrize("how", ["kill -9", "ctrl-c", "exit"])
def test_no_chromium_outlives_its_owner(how, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, "exit" if how == "exit" else "wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ},
        preexec_fn=interruptible,
    )
    try:
        folder = proc.stdout.readline().strip()
        assert folder and Path(folder).is_dir(), proc.communicate(timeout=30)
        from eexp.envs.browser import live_processes

        assert len(live_processes(folder)) >= 3  # chromedriver, chromium and its helpers
        if how == "kill -9":
            os.kill(proc.pid, signal.SIGKILL)
        elif how == "ctrl-c":
            os.kill(proc.pid, signal.SIGINT)
        else:
            proc.stdin.write("exit\n")
            proc.stdin.flush()
        proc.wait(timeout=30)
        assert gone(folder) == [], f"browser processes outlived their owner ({how})"
        assert not Path(folder).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_browser
def test_close_kills_the_browser_and_a_closed_env_starts_a_new_one():
    from eexp.envs.miniwob_env import MiniWobEnv

    env = MiniWobEnv(train_seeds=1, task_types="click-test", ood_types="")
    env.close()  # before any reset
    task = env.tasks("train")[0]
    first = env.reset(task)
    folder = env.browser_folder()
    env.close()
    env.close()
    assert gone(folder, 5) == [] and not Path(folder).exists()
    assert env.reset(task) == first and env.browser_folder() != folder  # a fresh browser, the same page
    env.close()


@needs_browser
def test_chromedriver_listens_on_loopback_only():
    """chromedriver, which drives the browser for whoever reaches its port, takes connections from this machine only
    (with --allowed-ips it listened on every interface)."""
    import ipaddress

    import psutil

    from eexp.envs.miniwob_env import MiniWobEnv

    env = MiniWobEnv(train_seeds=1, task_types="click-test", ood_types="")
    try:
        env.reset(env.tasks("train")[0])
        service = psutil.Process(env._browser._service.pid)
        listening = [c.laddr.ip for c in service.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening and all(ipaddress.ip_address(ip).is_loopback for ip in listening), listening
    finally:
        env.close()


@needs_browser
@pytest.mark.parametrize("how", ["kill -9", "ctrl-c"])
def test_no_chromium_outlives_eval_with_workers(how):
    """`eexp eval -j 2` holds a browser in each worker (and one in the main process while it reads the goals).
    After kill -9 of eexp, or a Ctrl-C to its process group (a terminal's), none of their processes is left."""
    import shutil
    import tempfile

    # a short TMPDIR of its own, where eexp's browsers make their folders (a path near 108 characters would be too
    # long for the socket Chromium makes in its profile)
    tmp = Path(tempfile.mkdtemp(prefix="eexp-test-"))
    from eexp.envs.browser import live_processes

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eexp",
            "eval",
            "--policy",
            "random",
            "--env",
            "miniwob",
            "--env-arg",
            "task_types=click-test,focus-text",
            "--env-arg",
            "ood_types=",
            "--env-arg",
            "test_seeds=200",
            "--split",
            "test",
            "-n",
            "400",
            "-j",
            "2",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp)},
        start_new_session=True,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            folders = {f for f in tmp.glob("eexp-browser-*") if live_processes(str(f))}
            if len(folders) >= 2 or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(folders) >= 2 and proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(1)  # episodes under way
        if how == "kill -9":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        assert gone(str(tmp), 20) == [], f"browser processes outlived eexp eval -j 2 ({how})"
        # their folders are deleted too, by whoever killed them, just after (under load, a moment after)
        deadline = time.monotonic() + 20
        while list(tmp.glob("eexp-browser-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not list(tmp.glob("eexp-browser-*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@needs_browser
def test_a_screenshot_shows_the_page_the_observation_describes(env, tmp_path):
    import io

    from PIL import Image

    task = task_of(env, "click-checkboxes", 4)
    observation = env.reset(task)
    before = env.screenshot()
    env.step(f"click[{ref_of(observation, 'input_checkbox')}]")
    after = env.screenshot()
    image = Image.open(io.BytesIO(before))
    assert image.format == "PNG" and (160, 210) <= image.size <= (400, 420)  # MiniWoB's task area, not the window
    assert before != after  # the checked box shows
    from eexp.envs.screens import can_screenshot, save_step

    assert can_screenshot(env)
    png = save_step(env, tmp_path, "miniwob:click-checkboxes-4~x#1", 1, "the observation", prompt="the prompt")
    assert png == tmp_path / "miniwob_click-checkboxes-4~x#1" / "001.png" and png.read_bytes() == after
    assert (
        png.with_suffix(".txt").read_text() == "# observation\nthe observation\n\n# what the model read\nthe prompt\n"
    )
