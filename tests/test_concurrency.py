"""--concurrency N on eval, branch and reflect: up to N policy requests in flight against one server, and records
byte for byte those of a serial run (but for the time stamps), with --resume and --shard as before; failed requests
counted in the summary and --stats, a run that lost too many exits 1, a server that dies stops the run at once, and
Ctrl-C leaves whole lines. Against the deterministic stub server of tests/openai_stub.py (its replies depend on the
request's seed alone, as a batch-invariant server's would)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from eexp.cli import cli
from eexp.inflight import InOrder

EEXP = [sys.executable, "-m", "eexp"]


def invoke(args, input=None):
    return CliRunner().invoke(cli, args, input=input)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def timeless(items: list[dict]) -> list[dict]:
    """The records less their creation time, the one thing a serial and a concurrent run may differ in."""
    return [
        {**r, "meta": {k: v for k, v in (r.get("meta") or {}).items() if k not in ("time", "created_utc")}}
        for r in items
    ]


def reflection(body: dict) -> str:
    """A reply that varies with the seed: the words of the prompt's situation, 20 to 80 of them; for odd seeds every
    other one of them (even seeds paste a run of the page, which reflect's pasted_page filter refuses)."""
    words = body["messages"][-1]["content"].split()
    n = 20 + body["seed"] % 61
    start = body["seed"] % max(1, len(words) - n)
    picked = words[start : start + n]
    return "I chose well because " + " ".join(picked[::2] if body["seed"] % 2 else picked)


# --- InOrder ----------------------------------------------------------------------------------------------------


def test_in_order_hands_results_back_in_submission_order_whatever_finishes_first():
    calls = InOrder(4)
    try:
        for i, delay in enumerate([0.2, 0.0, 0.1, 0.0, 0.05]):
            calls.submit(lambda i=i, d=delay: (time.sleep(d), i)[1], tag=f"t{i}")
        assert list(calls.ready(block=True)) == [(f"t{i}", i) for i in range(5)]
    finally:
        calls.close()


def test_in_order_raises_a_calls_error_in_its_turn():
    calls = InOrder(3)
    try:
        calls.submit(lambda: time.sleep(0.1) or "first")
        calls.submit(lambda: 1 / 0)
        calls.submit(lambda: "third")
        got = calls.ready(block=True)
        assert next(got) == (None, "first")  # what came before the failure is handed back first
        with pytest.raises(ZeroDivisionError):
            next(got)
    finally:
        calls.close()


def test_in_order_with_one_runs_each_call_at_once_in_the_callers_thread():
    calls = InOrder(1)
    threads = []
    calls.submit(lambda: threads.append(threading.get_ident()))
    assert threads == [threading.get_ident()]
    assert [r for _, r in calls.ready()] == [None]


def test_in_order_bounds_what_waits_for_an_older_call():
    calls = InOrder(2)
    release = threading.Event()
    try:
        calls.submit(release.wait)
        for i in range(3):
            calls.submit(lambda i=i: i)
        time.sleep(0.1)
        assert list(calls.ready()) == []  # 4 pending, the oldest still running: nothing to hand back yet
        threading.Timer(0.2, release.set).start()
        calls.submit(lambda: 9)  # 5 > 2 x 2 pending: ready() now waits for the oldest
        assert [r for _, r in calls.ready()][:4] == [True, 0, 1, 2]
    finally:
        calls.close()


# --- the records of a serial run --------------------------------------------------------------------------------


def test_eval_with_concurrency_writes_the_serial_runs_episodes(stub, tmp_path):
    server = stub("llamacpp", latency=0.03)
    args = [
        "eval",
        "--policy",
        server.url,
        "--env",
        "shop",
        "-n",
        "12",
        "--max-steps",
        "4",
        "-q",
        "--temperature",
        "0.7",
    ]
    serial = invoke(args + ["--concurrency", "1", "--summary", str(tmp_path / "one.json")])
    assert serial.exit_code == 0, serial.output
    assert server.most_in_flight == 1
    eight = invoke(args + ["--concurrency", "8", "--summary", str(tmp_path / "eight.json")])
    assert eight.exit_code == 0, eight.output
    assert 4 <= server.most_in_flight <= 8
    server.latency, server.most_in_flight = 0.25, 0  # long enough for more than 8 to overlap on a busy machine
    default = invoke(args)  # an endpoint's own default: 16 in flight (12 episodes here)
    assert default.exit_code == 0, default.output
    assert 8 < server.most_in_flight <= 12
    assert len(records(serial.stdout)) == 12
    assert timeless(records(eight.stdout)) == timeless(records(serial.stdout)) == timeless(records(default.stdout))
    one, many = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "eight"))
    assert {k: v for k, v in one.items() if k != "meta"} == {k: v for k, v in many.items() if k != "meta"}
    assert one["failed_requests"] == 0 and one["invalid_rate"] == 0


def test_eval_shard_and_resume_with_concurrency(stub, tmp_path):
    server = stub("llamacpp")
    args = ["eval", "--policy", server.url, "--env", "shop", "-n", "10", "--max-steps", "3", "-q"]
    whole = records(invoke(args + ["--concurrency", "1"]).stdout)
    halves = [records(invoke(args + ["--concurrency", "4", "--shard", f"{i}/2"]).stdout) for i in (1, 2)]
    assert sorted(r["id"] for h in halves for r in h) == sorted(r["id"] for r in whole)
    out = tmp_path / "episodes.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in whole[:4]) + "\n" + json.dumps(whole[4])[:50])  # torn line
    resumed = invoke(args + ["--concurrency", "4", "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert timeless(records(out.read_text())) == timeless(whole)


def test_branch_with_concurrency_writes_the_serial_runs_records(stub, tmp_path):
    expert = invoke(["expert", "--env", "shop", "-n", "6"])
    assert expert.exit_code == 0, expert.output
    (tmp_path / "expert.jsonl").write_text(expert.stdout)
    server = stub("llamacpp", latency=0.02)
    args = ["branch", "--policy", server.url, "-k", "3", "-q", str(tmp_path / "expert.jsonl")]
    serial = invoke(args + ["--concurrency", "1", "--stats", str(tmp_path / "one.json")])
    assert serial.exit_code == 0, serial.output
    assert server.most_in_flight == 1  # one request at a time: the K samples of a state too
    many = invoke(args + ["--concurrency", "6", "--stats", str(tmp_path / "six.json")])
    assert many.exit_code == 0, many.output
    assert 4 <= server.most_in_flight <= 6  # states side by side, and never more than asked
    got = records(serial.stdout)
    assert len(got) > 12 and any(a["source"] == "policy" for r in got for a in r["alternatives"])
    assert timeless(records(many.stdout)) == timeless(got)
    one, six = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "six"))
    one.pop("seconds"), six.pop("seconds")
    assert one == six and one["policy_requests"] == 3 * len(got) and one["failed_requests"] == 0


def test_reflect_with_concurrency_writes_the_serial_runs_examples_and_rejections(stub, tmp_path):
    expert = invoke(["expert", "--env", "shop", "-n", "5"])
    outcomes = invoke(["rollout", "-q"], input=invoke(["branch", "-k", "3", "-q"], input=expert.stdout).stdout)
    assert outcomes.exit_code == 0, outcomes.output
    (tmp_path / "outcomes.jsonl").write_text(outcomes.stdout)
    server = stub(latency=0.02, free_text=reflection)
    runs = {}
    for n in (1, 8):
        result = invoke(
            [
                "reflect",
                "--policy",
                server.url,
                "-q",
                str(tmp_path / "outcomes.jsonl"),
                "--concurrency",
                str(n),
                "--rejected",
                str(tmp_path / f"rejected{n}.jsonl"),
                "--stats",
                str(tmp_path / f"stats{n}.json"),
            ]
        )
        assert result.exit_code == 0, result.output
        stats = json.loads((tmp_path / f"stats{n}.json").read_text())
        stats.pop("seconds")
        runs[n] = (
            timeless(records(result.stdout)),
            timeless(records((tmp_path / f"rejected{n}.jsonl").read_text())),
            stats,
        )
        assert server.most_in_flight == n if n == 1 else server.most_in_flight >= 4
    assert runs[1] == runs[8]
    examples, rejected, stats = runs[1]
    assert examples and rejected  # the filters kept some and refused some: both are compared
    assert stats["kept"] == len(examples) and stats["policy_requests"] == len(examples) + len(rejected)


def test_concurrency_needs_a_policy_that_serves_it():
    result = invoke(["eval", "--policy", "random", "--env", "shop", "-n", "2", "--concurrency", "4"])
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --concurrency 4: the policy random answers one call at a time (a model in this "
        "process, or a baseline); serve the model (llama.cpp's llama-server, vLLM, SGLang) and "
        "give its http(s)://HOST/v1, or run -j N processes\n"
    )
    result = invoke(["eval", "--policy", "random", "--env", "shop", "-n", "2", "-j", "2", "--concurrency", "4"])
    assert result.exit_code == 2 and "give one of them" in result.stderr


# --- failures ---------------------------------------------------------------------------------------------------


def test_failed_requests_are_counted_and_too_many_fail_the_run(stub, tmp_path):
    server = stub("llamacpp", fail_every=4)  # a quarter of the chat requests answer 500, retries included
    result = invoke(
        [
            "eval",
            "--policy",
            server.url,
            "--env",
            "shop",
            "-n",
            "6",
            "--max-steps",
            "3",
            "-q",
            "--policy-arg",
            "retries=0",
            "--summary",
            str(tmp_path / "s.json"),
            "--stats",
            str(tmp_path / "stats.json"),
        ]
    )
    assert result.exit_code == 1
    got = records(result.stdout)
    assert len(got) == 6  # everything is written first
    summary = json.loads((tmp_path / "s.json").read_text())
    steps = sum(e["steps"] for e in got)
    failed = sum(1 for e in got for u in e["meta"].get("unparsed", ()) if u["finish_reason"].startswith("error"))
    assert (
        summary["failed_requests"] == failed == json.loads((tmp_path / "stats.json").read_text())["failed_requests"] > 0
    )
    assert f"  failed    {failed} policy requests" in result.stderr
    assert result.stderr.endswith(
        f"Error: {failed} of {steps} requests to {server.url} ({100 * failed / steps:.1f}%) failed after their "
        f"retries, more than the 5% a run may lose: the records are written, and each failed reply is marked "
        f'(finish_reason "error: ..."), but these results are not the model\'s. Fix the server and rerun\n'
    )


def test_failed_requests_of_every_attempt_are_counted(stub, tmp_path):
    """With --attempts N a failed request of an earlier attempt is counted too (the record's own unparsed are its
    last attempt's), against every attempt's requests."""
    server = stub("llamacpp", fail_every=4)
    result = invoke(
        [
            "eval",
            "--policy",
            server.url,
            "--env",
            "shop",
            "-n",
            "6",
            "--max-steps",
            "3",
            "-q",
            "--attempts",
            "2",
            "--policy-arg",
            "retries=0",
            "--summary",
            str(tmp_path / "s.json"),
        ]
    )
    got = records(result.stdout)
    tries = [a for e in got for a in e["meta"]["attempts"]]
    assert len(tries) > len(got)  # some tasks had a second attempt
    # one chat per step, after the client's probes of the server ("Say hello.")
    steps = [i for i, chat in enumerate(server.chats) if chat["messages"][0]["role"] == "system"]
    failed = sum(1 for i in steps if i % 4 == 3)  # what the server failed
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["failed_requests"] == sum(a.get("failed_requests", 0) for a in tries) == failed
    assert summary["policy_steps"] == sum(a["steps"] for a in tries) == len(steps)
    assert result.exit_code == 1 and result.stderr.endswith(
        f"Error: {failed} of {len(steps)} requests to {server.url} ({100 * failed / len(steps):.1f}%) "
        f"failed after their retries, more than the 5% a run may lose: the records are written, and each failed "
        f'reply is marked (finish_reason "error: ..."), but these results are not the model\'s. Fix the server '
        f"and rerun\n"
    )


def test_a_server_that_dies_mid_run_stops_the_run_at_once(stub, tmp_path):
    server = stub("llamacpp", latency=0.02, die_after=30)
    out = tmp_path / "episodes.jsonl"
    # retries=4 with backoff 5 s would spend 75 s on every request to a dead server; the run must not
    started = time.monotonic()
    result = invoke(
        [
            "eval",
            "--policy",
            server.url,
            "--env",
            "shop",
            "-n",
            "40",
            "--max-steps",
            "5",
            "-q",
            "--concurrency",
            "4",
            "--policy-arg",
            "backoff=5",
            "-o",
            str(out),
        ]
    )
    assert time.monotonic() - started < 60  # a bound far above what it takes, far below one request's retries
    assert result.exit_code == 1
    assert f"Error: the policy endpoint {server.url} stopped answering (connection refused) after" in result.stderr
    assert "continue with -o FILE --resume" in result.stderr
    written = out.read_text()
    assert written == "" or written.endswith("\n")
    assert all(json.loads(line)["stop_reason"] != "error" for line in written.splitlines())
    assert len(written.splitlines()) < 40


@pytest.mark.slow  # a few seconds: a real process and a real SIGINT
def test_ctrl_c_with_requests_in_flight_leaves_whole_lines_and_no_traceback(stub, tmp_path):
    server = stub("llamacpp", latency=0.3)
    out = tmp_path / "episodes.jsonl"
    # SIGINT at its default in the child, as in a terminal: a suite started from a background shell has it ignored,
    # and the child would inherit that and run to the end (exit 0)
    proc = subprocess.Popen(
        EEXP
        + [
            "eval",
            "--policy",
            server.url,
            "--env",
            "shop",
            "-n",
            "60",
            "--max-steps",
            "5",
            "-q",
            "--concurrency",
            "8",
            "-o",
            str(out),
        ],
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert b"Traceback" not in err and err.decode().strip().endswith("eexp: interrupted")
    text = out.read_text()
    assert text.endswith("\n") and all(json.loads(line)["id"] for line in text.splitlines())


def test_a_bad_line_stops_a_concurrent_run_where_a_serial_run_stops(stub, tmp_path):
    expert = invoke(["expert", "--env", "shop", "-n", "2"]).stdout.splitlines()
    (tmp_path / "mixed.jsonl").write_text(expert[0] + "\n{broken\n" + expert[1] + "\n")
    server = stub("llamacpp", latency=0.05)
    runs = [
        invoke(["branch", "--policy", server.url, "-k", "2", "-q", "--concurrency", n, str(tmp_path / "mixed.jsonl")])
        for n in ("1", "4")
    ]
    for result in runs:
        assert result.exit_code == 1 and f"{tmp_path / 'mixed.jsonl'}:2: not valid JSON" in result.stderr
    # the first trajectory's records, in flight when line 2 was read, are written as the serial run writes them
    assert timeless(records(runs[1].stdout)) == timeless(records(runs[0].stdout)) != []
