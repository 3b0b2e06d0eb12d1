"""The HTTP policy at start: an endpoint that cannot be reached is one error; the server's guided decoding is probed
(vLLM's structured_outputs and guided_choice, llama.cpp's grammar, OpenAI's response_format json_schema) and the first
that works is used, with a warning where none does; failures mid-run keep their retries. Against stub servers that
implement the chat-completions endpoint with one mechanism each, and against llama-cpp-python's own server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from openai_stub import ADMISSIBLE, MESSAGES, StubServer

from eexp.cli import cli
from eexp.errors import PolicyError
from eexp.policies import load_policy
from eexp.policies.http import GUIDED

WARNING = (
    "eexp: warning: {url} obeys none of the guided decodings eexp knows (structured_outputs, vllm, llamacpp, "
    "json_schema; tried each with one request at start): actions are FREE TEXT, and a model that answers "
    "outside the admissible list scores its steps as invalid. If the server has one, give --policy-arg "
    "guided=NAME; --policy-arg guided=none says free text is meant (said once per run)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invoke(args):
    return CliRunner().invoke(cli, args)


def episodes(output: str) -> list[dict]:
    return [json.loads(x) for x in output.splitlines() if x.startswith("{")]


def comparable(records):
    """Without what differs between two servers of the same model: the time and the URL. (`created_utc` is to the
    second: two runs a second apart made this test fail about one time in eight.)"""
    return [
        {
            **r,
            "meta": {k: v for k, v in r["meta"].items() if k not in ("time", "created_utc", "endpoint", "policy_spec")},
        }
        for r in records
    ]


# --- the probe ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", list(GUIDED))
def test_the_probe_finds_the_one_mechanism_the_server_obeys(stub, mechanism, capsys):
    server = stub(mechanism)
    policy = load_policy(server.url)
    assert policy.guided == mechanism and policy.describe()["guided"] == mechanism
    # the first contact (one token, nothing guided), then the mechanisms in order until one is obeyed
    probes = server.chats[1:]
    assert server.chats[0]["max_tokens"] == 1 and len(probes) == list(GUIDED).index(mechanism) + 1
    replies = policy.sample(MESSAGES, admissible=ADMISSIBLE, seeds=[1, 2, 3, 4, 5, 6], temperature=1.0)
    assert [r.action for r in replies] == [ADMISSIBLE[s % 3] for s in (1, 2, 3, 4, 5, 6)]
    assert all(r.valid for r in replies)
    fields = {
        "structured_outputs": "structured_outputs",
        "vllm": "guided_choice",
        "llamacpp": "grammar",
        "json_schema": "response_format",
    }
    last = server.chats[-1]
    assert [f for f in fields.values() if f in last] == [fields[mechanism]]  # only the one that works is sent
    assert "warning" not in capsys.readouterr().err


def test_a_strict_server_refusing_unknown_fields_gets_json_schema(stub):
    server = stub("json_schema", strict=True)  # OpenAI's answer to guided_choice or grammar: HTTP 400
    policy = load_policy(server.url, {"retries": "0"})
    assert policy.guided == "json_schema"
    assert policy.act(MESSAGES, admissible=ADMISSIBLE, seed=4).action == ADMISSIBLE[1]


def test_a_given_mechanism_is_not_probed(stub):
    server = stub("vllm")
    policy = load_policy(server.url, {"guided": "vllm"})
    assert len(server.chats) == 1 and policy.describe()["guided"] == "vllm"
    none = load_policy(server.url, {"guided": "none"})
    assert none.act(MESSAGES, admissible=ADMISSIBLE, seed=1).action is None  # free text, as asked: no warning
    assert "guided_choice" not in server.chats[-1]


def test_constrained_without_any_mechanism_is_an_error(stub):
    server = stub(None)
    with pytest.raises(PolicyError) as e:
        load_policy(server.url, act="constrained")
    assert str(e.value) == (
        f"--act constrained over HTTP needs the server's guided decoding, and {server.url} "
        f"obeys none of structured_outputs, vllm, llamacpp, json_schema (tried each with one "
        f"request); use --act generate, or a server that has one"
    )
    with pytest.raises(PolicyError) as e:
        load_policy(server.url, {"guided": "none"}, act="constrained")
    assert str(e.value) == (
        "--act constrained over HTTP needs the server's guided decoding: give --policy-arg "
        "guided=NAME (structured_outputs, vllm, llamacpp, json_schema) or leave it to the probe "
        "(auto)"
    )
    with pytest.raises(PolicyError) as e:
        load_policy(server.url, {"guided": "outlines"})
    assert str(e.value) == (
        "--policy-arg guided=outlines: expected auto, none, structured_outputs, vllm, llamacpp, json_schema"
    )


# --- eval through the CLI -------------------------------------------------------------------------------------


def test_eval_with_guided_decoding_and_without(stub):
    args = ["--env", "shop", "-n", "2", "--max-steps", "3", "-q"]
    guided = stub("llamacpp")
    result = invoke(["eval", "--policy", guided.url] + args)
    assert result.exit_code == 0, result.output
    eps = episodes(result.stdout)
    assert len(eps) == 2 and all(e["invalid_actions"] == 0 and "unparsed" not in e["meta"] for e in eps)
    assert {e["meta"]["guided"] for e in eps} == {"llamacpp"} and "warning" not in result.stderr

    plain = stub(None)  # the failure this replaces: every action free text, 100% invalid, and not a word said
    result = invoke(["eval", "--policy", plain.url] + args)
    assert result.exit_code == 0, result.output
    eps = episodes(result.stdout)
    assert all(e["invalid_actions"] == e["steps"] == 3 for e in eps)
    assert {e["meta"]["guided"] for e in eps} == {"none"}
    assert result.stderr.splitlines().count(WARNING.format(url=plain.url)) == 1
    assert "warning" not in result.stderr.replace(WARNING.format(url=plain.url), "")


def test_eval_against_an_unreachable_endpoint_is_one_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    # with retries and backoff as long as these, a retried first contact would take minutes
    result = invoke(["eval", "--policy", url, "--env", "shop", "-n", "1", "--policy-arg", "backoff=60"])
    assert time.monotonic() - start < 30
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"Error: cannot reach the policy endpoint {url}: connection refused (is the server "
        f"running, and listening at this address?)\n"
    )


def test_eval_against_an_endpoint_that_refuses_us_is_one_error(stub):
    server = stub("vllm", status=401)
    result = invoke(["eval", "--policy", server.url, "--env", "shop", "-n", "1"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"Error: the policy endpoint {server.url} cannot be used: HTTP 401 from {server.url}/models: invalid api key\n"
    )
    assert server.chats == []


def test_failures_mid_run_are_retried_and_the_result_is_whole(stub):
    args = ["--env", "shop", "-n", "4", "--max-steps", "5", "-q", "--policy-arg", "backoff=0.01"]
    clean = stub("vllm")
    expected = invoke(["eval", "--policy", clean.url] + args)
    assert expected.exit_code == 0, expected.output
    start = 1 + 2 + 5  # after the first contact and the two probes, the 6th request of the episodes
    assert len(clean.chats) > start + 8  # mid-run
    flaky = stub("vllm", fail={start, start + 1, start + 2, start + 7})  # 503, dropped, 503 ... dropped
    result = invoke(["eval", "--policy", flaky.url] + args)
    assert result.exit_code == 0, result.output
    assert len(flaky.chats) == len(clean.chats) + 4  # each failure retried
    got = episodes(result.stdout)
    assert comparable(got) == comparable(episodes(expected.stdout))
    assert all(e["invalid_actions"] == 0 and "unparsed" not in e["meta"] for e in got)
    assert "warning" not in result.stderr


# --- llama-cpp-python's own server, serving a tiny f32 GGUF -----------------------------------------------------


@pytest.fixture(scope="module")
def f32_gguf(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "tiny.f32.gguf"
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "-o", str(path), "--quant", "f32"])
    assert result.exit_code == 0, result.output
    return path


def server_missing() -> str | None:
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as e:
        return (
            f"llama-cpp-python's server extra is not installed ({e}): pip install fastapi uvicorn sse-starlette "
            f"starlette-context pydantic-settings"
        )
    return None


@pytest.mark.slow  # ~30 s: a llama_cpp.server process, then the same eval in process and through it
def test_eval_through_llama_cpp_python_server_matches_the_gguf_policy(f32_gguf, tmp_path):
    pytest.importorskip("llama_cpp")
    if reason := server_missing():
        pytest.skip(reason)
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(f32_gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "1",
            "--seed",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        args = ["--env", "shop", "-n", "5", "--max-steps", "4", "-q"]
        served = invoke(["eval", "--policy", url] + args)
        assert served.exit_code == 0, served.output
        unguided = invoke(["eval", "--policy", url, "--policy-arg", "guided=none"] + args)
        assert unguided.exit_code == 0, unguided.output
        local = invoke(["eval", "--policy", str(f32_gguf), "--policy-arg", "n_threads=1"] + args)
        assert local.exit_code == 0, local.output
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    over_http, in_process = episodes(served.stdout), episodes(local.stdout)
    assert {e["meta"]["guided"] for e in over_http} == {"llamacpp"}  # its grammar field, found by the probe
    assert sum(e["invalid_actions"] for e in over_http) == 0 and "warning" not in served.stderr
    assert [e["actions"] for e in over_http] == [e["actions"] for e in in_process]
    assert len({a for e in over_http for a in e["actions"]}) > 2
    # what the probe spares: this model's free text is never an admissible action
    assert all(e["invalid_actions"] == e["steps"] > 0 for e in episodes(unguided.stdout))


# --- --act score over HTTP: a vLLM-like server (/tokenize with messages, /v1/completions with echo) ----------------


class ScoringServer(StubServer):
    """The stub, plus what vLLM gives for scoring, computed with a real (tiny) transformers model: POST /tokenize
    renders chat messages with the model's template, and /v1/completions with `echo` returns the log-probability of
    every prompt token."""

    def __init__(self, checkpoint):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        self.scored = 0
        super().__init__()

    def extra_post(self, path: str, body: dict):
        if path == "/tokenize":
            ids = self.tokenizer.apply_chat_template(
                body["messages"],
                tokenize=True,
                return_dict=True,
                add_generation_prompt=body.get("add_generation_prompt", True),
            )
            return {"tokens": list(ids["input_ids"]), "count": len(ids["input_ids"])}
        if path.endswith("/completions") and body.get("echo"):
            ids = body["prompt"]
            with self.torch.no_grad():
                logits = self.model(self.torch.tensor([ids])).logits[0].double()
            logp = self.torch.log_softmax(logits, dim=-1)
            values = [None] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
            self.scored += 1
            return {"choices": [{"text": "", "logprobs": {"token_logprobs": values + [-1.0]}}]}
        return None


def test_act_score_over_http_ranks_as_the_local_model_does(tiny_checkpoint):
    from eexp.policies.hf import TransformersPolicy

    server = ScoringServer(tiny_checkpoint)
    try:
        remote = load_policy(server.url, act="score")
        local = TransformersPolicy(str(tiny_checkpoint), act="score")
        assert remote.describe()["scoring"] == "tokenize+echo"
        # the server's log-likelihoods are those the local backend computes, token for token
        assert remote._score(MESSAGES, ADMISSIBLE) == pytest.approx(
            [ll for _, ll in sorted(local.rank(MESSAGES, ADMISSIBLE), key=lambda p: ADMISSIBLE.index(p[0]))], abs=1e-4
        )
        for temperature in (0.0, 1.0):
            got = remote.sample(MESSAGES, admissible=ADMISSIBLE, seeds=[3, 4, 5], temperature=temperature)
            want = local.sample(MESSAGES, admissible=ADMISSIBLE, seeds=[3, 4, 5], temperature=temperature)
            assert [(r.action, r.seed) for r in got] == [(r.action, r.seed) for r in want]
        # the probe's echo, then one per action for each of the three rankings (one per call, whatever the seeds)
        assert server.scored == 1 + 3 * len(ADMISSIBLE)
    finally:
        server.close()


def test_eval_act_score_over_http_plays_the_local_models_episodes(tiny_checkpoint):
    server = ScoringServer(tiny_checkpoint)
    try:
        args = ["--env", "shop", "-n", "3", "--max-steps", "3", "--act", "score", "-q"]
        remote = invoke(["eval", "--policy", server.url, "--concurrency", "3"] + args)
        local = invoke(["eval", "--policy", str(tiny_checkpoint)] + args)
    finally:
        server.close()
    assert remote.exit_code == 0 and local.exit_code == 0, remote.output + local.output
    assert [e["actions"] for e in episodes(remote.stdout)] == [e["actions"] for e in episodes(local.stdout)]


def test_act_score_against_a_server_that_cannot_score_says_what_it_serves(stub):
    server = stub("llamacpp")
    with pytest.raises(PolicyError) as e:
        load_policy(server.url, act="score")
    assert str(e.value).startswith(
        "--act score over HTTP needs a server that renders chat messages to token ids (POST /tokenize with "
        "messages, as vLLM and SGLang do) and gives the log-probability of every prompt token (/v1/completions with "
        f"echo and logprobs, as vLLM does); {server.url} does not (HTTP 404"
    )
    assert str(e.value).endswith(
        "It serves --act generate, and --act constrained where it has guided decoding (the default probes for it)"
    )


# --- --act think over HTTP: the thought, then the action as the continuation of that reply -------------------------

THOUGHT = "Thought: the goal names a red mug, so I buy it."
CHOICES = [f"Action: {a}" for a in ADMISSIBLE]


def scripted(thought: str, continuation: str = ""):
    """A stub's free text: the rest of `thought` (a reply beginning with `Thought:`) for a reply begun with the
    prefill `Thought:`, `continuation` for any other."""

    def answer(body):
        if body.get("continue_final_message") and body["messages"][-1]["content"] == "Thought:":
            return thought[len("Thought:") :]
        return continuation

    return answer


class OpenEnv:
    """A context environment whose admissible list is a sample of an open action space."""

    closed_actions = False


def test_think_asks_for_the_thought_then_the_action_after_it(stub):
    server = stub("vllm", free_text=scripted(f"{THOUGHT}\nAction: look"))
    policy = load_policy(server.url, act="think", max_tokens=40)
    assert policy.describe()["think"] == "continue_final_message" and policy.describe()["guided"] == "vllm"
    # at start: the first contact, one continuation (an unfinished assistant turn, one token), then the guided probe,
    # continuing a reply too, as think's requests will
    probe = server.chats[1]
    assert probe["messages"][-1]["role"] == "assistant" and probe["max_tokens"] == 1
    for request in server.chats[1:]:
        assert (request["continue_final_message"], request["add_generation_prompt"]) == (True, False)
    assert [c.get("guided_choice") for c in server.chats[2:]] == [None, ["\nAction: probe one", "\nAction: probe two"]]
    start = len(server.chats)
    reply = policy.act(MESSAGES, admissible=ADMISSIBLE, seed=4, temperature=0.0)
    thought, action = server.chats[start:]
    # the thought: the reply begun with `Thought:` and continued, free text, the call's seed and temperature, the
    # policy's --max-tokens (no thought budget given)
    assert thought["messages"] == MESSAGES + [{"role": "assistant", "content": "Thought:"}]
    assert (thought["seed"], thought["temperature"], thought["max_tokens"]) == (4, 0.0, 40)
    assert (thought["continue_final_message"], thought["add_generation_prompt"]) == (True, False)
    assert "guided_choice" not in thought
    policy.thought_tokens = 25  # eval's thought budget (--thought-tokens, or the model card's)
    policy.act(MESSAGES, admissible=ADMISSIBLE, seed=4, temperature=0.0)
    assert server.chats[-2]["max_tokens"] == 25 and server.chats[-2]["messages"][-1]["content"] == "Thought:"
    start = len(server.chats)
    # the action: the same messages, the reply up to its `Action:` line as the final assistant message, continued,
    # guided to the admissible actions, each after the newline that the reply had before its `Action:` line
    assert action["messages"] == MESSAGES + [{"role": "assistant", "content": THOUGHT}]
    assert (action["continue_final_message"], action["add_generation_prompt"]) == (True, False)
    assert action["guided_choice"] == [f"\n{c}" for c in CHOICES] and (action["seed"], action["temperature"]) == (
        4,
        0.0,
    )
    # the guided answer is the action (the stub's seed picks ADMISSIBLE[4 % 3]), not the one the thought's reply wrote
    assert (reply.action, reply.valid, reply.seed, reply.finish_reason) == ("buy the red mug", True, 0, "stop")
    assert reply.text == f"{THOUGHT}\nAction: buy the red mug"
    assert (reply.thought, reply.thought_cut) == ("the goal names a red mug, so I buy it.", False)
    # K seeds: two requests each, each reply its own seed's
    replies = policy.sample(MESSAGES, admissible=ADMISSIBLE, seeds=[5, 6], temperature=1.0)
    assert [(r.action, r.seed) for r in replies] == [(ADMISSIBLE[2], 5), (ADMISSIBLE[0], 6)]
    assert sorted(c["seed"] for c in server.chats[start:]) == [5, 5, 6, 6]
    assert policy.requests == 4 and policy.failed_requests == 0


def test_think_a_cut_thought_gets_its_action_after_it(stub):
    server = stub("llamacpp", free_text=scripted("Thought: I am not sure whether  "))
    policy = load_policy(server.url, act="think")
    reply = policy.act(MESSAGES, admissible=ADMISSIBLE, seed=3, temperature=0.0)
    assert (reply.thought, reply.thought_cut) == ("I am not sure whether", True)
    # the thought as it stopped, closed by a blank line (the SR target's layout), then the guided action
    assert server.chats[-1]["messages"][-1] == {"role": "assistant", "content": "Thought: I am not sure whether"}
    assert server.continued[-1] == "Thought: I am not sure whether\n\nAction: look"
    assert "grammar" in server.chats[-1] and "grammar" not in server.chats[-2]
    assert reply.text == "Thought: I am not sure whether\n\nAction: look" and reply.action == "look" and reply.valid


@pytest.mark.parametrize("trims", [False, True], ids=["keeps", "trims"])
def test_think_the_action_follows_the_thought_on_its_own_line_whatever_the_template_does(stub, trims):
    """vLLM continues a message through transformers' chat template, which drops its trailing whitespace where the
    template trims a message's content (Llama-3's does): the newline before `Action:` is generated with the action,
    so the model continues the reply laid out as the SR targets are, `Thought: ...` then `Action: ...` on a line of
    its own, with either template."""
    server = stub("vllm", trims=trims, free_text=scripted(f"{THOUGHT}\nAction: look"))
    policy = load_policy(server.url, act="think")
    assert policy.guided == "vllm"
    reply = policy.act(MESSAGES, admissible=ADMISSIBLE, seed=4, temperature=0.0)
    assert server.continued[-1] == reply.text == f"{THOUGHT}\nAction: buy the red mug"


def test_think_takes_the_continuation_from_a_server_that_answers_the_whole_message(stub):
    """llama-server answers a continued message with all of it, the prefix first (vLLM with what follows it): the
    reply holds the thought once all the same."""
    server = stub("llamacpp", echoes=True, free_text=scripted(f"{THOUGHT}\nAction: look", continuation=" open it"))
    policy = load_policy(server.url, act="think")
    assert policy.guided == "llamacpp"  # the probe's continued reply was read past its echo
    reply = policy.act(MESSAGES, admissible=ADMISSIBLE, seed=4, temperature=0.0)
    assert reply.text == f"{THOUGHT}\nAction: buy the red mug" and reply.action == "buy the red mug"
    server.free_text = scripted("Thought: the door", continuation=" open it\nmore")
    reply = policy.act(MESSAGES, admissible=None, seed=1, temperature=0.0)
    assert reply.text == "Thought: the door\n\nAction: open it" and reply.action == "open it"


def test_think_an_empty_thought_is_no_thought(stub):
    """A model that closes its `Thought:` at once writes no thought (the step counts as one without); the action
    continues what it wrote, on a line of its own."""
    server = stub("vllm", free_text=scripted("Thought:\nAction: look"))
    policy = load_policy(server.url, act="think")
    reply = policy.act(MESSAGES, admissible=ADMISSIBLE, seed=4, temperature=0.0)
    assert (reply.thought, reply.thought_cut, reply.text) == (None, False, "Thought:\nAction: buy the red mug")
    assert server.chats[-1]["messages"] == MESSAGES + [{"role": "assistant", "content": "Thought:"}]
    assert server.chats[-1]["guided_choice"] == [f"\n{c}" for c in CHOICES]


def test_think_in_an_open_action_space_takes_or_generates_the_action(stub):
    server = stub("vllm", free_text=scripted("Thought: the door is shut.\nAction: open the red door\nmore text"))
    policy = load_policy(server.url, act="think", max_tokens=40)
    context = {"env": OpenEnv()}
    start = len(server.chats)
    reply = policy.act(MESSAGES, admissible=ADMISSIBLE, seed=1, temperature=0.0, context=context)
    # the action the model wrote after its thought is taken: one request, nothing guided
    assert (reply.action, reply.thought, reply.valid, reply.thought_cut) == (
        "open the red door",
        "the door is shut.",
        None,
        False,
    )
    assert len(server.chats) == start + 1 and "guided_choice" not in server.chats[-1]
    # a cut thought: the model continues its own reply after `Action:`, and the first line it writes is the action
    server.free_text = scripted("Thought: the door", continuation=" open the door\nThought: and then")
    for admissible, ctx in ((ADMISSIBLE, context), (None, None)):
        start = len(server.chats)
        reply = policy.act(MESSAGES, admissible=admissible, seed=1, temperature=0.0, context=ctx)
        assert (reply.action, reply.thought, reply.thought_cut) == ("open the door", "the door", True)
        assert reply.text == "Thought: the door\n\nAction: open the door"
        after = server.chats[start + 1]
        assert after["messages"][-1] == {"role": "assistant", "content": "Thought: the door\n\nAction:"}
        assert after["continue_final_message"] and "guided_choice" not in after and after["max_tokens"] == 40


def test_think_failed_requests_are_retried_then_counted(stub, capsys):
    # after the first contact and the continuation probe (the mechanism is given): the 1st step's thought (2) fails
    # for good, the 2nd step's action (4) too; the 3rd step's thought (5, a dropped connection) is retried once
    server = stub("vllm", fail={2, 4, 5}, free_text=scripted(THOUGHT))
    policy = load_policy(server.url, {"guided": "vllm", "retries": "0", "backoff": "0.01"}, act="think")
    first, second = (policy.act(MESSAGES, admissible=ADMISSIBLE, seed=1, temperature=0.0) for _ in range(2))
    assert len(server.chats) == 5  # a failed thought asks for no action
    for reply in (first, second):
        assert reply.action is None and reply.valid is False and reply.finish_reason.startswith("error: HTTP 503")
        assert (reply.thought, reply.thought_cut) == (None, False)
    assert (policy.requests, policy.failed_requests) == (2, 2)  # per reply, as every mode counts
    policy.opts["retries"] = 1
    third = policy.act(MESSAGES, admissible=ADMISSIBLE, seed=2, temperature=0.0)
    assert third.valid and third.thought and len(server.chats) == 8
    assert (policy.requests, policy.failed_requests) == (3, 2)
    assert capsys.readouterr().err.count("the reply is marked failed") == 2


def test_think_needs_a_server_that_continues_a_reply(stub):
    server = stub("json_schema", strict=True)  # OpenAI: HTTP 400 for a field it does not know
    with pytest.raises(PolicyError) as e:
        load_policy(server.url, act="think")
    assert str(e.value) == (
        f"--act think over HTTP asks for the action as the continuation of the model's own reply (its thought): it "
        f"needs a server that continues a final assistant message (continue_final_message, as vLLM and llama.cpp's "
        f"llama-server do); {server.url} does not (HTTP 400 from {server.url}/chat/completions: Unrecognized request "
        f"argument supplied: add_generation_prompt, continue_final_message). It serves --act generate, and --act "
        f"constrained where it has guided decoding"
    )
    assert len(server.chats) == 2  # the first contact, then one probe: no retries


def test_think_needs_guided_decoding_for_the_action(stub):
    server = stub(None)
    with pytest.raises(PolicyError) as e:
        load_policy(server.url, act="think")
    assert str(e.value) == (
        f"--act think over HTTP needs the server's guided decoding to choose the action after "
        f"the thought, and {server.url} obeys none of structured_outputs, vllm, llamacpp, "
        f"json_schema (tried each with one request); use --act generate, or a server that has one"
    )
    with pytest.raises(
        PolicyError,
        match=r"^--act think over HTTP needs the server's guided decoding to choose the "
        r"action after the thought: give --policy-arg guided=NAME",
    ):
        load_policy(server.url, {"guided": "none"}, act="think")


def test_eval_act_think_over_http_records_thoughts(stub):
    server = stub("llamacpp")  # the stub's free text never reaches `Action:`: every thought is cut
    result = invoke(
        ["eval", "--policy", server.url, "--env", "shop", "-n", "2", "--max-steps", "3", "--act", "think", "-q"]
    )
    assert result.exit_code == 0, result.output
    eps = episodes(result.stdout)
    assert len(eps) == 2
    for e in eps:
        assert (e["meta"]["act"], e["meta"]["think"], e["meta"]["guided"]) == (
            "think",
            "continue_final_message",
            "llamacpp",
        )
        assert e["invalid_actions"] == 0 and e["meta"]["thoughts_cut"] == e["steps"] == len(e["thoughts"]) > 0
        assert set(e["thoughts"]) == {"I think I should look around first, then decide what to buy."}


# --- a deadline per request (issue 65) ----------------------------------------------------------------------------


@pytest.fixture
def dripping_server():
    """A loopback server that answers every request with a whole, valid 290-byte HTTP reply, one byte a second:
    urllib's per-read timeout never trips on it."""
    import threading

    body = json.dumps({"data": [{"id": "m"}], "pad": "x" * 180}).encode()
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def drip(conn):
        with conn:
            conn.recv(65536)
            for i in range(len(reply)):
                if stop.wait(1.0):
                    return
                try:
                    conn.sendall(reply[i : i + 1])
                except OSError:
                    return

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    listener.close()


def test_timeout_is_a_deadline_for_the_whole_request_against_a_server_that_drips(dripping_server):
    """Before, `timeout` bounded each socket read: a reply a byte a second held eval for as long as it dripped (45 s
    seen), silent. Now the request is cut at its deadline, and the run stops with one line."""
    start = time.monotonic()
    result = invoke(["eval", "--policy", dripping_server, "--env", "shop", "-n", "1", "--policy-arg", "timeout=2"])
    took = time.monotonic() - start
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"Error: the policy endpoint {dripping_server} cannot be used: {dripping_server}/models: "
        "no whole answer within the 2 s timeout (--policy-arg timeout=SECONDS)\n"
    )
    assert took < 6, took


def test_the_deadline_holds_mid_run_and_in_the_health_check(dripping_server):
    """After the start: a dripping request is cut at the deadline, and so is the quick look at the server that
    follows it (no_answer): the run stops, said once, within about two deadlines."""
    import urllib.request

    from eexp.policies.http import DeadlinePassed, fetch, no_answer

    start = time.monotonic()
    with pytest.raises(DeadlinePassed):
        fetch(urllib.request.Request(dripping_server + "/models"), 1.5)
    assert no_answer(dripping_server, 1.5) == "no whole answer within the 1.5 s timeout (--policy-arg timeout=SECONDS)"
    assert time.monotonic() - start < 5


def test_warnings_from_threads_are_one_write_each(monkeypatch):
    """`print` writes a line's text and its newline apart, so two threads' warnings could share one line of stderr
    (seen once in seven runs). Each warning is one write of one whole line now."""
    import threading

    from eexp.policies import chat

    class Recording:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)
            time.sleep(0.001)  # let another thread in between two writes, if there are two
            return len(text)

        def flush(self):
            pass

    stderr = Recording()
    monkeypatch.setattr(sys, "stderr", stderr)
    threads = [
        threading.Thread(target=lambda i=i: [chat.warn(f"thread {i} line {j}") for j in range(20)]) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stderr.writes) == 80
    assert all(
        w.startswith("eexp: warning: thread ") and w.endswith("\n") and w.count("\n") == 1 for w in stderr.writes
    )


def test_a_served_model_file_on_this_machine_is_hashed_as_a_local_run_hashes_it(stub, tmp_path):
    """llama-server and vLLM name what they serve (/v1/models' id and root); where that file or folder is on this
    machine, eval's records carry its hash, the model_sha256 a run of the file itself records (issue 61: the
    ALFWorld calibration's episodes, evaluated through llama-server, had an empty one). A name that is not here
    leaves it unknown."""
    from eexp.card import Card, write_card
    from eexp.files import content_hash

    folder = tmp_path / "served"
    folder.mkdir()
    write_card(folder, Card(command="finetune"))
    (folder / "model.safetensors").write_bytes(b"weights")
    runner = CliRunner()
    for model_id, want in ((str(folder), content_hash([str(folder)])), ("elsewhere/model.gguf", "")):
        server = stub("llamacpp", model_id=model_id)
        result = runner.invoke(
            cli,
            [
                "eval",
                "--policy",
                server.url,
                "--env",
                "shop",
                "-n",
                "1",
                "--max-steps",
                "1",
                "--act",
                "constrained",
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout.splitlines()[0])
        assert record["meta"]["model_sha256"] == want
    assert want == "" and len(content_hash([str(folder)])) == 64


def test_a_server_on_this_machine_is_reached_without_the_environments_proxy(monkeypatch):
    """http_proxy from the environment is for servers elsewhere: a request to 127.0.0.1 through it would carry the
    prompts off the machine (urllib's default, unless no_proxy names loopback)."""
    import http.server
    import threading
    import urllib.request

    from eexp.policies import http as eexp_http

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # the opener eexp makes, as if http_proxy were set (TEST-NET-1: nothing there)
        monkeypatch.setattr(eexp_http, "_OPENER", eexp_http._opener({"http": "http://192.0.2.1:3128"}))
        for host in ("127.0.0.1", "localhost"):
            url = f"http://{host}:{server.server_address[1]}/"
            assert eexp_http.fetch(urllib.request.Request(url), timeout=5) == b"hello"
    finally:
        server.shutdown()


def test_a_redirect_is_an_answer_not_followed():
    """A policy server that redirects is not followed to wherever it points (the prompts and the key are for the
    endpoint named), and says so in one line. (urllib followed it, and the deadline handler then failed with a
    traceback: AttributeError 'Request' object has no attribute 'deadline'.)"""
    import http.server
    import threading

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def redirect(self):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/v1" + self.path[len("/v1") :])
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = redirect

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        result = invoke(["eval", "--policy", url, "--env", "shop", "-n", "1"])
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"Error: the policy endpoint {url} cannot be used: HTTP 302 from {url}/models: a redirect to "
        "http://127.0.0.1:9/v1/models, not followed\n"
    )
