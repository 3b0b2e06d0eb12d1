"""Policies: the loader, action parsing, the baselines, and each model backend on the same conversation."""

from __future__ import annotations

import pytest
from by_hand import install_apart

from eexp.envs.base import Env
from eexp.errors import PolicyError
from eexp.policies import derive_seed, load_policy
from eexp.policies.actions import match_admissible, reply_from_text

ADMISSIBLE = ["go north", "go south", "take lamp", "open door"]


class TinyEnv(Env):
    """A two-room world just big enough for the baselines: the expert takes the lamp, then goes north."""

    name = "tiny"
    closed_actions = True

    def tasks(self, split):
        return [{"id": "t0", "split": split, "goal": "take the lamp and go north"}]

    def reset(self, task):
        self.steps = []
        return "You are in a hall. A lamp is here."

    def step(self, action):
        self.steps.append(action)
        return "ok", 0.0, False, {"valid": True}

    def expert(self, task):
        return ["take  lamp", "go north"]

    def success(self):
        return self.steps == ["take lamp", "go north"]

    def admissible(self):
        return ADMISSIBLE

    def canonicalize(self, action):
        return " ".join(action.lower().split())


# --- action parsing -------------------------------------------------------------------------------------------


def test_reply_parsing_matches_admissible_and_keeps_unparseable():
    r = reply_from_text("Thought: the lamp first.\nAction:  Take   Lamp ", ADMISSIBLE)
    assert (r.action, r.thought, r.valid) == ("take lamp", "the lamp first.", True)
    # not in the list: kept (canonicalized) and marked invalid, so eval can count it
    r = reply_from_text("Action: dance", ADMISSIBLE)
    assert (r.action, r.valid) == ("dance", False)
    # no Action line: recorded with its raw text, action None
    r = reply_from_text("I think I would go north eventually", ADMISSIBLE)
    assert r.action is None and r.valid is False and r.text == "I think I would go north eventually"
    # a bare admissible action is unambiguous
    assert reply_from_text("open door\n", ADMISSIBLE).action == "open door"
    # open action space: canonical text, validity unknown
    r = reply_from_text("Action: search[red  shoes]", None)
    assert (r.action, r.valid) == ("search[red shoes]", None)


def test_matching_uses_the_context_envs_canonicalization():
    env = TinyEnv()
    r = reply_from_text("Action: GO NORTH", ADMISSIBLE, context={"env": env})
    assert r.action == "go north" and r.valid
    assert match_admissible("go  north", ["go north"], str.strip) is None  # strip alone keeps inner spaces


# --- loader ---------------------------------------------------------------------------------------------------


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(str(tmp_path / "missing"))
    with pytest.raises(PolicyError, match="no such GGUF file"):
        load_policy(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="neither a transformers checkpoint"):
        load_policy(str(tmp_path / "empty"))
    with pytest.raises(PolicyError, match="takes no --policy-arg"):
        load_policy("random", {"n_ctx": "10"})
    with pytest.raises(PolicyError, match="unknown --act"):
        load_policy("random", act="guess")


# --- baselines ------------------------------------------------------------------------------------------------


def test_random_is_uniform_and_seeded():
    policy = load_policy("random")
    seeds = [derive_seed(0, "traj#0", k) for k in range(200)]
    replies = policy.sample([], admissible=ADMISSIBLE, seeds=seeds)
    assert all(r.valid and r.action in ADMISSIBLE for r in replies)
    assert [r.seed for r in replies] == seeds
    assert {r.action for r in replies} == set(ADMISSIBLE)  # 200 draws over 4 actions hit every one
    again = policy.sample([], admissible=ADMISSIBLE, seeds=seeds)
    assert [r.action for r in again] == [r.action for r in replies]
    # no list and no environment to ask: a failed reply, not an exception
    r = policy.act([], admissible=None, seed=5)
    assert r.action is None and r.finish_reason.startswith("error:")
    # an open state with an environment that lists actions: uniform over those
    r = policy.act([], admissible=None, seed=5, context={"env": TinyEnv()})
    assert r.action in ADMISSIBLE


def test_oracle_follows_the_expert():
    env, policy = TinyEnv(), load_policy("oracle")
    task = env.tasks("train")[0]
    env.reset(task)
    for step in range(2):
        r = policy.act([], admissible=env.admissible(), seed=0, context={"env": env, "task": task, "step": step})
        assert r.valid
        env.step(r.action)
    assert env.success()
    r = policy.act([], admissible=ADMISSIBLE, seed=0, context={"env": env, "task": task, "step": 2})
    assert r.action is None and "no action at step 2" in r.finish_reason
    assert policy.act([], admissible=ADMISSIBLE, seed=0).finish_reason.startswith("error:")


# --- model backends -------------------------------------------------------------------------------------------

import json  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from eexp.prompts import Serializer  # noqa: E402

STATE = {
    "goal": "take the lamp and go north",
    "history": [
        {"observation": "You wake up in a hall.", "action": "look"},
        {"observation": "A hall. A lamp is here.", "action": "inventory"},
    ],
    "observation": "You carry nothing. A lamp is here.",
    "admissible": ADMISSIBLE,
}
MESSAGES = Serializer().policy_messages(STATE)


@pytest.fixture(scope="module")
def hf_policy(tiny_checkpoint):
    return load_policy(str(tiny_checkpoint), max_tokens=12)


def test_transformers_seeds_reproduce_and_differ(hf_policy):
    a = hf_policy.generate(MESSAGES, seed=11, temperature=1.0)
    assert hf_policy.generate(MESSAGES, seed=11, temperature=1.0) == a and a.seed == 11
    others = {hf_policy.generate(MESSAGES, seed=s, temperature=1.0).text for s in range(20, 26)}
    assert len(others | {a.text}) > 1  # a random tiny model: different seeds, different samples
    # K back-to-back samples on one prompt (shared KV) equal K separate calls with the same seeds
    seeds = [derive_seed(0, "t#1", k) for k in range(4)]
    batch = hf_policy.sample(MESSAGES, admissible=None, seeds=seeds, temperature=1.0)
    assert [r.seed for r in batch] == seeds
    fresh = load_policy(hf_policy.spec, max_tokens=12)
    assert [fresh.act(MESSAGES, admissible=None, seed=s, temperature=1.0).text for s in seeds] == [
        r.text for r in batch
    ]
    # greedy: no seed recorded, same text every time
    g = hf_policy.generate(MESSAGES, seed=5, temperature=0.0)
    assert g.seed == 0 and g.text == hf_policy.generate(MESSAGES, seed=6, temperature=0.0).text


def test_transformers_score_matches_a_plain_forward_pass(hf_policy):
    """The batched, KV-sharing log-likelihoods equal a forward pass over prompt + reply without any cache."""
    import torch

    ranked = dict(hf_policy.rank(MESSAGES, ADMISSIBLE))
    model, tok = hf_policy.model, hf_policy.tokenizer
    for action in ADMISSIBLE:
        prompt = hf_policy.encode_chat(MESSAGES)
        full = hf_policy.encode_chat(
            MESSAGES + [{"role": "assistant", "content": f"Action: {action}"}], add_generation_prompt=False
        )
        reply = full[len(prompt) :]
        reply = reply[: reply.index(tok.convert_tokens_to_ids("<|im_end|>")) + 1]  # through the end of turn
        with torch.no_grad():
            logits = model(torch.tensor([prompt + reply])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        expected = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(reply))
        assert ranked[action] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("act", ["constrained", "score"])
def test_constrained_and_score_stay_in_the_list(tiny_checkpoint, act):
    policy = load_policy(str(tiny_checkpoint), act=act)
    admissible = ADMISSIBLE + ['say "hi"\\there', "take lamp from the table"]
    # score mode samples softmax(loglik / T): the tiny model's log-likelihoods are tens of nats apart
    for temperature in (0.0, 1.5 if act == "constrained" else 30.0):
        replies = policy.sample(MESSAGES, admissible=admissible, seeds=list(range(1, 13)), temperature=temperature)
        assert all(r.action in admissible and r.valid for r in replies), [r.text for r in replies]
        if temperature > 0:
            assert len({r.action for r in replies}) > 1  # sampling, not argmax
            again = policy.sample(MESSAGES, admissible=admissible, seeds=list(range(1, 13)), temperature=temperature)
            assert [r.action for r in again] == [r.action for r in replies]
    if act == "score":  # greedy score mode is the argmax of the ranking
        best = policy.rank(MESSAGES, admissible)[0][0]
        assert policy.act(MESSAGES, admissible=admissible, seed=3, temperature=0.0).action == best


def test_default_act_is_constrained_with_a_list_and_generate_without(hf_policy):
    assert hf_policy.mode_for(ADMISSIBLE) == "constrained" and hf_policy.mode_for(None) == "generate"
    r = hf_policy.act(MESSAGES, admissible=ADMISSIBLE, seed=1, temperature=1.0)
    assert r.valid and r.action in ADMISSIBLE


def test_open_action_space_is_not_constrained_to_its_sample(hf_policy):
    """An environment whose admissible() is only a sample of an open space (closed_actions False): by default the
    model generates freely, and an action outside the sample is not declared invalid (the environment decides)."""
    env = TinyEnv()
    env.closed_actions = False
    context = {"env": env}
    assert hf_policy.mode_for(ADMISSIBLE, context) == "generate"
    assert hf_policy.mode_for(ADMISSIBLE) == "constrained"
    r = reply_from_text("Action: cd('docs')", ADMISSIBLE, context=context)
    assert (r.action, r.valid) == ("cd('docs')", None)
    assert reply_from_text("Action: Go North", ADMISSIBLE, context=context).valid is True


def test_context_overflow_drops_oldest_history(tiny_checkpoint, capsys):
    state = dict(STATE, history=[{"observation": f"room {i} " * 20, "action": f"go {i}"} for i in range(12)])
    messages = Serializer(history=12, max_history_chars=2000).policy_messages(state)
    policy = load_policy(str(tiny_checkpoint), {"n_ctx": "400"}, max_tokens=16)
    assert len(policy.encode_chat(messages)) > 400
    r = policy.act(messages, admissible=None, seed=1, temperature=1.0)  # no exception mid-run
    assert r.finish_reason in ("stop", "length")
    assert "did not fit the context of 400 tokens" in capsys.readouterr().err
    # score mode fits the prompt too
    scored = load_policy(str(tiny_checkpoint), {"n_ctx": "400"}, act="score")
    assert scored.act(messages, admissible=ADMISSIBLE, seed=1).action in ADMISSIBLE


def test_peft_adapter_directory(tiny_checkpoint, tmp_path, hf_policy, monkeypatch):
    """An adapter directory loads on the base named in its adapter_config.json and changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # a visible change, deterministic
            param.data.fill_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    adapter_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_checkpoint)
    policy = load_policy(str(tmp_path / "adapter"))
    assert policy.adapter and policy.base == str(tiny_checkpoint)
    assert dict(policy.rank(MESSAGES, ADMISSIBLE)) != pytest.approx(dict(hf_policy.rank(MESSAGES, ADMISSIBLE)))
    assert policy.sha256 != hf_policy.sha256
    # a base that is not on disk, a Hub id not in the Hugging Face cache, offline: a clear error, nothing downloaded
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    adapter_cfg["base_model_name_or_path"] = "someone/some-model"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_cfg))
    with pytest.raises(
        PolicyError,
        match="the adapter's base: someone/some-model: no such local path, and not in the Hugging Face cache",
    ):
        load_policy(str(tmp_path / "adapter"))
    adapter_cfg["base_model_name_or_path"] = str(tmp_path / "gone")  # a folder that is not there
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_cfg))
    with pytest.raises(PolicyError, match="not a local directory"):
        load_policy(str(tmp_path / "adapter"))
    # weights in a pickle (adapter_model.bin), which PEFT would unpickle: refused, safetensors only
    adapter_cfg["base_model_name_or_path"] = str(tiny_checkpoint)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_cfg))
    import torch
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    torch.save(weights, tmp_path / "adapter" / "adapter_model.bin")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(PolicyError, match="adapter: no adapter_model.safetensors \\(eexp reads safetensors only\\)"):
        load_policy(str(tmp_path / "adapter"))


def test_broken_checkpoints_give_clear_errors(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(PolicyError, match="cannot load the checkpoint"):
        load_policy(str(bad))
    (tmp_path / "junk.gguf").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(PolicyError, match="not a GGUF file"):
        load_policy(str(tmp_path / "junk.gguf"))
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(tiny_checkpoint, cut)
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(PolicyError, match="cannot load the checkpoint.*corrupt"):
        load_policy(str(cut))
    (cut / "model.safetensors").unlink()
    (cut / "pytorch_model.bin").write_bytes(b"pickles are never loaded")
    with pytest.raises(PolicyError, match="cannot load the checkpoint"):
        load_policy(str(cut))
    with pytest.raises(PolicyError, match="not an option of the transformers backend"):
        load_policy(str(tiny_checkpoint), {"n_gpu_layer": "1"})


# --- HTTP: a chat-completions server on 127.0.0.1 wrapping the transformers policy --------------------------


class ChatServer:
    """The OpenAI chat-completions subset eexp uses (and vLLM's guided_choice), answering with a local policy.
    `fail_next` makes the next N requests fail with 503, to exercise the retries."""

    def __init__(self, policy):
        self.policy, self.requests, self.fail_next = policy, [], 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "tiny"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                if server.fail_next > 0:
                    server.fail_next -= 1
                    return self._send(503, {"error": {"message": "busy"}})
                with server.lock:  # one model, one global torch RNG: requests take turns
                    text, finish = server.answer(body)
                self._send(
                    200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}]}
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.lock = threading.Lock()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body):
        if body.get("guided_choice"):
            p = self.policy
            ids = p.encode_chat(body["messages"])
            text, finish = p._constrained_ids(
                ids,
                p.candidate_ids(body["messages"], body["guided_choice"]),
                body["guided_choice"],
                seed=body["seed"],
                temperature=body["temperature"],
            )
        else:
            r = self.policy.generate(
                body["messages"],
                seed=body["seed"],
                temperature=body["temperature"],
                top_p=body["top_p"],
                max_tokens=body["max_tokens"],
            )
            text, finish = r.text, r.finish_reason
        return text, finish

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def chat_server(hf_policy):
    server = ChatServer(hf_policy)
    yield server
    server.close()


def test_http_answers_like_the_local_model(chat_server, hf_policy, monkeypatch):
    monkeypatch.setenv("EEXP_TEST_KEY", "sk-secret")
    policy = load_policy(chat_server.url, {"api_key_env": "EEXP_TEST_KEY", "concurrency": "4"}, max_tokens=12)
    greedy = policy.generate(MESSAGES, seed=1, temperature=0.0)
    assert greedy.text == hf_policy.generate(MESSAGES, seed=1, temperature=0.0, max_tokens=12).text
    seeds = [derive_seed(3, "t#2", k) for k in range(6)]
    replies = policy.sample(MESSAGES, admissible=None, seeds=seeds, temperature=1.0)
    assert [r.seed for r in replies] == seeds  # parallel requests, answers in the order of the seeds
    assert [r.text for r in replies] == [
        hf_policy.generate(MESSAGES, seed=s, temperature=1.0, max_tokens=12).text for s in seeds
    ]
    assert chat_server.requests[-1]["auth"] == "Bearer sk-secret"
    assert chat_server.requests[-1]["body"]["model"] == "tiny"  # found from /v1/models
    assert "sk-secret" not in json.dumps(policy.describe())


def test_http_constrained_with_guided_choice(chat_server):
    policy = load_policy(chat_server.url, {"guided": "vllm"})
    replies = policy.sample(MESSAGES, admissible=ADMISSIBLE, seeds=[1, 2, 3, 4], temperature=1.0)
    assert all(r.valid for r in replies)
    assert chat_server.requests[-1]["body"]["guided_choice"] == [f"Action: {a}" for a in ADMISSIBLE]
    assert load_policy(chat_server.url, act="constrained").guided == "vllm"  # found by the probe
    with pytest.raises(PolicyError, match="guided"):
        load_policy(chat_server.url, {"guided": "none"}, act="constrained")
    with pytest.raises(PolicyError, match="--act score over HTTP needs a server that renders chat messages"):
        load_policy(chat_server.url, act="score")  # this one has no /tokenize


def test_http_retries_then_marks_the_reply_failed(chat_server, capsys):
    policy = load_policy(chat_server.url, {"retries": "2", "backoff": "0.01", "model": "tiny"})
    chat_server.fail_next = 2  # two 503s, then an answer: retried and fine
    assert policy.generate(MESSAGES, seed=1, temperature=0.0).finish_reason in ("stop", "length")
    chat_server.fail_next = 3  # more failures than retries: a failed reply, no exception
    r = policy.act(MESSAGES, admissible=ADMISSIBLE, seed=1)
    assert r.action is None and r.finish_reason.startswith("error: HTTP 503") and "after 3 attempts" in r.finish_reason
    assert "marked failed" in capsys.readouterr().err
    # nothing listening at the first contact: the policy cannot be made, with the reason (tests/test_http.py)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PolicyError, match="cannot reach the policy endpoint .*: connection refused"):
        load_policy(f"http://127.0.0.1:{port}/v1", {"retries": "1", "backoff": "0.01", "model": "m"})


# --- llama.cpp ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def f32_gguf(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported unquantized, with serializer settings recorded in its card (card.yaml): its
    logits match transformers closely enough to compare answers exactly."""
    import dataclasses
    import shutil

    from eexp.card import read_card, write_card
    from eexp.models.export import export_gguf

    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny-with-serializer"
    shutil.copytree(tiny_checkpoint, ckpt)
    serializer = Serializer(history=2, max_observation_chars=900).to_dict()
    write_card(ckpt, dataclasses.replace(read_card(ckpt), serializer=serializer))
    return export_gguf(ckpt, tmp_path_factory.mktemp("gguf") / "tiny.f32.gguf", quant="f32"), ckpt


def test_llama_answers_the_conversation_like_transformers(f32_gguf, hf_policy):
    path, ckpt = f32_gguf
    policy = load_policy(str(path), max_tokens=12)
    assert policy.encode_chat(MESSAGES) == hf_policy.encode_chat(MESSAGES)  # same template, same ids, no BOS
    assert (
        policy.generate(MESSAGES, seed=1, temperature=0.0).text
        == hf_policy.generate(MESSAGES, seed=1, temperature=0.0, max_tokens=12).text
    )
    ours, theirs = dict(policy.rank(MESSAGES, ADMISSIBLE)), dict(hf_policy.rank(MESSAGES, ADMISSIBLE))
    assert ours == pytest.approx(theirs, abs=1e-2)
    scored = load_policy(str(path), act="score")  # the logits_all path gives the same numbers
    assert dict(scored.rank(MESSAGES, ADMISSIBLE)) == pytest.approx(ours, abs=1e-4)
    assert scored.act(MESSAGES, admissible=ADMISSIBLE, seed=1).action == hf_policy.rank(MESSAGES, ADMISSIBLE)[0][0]
    # the serializer the model was trained with travels in the GGUF metadata and in the checkpoint
    expected = Serializer(history=2, max_observation_chars=900).to_dict()
    assert policy.serializer_settings() == expected
    assert load_policy(str(ckpt)).serializer_settings() == expected
    assert policy.describe()["model_sha256"] and "tiny.f32.gguf" == policy.describe()["model"]


def test_llama_seeds_reproduce_with_prefix_reuse(tiny_gguf):
    policy = load_policy(str(tiny_gguf), max_tokens=10)
    seeds = [derive_seed(7, "traj#3", k) for k in range(4)]
    batch = policy.sample(MESSAGES, admissible=None, seeds=seeds, temperature=1.0)
    assert [r.seed for r in batch] == seeds and len({r.text for r in batch}) > 1
    # the same seeds in another order, on a fresh context: the same samples (no chained seed state)
    fresh = load_policy(str(tiny_gguf), max_tokens=10)
    again = {s: fresh.act(MESSAGES, admissible=None, seed=s, temperature=1.0).text for s in reversed(seeds)}
    assert [again[s] for s in seeds] == [r.text for r in batch]


@pytest.mark.parametrize("act", ["constrained", "score"])
def test_llama_constrained_and_score_stay_in_the_list(tiny_gguf, act):
    policy = load_policy(str(tiny_gguf), act=act)
    admissible = ADMISSIBLE + ['say "hi"\\there', "take lamp from the table", "café №5"]
    for temperature in (0.0, 1.5 if act == "constrained" else 30.0):
        replies = policy.sample(MESSAGES, admissible=admissible, seeds=list(range(1, 11)), temperature=temperature)
        assert all(r.action in admissible and r.valid for r in replies), [r.text for r in replies]
        if temperature > 0:
            assert len({r.action for r in replies}) > 1


def test_bad_gguf_files(tmp_path, tiny_gguf):
    data = tiny_gguf.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(PolicyError, match="corrupt or truncated|cannot load"):
        load_policy(str(tmp_path / "cut.gguf"))
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "alien.gguf"), "alienformer")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(PolicyError, match="architecture 'alienformer'"):
        load_policy(str(tmp_path / "alien.gguf"))


# --- eexp doctor ----------------------------------------------------------------------------------------------


def test_doctor_passes_on_an_export_and_fails_on_a_mismatch(runner, tiny_gguf, tiny_checkpoint, tmp_path):
    import shutil

    from eexp.cli import cli

    ok = runner.invoke(cli, ["doctor", "--policy", str(tiny_gguf)])  # tokenizer found from eexp.source
    assert ok.exit_code == 0, ok.output
    assert "all checks agree" in ok.output and "DIFF" not in ok.output
    # a template that drifted after export (a stray BOS-like prefix: the double-BOS family of bugs)
    drifted = tmp_path / "drifted"
    shutil.copytree(tiny_checkpoint, drifted)
    template = drifted / "chat_template.jinja"
    template.write_text("<|endoftext|>" + template.read_text())
    bad = runner.invoke(cli, ["doctor", "--policy", str(tiny_gguf), "--tokenizer", str(drifted)])
    assert bad.exit_code == 1
    assert "DIFF  tokens, prompt" in bad.output and "first difference at 0" in bad.output
    # a tokenizer whose EOS is not the end of turn: the model would never stop
    eos = tmp_path / "eos"
    shutil.copytree(tiny_checkpoint, eos)
    cfg = json.loads((eos / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|endoftext|>"
    (eos / "tokenizer_config.json").write_text(json.dumps(cfg))
    (eos / "generation_config.json").unlink()
    res = runner.invoke(cli, ["doctor", "--policy", str(tiny_gguf), "--tokenizer", str(eos), "--json"])
    assert res.exit_code == 1
    report = json.loads(res.output)
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert failed == {"EOS", "end of turn"}
    usage = runner.invoke(cli, ["doctor", "--policy", str(tiny_checkpoint)])
    assert usage.exit_code == 2


@pytest.mark.parametrize(
    "spec, kind",
    [
        ("random", "baseline"),
        ("oracle", "baseline"),
        ("http://127.0.0.1:8000/v1", "endpoint"),
        ("https://h/v1", "endpoint"),
        ("m.gguf", "gguf"),
        ("M.GGUF", "gguf"),
        ("nothing-here", None),
    ],
)
def test_policy_kind_reads_a_spec_once(spec, kind, tmp_path):
    from eexp.policies import policy_kind

    assert policy_kind(spec) == kind
    assert policy_kind(str(tmp_path)) == "checkpoint"


# --- policy plugins: the `eexp.policies` entry points ---------------------------------------------------------

POLICYPKG = __import__("pathlib").Path(__file__).parent / "policypkg"


def test_every_kind_is_an_entry_point():
    """eexp's own backends register as a plugin's do, so load_policy has no if-chain of kinds."""
    from eexp.policies import BUILTIN_KINDS, policy_registry

    registry = policy_registry()
    assert set(BUILTIN_KINDS) <= set(registry)
    # each loader lives in its backend's module (eexp.policies.llama:load_gguf ...), imported when its kind is asked for
    assert all(registry[k].value.startswith("eexp.policies.") for k in BUILTIN_KINDS)
    assert {registry[k].load().__module__ for k in BUILTIN_KINDS} == {
        "eexp.policies.baselines",
        "eexp.policies.fleet",
        "eexp.policies.llama",
        "eexp.policies.hf",
    }


def test_third_party_policy_registers_by_entry_point(tmp_path):
    """tests/policypkg, installed into a folder of its own, adds `--policy prefer:WORD` to every stage without
    touching eexp; a plugin that cannot import is one line naming its package; eexp's own kinds stay eexp's."""
    import shutil
    import subprocess
    import sys

    import orjson

    src, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(POLICYPKG, src)  # building writes into the source tree: keep tests/ clean
    env = install_apart(src, site)

    def eexp(*args, stdin=None):
        return subprocess.run(
            [sys.executable, "-m", "eexp", *args], capture_output=True, text=True, env=env, cwd=tmp_path, input=stdin
        )

    out = eexp("eval", "--env", "shop", "--split", "test", "-n", "2", "--max-steps", "3", "--policy", "prefer:buy")
    assert out.returncode == 0, out.stderr
    episodes = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(episodes) == 2 and all(e["policy"] == "prefer-buy" for e in episodes)
    assert all(e["meta"]["policy_spec"] == "prefer:buy" for e in episodes)
    assert episodes[0]["actions"][0].startswith("search[")  # no admissible action has "buy" yet: the first one
    # branch proposes with it too, and its --policy-arg reach its loader
    expert = eexp("expert", "--env", "shop", "-n", "1")
    assert expert.returncode == 0, expert.stderr
    branches = eexp(
        "branch", "--policy", "prefer:back", "--policy-arg", "case=sensitive", "-k", "1", stdin=expert.stdout
    )
    assert branches.returncode == 0, branches.stderr
    records = [orjson.loads(line) for line in branches.stdout.splitlines()]
    assert records and any(
        a["source"] == "policy" and "back" in a["action"] for r in records for a in r["alternatives"]
    )
    bad_arg = eexp("branch", "--policy", "prefer:back", "--policy-arg", "colour=red", stdin=expert.stdout)
    assert bad_arg.returncode == 1 and "prefer: unknown --policy-arg colour (known: case)" in bad_arg.stderr
    broken = eexp("eval", "--env", "shop", "-n", "1", "--policy", "broken:x")
    assert broken.returncode == 1
    assert "the 'broken' policy backend is registered but cannot load: ModuleNotFoundError" in broken.stderr
    assert "(it comes from the package eexp-prefer-policy)" in broken.stderr and "Traceback" not in broken.stderr
    unknown = eexp("eval", "--env", "shop", "-n", "1", "--policy", "nothing:x")
    assert unknown.returncode == 1 and "KIND:TARGET for an installed plugin (kinds: broken, prefer)" in unknown.stderr
    hijack = eexp("eval", "--env", "shop", "-n", "1", "--policy", "missing.gguf")  # the plugin's `gguf` is not used
    assert hijack.returncode == 1 and "missing.gguf: no such GGUF file" in hijack.stderr


def test_a_loader_must_return_a_policy(monkeypatch):
    import eexp.policies as policies

    class FakeEntryPoint:
        name, value, dist = "odd", "odd_plugin:load", None

        def load(self):
            return lambda target, args, **settings: f"not a policy: {target}"

    monkeypatch.setattr(policies, "policy_registry", lambda: {"odd": FakeEntryPoint()})
    assert policies.policy_kind("odd:x") == "odd"
    with pytest.raises(PolicyError, match="the 'odd' policy backend returned str, not an eexp.policies.Policy"):
        policies.load_policy("odd:x")


def test_a_tokenizer_folder_s_own_code_is_never_run(tiny_gguf, tiny_checkpoint, tmp_path):
    """--policy-arg tokenizer=DIR whose tokenizer_config.json points at code in the folder (auto_map): not run, and
    not asked about (transformers asks on stdin, which carries the records, unless trust_remote_code is given)."""
    import shutil

    folder = tmp_path / "tokenizer"
    shutil.copytree(tiny_checkpoint, folder, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tok.Tok", None]}
    config.pop("tokenizer_class", None)  # the folder's code is then the only class named
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "tok.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import PreTrainedTokenizerFast as Tok\n"
    )
    # as a stage runs it: records on stdin, the first of which would answer transformers' question ("y")
    import subprocess
    import sys

    code = f"from eexp.policies import load_policy; load_policy({str(tiny_gguf)!r}, {{'tokenizer': {str(folder)!r}}})"
    done = subprocess.run([sys.executable, "-c", code], input="y\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "cannot load the tokenizer" in done.stderr
    assert not marker.exists()


def test_describe_says_the_policy_args_that_change_outputs_only_when_set(tiny_checkpoint, tiny_gguf, hf_policy):
    """Records say the --policy-arg values that change what the model sees or computes (describe()'s policy_args,
    in every episode's meta and id); a default run's describe() is what it was, and args of speed alone are left out."""
    # transformers: the defaults add nothing
    assert set(hf_policy.describe()) == {"model", "model_sha256", "backend"}
    assert "policy_args" not in load_policy(str(tiny_checkpoint), {"batch_size": "4", "n_threads": "1"}).describe()
    given = load_policy(str(tiny_checkpoint), {"dtype": "float32", "n_ctx": "512", "batch_size": "4"}).describe()
    assert given["policy_args"] == {"dtype": "float32", "n_ctx": 512}
    # a device given: its kind, and the dtype auto chose for it
    assert load_policy(str(tiny_checkpoint), {"device": "cpu"}).describe()["policy_args"] == {
        "device": "cpu",
        "dtype": "float32",
    }
    # a GPU chosen by auto: its kind and auto's bf16, so its episodes are not taken for the CPU's (fp32)
    from eexp.policies.hf import SCHEMA as HF_SCHEMA
    from eexp.policies.hf import output_args as hf_output_args

    defaults = {key: default for key, (_, default) in HF_SCHEMA.items()}
    assert hf_output_args(defaults, "cuda", "bfloat16") == {"device": "cuda", "dtype": "bfloat16"}
    assert hf_output_args(defaults, "cpu", "float32") == {}
    # llama.cpp: the context that clips the prompt and the tokenizer that renders it
    default = load_policy(str(tiny_gguf)).describe()
    assert set(default) == {"model", "model_sha256", "backend", "extra_bufts"}
    assert "policy_args" not in load_policy(str(tiny_gguf), {"n_threads": "1", "n_batch": "64"}).describe()
    described = load_policy(str(tiny_gguf), {"n_ctx": "256", "tokenizer": str(tiny_checkpoint)}).describe()
    assert described["policy_args"] == {"n_ctx": 256, "tokenizer": str(tiny_checkpoint)}
    assert {k: v for k, v in described.items() if k != "policy_args"} == default


def test_a_tokenizer_folder_that_is_not_there_is_not_looked_up_on_the_hub(tiny_gguf, runner, tmp_path):
    """A mistyped --tokenizer (doctor) or --policy-arg tokenizer= (eval) was taken for a Hub name: transformers asked
    huggingface.co for it, five times over 50 s, before a three-line error. Now one line, and nothing asked."""
    from eexp.cli import cli

    missing = tmp_path / "nodir"
    said = f"Error: {missing}: no such folder (give the checkpoint folder that holds the training tokenizer)\n"
    result = runner.invoke(cli, ["doctor", "--policy", str(tiny_gguf), "--tokenizer", str(missing)])
    assert (result.exit_code, result.output) == (1, said)
    with pytest.raises(PolicyError, match="no such folder"):
        load_policy(str(tiny_gguf), {"tokenizer": "nodir"})
