"""An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server, ...): `--policy http://host:8000/v1`.

The server renders the chat template (its own, from the model it serves). Each call sends an explicit `seed`.
The K samples of a state go out as parallel requests (`--policy-arg concurrency=N`), since a server batches them.
Network failures and 429/5xx answers are retried with exponential backoff; after the last retry the reply is marked
failed (`finish_reason: "error: ..."`) and the stage records it and goes on. The API key is read from the
environment variable named by `--policy-arg api_key_env=NAME` and is never written into records.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from eexp.policies.actions import failed_reply, open_space, reply_from_text
from eexp.policies.args import take_args
from eexp.policies.base import Policy, PolicyError, Reply
from eexp.policies.chat import warn
from eexp.prompts import format_action

SCHEMA = {
    "model": (str, ""),           # the served model's name (default: the first one /v1/models lists)
    "api_key_env": (str, ""),     # NAME of the environment variable holding the API key
    "timeout": (float, 120.0),    # seconds per request
    "retries": (int, 4),          # further attempts after a failed one
    "backoff": (float, 1.0),      # seconds before the first retry, doubled each time
    "concurrency": (int, 8),      # requests in flight at once
    "guided": (str, ""),          # constrained actions: "vllm" (guided_choice) or "llamacpp" (grammar)
}
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(Exception):
    """A request that failed for good (after the retries, or with an answer that retrying cannot change)."""


class HttpPolicy(Policy):
    backend = "http"

    def __init__(self, url: str, args: dict | None = None, *, act=None, max_tokens=256, top_p=1.0):
        opts = take_args(args, SCHEMA, self.backend)
        if act == "score":
            raise PolicyError("--act score needs the model's log-likelihoods, which chat-completions endpoints do "
                              "not give; use --act generate or constrained, or a local model")
        if opts["guided"] not in ("", "vllm", "llamacpp"):
            raise PolicyError(f"--policy-arg guided={opts['guided']}: expected vllm or llamacpp")
        if act == "constrained" and not opts["guided"]:
            raise PolicyError("--act constrained over HTTP needs the server's guided decoding: "
                              "--policy-arg guided=vllm (guided_choice) or guided=llamacpp (grammar)")
        parsed = urllib.parse.urlsplit(url)
        if not parsed.hostname:
            raise PolicyError(f"{url}: not an http(s) URL")
        # never keep credentials from the URL in what we record
        netloc = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
        self.base = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path.rstrip("/"), "", ""))
        self.spec = self.base
        self.act_mode, self.max_tokens, self.top_p = act, max_tokens, top_p
        self.opts = opts
        self.api_key = None
        if opts["api_key_env"]:
            self.api_key = os.environ.get(opts["api_key_env"])
            if not self.api_key:
                raise PolicyError(f"--policy-arg api_key_env={opts['api_key_env']}: that environment variable is "
                                  f"not set")
        self.model = opts["model"]
        self.name = self.model or self.base
        self.failures = 0

    # transport --------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = self.base + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = self.opts["retries"] + 1
        delay = self.opts["backoff"]
        last = ""
        for attempt in range(attempts):
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=self.opts["timeout"]) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                last = f"HTTP {e.code} from {url}: {detail}"
                if e.code not in RETRY_STATUS:
                    raise EndpointError(last) from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                last = f"cannot reach {url} ({reason})"
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise EndpointError(f"{url} answered with something that is not JSON") from None
            if attempt + 1 < attempts:
                time.sleep(delay)
                delay *= 2
        raise EndpointError(f"{last}, after {attempts} attempts")

    def _model_name(self) -> str:
        if not self.model:
            try:
                listed = self._request("GET", "/models").get("data") or []
                self.model = listed[0]["id"] if listed else "default"
            except (EndpointError, KeyError, IndexError, TypeError):
                self.model = "default"
            self.name = self.model
        return self.model

    def _chat(self, messages, *, seed, temperature, top_p, max_tokens, choices=None) -> tuple[str, str]:
        body = {"model": self._model_name(), "messages": messages, "temperature": temperature, "top_p": top_p,
                "max_tokens": max_tokens, "seed": seed, "n": 1}
        if choices is not None:
            if self.opts["guided"] == "vllm":
                body["guided_choice"] = choices
            else:
                from eexp.policies.llama import choice_grammar
                body["grammar"] = choice_grammar(choices)
        answer = self._request("POST", "/chat/completions", body)
        try:
            choice = answer["choices"][0]
            return choice["message"].get("content") or "", choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError, AttributeError):
            raise EndpointError(f"{self.base}/chat/completions answered without choices[0].message") from None

    def _call(self, messages, admissible, seed, temperature, context, max_tokens, constrained,
              top_p=None) -> Reply:
        choices = [format_action(a) for a in admissible] if constrained else None
        try:
            text, finish = self._chat(messages, seed=seed, temperature=temperature,
                                      top_p=self.top_p if top_p is None else top_p,
                                      max_tokens=max_tokens, choices=choices)
        except EndpointError as e:
            self.failures += 1
            if self.failures <= 3:
                warn(f"{e}; the reply is marked failed")
            return failed_reply(str(e), seed, admissible)
        return reply_from_text(text, admissible, context=context, seed=seed if temperature > 0 else 0,
                               finish_reason=finish)

    # the interface ----------------------------------------------------------------------------------------------
    def generate(self, messages, *, seed, temperature, top_p=None, max_tokens=None) -> Reply:
        return self._call(messages, None, seed, temperature, None, max_tokens or self.max_tokens, False, top_p)

    def act(self, messages, *, admissible, seed, temperature=0.0, context=None) -> Reply:
        return self.sample(messages, admissible=admissible, seeds=[seed], temperature=temperature,
                           context=context)[0]

    def sample(self, messages, *, admissible, seeds, temperature=1.0, context=None) -> list[Reply]:
        # constrained where asked, and by default where the server can (guided decoding configured)
        constrained = bool(admissible) and (self.act_mode == "constrained" or
                                            (self.act_mode is None and bool(self.opts["guided"])
                                             and not open_space(context)))
        if constrained:
            longest = max(len(format_action(a)) for a in admissible)
            max_tokens = min(self.max_tokens, longest + 8)
        else:
            max_tokens = self.max_tokens

        def one(seed):
            return self._call(messages, admissible, seed, temperature, context, max_tokens, constrained)

        if len(seeds) <= 1 or self.opts["concurrency"] <= 1:
            return [one(s) for s in seeds]
        with ThreadPoolExecutor(max_workers=min(self.opts["concurrency"], len(seeds))) as pool:
            return list(pool.map(one, seeds))  # map keeps the order of the seeds

    def describe(self):
        return {"model": self.model or self.base, "model_sha256": "", "backend": self.backend,
                "endpoint": self.base}


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
