"""An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server, ...): `--policy http://host:8000/v1`.

The server renders the chat template (its own, from the model it serves). Each call sends an explicit `seed`.
A server batches, so it is fast only with many requests in flight: the stages run up to `--concurrency N` states
or episodes at once against this one (thread-safe) policy, the K samples of a state go out together, and a
semaphore keeps at most N requests in flight in all (`--policy-arg concurrency=N` is the stages' default, 16).
The API key is read from the environment variable named by `--policy-arg api_key_env=NAME` and is never written into
records.

At start the endpoint is contacted once (its model list, one one-token chat request): an endpoint that cannot be
reached, or that answers that first request with an error, stops the run with one error instead of a run of failed
replies that would read as a model scoring 0%. Later, network failures and 429/5xx answers are retried with
exponential backoff; after the last retry the reply is marked failed (`finish_reason: "error: ..."`), counted
(`requests`, `failed_requests`), and the stage records it and goes on; a run that loses more than
MAX_FAILED_SHARE of its requests so exits 1 at the end. A request that gets no answer at all sends one quick
look at the server (its model list): a server that is gone stops the run at once (EndpointDown) instead of every
later request spending its full retries on it. `--policy-arg timeout=SECONDS` (default 120) is a deadline for each
request as a whole, from the connection to the last byte of the answer, whatever the server does (`fetch`): a
server that drips its reply a byte at a time is cut at it, as one that does not answer (each retry has its own).

Constrained actions (a closed admissible list) need the server's guided decoding, and servers spell it differently
(GUIDED). Unless `--policy-arg guided=NAME` says which, the start probes them in turn with one tiny request each and
keeps the first whose reply obeys it; where none does, actions are free text and a warning says so once. The
mechanism used is in `describe()`, hence in every record's meta.

`--act score` ranks the admissible actions by the log-likelihood of the reply `Action: <action>` and its end of
turn, as the local backends do, where the server can give it: it renders chat messages to token ids (`POST
/tokenize` with `messages`, at the server's root: vLLM, SGLang) and returns the log-probability of every prompt token
(`/v1/completions` with the ids as prompt, `echo` and `logprobs`, OpenAI's legacy form, which vLLM serves). The
start probes both with one tiny request each; a server without them is an error that says which modes it serves.

`--act think` (models that reason first: `Thought: ...` then `Action: ...`) takes two requests per reply, both
within the in-flight limit, with the same retries and failure counting, each a continuation of the reply so far: the
messages end with an assistant message holding it, and `continue_final_message` (vLLM, llama.cpp's llama-server) has
the server extend it instead of starting a new turn. First the thought: the reply begun with `Thought:`
(eexp.policies.chat.THOUGHT_PREFILL, as the local backends begin it, so every step has a thought), continued at the
call's temperature and seed for up to the thought budget (`thought_tokens`, else --max-tokens), read as the local
backends read it (eexp.policies.chat.split_thought); then the action, continuing the reply up to its `Action:` line
(the newline before `Action:` is generated with the action: `continued` says why). Where the admissible set is
closed, the action is chosen by the server's guided decoding among the admissible `Action: <action>` replies, as
`--act constrained` chooses it: a sample of the constrained distribution (greedy at temperature 0), NOT the ranking
by log-likelihood that the local backends' think does, so the two can pick different actions after the same thought.
Where the set is open, the action the model wrote after its thought is taken, or generated after `Action:` when it
wrote none, as locally. The start probes continuation with one tiny request (a server that refuses the field is an
error that says what think needs), then guided decoding as `--act constrained` does but in a continued reply, as
think uses it (none found is an error). A server that silently ignores the field would start a new turn instead:
the probe cannot tell that from its reply. The thought budget of a model eexp trained is on its card; the start
looks for the served model on this machine where the server names it (llama-server's /props `model_path`, vLLM's
/v1/models `root`, or the model's id, which both default to the path given) and reads its card there
(`trained_thought_tokens`, `describe()["card"]`).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from eexp.card import read_model_card
from eexp.errors import CardError, EndpointDown, PolicyError
from eexp.files import content_hash
from eexp.inflight import side_by_side
from eexp.policies.actions import failed_reply, open_space, reply_from_text
from eexp.policies.args import take_args
from eexp.policies.base import MAX_TOKENS, Policy, Reply
from eexp.policies.chat import THOUGHT_PREFILL, pick_action, split_thought, warn
from eexp.policies.llama import choice_grammar
from eexp.prompts import format_action

SCHEMA = {
    "model": (str, ""),  # the served model's name (default: the first one /v1/models lists)
    "api_key_env": (str, ""),  # NAME of the environment variable holding the API key
    "timeout": (float, 120.0),  # seconds a request may take in all, connection to last byte (each retry anew)
    "retries": (int, 4),  # further attempts after a failed one
    "backoff": (float, 1.0),  # seconds before the first retry, doubled each time
    "concurrency": (int, 16),  # requests in flight at once: the default of the stages' --concurrency
    "guided": (str, "auto"),  # constrained actions: auto (probe), none, or one of GUIDED
}
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

# How a server is asked to answer with one of a list of strings, in the order the probe tries them.
GUIDED = {
    "structured_outputs": "vLLM's structured_outputs.choice (newer vLLM)",
    "vllm": "vLLM's guided_choice (older vLLM)",
    "llamacpp": "a GBNF grammar (llama.cpp's server, llama-cpp-python's server)",
    "json_schema": "OpenAI's response_format json_schema with an enum (OpenAI, vLLM, llama.cpp, SGLang, ...)",
}
GUIDED_VALUES = ("auto", "none", *GUIDED)
# The probe: a prompt no unconstrained model answers with one of these replies.
PROBE_MESSAGES = [{"role": "user", "content": "Say hello."}]
PROBE_CHOICES = ["Action: probe one", "Action: probe two"]
# --act think: the request fields that make the server extend the final assistant message (the thought) instead of
# answering it with a new turn, and the probe's unfinished reply.
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
PROBE_PREFIX = "Thought: a probe.\n"
# why a mode needs the server's guided decoding (its errors say so)
GUIDED_FOR = {"constrained": "", "think": " to choose the action after the thought"}


class EndpointError(Exception):
    """A request that failed for good (after the retries, or with an answer that retrying cannot change)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of the last answer, if there was one


class Unreachable(EndpointError):
    """No HTTP answer at all (connection refused, unknown host, timeout) to the first request."""


HEALTH_TIMEOUT = 5.0  # seconds the quick look at a server (its model list) waits for an answer


# --- a deadline per request --------------------------------------------------------------------------------------
# urllib's own timeout bounds each socket operation, not the request: a server that sends its reply a byte a second
# never trips it, and held a run for as long as it dripped. Here a request has `timeout` seconds in all, from the
# connection to the last byte of the answer, whatever the server does: a timer shuts the request's socket down at
# the deadline, which ends the read that waits on it, and the request fails as timed out (then retried as any
# request that got no answer). The socket's own timeout stays set too, for a connection that never opens.


class DeadlinePassed(TimeoutError):
    """A request that had no whole answer within its `timeout` seconds."""

    def __init__(self, seconds: float):
        super().__init__(f"no whole answer within the {seconds:g} s timeout (--policy-arg timeout=SECONDS)")
        self.seconds = seconds


class _Deadline:
    """One request's deadline: the sockets it opens, shut down when the time is up."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.passed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    @property
    def connected(self) -> bool:
        return bool(self._sockets)

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.passed:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a read blocked on it returns at once
    except OSError:
        pass


class _DeadlineConnection:
    """A connection that gives its socket to the request's deadline once connected (for HTTPS, the TLS socket)."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self):
        super().connect()
        self._deadline.add(self.sock)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(lambda *a, **kw: _DeadlineHTTPConnection(*a, deadline=req.deadline, **kw), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(
            lambda *a, **kw: _DeadlineHTTPSConnection(*a, deadline=req.deadline, **kw), req, context=self._context
        )


class _LoopbackDirectProxyHandler(urllib.request.ProxyHandler):
    """Proxies from the environment (http_proxy, ...), never for a server on this machine: urllib sends a request for
    127.0.0.1 through the proxy unless no_proxy says otherwise, and the prompts would leave the machine."""

    def proxy_open(self, req, proxy, type):
        host = urllib.parse.urlsplit(req.full_url).hostname or ""
        if host == "localhost" or _is_loopback_address(host):
            return None  # the next handler opens it directly
        return super().proxy_open(req, proxy, type)


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirectHandler(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (HTTP 3xx, an HTTPError), never followed: the prompts, and the key, are for the
    endpoint the user named, not for wherever its answer points (an OpenAI-compatible server does not redirect)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(proxies: dict | None = None) -> urllib.request.OpenerDirector:
    """urllib's usual opener (proxies, from the environment when None, but for loopback; HTTP errors as HTTPError)
    with the two deadline handlers, and redirects not followed."""
    return urllib.request.build_opener(
        _LoopbackDirectProxyHandler(proxies), _DeadlineHTTPHandler, _DeadlineHTTPSHandler, _NoRedirectHandler
    )


_OPENER = _opener()


def fetch(req: urllib.request.Request, timeout: float, read: bool = True) -> bytes:
    """The body of the answer to `req`, all of it within `timeout` seconds (DeadlinePassed otherwise); an HTTP error
    is urllib's HTTPError, its body read within the same deadline. With `read` False, only the status line and
    headers are waited for."""
    with _Deadline(timeout) as deadline:
        req.deadline = deadline
        try:
            try:
                with _OPENER.open(req, timeout=timeout) as resp:
                    return resp.read() if read else b""
            except urllib.error.HTTPError as e:
                try:
                    body = e.read()
                except (OSError, http.client.HTTPException):
                    body = b""
                raise urllib.error.HTTPError(e.url, e.code, e.msg, e.hdrs, io.BytesIO(body)) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            # what the shutdown made of the read it ended (a reset, a short read); a connection that never opened
            # (no socket registered) keeps its own error
            if deadline.passed and deadline.connected and not isinstance(e, urllib.error.HTTPError):
                raise DeadlinePassed(timeout) from None
            raise


def endpoint_base(url: str) -> str | None:
    """`scheme://host[:port]/path` of an endpoint URL, without credentials, query, fragment or a final `/` (what
    records name), or None where the URL names no host."""
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError:  # a port that is not a number
        return None
    if not parsed.hostname:
        return None
    # never keep credentials from the URL in what we record
    netloc = parsed.hostname + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path.rstrip("/"), "", ""))


def no_answer(base: str, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """Why the server at `base` gives no answer to one quick request for its model list (`connection refused`),
    or None where it answers: an HTTP error code is an answer (a server without the route, or one that wants a
    key, is there). The health check of a server at start (a fleet) and after a request that got no answer."""
    try:
        fetch(urllib.request.Request(base + "/models", method="GET"), timeout, read=False)
        return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        return _reason(e)


class BothSlots:
    """A request's slot in two limits at once, its endpoint's own and the one shared by a fleet's endpoints;
    taken by every request in one order, the shared one first, then its own, so no two requests wait on each
    other."""

    def __init__(self, shared: threading.BoundedSemaphore, n: int):
        self.shared, self.own = shared, threading.BoundedSemaphore(n)

    def __enter__(self):
        self.shared.acquire()
        try:
            self.own.acquire()
        except BaseException:
            self.shared.release()
            raise
        return self

    def __exit__(self, *exc):
        self.own.release()
        self.shared.release()


def _reason(e: BaseException) -> str:
    """`connection refused`, not `<urlopen error [Errno 111] Connection refused>`."""
    reason = getattr(e, "reason", e)
    if isinstance(reason, DeadlinePassed):
        return str(reason)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(reason) or type(reason).__name__


class HttpPolicy(Policy):
    backend = "http"

    def __init__(self, url: str, args: dict | None = None, *, act=None, max_tokens=MAX_TOKENS, top_p=1.0):
        opts = take_args(args, SCHEMA, self.backend)
        if opts["guided"] not in GUIDED_VALUES:
            raise PolicyError(f"--policy-arg guided={opts['guided']}: expected {', '.join(GUIDED_VALUES)}")
        if act in GUIDED_FOR and opts["guided"] == "none":
            raise PolicyError(
                f"--act {act} over HTTP needs the server's guided decoding{GUIDED_FOR[act]}: give "
                f"--policy-arg guided=NAME ({', '.join(GUIDED)}) or leave it to the probe (auto)"
            )
        self.base = endpoint_base(url)
        if self.base is None:
            raise PolicyError(f"{url}: not an http(s) URL")
        self.spec = self.base
        self.act_mode, self.max_tokens, self.top_p = act, max_tokens, top_p
        self.opts = opts
        self.api_key = None
        if opts["api_key_env"]:
            self.api_key = os.environ.get(opts["api_key_env"])
            if not self.api_key:
                raise PolicyError(
                    f"--policy-arg api_key_env={opts['api_key_env']}: that environment variable is not set"
                )
        self.model = opts["model"]
        self.name = self.model or self.base
        if opts["concurrency"] < 1:
            raise PolicyError(f"--policy-arg concurrency={opts['concurrency']}: must be at least 1")
        self.set_concurrency(opts["concurrency"])
        self.requests = self.failed_requests = 0
        self.down: str | None = None  # why the server is taken for gone (then every call stops the run)
        self._count_lock = threading.Lock()
        self._warn_lock = threading.Lock()
        self._warned_unguided = False
        self.guided = opts["guided"]
        self._connect()
        if act == "score":
            self._probe_scoring()
        self.card_path: str | None = None  # the served model's file or folder here, where its card was read
        self._thought_tokens_trained: int | None = None
        # every act: the card gives think its thought budget, and the file its hash (describe's model_sha256)
        self._read_served_card()
        if act == "think":
            self._probe_continuation()
        if self.guided == "auto":
            if act in ("generate", "score"):
                self.guided = "none"  # free text, or ranking: no guided decoding to probe
            else:
                self.guided = self._probe_guided()
                if self.guided == "none" and act in GUIDED_FOR:
                    raise PolicyError(
                        f"--act {act} over HTTP needs the server's guided decoding{GUIDED_FOR[act]}, "
                        f"and {self.base} obeys none of {', '.join(GUIDED)} (tried each with one "
                        f"request); use --act generate, or a server that has one"
                    )

    # transport --------------------------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, body: dict | None = None, first: bool = False, root: bool = False
    ) -> dict:
        """The JSON answer; EndpointError after the retries. `first`: no HTTP answer at all is Unreachable at once
        (an address where nothing listens does not start listening between retries). `root`: `path` is at the
        server's root (/tokenize), not under the base URL's /v1."""
        url = (self._root() if root else self.base) + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = self.opts["retries"] + 1
        delay = self.opts["backoff"]
        last, status = "", None
        for attempt in range(attempts):
            if self.down:  # another request found the server gone: no retries spent on it
                raise EndpointError(f"cannot reach {url} ({self.down})")
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                return json.loads(fetch(req, self.opts["timeout"]).decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if 300 <= e.code < 400:  # not followed (_NoRedirectHandler)
                    detail = (
                        f"a redirect to {endpoint_base(e.headers.get('Location') or '') or 'elsewhere'}, not followed"
                    )
                last = f"HTTP {e.code} from {url}: {detail}"
                status = e.code
                if e.code not in RETRY_STATUS:
                    raise EndpointError(last, e.code) from None
            except (
                urllib.error.URLError,
                socket.timeout,
                TimeoutError,
                ConnectionError,
                http.client.HTTPException,
            ) as e:
                last, status = f"cannot reach {url} ({_reason(e)})", None
                if first:
                    if isinstance(e, DeadlinePassed):  # it is there, but too slow to use
                        raise EndpointError(f"{url}: {e}") from None
                    raise Unreachable(_reason(e)) from None
                self._check_alive()  # a server that is gone stops the run now, not after every retry
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise EndpointError(f"{url} answered with something that is not JSON") from None
            if attempt + 1 < attempts:
                time.sleep(delay)
                delay *= 2
        raise EndpointError(f"{last}, after {attempts} attempts", status)

    def _connect(self) -> None:
        """The first contact: the served model's name (unless given), then one one-token chat request. Any failure
        here is the run's error: nothing that follows could work."""
        try:
            if not self.model:
                try:
                    listed = self._request("GET", "/models", first=True).get("data") or []
                    self.model = listed[0]["id"] if listed else "default"
                except EndpointError as e:
                    # a server without /models is fine; one that refuses us or is down is not
                    if e.status not in (404, 405):
                        raise
                    self.model = "default"
                except (KeyError, IndexError, TypeError, AttributeError):
                    self.model = "default"
                self.name = self.model
            self._chat(PROBE_MESSAGES, seed=1, temperature=0.0, top_p=1.0, max_tokens=1, first=True)
        except Unreachable as e:
            raise PolicyError(
                f"cannot reach the policy endpoint {self.base}: {e} (is the server running, and "
                f"listening at this address?)"
            ) from None
        except EndpointError as e:
            raise PolicyError(f"the policy endpoint {self.base} cannot be used: {e}") from None

    def _probe_guided(self) -> str:
        """The first mechanism of GUIDED whose reply to a tiny request obeys it, or "none". For --act think the
        request continues a reply, as think's will: a mechanism can work in a fresh reply and not in a continued one
        (llama-server refuses its json_schema there: its grammar would have to match the prefix too)."""
        prefix, choices = continued(PROBE_PREFIX, PROBE_CHOICES) if self.act_mode == "think" else (None, PROBE_CHOICES)
        for mechanism in GUIDED:
            try:
                text, _ = self._chat(
                    PROBE_MESSAGES,
                    seed=1,
                    temperature=0.0,
                    top_p=1.0,
                    max_tokens=self._choice_tokens(choices, mechanism),
                    choices=choices,
                    mechanism=mechanism,
                    prefix=prefix,
                )
            except EndpointError:  # e.g. HTTP 400 for a field the server does not accept
                continue
            if text.strip() in PROBE_CHOICES:
                return mechanism
        return "none"

    @staticmethod
    def _choice_tokens(choices: list[str], mechanism: str) -> int:
        """Enough tokens for the longest choice (a token is at least a byte), and the JSON around it."""
        longest = max(len(c.encode("utf-8")) for c in choices)
        return longest + (32 if mechanism == "json_schema" else 8)

    @staticmethod
    def _guided_fields(mechanism: str, choices: list[str]) -> dict:
        if mechanism == "structured_outputs":
            return {"structured_outputs": {"choice": choices}}
        if mechanism == "vllm":
            return {"guided_choice": choices}
        if mechanism == "llamacpp":
            return {"grammar": choice_grammar(choices)}
        schema = {
            "type": "object",
            "properties": {"action": {"type": "string", "enum": choices}},
            "required": ["action"],
            "additionalProperties": False,
        }
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "action", "strict": True, "schema": schema},
            }
        }

    def _chat(
        self, messages, *, seed, temperature, top_p, max_tokens, choices=None, mechanism=None, first=False, prefix=None
    ) -> tuple[str, str]:
        """The reply's text and finish reason. `prefix`: the reply so far (--act think), which the server continues
        (the answer is what comes after it)."""
        body = {
            "model": self.model or "default",
            "messages": messages,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
            "n": 1,
        }
        if prefix is not None:
            body.update(CONTINUE, messages=messages + [{"role": "assistant", "content": prefix}])
        mechanism = mechanism or self.guided
        if choices is not None:
            body.update(self._guided_fields(mechanism, choices))
        answer = self._request("POST", "/chat/completions", body, first=first)
        try:
            choice = answer["choices"][0]
            text, finish = choice["message"].get("content") or "", choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError, AttributeError):
            raise EndpointError(f"{self.base}/chat/completions answered without choices[0].message") from None
        if prefix is not None:
            text = continuation(prefix, text)
        if choices is not None and mechanism == "json_schema":
            try:  # {"action": "Action: ..."}: the action line itself is the reply
                action = json.loads(text).get("action")
                text = action if isinstance(action, str) else text
            except (json.JSONDecodeError, AttributeError):
                pass  # not the JSON asked for: parsed as it is (and most likely invalid)
        return text, finish

    def _call(self, messages, admissible, seed, temperature, context, max_tokens, constrained, top_p=None) -> Reply:
        choices = [format_action(a) for a in admissible] if constrained else None
        try:
            with self._slots:  # at most `concurrency` requests in flight, from every thread together
                text, finish = self._chat(
                    messages,
                    seed=seed,
                    temperature=temperature,
                    top_p=self.top_p if top_p is None else top_p,
                    max_tokens=max_tokens,
                    choices=choices,
                )
        except EndpointError as e:
            return self._failed(e, [seed], admissible)[0]
        self._count(1)
        return reply_from_text(
            text, admissible, context=context, seed=seed if temperature > 0 else 0, finish_reason=finish
        )

    def _count(self, calls: int, failed: bool = False) -> int:
        """Count `calls` replies (all failed, or none); the failures so far."""
        with self._count_lock:
            self.requests += calls
            self.failed_requests += calls if failed else 0
            return self.failed_requests

    def _failed(self, e: EndpointError, seeds: list[int], admissible) -> list[Reply]:
        """The replies of a call that failed for good, counted (and the first few said), after a look at whether
        the server is still there when there was no answer at all."""
        if e.status is None:
            self._check_alive()
        failed = self._count(len(seeds), failed=True)
        if failed - len(seeds) < 3:
            warn(
                f"{e}; the reply is marked failed"
                + (" (further failures are counted, not shown)" if failed >= 3 else "")
            )
        return [failed_reply(str(e), seed, admissible) for seed in seeds]

    def _check_alive(self) -> None:
        """After a request got no answer: one quick request (the model list, no retries). A server that does not
        answer it either is gone, and the run stops (EndpointDown) with how far it got. A server that answers it
        is there (the request was lost, or timed out on a busy server): the request's retries go on."""
        if not self.down:
            self.down = no_answer(self.base, min(HEALTH_TIMEOUT, self.opts["timeout"]))
            if not self.down:
                return
        raise EndpointDown(
            f"the policy endpoint {self.base} stopped answering ({self.down}) after "
            f"{self.requests} requests: the run stops here. The records written so far are whole; "
            f"restart the server and continue with -o FILE --resume"
        )

    def _first_unguided_call(self) -> bool:
        with self._warn_lock:  # --concurrency N: threads share this policy
            first, self._warned_unguided = not self._warned_unguided, True
        return first

    # the interface ----------------------------------------------------------------------------------------------
    def generate(self, messages, *, seed, temperature, top_p=None, max_tokens=None) -> Reply:
        return self._call(messages, None, seed, temperature, None, max_tokens or self.max_tokens, False, top_p)

    def act(self, messages, *, admissible, seed, temperature=0.0, context=None) -> Reply:
        return self.sample(messages, admissible=admissible, seeds=[seed], temperature=temperature, context=context)[0]

    def sample(self, messages, *, admissible, seeds, temperature=1.0, context=None) -> list[Reply]:
        # constrained where asked, and by default where the list is the closed set of actions and the server can
        if self.act_mode == "think":
            return self._think(messages, admissible, seeds, temperature, context)
        if self.act_mode == "score" and admissible:
            return self._scored(messages, admissible, seeds, temperature)
        wanted = bool(admissible) and (
            self.act_mode == "constrained" or (self.act_mode is None and not open_space(context))
        )
        constrained = wanted and self.guided != "none"
        if wanted and not constrained and self.opts["guided"] == "auto" and self._first_unguided_call():
            warn(
                f"{self.base} obeys none of the guided decodings eexp knows ({', '.join(GUIDED)}; tried each "
                f"with one request at start): actions are FREE TEXT, and a model that answers outside the "
                f"admissible list scores its steps as invalid. If the server has one, give --policy-arg "
                f"guided=NAME; --policy-arg guided=none says free text is meant (said once per run)"
            )
        if constrained:
            max_tokens = min(self.max_tokens, self._choice_tokens([format_action(a) for a in admissible], self.guided))
        else:
            max_tokens = self.max_tokens

        def one(seed):
            return lambda: self._call(messages, admissible, seed, temperature, context, max_tokens, constrained)

        # the K samples together (the semaphore in _call bounds what is in flight), in the order of the seeds
        return side_by_side([one(s) for s in seeds], self.concurrency, name="eexp-http-sample")

    def set_concurrency(self, n: int, shared: threading.BoundedSemaphore | None = None) -> None:
        """At most `n` requests in flight; `shared`: a limit this endpoint shares with others (the fleet's
        --concurrency, eexp.policies.fleet), taken too by every request."""
        self.concurrency = n
        self._slots = threading.BoundedSemaphore(n) if shared is None else BothSlots(shared, n)

    def describe(self):
        how = {
            "score": {"scoring": "tokenize+echo"},
            # the action after the thought: by `guided` where the set is closed (not by log-likelihood)
            "think": {"think": "continue_final_message"},
        }.get(self.act_mode, {})
        card = {"card": self.card_path} if self.card_path else {}
        # the served model's hash where the server names a model file or folder on this machine (llama-server its
        # GGUF, vLLM its folder), as a local run of that model records it; a server elsewhere: unknown ("")
        sha = content_hash([self.card_path]) if self.card_path else ""
        return {
            "model": self.model or self.base,
            "model_sha256": sha,
            "backend": self.backend,
            "endpoint": self.base,
            "guided": self.guided,
            **how,
            **card,
        }

    def trained_thought_tokens(self) -> int | None:
        return self._thought_tokens_trained

    def _read_served_card(self) -> None:
        """The thought budget of the served model's card, where the server names a model file or folder that is on
        this machine (a server elsewhere, or one that names none, leaves it to --thought-tokens)."""
        names = []
        for path, key, root in (("/props", "model_path", True), ("/models", None, False)):
            try:  # no retries: a route the server lacks is no reason to wait
                answer = self._request("GET", path, root=root, first=True)
            except EndpointError:
                continue
            if key:
                names.append(answer.get(key) if isinstance(answer, dict) else None)
            else:
                listed = (answer.get("data") or []) if isinstance(answer, dict) else []
                served = [m for m in listed if isinstance(m, dict) and m.get("id") == self.model] or listed[:1]
                for m in served[:1]:
                    if isinstance(m, dict):
                        names += [m.get("root"), m.get("id")]
        for name in names:
            if isinstance(name, str) and name and os.path.exists(name):
                try:
                    card = read_model_card(name)
                except CardError as e:
                    warn(f"{self.base} serves {name}, whose model card cannot be read ({e})")
                    continue
                self.card_path, self._thought_tokens_trained = os.path.abspath(name), card.thought_tokens
                return

    # --act think ------------------------------------------------------------------------------------------------
    def _probe_continuation(self) -> None:
        try:  # no retries: a server that refuses the field does not learn it
            self._chat(
                PROBE_MESSAGES, seed=1, temperature=0.0, top_p=1.0, max_tokens=1, prefix=PROBE_PREFIX, first=True
            )
        except EndpointError as e:
            raise PolicyError(
                f"--act think over HTTP asks for the action as the continuation of the model's own "
                f"reply (its thought): it needs a server that continues a final assistant message "
                f"(continue_final_message, as vLLM and llama.cpp's llama-server do); {self.base} does "
                f"not ({e}). It serves --act generate, and --act constrained where it has guided "
                f"decoding"
            ) from None

    def _think(self, messages, admissible, seeds, temperature, context) -> list[Reply]:
        """One reply per seed, each a thought and then the action after it (ModelPolicy.think's reading of the
        reply; the action by guided decoding where the set is closed: the module's docstring says why it differs)."""
        closed = bool(admissible) and not open_space(context)
        choices = [format_action(a) for a in admissible] if closed else None

        def one(seed):
            return lambda: self._think_one(messages, admissible, choices, seed, temperature, context)

        return side_by_side([one(s) for s in seeds], self.concurrency, name="eexp-http-think")

    def _think_one(self, messages, admissible, choices, seed, temperature, context) -> Reply:
        ask = dict(seed=seed, temperature=temperature, top_p=self.top_p)
        try:
            with self._slots:  # each request takes its own slot: the two of a reply need not be batched together
                text, finish = self._chat(
                    messages, max_tokens=self.thought_tokens or self.max_tokens, prefix=THOUGHT_PREFILL, **ask
                )
            split = split_thought(THOUGHT_PREFILL + text)
            if choices is not None:  # the reply is `Action: <one of the admissible actions>`, after the thought
                prefix, after = continued(split.prefix, choices)
                with self._slots:
                    action_line, finish = self._chat(
                        messages,
                        max_tokens=self._choice_tokens(after, self.guided),
                        choices=after,
                        prefix=prefix,
                        **ask,
                    )
                action_line = action_line.strip()
            else:
                written = split.written
                if not written:  # cut, or an empty `Action:` line: the model continues its reply after `Action:`
                    with self._slots:
                        after, finish = self._chat(
                            messages, max_tokens=self.max_tokens, prefix=split.prefix + "Action:", **ask
                        )
                    written = after.strip().split("\n", 1)[0].strip()
                action_line = f"Action: {written}"
        except EndpointError as e:
            return self._failed(e, [seed], admissible)[0]
        self._count(1)
        reply = reply_from_text(
            split.prefix + action_line,
            admissible,
            context=context,
            seed=seed if temperature > 0 else 0,
            finish_reason=finish,
        )
        reply.thought, reply.thought_cut = split.thought, split.cut
        return reply

    # --act score ------------------------------------------------------------------------------------------------
    def _root(self) -> str:
        """The server's root, where /tokenize lives (the base without its /v1)."""
        return self.base[:-3] if self.base.endswith("/v1") else self.base

    def _tokenize(self, messages: list[dict], add_generation_prompt: bool, probe: bool = False) -> list[int]:
        body = {
            "model": self.model or "default",
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "add_special_tokens": False,
        }
        answer = self._request("POST", "/tokenize", body, root=True, first=probe)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise EndpointError(f"{self._root()}/tokenize answered without a list of token ids")
        if not tokens:  # llama.cpp's server: its /tokenize reads text (`content`), not chat messages
            raise EndpointError(f"{self._root()}/tokenize gave no token ids for chat messages")
        return tokens

    def _token_logprobs(self, ids: list[int], probe: bool = False) -> list[float | None]:
        """log p(token i | tokens before it) for every token of `ids` (None for the first)."""
        body = {
            "model": self.model or "default",
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 0,
        }
        answer = self._request("POST", "/completions", body, first=probe)
        try:
            values = answer["choices"][0]["logprobs"]["token_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(
                f"{self.base}/completions answered without choices[0].logprobs.token_logprobs (echo)"
            ) from None
        if not isinstance(values, list) or len(values) < len(ids):
            raise EndpointError(
                f"{self.base}/completions gave {len(values or [])} prompt log-probabilities for "
                f"{len(ids)} prompt tokens (echo)"
            )
        return values[: len(ids)]

    def _probe_scoring(self) -> None:
        try:  # no retries: a server without the routes does not grow them (one that drops the connection)
            ids = self._tokenize(PROBE_MESSAGES, True, probe=True)
            self._token_logprobs(ids, probe=True)
        except EndpointError as e:
            raise PolicyError(
                f"--act score over HTTP needs a server that renders chat messages to token ids (POST "
                f"/tokenize with messages, as vLLM and SGLang do) and gives the log-probability of "
                f"every prompt token (/v1/completions with echo and logprobs, as vLLM does); "
                f"{self.base} does not ({e}). It serves --act generate, and --act constrained where "
                f"it has guided decoding (the default probes for it)"
            ) from None

    def _candidates(self, messages: list[dict], replies: list[str]) -> tuple[list[int], list[list[int]]]:
        """The prompt's ids and each reply's, as an assistant turn rendered by the server's template, through its
        end-of-turn token (the tokens training produced, and those the local backends score)."""
        prompt = self._tokenize(messages, True)
        # what the template puts after an assistant turn's content: its first token ends the turn
        framing = self._tokenize(messages + [{"role": "assistant", "content": ""}], False)[len(prompt) :]
        out = []
        for reply in replies:
            full = self._tokenize(messages + [{"role": "assistant", "content": reply}], False)
            if full[: len(prompt)] != prompt or len(full) <= len(prompt):
                raise PolicyError(
                    f"the chat template of {self.base} renders an assistant turn that does not extend "
                    f"the generation prompt; --act score needs one that does"
                )
            cont = full[len(prompt) :]
            if framing and len(cont) > len(framing) and cont[-len(framing) :] == framing:
                cont = cont[: len(cont) - len(framing) + 1]
            out.append(cont)
        return prompt, out

    def _score(self, messages: list[dict], admissible: list[str]) -> list[float]:
        """The log-likelihood of each admissible action's reply after the prompt (one echo request each, side by
        side within the in-flight limit)."""
        prompt, conts = self._candidates(messages, [format_action(a) for a in admissible])

        def loglik(cont):
            def call():
                with self._slots:
                    values = self._token_logprobs(prompt + cont)
                return float(sum(values[len(prompt) :]))

            return call

        return side_by_side([loglik(cont) for cont in conts], self.concurrency, name="eexp-http-score")

    def _scored(self, messages, admissible, seeds, temperature) -> list[Reply]:
        """--act score: the actions ranked once, then one pick per seed (greedy at temperature 0)."""
        try:
            logliks = self._score(messages, admissible)
        except EndpointError as e:
            return self._failed(e, seeds, admissible)
        self._count(len(seeds))
        return [pick_action(admissible, logliks, seed, temperature) for seed in seeds]


def continued(prefix: str, choices: list[str]) -> tuple[str, list[str]]:
    """The reply to continue and the guided choices after it, with the reply's trailing whitespace (the newline
    before `Action:`) moved into the choices. vLLM continues a message through transformers' chat template, which
    drops that whitespace where the template trims a message's content (Llama-3's does): the action would follow the
    thought on the same line, not as the SR targets lay it out. Generated, it is there whatever the template does;
    where the template keeps it (llama-server, ChatML), the text and, with a tokenizer that splits whitespace from
    words, the tokens are the same as before."""
    body = prefix.rstrip()
    return body, [prefix[len(body) :] + c for c in choices]


def continuation(prefix: str, text: str) -> str:
    """What the server wrote after `prefix`. llama-server answers a continued message with all of it (the prefix,
    then what it generated), vLLM with what it generated: a reply that begins with the prefix has it taken off."""
    return text[len(prefix) :] if text.startswith(prefix) else text


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode("utf-8", "replace")
    except OSError:
        return e.reason or ""
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if err:
            return str(err)
    except (json.JSONDecodeError, AttributeError):
        pass
    return body[:200] or str(e.reason)
