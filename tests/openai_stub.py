"""A stub OpenAI-compatible server for the tests: chat completions on 127.0.0.1 with one guided-decoding mechanism,
deterministic answers (from the request's seed), continuation of a final assistant message (continue_final_message,
as vLLM and llama-server serve it), failures on cue, a latency, and a count of the requests it had in flight at once.
Used by tests/test_http.py and tests/test_concurrency.py. `tau2_user_reply` is a scripted τ²-bench customer
(tests/test_tau2.py); `python tests/openai_stub.py tau2-user --port P` serves it (recipes/configs/tau2.mk)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADMISSIBLE = ["look", "buy the red mug", 'say "hi"']
MESSAGES = [{"role": "user", "content": "Goal: buy a mug.\nAdmissible actions:\n" + "\n".join(ADMISSIBLE)}]
FREE_TEXT = "I think I should look around first, then decide what to buy."
OPENAI_FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "seed", "n", "response_format", "stop"}


def gbnf_choices(grammar: str) -> list[str]:
    """The alternatives of a `root ::= "a" | "b"` grammar, unescaped as llama.cpp reads them."""
    rule = re.fullmatch(r"\s*root\s*::=\s*(.*?)\s*", grammar, re.S)
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', rule.group(1))
    escapes = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    return [
        re.sub(
            r"\\(x[0-9a-fA-F]{2}|.)",
            lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "x" else escapes[m.group(1)],
            lit,
        )
        for lit in literals
    ]


class StubServer:
    """An OpenAI chat-completions endpoint whose "model" answers free text, except where the request carries the
    one guided-decoding mechanism this server implements (`honours`); the others are ignored as vLLM and
    llama.cpp ignore fields they do not know, or, `strict`, refused with 400 as OpenAI does. Under a mechanism it
    answers the choice the seed picks. A request with `continue_final_message` continues its final assistant message:
    the answer is what comes after it (guided or `free_text` as any other), as vLLM answers, or with `echoes` the
    final message and then that, as llama-server answers. As both do, such a request must end with an assistant
    message and set `add_generation_prompt` false, or it is refused with 400 (`strict` refuses it anyway, as OpenAI
    does an unknown field). `fail` holds the indices of chat requests that fail: 503, or (odd index) a connection
    closed without an answer; `fail_every` N fails every Nth chat request with a 500. Each chat request takes
    `latency` seconds; `most_in_flight` is the most it ever had at once. `free_text(body)` writes the unconstrained
    replies (default: FREE_TEXT, cut at max_tokens words). With `die_after` N the server stops listening at its Nth
    chat request (that one and those in flight still get answers). `trims`: the chat template trims a message's
    content (Llama-3's does), so a continued message loses its trailing whitespace, as vLLM (transformers'
    continue_final_message) continues it; `continued` holds, per continued request, the reply as the model wrote it
    (the final message as rendered, then what it generated). `model_id`: the model /v1/models lists (its `id` and
    `root`), as vLLM lists the path it serves and llama-server the GGUF's."""

    def __init__(
        self,
        honours: str | None = None,
        *,
        strict: bool = False,
        fail: set[int] = frozenset(),
        status: int = 200,
        latency: float = 0.0,
        fail_every: int = 0,
        free_text=None,
        die_after: int = 0,
        echoes: bool = False,
        trims: bool = False,
        model_id: str = "stub-model",
    ):
        self.honours, self.strict, self.fail, self.status = honours, strict, set(fail), status
        self.echoes, self.trims, self.model_id = echoes, trims, model_id
        self.continued: list[str] = []
        self.latency, self.fail_every, self.free_text, self.die_after = latency, fail_every, free_text, die_after
        self.chats: list[dict] = []
        self.timeline: list[tuple[float, float]] = []  # (start, end) of every chat request, time.monotonic()
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.endswith("/stats"):  # for bench/bench_server.py, which runs this in a process
                    with outer.lock:
                        return self.send(200, {"timeline": outer.timeline, "most_in_flight": outer.most_in_flight})
                if outer.status != 200:
                    return self.send(outer.status, {"error": {"message": "invalid api key"}})
                self.send(
                    200, {"object": "list", "data": [{"id": outer.model_id, "object": "model", "root": outer.model_id}]}
                )

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/chat/completions"):  # what a subclass serves besides, or 404
                    answer = outer.extra_post(self.path, body)
                    if answer is None:
                        return self.send(404, {"error": {"message": f"no such route: {self.path}"}})
                    return self.send(200, answer)
                with outer.lock:
                    index = len(outer.chats)
                    outer.chats.append(body)
                    outer.in_flight += 1
                    if outer.die_after and index + 1 == outer.die_after:  # the server dies: nobody listens
                        threading.Thread(target=outer.close, daemon=True).start()
                    outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                started = time.monotonic()
                time.sleep(outer.latency)
                with outer.lock:  # done before the answer leaves: the client's next request is not overlapping
                    outer.in_flight -= 1
                    outer.timeline.append((started, time.monotonic()))
                self.respond(index, body)

            def respond(self, index, body):
                if outer.fail_every and index % outer.fail_every == outer.fail_every - 1:
                    return self.send(500, {"error": {"message": "internal error"}})
                if index in outer.fail:
                    if index % 2:
                        self.close_connection = True
                        return self.connection.shutdown(socket.SHUT_RDWR)
                    return self.send(503, {"error": {"message": "overloaded"}})
                if outer.strict and set(body) - OPENAI_FIELDS:
                    return self.send(
                        400,
                        {
                            "error": {
                                "message": "Unrecognized request argument supplied: "
                                + ", ".join(sorted(set(body) - OPENAI_FIELDS))
                            }
                        },
                    )
                if body.get("continue_final_message"):
                    if body.get("add_generation_prompt", True):  # llama-server's default is true, vLLM's too
                        return self.send(
                            400,
                            {
                                "error": {
                                    "message": "Cannot set both add_generation_prompt and "
                                    "continue_final_message to true."
                                }
                            },
                        )
                    if body["messages"][-1]["role"] != "assistant":
                        return self.send(
                            400, {"error": {"message": "continue_final_message needs a final assistant message"}}
                        )
                text, finish = outer.answer(body)
                self.send(
                    200,
                    {
                        "object": "chat.completion",
                        "model": "stub-model",
                        "choices": [
                            {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}
                        ],
                    },
                )

        self.handler = Handler
        self.listen(0)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def listen(self, port: int) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self.handler)
        self.httpd.handle_error = lambda request, address: None  # a dropped connection is the point, not news
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def revive(self) -> None:
        """Listen again at the same address (a server restarted after it died), with the same replies."""
        self.listen(int(self.url.rsplit(":", 1)[1].split("/")[0]))

    def extra_post(self, path: str, body: dict) -> dict | None:
        """The answer to a POST other than chat completions (None: 404, as a server without the route)."""
        return None

    def answer(self, body: dict) -> tuple[str, str]:
        text, finish = self.generate(body)
        if body.get("continue_final_message"):
            rendered = body["messages"][-1]["content"]
            rendered = rendered.rstrip() if self.trims else rendered
            with self.lock:
                self.continued.append(rendered + text)
            if self.echoes:
                text = rendered + text
        return text, finish

    def generate(self, body: dict) -> tuple[str, str]:
        """What the "model" writes for this request (after the final message, for a continued one)."""
        choices, as_json = None, None
        if self.honours == "structured_outputs":
            choices = (body.get("structured_outputs") or {}).get("choice")
        elif self.honours == "vllm":
            choices = body.get("guided_choice")
        elif self.honours == "llamacpp" and body.get("grammar"):
            choices = gbnf_choices(body["grammar"])
        elif self.honours == "json_schema" and (body.get("response_format") or {}).get("type") == "json_schema":
            props = body["response_format"]["json_schema"]["schema"]["properties"]
            as_json, spec = next((k, v) for k, v in props.items() if "enum" in v)
            choices = spec["enum"]
        if choices:
            choice = choices[body["seed"] % len(choices)]
            return (json.dumps({as_json: choice}) if as_json else choice), "stop"
        if self.free_text is not None:
            return self.free_text(body), "stop"
        words = FREE_TEXT.split()
        if len(words) > body["max_tokens"]:
            return " ".join(words[: body["max_tokens"]]), "length"
        return FREE_TEXT, "stop"

    def close(self):
        """Stop serving: from now on a connection is refused (a server that died)."""
        self.httpd.shutdown()
        self.httpd.server_close()


# --- a scripted τ²-bench customer (tests/test_tau2.py, recipes/configs/tau2.mk) ----------------------------------

TAU2_CONFIRM = "Yes, please go ahead."


def tau2_user_reply(body: dict) -> str:
    """What a cooperative customer says to tau2's user-simulator requests: to the agent's greeting, the scenario's
    reason for calling and what the customer knows (read from the simulator's system prompt); to anything else,
    consent. Never tau2's stop token: the agent ends the conversation."""
    messages = body["messages"]
    if len([m for m in messages if m["role"] != "system"]) == 1:
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        found = (
            re.search(rf"{heading}:\s*(.*?)(?:\n\s*[A-Z][a-z]+(?: [a-z]+)*:|</scenario>|$)", system, re.S)
            for heading in ("Reason for call", "Known info")
        )
        parts = [" ".join(m.group(1).split()) for m in found if m]
        return "Hello. " + (" ".join(parts) or "I need help with my account.")
    return TAU2_CONFIRM


class _FixedPort(ThreadingHTTPServer):
    """ThreadingHTTPServer on the port in `_FixedPort.port` whatever it is asked for (tau2-user below)."""

    port = 0

    def __init__(self, address, handler):
        super().__init__((address[0], self.port), handler)


def _serve_tau2_user(argv: list[str]) -> int:
    """`python tests/openai_stub.py tau2-user --port P [--parent PID] [--log FILE]`: the scripted customer on
    127.0.0.1:P in a process of its own (one already answering there is reused), which exits once PID (the make
    that started it) has gone. Returns when the server answers, printing its URL."""
    import argparse
    import os
    import subprocess
    import sys
    import urllib.request

    ap = argparse.ArgumentParser(prog="openai_stub.py tau2-user")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--parent", type=int, default=0)
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    url = f"http://127.0.0.1:{args.port}/v1"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    if args.serve:
        global ThreadingHTTPServer
        _FixedPort.port, ThreadingHTTPServer = args.port, _FixedPort  # StubServer binds through the module name
        server = StubServer(free_text=tau2_user_reply)
        print(server.url, flush=True)
        while not args.parent or _alive(args.parent):
            time.sleep(1.0)
        server.close()
        return 0
    if answers():
        print(url, flush=True)
        return 0
    with open(args.log, "ab") as log:
        subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "tau2-user",
                "--serve",
                "--port",
                str(args.port),
                "--parent",
                str(args.parent),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    for _ in range(100):
        if answers():
            print(url, flush=True)
            return 0
        time.sleep(0.1)
    print(f"openai_stub.py tau2-user: nothing answers at {url} (see {args.log})", file=sys.stderr, flush=True)
    return 1


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":  # a stub in a process of its own: python tests/openai_stub.py LATENCY -> prints its URL
    import sys

    if sys.argv[1:2] == ["tau2-user"]:  # the scripted τ²-bench customer (recipes/configs/tau2.mk)
        sys.exit(_serve_tau2_user(sys.argv[2:]))
    server = StubServer("llamacpp", latency=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
    print(server.url, flush=True)
    threading.Event().wait()
