"""Several OpenAI-compatible endpoints behind one `--policy` (eexp.policies.fleet): the records of a run against
one endpoint, calls spread by least in flight, a state's K samples on one endpoint, an endpoint that dies mid-run
(its requests sent again elsewhere, counted, nothing lost or written twice), one down at start, per-endpoint caps,
and a malformed list. Against the deterministic stub servers of tests/openai_stub.py (a reply depends on the
request's seed alone, whichever server gives it)."""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

from click.testing import CliRunner
from openai_stub import MESSAGES, StubServer
from test_concurrency import reflection

from eexp.cli import cli
from eexp.policies.fleet import FleetPolicy

SHOP = ["eval", "--env", "shop", "-q", "--temperature", "0.7"]


def invoke(args, input=None):
    return CliRunner().invoke(cli, args, input=input)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def placeless(items: list[dict]) -> list[dict]:
    """The records less their creation time and the fields that name where the requests went (the endpoints, and
    eval's policy_spec: what --policy was): all a run over several endpoints may differ in from a run over one."""
    drop = ("time", "created_utc", "endpoint", "policy_spec")
    return [{**r, "meta": {k: v for k, v in (r.get("meta") or {}).items() if k not in drop}} for r in items]


def run_chats(server: StubServer) -> list[dict]:
    """The chat requests a server got for the run, less the client's probes at start ("Say hello.")."""
    return [c for c in server.chats if c["messages"][0]["content"] != "Say hello."]


def most_at_once(*servers: StubServer) -> int:
    """The most chat requests the servers had in flight together."""
    events = sorted((t, step) for s in servers for start, end in s.timeline for t, step in ((start, 1), (end, -1)))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_eval_over_two_endpoints_writes_the_one_endpoint_records_spread_by_least_in_flight(stub):
    one = stub("llamacpp")
    fast, slow = stub("llamacpp", latency=0.01), stub("llamacpp", latency=0.2)
    args = SHOP + ["-n", "12", "--max-steps", "4", "--concurrency", "4"]
    single = invoke(args + ["--policy", one.url])
    both = invoke(args + ["--policy", f"{fast.url},{slow.url}"])
    assert single.exit_code == 0 and both.exit_code == 0, both.output
    assert placeless(records(both.stdout)) == placeless(records(single.stdout)) != []
    assert {r["meta"]["endpoint"] for r in records(both.stdout)} == {f"{fast.url},{slow.url}"}
    # every step asked once, on one of the two; the fast one, its calls done sooner, had fewer in flight and took
    # most of them (turn by turn would give each half)
    assert len(run_chats(fast)) + len(run_chats(slow)) == len(run_chats(one))
    assert len(run_chats(fast)) > 2 * len(run_chats(slow)) > 0


def test_serial_calls_take_the_endpoints_in_turn(stub):
    a, b = stub("llamacpp"), stub("llamacpp")
    result = invoke(SHOP + ["-n", "5", "--max-steps", "3", "--concurrency", "1", "--policy", f"{a.url},{b.url}"])
    assert result.exit_code == 0, result.output
    assert len(run_chats(a)) + len(run_chats(b)) == 15 and abs(len(run_chats(a)) - len(run_chats(b))) <= 1


def test_branch_sends_a_states_k_samples_to_one_endpoint_and_reflect_writes_the_one_endpoint_examples(stub, tmp_path):
    expert = invoke(["expert", "--env", "shop", "-n", "6"])
    (tmp_path / "expert.jsonl").write_text(expert.stdout)
    one, a, b = stub("llamacpp", latency=0.01), stub("llamacpp", latency=0.01), stub("llamacpp", latency=0.01)
    args = ["branch", "-k", "3", "-q", "--concurrency", "4", str(tmp_path / "expert.jsonl")]
    single = invoke(args + ["--policy", one.url, "--stats", str(tmp_path / "one.json")])
    both = invoke(args + ["--policy", f"{a.url},{b.url}", "--stats", str(tmp_path / "two.json")])
    assert single.exit_code == 0 and both.exit_code == 0, both.output
    got = records(both.stdout)
    assert placeless(got) == placeless(records(single.stdout)) and len(got) > 12
    prompts = {}
    for name, server in (("a", a), ("b", b)):
        for chat in run_chats(server):
            prompts.setdefault(json.dumps(chat["messages"]), []).append(name)
    assert len(prompts) == len(got)  # one state, one prompt
    assert all(len(where) == 3 and len(set(where)) == 1 for where in prompts.values())  # its 3 samples, together
    assert {where[0] for where in prompts.values()} == {"a", "b"}  # and the states spread over both
    stats = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two")]
    assert stats[1].pop("resent_requests") == 0
    assert {k: v for k, v in stats[0].items() if k != "seconds"} == {
        k: v for k, v in stats[1].items() if k != "seconds"
    }

    # reflect over the branches' outcomes: its examples name no endpoint, so they are the one-endpoint run's whole
    outcomes = invoke(["rollout", "-q"], input=single.stdout)
    (tmp_path / "outcomes.jsonl").write_text(outcomes.stdout)
    one.free_text = a.free_text = b.free_text = reflection  # some kept by reflect's filters, some refused
    kept, refused = [], []
    for name, policy in (("one", one.url), ("two", f"{a.url},{b.url}")):
        run = invoke(
            [
                "reflect",
                "-q",
                "--concurrency",
                "4",
                "--policy",
                policy,
                str(tmp_path / "outcomes.jsonl"),
                "--rejected",
                str(tmp_path / f"rejected-{name}.jsonl"),
            ]
        )
        assert run.exit_code == 0, run.output
        kept.append(placeless(records(run.stdout)))
        refused.append(placeless(records((tmp_path / f"rejected-{name}.jsonl").read_text())))
    assert kept[0] == kept[1] != [] and refused[0] == refused[1] != []


def test_an_endpoint_that_dies_mid_run_has_its_requests_sent_elsewhere_counted_nothing_lost(stub, tmp_path):
    expert = invoke(["expert", "--env", "shop", "-n", "6"])
    (tmp_path / "expert.jsonl").write_text(expert.stdout)
    one = stub("llamacpp")
    dying, lasting = stub("llamacpp", latency=0.02, die_after=16), stub("llamacpp", latency=0.02)
    args = ["branch", "-k", "3", "-q", "--concurrency", "4", str(tmp_path / "expert.jsonl")]
    single = invoke(args + ["--policy", one.url, "--stats", str(tmp_path / "one.json")])
    out = tmp_path / "branches.jsonl"
    both = invoke(
        args + ["--policy", f"{dying.url},{lasting.url}", "--stats", str(tmp_path / "two.json"), "-o", str(out)]
    )
    assert both.exit_code == 0, both.output
    got = records(out.read_text())
    assert placeless(got) == placeless(records(single.stdout))  # every record, once, in its order
    assert len({r["id"] for r in got}) == len(got)
    stats = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two")]
    resent = stats[1]["resent_requests"]
    assert resent > 0 and resent % 3 == 0  # whole calls: a state's 3 samples
    assert stats[1]["policy_requests"] == stats[0]["policy_requests"] and stats[1]["failed_requests"] == 0
    assert f"eexp: warning: the policy endpoint {dying.url} stopped answering (connection refused)" in both.stderr
    assert (
        f"eexp: warning: {resent} policy requests were sent again to another endpoint after {dying.url} "
        f"stopped answering"
    ) in both.stderr


def test_eval_goes_on_when_an_endpoint_dies_and_stops_when_every_one_has(stub, tmp_path):
    one = stub("llamacpp")
    args = SHOP + ["-n", "10", "--max-steps", "4", "--concurrency", "4"]
    single = invoke(args + ["--policy", one.url])
    dying, lasting = stub("llamacpp", latency=0.02, die_after=14), stub("llamacpp", latency=0.02)
    stats, summary = tmp_path / "stats.json", tmp_path / "summary.json"
    both = invoke(args + ["--policy", f"{dying.url},{lasting.url}", "--stats", str(stats), "--summary", str(summary)])
    assert both.exit_code == 0, both.output
    assert placeless(records(both.stdout)) == placeless(records(single.stdout))
    # the requests sent again, counted in --stats and --summary as in the line on stderr
    resent = json.loads(stats.read_text())["resent_requests"]
    assert resent > 0 and json.loads(summary.read_text())["resent_requests"] == resent
    assert (
        f"{resent} policy requests were sent again to another endpoint after {dying.url} stopped answering"
        in both.stderr
    )
    # both die: the run stops as it does with one endpoint, whole lines written
    # 52 answers in all: the first 4 episodes (at most 5 steps each) end within 20, and 40 need up to 200
    first, second = stub("llamacpp", latency=0.02, die_after=24), stub("llamacpp", latency=0.02, die_after=28)
    out = tmp_path / "episodes.jsonl"
    gone = invoke(
        SHOP
        + [
            "-n",
            "40",
            "--max-steps",
            "5",
            "--concurrency",
            "4",
            "-o",
            str(out),
            "--policy",
            f"{first.url},{second.url}",
        ]
    )
    assert gone.exit_code == 1
    assert (
        f"Error: every policy endpoint stopped answering ({first.url}: connection refused; {second.url}: "
        f"connection refused) after"
    ) in gone.stderr
    assert "continue with -o FILE --resume" in gone.stderr
    # the episodes that ended before both died are kept, each whole, and none is an error
    kept = out.read_text().splitlines()
    assert kept and out.read_text().endswith("\n")
    assert all(json.loads(line)["stop_reason"] != "error" for line in kept)
    # the closing line names the endpoint whose requests were sent again (the first to stop), not the last one,
    # whose requests had nowhere left to go (issue 51)
    resent_from = [
        url
        for url in (first.url, second.url)
        if f"the policy endpoint {url} stopped answering (connection refused) after" in gone.stderr
    ]
    closing = [line for line in gone.stderr.splitlines() if "policy requests were sent again" in line]
    assert len(resent_from) == 1 and len(closing) == 1, gone.stderr
    assert closing[0].endswith(
        f"policy requests were sent again to another endpoint after {resent_from[0]} stopped answering"
    ), closing


def test_an_endpoint_down_at_start_is_left_out_with_a_line_and_all_down_is_an_error(stub, tmp_path):
    one, down, up = stub("llamacpp"), stub("llamacpp"), stub("llamacpp")
    down.close()
    listing = tmp_path / "servers.txt"
    listing.write_text(f"# the two servers\n{down.url}\n\n{up.url}#8\n")
    args = SHOP + ["-n", "4", "--max-steps", "3"]
    single = invoke(args + ["--policy", one.url])
    result = invoke(args + ["--policy", f"@{listing}"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(
        f"eexp: warning: the policy endpoint {down.url} does not answer (connection "
        f"refused): going on without it, with 1 of the 2 endpoints\n"
    )
    got = records(result.stdout)
    assert placeless(got) == placeless(records(single.stdout))
    assert got[0]["meta"]["endpoint"] == up.url and got[0]["meta"]["policy_spec"] == f"@{listing}"
    other = StubServer("llamacpp")
    other.close()
    result = invoke(args + ["--policy", f"{down.url},{other.url}"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: none of the policy endpoints answers: {down.url} (connection refused); "
        f"{other.url} (connection refused) (are the servers running, and listening at these "
        f"addresses?)\n"
    )


def revive_when(server: StubServer, dead: Callable[[], bool], after: float = 0.3) -> threading.Thread:
    """Restart `server` at its address `after` seconds once `dead()` (a server restarted after a crash)."""

    def run():
        while not dead():
            time.sleep(0.01)
        time.sleep(after)
        server.revive()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_endpoint_that_comes_back_is_taken_back_and_one_that_serves_otherwise_is_not(stub, monkeypatch):
    monkeypatch.setattr(FleetPolicy, "REPROBE_SECONDS", 0.1)
    one = stub("llamacpp")
    args = SHOP + ["-n", "30", "--max-steps", "4", "--concurrency", "2"]
    single = invoke(args + ["--policy", one.url])
    # one dies at its 6th request and is restarted; one is down at start and started during the run; one started
    # during the run serves another model
    dying, late, lasting = stub("llamacpp", die_after=6), stub("llamacpp"), stub("llamacpp", latency=0.03)
    other = stub("llamacpp", model_id="another-model")
    late.close()
    other.close()
    revivals = [
        revive_when(dying, lambda: len(dying.chats) >= 6),
        revive_when(late, lambda: True),
        revive_when(other, lambda: True),
    ]
    result = invoke(args + ["--policy", f"{dying.url},{late.url},{other.url},{lasting.url}"])
    for thread in revivals:
        thread.join()
    assert result.exit_code == 0, result.output
    assert placeless(records(result.stdout)) == placeless(records(single.stdout))
    err = " ".join(result.stderr.split())
    assert f"the policy endpoint {dying.url} stopped answering" in err
    assert f"the policy endpoint {dying.url} answers again (left out: connection refused): taking it back, with" in err
    assert f"the policy endpoint {late.url} answers again (left out: connection refused): taking it back" in err
    assert (
        err.count(
            f"the policy endpoint {other.url} answers again but cannot serve as the others do (model: "
            f"'stub-model' at {dying.url}, 'another-model' at {other.url}): it stays out"
        )
        == 1
    )
    assert len(run_chats(dying)) > 6 and run_chats(late) and not run_chats(other)


def test_caps_bound_an_endpoint_and_concurrency_bounds_them_all(stub, tmp_path):
    expert = invoke(["expert", "--env", "shop", "-n", "5"])
    (tmp_path / "expert.jsonl").write_text(expert.stdout)
    small, big = stub("llamacpp", latency=0.1), stub("llamacpp", latency=0.1)
    # 6 states at once, 3 samples each: 18 requests would go out but for the limits
    result = invoke(
        [
            "branch",
            "-k",
            "3",
            "-q",
            "--concurrency",
            "6",
            "--policy",
            f"{small.url}#2,{big.url}",
            str(tmp_path / "expert.jsonl"),
        ]
    )
    assert result.exit_code == 0, result.output
    assert small.most_in_flight == 2  # its cap, though a state's 3 samples went to it together
    assert 3 <= big.most_in_flight <= 6
    assert most_at_once(small, big) <= 6
    assert run_chats(small) and run_chats(big)


def test_endpoints_that_serve_differently_are_refused(stub):
    a, b = stub("llamacpp"), stub("llamacpp", model_id="another-model")
    result = invoke(SHOP + ["-n", "2", "--policy", f"{a.url},{b.url}"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: the policy endpoints do not serve alike (model: 'stub-model' at {a.url}, "
        f"'another-model' at {b.url}): the endpoints of one --policy must serve the same model "
        f"in the same way\n"
    )


def test_a_malformed_endpoint_list_is_one_clear_error(stub, tmp_path):
    a = stub("llamacpp")
    listing = tmp_path / "servers.txt"
    listing.write_text(f"{a.url}\n# a comment\nlocalhost:8000/v1\n")
    twice = tmp_path / "twice.txt"
    twice.write_text(f"{a.url}\n{a.url}/\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    cases = {
        f"{a.url},,{a.url}": f"--policy {a.url},,{a.url}: endpoint 2: empty (expected http(s)://HOST/v1,"
        f"http(s)://HOST/v1 (each may end in #N, at most N requests in flight there), or @FILE)",
        f"{a.url},ftp://x/v1": f"--policy {a.url},ftp://x/v1: endpoint 2: 'ftp://x/v1' is not an "
        f"http(s)://HOST[:PORT]/v1 URL",
        f"{a.url}#0,{a.url}": f"--policy {a.url}#0,{a.url}: endpoint 1: {a.url}#0: what follows # is the "
        f"endpoint's cap, a whole number of requests in flight, at least 1",
        f"{a.url},http://h:port/v1": f"--policy {a.url},http://h:port/v1: endpoint 2: 'http://h:port/v1' is not an "
        f"http(s)://HOST[:PORT]/v1 URL",
        f"@{listing}": f"{listing}:3: 'localhost:8000/v1' is not an http(s)://HOST[:PORT]/v1 URL",
        f"@{twice}": f"{twice}:2: {a.url} is listed twice",
        f"@{empty}": f"{empty}: lists no endpoint (one http(s)://HOST/v1 a line)",
        f"@{tmp_path / 'absent.txt'}": f"{tmp_path / 'absent.txt'}: no such file (--policy @FILE lists the "
        f"endpoints, one URL a line)",
    }
    for spec, message in cases.items():
        result = invoke(SHOP + ["-n", "2", "--policy", spec])
        assert (result.exit_code, result.stderr) == (1, f"Error: {message}\n"), spec
    assert a.chats == []  # refused before any server was asked


def test_k_samples_via_the_policy_object(stub):
    """The policy object itself: `sample` sends the K seeds of one call to one endpoint, and the replies are those
    of the seeds, in their order."""
    from eexp.policies import load_policy

    a, b = stub("llamacpp"), stub("llamacpp")
    policy = load_policy(f"{a.url},{b.url}")
    try:
        before = len(a.chats), len(b.chats)
        replies = policy.sample(MESSAGES, admissible=["look", "buy the red mug", 'say "hi"'], seeds=[3, 4, 5, 6])
        got = len(a.chats) - before[0], len(b.chats) - before[1]
        assert sorted(got) == [0, 4]
        assert [r.seed for r in replies] == [3, 4, 5, 6] and policy.requests == 4
    finally:
        policy.close()
