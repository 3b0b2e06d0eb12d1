"""Several OpenAI-compatible servers of one model behind one policy: `--policy http://a:8000/v1,http://b:8000/v1`,
or `--policy @servers.txt` (one URL a line; blank lines and lines that begin with `#` are skipped). `URL#N` caps
what that endpoint gets at N requests in flight (a small server beside a big one).

Each endpoint is an eexp.policies.http.HttpPolicy (its probes, retries, guided decoding and its look at a server that
stops answering); this module only chooses which one answers a call:

- A call goes to the endpoint with the fewest requests in flight (among those under their cap; ties to the one sent
  the fewest so far, so a serial run takes them in turn). All the requests of one call go to one endpoint: the K
  samples of a state (`sample`, branch --propose policy -k K), the two requests of an `--act think` reply, the
  scoring requests of `--act score`, so the server's prefix cache holds the state's prompt for all of them.
- `--concurrency N` (default: the sum of the endpoints' own, 16 each or their cap) bounds the requests in flight
  over all the endpoints together; a cap bounds one endpoint's within that.
- At start every endpoint is asked for its model list (the health check). One that gives no answer is left out
  with a line on stderr and the run goes on with the others; none answering is the run's error. Every endpoint that
  answers is then set up as a single endpoint is (one one-token request, the guided-decoding probe) and must serve
  alike: the same model, the same guided decoding, the same card. An endpoint that answers but cannot be used (a
  refused key, another model) is an error, not left out: that is a mistake to fix, not a server that is down.
- An endpoint that stops answering mid-run (HttpPolicy's quick look after a request that got no answer: EndpointDown)
  is left out for the rest of the run, with a line on stderr; the calls it held are sent again, whole, to the others
  and counted (`resent_requests`: their requests, in --stats and in a line when the policy closes). Each call's
  replies are handed back once, from the endpoint that finished it, so nothing is lost or written twice. Only when
  every endpoint is gone does the run stop (EndpointDown, as with one endpoint: restart and --resume).
- A request that fails on an endpoint that still answers (HTTP 5xx after its retries) is a failed reply, counted
  toward the failed-request rule as with one endpoint; it is not sent elsewhere.

Replies depend on the seed and the request, not on which endpoint answered (for servers that are deterministic per
request), so the records are those of a run against one endpoint but for the fields that name the endpoints
(`meta.endpoint`: the endpoints in use at start, comma-separated; eval's meta.policy_spec, what was given).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from eexp.inflight import side_by_side
from eexp.policies.args import take_args
from eexp.policies.base import MAX_TOKENS, Policy, PolicyError, Reply
from eexp.policies.chat import warn
from eexp.policies.http import HEALTH_TIMEOUT, SCHEMA, EndpointDown, HttpPolicy, endpoint_base, no_answer

LIST_FORMS = "http(s)://HOST/v1,http(s)://HOST/v1 (each may end in #N, at most N requests in flight there), or @FILE"


def is_fleet(spec: str) -> bool:
    """Whether an endpoint spec names a list (a comma, a cap, or @FILE), not one URL."""
    return spec.startswith("@") or "," in spec or "#" in spec


def parse_endpoints(spec: str) -> list[tuple[str, int | None]]:
    """(base URL, cap or None) for every endpoint of a list spec, in its order; a malformed one is a PolicyError
    that says where (FILE:LINE for @FILE)."""
    if spec.startswith("@"):
        path = spec[1:]
        if not path:
            raise PolicyError("--policy @: give the file that lists the endpoints (@FILE, one URL a line)")
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise PolicyError(f"{path}: no such file (--policy @FILE lists the endpoints, one URL a line)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyError(f"{path}: cannot be read ({e})") from None
        items = [(f"{path}:{number}", line.strip()) for number, line in enumerate(lines, 1)
                 if line.strip() and not line.strip().startswith("#")]
        if not items:
            raise PolicyError(f"{path}: lists no endpoint (one http(s)://HOST/v1 a line)")
    else:
        items = [(f"--policy {spec}: endpoint {number}", item.strip())
                 for number, item in enumerate(spec.split(","), 1)]
    endpoints: list[tuple[str, int | None]] = []
    for where, item in items:
        base, cap = _endpoint(item, where)
        if base in (listed for listed, _ in endpoints):   # twice would be a second share of the calls, unasked
            raise PolicyError(f"{where}: {base} is listed twice")
        endpoints.append((base, cap))
    return endpoints


def _endpoint(item: str, where: str) -> tuple[str, int | None]:
    if not item:
        raise PolicyError(f"{where}: empty (expected {LIST_FORMS})")
    url, sep, cap_text = item.partition("#")
    cap = None
    if sep:
        if not cap_text.isdigit() or int(cap_text) < 1:
            raise PolicyError(f"{where}: {item}: what follows # is the endpoint's cap, a whole number of requests "
                              f"in flight, at least 1")
        cap = int(cap_text)
    base = endpoint_base(url) if url.startswith(("http://", "https://")) and not any(c.isspace() for c in url) \
        else None
    if base is None:
        raise PolicyError(f"{where}: {url!r} is not an http(s)://HOST[:PORT]/v1 URL")
    return base, cap


class FleetPolicy(Policy):
    """One policy over the endpoints of a list spec (the module's docstring says how calls are routed)."""

    backend = "http"

    def __init__(self, spec: str, args: dict | None = None, *, act=None, max_tokens=MAX_TOKENS, top_p=1.0):
        listed = parse_endpoints(spec)
        opts = take_args(args, SCHEMA, self.backend)   # a bad --policy-arg is said before any server is asked
        timeout = min(HEALTH_TIMEOUT, opts["timeout"])
        silent = side_by_side([lambda base=base: no_answer(base, timeout) for base, _ in listed], len(listed),
                              name="eexp-fleet-health")
        if all(silent):
            raise PolicyError("none of the policy endpoints answers: " + "; ".join(
                f"{base} ({why})" for (base, _), why in zip(listed, silent)) + " (are the servers running, and "
                "listening at these addresses?)")
        for (base, _), why in zip(listed, silent):
            if why:
                warn(f"the policy endpoint {base} does not answer ({why}): going on without it, with "
                     f"{sum(not s for s in silent)} of the {len(listed)} endpoints")
        up = [(base, cap) for (base, cap), why in zip(listed, silent) if not why]
        self.members: list[HttpPolicy] = side_by_side(
            [lambda base=base: HttpPolicy(base, dict(args or {}), act=act, max_tokens=max_tokens, top_p=top_p)
             for base, _ in up], len(up), name="eexp-fleet-start")
        self._check_alike()
        self.caps = [cap for _, cap in up]
        self.spec = ",".join(m.base for m in self.members)
        first = self.members[0]
        self.name, self.model, self.act_mode = first.name, first.model, first.act_mode
        self.requests = self.failed_requests = 0
        self.resent_requests = 0          # requests sent again to another endpoint after theirs stopped answering
        self.in_flight = [0] * len(self.members)   # requests of the calls each endpoint holds
        self.sent = [0] * len(self.members)
        self.gone: list[str | None] = [None] * len(self.members)   # why an endpoint is left out (None: in use)
        self._routing = threading.Condition()
        self.set_concurrency(sum(cap or opts["concurrency"] for cap in self.caps))

    def _check_alike(self) -> None:
        """Every endpoint describes itself as the first does, but for its address: a reply must not depend on which
        endpoint gave it."""
        def served(member):
            return {k: v for k, v in member.describe().items() if k != "endpoint"}
        first = self.members[0]
        for other in self.members[1:]:
            a, b = served(first), served(other)
            if a != b:
                differ = "; ".join(f"{key}: {a.get(key)!r} at {first.base}, {b.get(key)!r} at {other.base}"
                                   for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key))
                raise PolicyError(f"the policy endpoints do not serve alike ({differ}): the endpoints of one "
                                  f"--policy must serve the same model in the same way")

    # routing ------------------------------------------------------------------------------------------------------
    def _take(self, n: int) -> int:
        """The endpoint for a call of `n` requests: the fewest in flight among those in use and under their cap
        (ties: the fewest sent), waiting while every one is at its cap."""
        with self._routing:
            while True:
                in_use = [i for i, why in enumerate(self.gone) if why is None]
                if not in_use:
                    raise self._all_gone()
                room = [i for i in in_use if self.caps[i] is None or self.in_flight[i] < self.caps[i]]
                if room:
                    i = min(room, key=lambda j: (self.in_flight[j], self.sent[j], j))
                    self.in_flight[i] += n
                    self.sent[i] += n
                    return i
                self._routing.wait()

    def _release(self, i: int, n: int) -> None:
        with self._routing:
            self.in_flight[i] -= n
            self._routing.notify_all()

    def _lost(self, i: int, n: int) -> None:
        """Endpoint i stopped answering during a call of `n` requests: it is left out, and the call is sent again
        elsewhere (counted), unless none is left."""
        member = self.members[i]
        with self._routing:
            first = self.gone[i] is None
            if first:
                self.gone[i] = member.down or "stopped answering"
            left = sum(why is None for why in self.gone)
            if left:
                self.resent_requests += n
            self._routing.notify_all()
        if first and left:
            warn(f"the policy endpoint {member.base} stopped answering ({self.gone[i]}) after {self.sent[i]} "
                 f"requests: the requests it held are sent again to the other endpoints ({left} left)")
        if not left:
            raise self._all_gone()

    def _all_gone(self) -> EndpointDown:
        return EndpointDown("every policy endpoint stopped answering (" + "; ".join(
            f"{m.base}: {why}" for m, why in zip(self.members, self.gone)) + f") after {self.requests} requests: "
            f"the run stops here. The records written so far are whole; restart the servers and continue with "
            f"-o FILE --resume")

    def _route(self, call: Callable[[HttpPolicy], Any], n: int) -> Any:
        """`call(endpoint)` for a call of `n` requests, on one endpoint, again on another while the one it ran on
        stops answering; its replies counted once."""
        while True:
            i = self._take(n)
            try:
                result = call(self.members[i])
            except EndpointDown:
                self._lost(i, n)
                continue
            finally:
                self._release(i, n)
            replies = result if isinstance(result, list) else [result]
            failed = sum(r.finish_reason.startswith("error") for r in replies)
            with self._routing:
                self.requests += len(replies)
                self.failed_requests += failed
            return result

    # the interface ----------------------------------------------------------------------------------------------
    def generate(self, messages, *, seed, temperature, top_p=None, max_tokens=None) -> Reply:
        return self._route(lambda m: m.generate(messages, seed=seed, temperature=temperature, top_p=top_p,
                                                max_tokens=max_tokens), 1)

    def act(self, messages, *, admissible, seed, temperature=0.0, context=None) -> Reply:
        return self._route(lambda m: m.act(messages, admissible=admissible, seed=seed, temperature=temperature,
                                           context=context), 1)

    def sample(self, messages, *, admissible, seeds, temperature=1.0, context=None) -> list[Reply]:
        return self._route(lambda m: m.sample(messages, admissible=admissible, seeds=seeds, temperature=temperature,
                                              context=context), len(seeds))

    def set_concurrency(self, n: int) -> None:
        """`n` requests in flight over every endpoint together, and no endpoint past its cap."""
        self.concurrency = n
        shared = threading.BoundedSemaphore(n)
        for member, cap in zip(self.members, self.caps):
            member.set_concurrency(min(cap, n) if cap else n, shared=shared)

    @property
    def thought_tokens(self) -> int | None:   # eval sets it (--act think): each endpoint's calls read their own
        return self.members[0].thought_tokens

    @thought_tokens.setter
    def thought_tokens(self, tokens: int | None) -> None:
        for member in self.members:
            member.thought_tokens = tokens

    def trained_thought_tokens(self) -> int | None:
        return self.members[0].trained_thought_tokens()

    def describe(self) -> dict:
        return {**self.members[0].describe(), "endpoint": self.spec}

    def close(self) -> None:
        for member in self.members:
            member.close()
        if self.resent_requests:
            warn(f"{self.resent_requests} policy requests were sent again to another endpoint after "
                 f"{', '.join(m.base for m, why in zip(self.members, self.gone) if why)} stopped answering")
