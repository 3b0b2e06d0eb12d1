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
  is left out, with a line on stderr; the calls it held are sent again, whole, to the others and counted
  (`resent_requests`: their requests, in --stats and in a line when the policy closes). Each call's replies are
  handed back once, from the endpoint that finished it, so nothing is lost or written twice. Only when every
  endpoint is gone does the run stop (EndpointDown, as with one endpoint: restart and --resume).
- An endpoint left out (gone mid-run, or silent at start) is asked for its model list again every REPROBE_SECONDS
  (30), in the background, as calls come: one that answers is set up afresh as at start and, serving as the others
  do, taken back with a line on stderr (a restarted server rejoins the run); one that answers but serves otherwise
  stays out, said once. Whichever endpoint answers, a reply is the same, so this changes no record.
- A request that fails on an endpoint that still answers (HTTP 5xx after its retries) is a failed reply, counted
  toward the failed-request rule as with one endpoint; it is not sent elsewhere.

Replies depend on the seed and the request, not on which endpoint answered (for servers that are deterministic per
request), so the records are those of a run against one endpoint but for the fields that name the endpoints
(`meta.endpoint`: the endpoints in use at start, comma-separated; eval's meta.policy_spec, what was given).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from eexp.errors import EndpointDown, PolicyError
from eexp.inflight import side_by_side
from eexp.policies.args import take_args
from eexp.policies.base import MAX_TOKENS, Policy, Reply
from eexp.policies.chat import warn
from eexp.policies.http import HEALTH_TIMEOUT, SCHEMA, HttpPolicy, endpoint_base, no_answer

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
        items = [
            (f"{path}:{number}", line.strip())
            for number, line in enumerate(lines, 1)
            if line.strip() and not line.strip().startswith("#")
        ]
        if not items:
            raise PolicyError(f"{path}: lists no endpoint (one http(s)://HOST/v1 a line)")
    else:
        items = [
            (f"--policy {spec}: endpoint {number}", item.strip()) for number, item in enumerate(spec.split(","), 1)
        ]
    endpoints: list[tuple[str, int | None]] = []
    for where, item in items:
        base, cap = _endpoint(item, where)
        if base in (listed for listed, _ in endpoints):  # twice would be a second share of the calls, unasked
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
            raise PolicyError(
                f"{where}: {item}: what follows # is the endpoint's cap, a whole number of requests "
                f"in flight, at least 1"
            )
        cap = int(cap_text)
    base = endpoint_base(url) if url.startswith(("http://", "https://")) and not any(c.isspace() for c in url) else None
    if base is None:
        raise PolicyError(f"{where}: {url!r} is not an http(s)://HOST[:PORT]/v1 URL")
    return base, cap


def _unlike(first: HttpPolicy, other: HttpPolicy) -> str | None:
    """How `other` serves otherwise than `first` (its address aside), or None where they serve alike."""
    a, b = ({k: v for k, v in m.describe().items() if k != "endpoint"} for m in (first, other))
    return (
        "; ".join(
            f"{key}: {a.get(key)!r} at {first.base}, {b.get(key)!r} at {other.base}"
            for key in sorted(set(a) | set(b))
            if a.get(key) != b.get(key)
        )
        or None
    )


class FleetPolicy(Policy):
    """One policy over the endpoints of a list spec (the module's docstring says how calls are routed)."""

    backend = "http"
    REPROBE_SECONDS = 30.0  # how often an endpoint left out is asked again whether it is back

    def __init__(self, spec: str, args: dict | None = None, *, act=None, max_tokens=MAX_TOKENS, top_p=1.0):
        listed = parse_endpoints(spec)
        opts = take_args(args, SCHEMA, self.backend)  # a bad --policy-arg is said before any server is asked
        timeout = min(HEALTH_TIMEOUT, opts["timeout"])
        silent = side_by_side(
            [lambda base=base: no_answer(base, timeout) for base, _ in listed], len(listed), name="eexp-fleet-health"
        )
        if all(silent):
            raise PolicyError(
                "none of the policy endpoints answers: "
                + "; ".join(f"{base} ({why})" for (base, _), why in zip(listed, silent))
                + " (are the servers running, and "
                "listening at these addresses?)"
            )
        for (base, _), why in zip(listed, silent):
            if why:
                warn(
                    f"the policy endpoint {base} does not answer ({why}): going on without it, with "
                    f"{sum(not s for s in silent)} of the {len(listed)} endpoints"
                )
        # one slot per endpoint listed, in its order: an endpoint that did not answer has no member (None) until it
        # answers again (_reprobe)
        self._connect = lambda base: HttpPolicy(base, dict(args or {}), act=act, max_tokens=max_tokens, top_p=top_p)
        self.bases = [base for base, _ in listed]
        self.caps = [cap for _, cap in listed]
        started = iter(
            side_by_side(
                [lambda base=base: self._connect(base) for (base, _), why in zip(listed, silent) if not why],
                sum(not why for why in silent),
                name="eexp-fleet-start",
            )
        )
        self.members: list[HttpPolicy | None] = [None if why else next(started) for why in silent]
        self._check_alike()
        self.spec = ",".join(m.base for m in self.members if m)
        first = self.reference = next(m for m in self.members if m)
        self.name, self.model, self.act_mode = first.name, first.model, first.act_mode
        self.requests = self.failed_requests = 0
        self.resent_requests = 0  # requests sent again to another endpoint after theirs stopped answering
        self.in_flight = [0] * len(listed)  # requests of the calls each endpoint holds
        self.sent = [0] * len(listed)
        self.gone: list[str | None] = list(silent)  # why an endpoint is left out (None: in use)
        self.left_at = [time.monotonic()] * len(listed)  # when an endpoint was left out, or last asked again
        self.asking = [False] * len(listed)  # whether a look at it is under way (_reprobe)
        # the endpoints whose requests were sent again elsewhere after they stopped answering (not the last one to
        # stop: there was nowhere left to send its requests)
        self.resent_from: set[str] = set()
        self.taken_back = 0
        self.closed = False
        self._routing = threading.Condition()
        self.set_concurrency(sum(cap or opts["concurrency"] for cap, m in zip(self.caps, self.members) if m))

    def _check_alike(self) -> None:
        """Every endpoint describes itself as the first does, but for its address: a reply must not depend on which
        endpoint gave it."""
        up = [m for m in self.members if m]
        for other in up[1:]:
            differ = _unlike(up[0], other)
            if differ:
                raise PolicyError(
                    f"the policy endpoints do not serve alike ({differ}): the endpoints of one "
                    f"--policy must serve the same model in the same way"
                )

    # routing ------------------------------------------------------------------------------------------------------
    def _take(self, n: int) -> tuple[int, HttpPolicy]:
        """The endpoint for a call of `n` requests: the fewest in flight among those in use and under their cap
        (ties: the fewest sent), waiting while every one is at its cap."""
        with self._routing:
            while True:
                self._ask_again()
                in_use = [i for i, why in enumerate(self.gone) if why is None]
                if not in_use:
                    raise self._all_gone()
                room = [i for i in in_use if self.caps[i] is None or self.in_flight[i] < self.caps[i]]
                if room:
                    i = min(room, key=lambda j: (self.in_flight[j], self.sent[j], j))
                    self.in_flight[i] += n
                    self.sent[i] += n
                    return i, self.members[i]
                self._routing.wait()

    def _ask_again(self) -> None:
        """(Routing lock held.) Every REPROBE_SECONDS, a look in the background at each endpoint left out (gone mid-
        run, or silent at start)."""
        now = time.monotonic()
        for i, why in enumerate(self.gone):
            if why and not self.asking[i] and now - self.left_at[i] >= self.REPROBE_SECONDS:
                self.asking[i] = True
                threading.Thread(target=self._reprobe, args=(i,), daemon=True, name="eexp-fleet-reprobe").start()

    def _reprobe(self, i: int) -> None:
        """Endpoint i, left out, is asked for its model list; one that answers is set up afresh (as at start) and,
        serving as the others do, taken back with a line on stderr. One that answers but serves otherwise stays
        out, said once."""
        base, member, unlike = self.bases[i], None, None
        if no_answer(base) is None:
            try:
                member = self._connect(base)
                unlike = _unlike(self.reference, member)
            except PolicyError as e:
                member, unlike = None, str(e)
        say_unlike = False
        with self._routing:
            self.asking[i], self.left_at[i] = False, time.monotonic()
            back = member is not None and not unlike and not self.closed
            if back:
                old, self.members[i] = self.members[i], member
                if old is self.reference:  # alike: the new one serves as a reference as well
                    self.reference = member
                member.set_concurrency(
                    min(self.caps[i], self.concurrency) if self.caps[i] else self.concurrency, shared=self._shared
                )
                member.thought_tokens = self.reference.thought_tokens
                was, self.gone[i] = self.gone[i], None
                self.taken_back += 1
                in_use = sum(why is None for why in self.gone)
                self._routing.notify_all()
            elif unlike and self.gone[i] != f"answers, but {unlike}":
                self.gone[i], say_unlike = f"answers, but {unlike}", True
        if back:
            if old is not None:
                old.close()
            warn(
                f"the policy endpoint {base} answers again (left out: {was}): taking it back, with {in_use} of "
                f"the {len(self.gone)} endpoints"
            )
            return
        if member is not None:
            member.close()
        if say_unlike:
            warn(f"the policy endpoint {base} answers again but cannot serve as the others do ({unlike}): it stays out")

    def _release(self, i: int, n: int) -> None:
        with self._routing:
            self.in_flight[i] -= n
            self._routing.notify_all()

    def _lost(self, i: int, member: HttpPolicy, n: int) -> None:
        """Endpoint i (`member`) stopped answering during a call of `n` requests: it is left out, and the call is sent
        again elsewhere (counted), unless none is left. A call that ran on a member since replaced (the endpoint
        was taken back meanwhile) leaves the new one in use."""
        with self._routing:
            first = self.gone[i] is None and self.members[i] is member
            if first:
                self.gone[i] = member.down or "stopped answering"
                self.left_at[i] = time.monotonic()
            left = sum(why is None for why in self.gone)
            if left:
                self.resent_requests += n
                self.resent_from.add(member.base)
            self._routing.notify_all()
        if first and left:
            warn(
                f"the policy endpoint {member.base} stopped answering ({self.gone[i]}) after {self.sent[i]} "
                f"requests: the requests it held are sent again to the other endpoints ({left} left)"
            )
        if not left:
            raise self._all_gone()

    def _all_gone(self) -> EndpointDown:
        return EndpointDown(
            "every policy endpoint stopped answering ("
            + "; ".join(f"{base}: {why}" for base, why in zip(self.bases, self.gone))
            + f") after {self.requests} requests: "
            f"the run stops here. The records written so far are whole; restart the servers and continue with "
            f"-o FILE --resume"
        )

    def _route(self, call: Callable[[HttpPolicy], Any], n: int) -> Any:
        """`call(endpoint)` for a call of `n` requests, on one endpoint, again on another while the one it ran on
        stops answering; its replies counted once."""
        while True:
            i, member = self._take(n)
            try:
                result = call(member)
            except EndpointDown:
                self._lost(i, member, n)
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
        return self._route(
            lambda m: m.generate(messages, seed=seed, temperature=temperature, top_p=top_p, max_tokens=max_tokens), 1
        )

    def act(self, messages, *, admissible, seed, temperature=0.0, context=None) -> Reply:
        return self._route(
            lambda m: m.act(messages, admissible=admissible, seed=seed, temperature=temperature, context=context), 1
        )

    def sample(self, messages, *, admissible, seeds, temperature=1.0, context=None) -> list[Reply]:
        return self._route(
            lambda m: m.sample(messages, admissible=admissible, seeds=seeds, temperature=temperature, context=context),
            len(seeds),
        )

    def set_concurrency(self, n: int) -> None:
        """`n` requests in flight over every endpoint together, and no endpoint past its cap."""
        self.concurrency = n
        self._shared = threading.BoundedSemaphore(n)
        for member, cap in zip(self.members, self.caps):
            if member:
                member.set_concurrency(min(cap, n) if cap else n, shared=self._shared)

    @property
    def thought_tokens(self) -> int | None:  # eval sets it (--act think): each endpoint's calls read their own
        return self.reference.thought_tokens

    @thought_tokens.setter
    def thought_tokens(self, tokens: int | None) -> None:
        with self._routing:  # an endpoint taken back meanwhile copies the reference's
            for member in self.members:
                if member:
                    member.thought_tokens = tokens

    def trained_thought_tokens(self) -> int | None:
        return self.reference.trained_thought_tokens()

    def describe(self) -> dict:
        return {**self.reference.describe(), "endpoint": self.spec}

    def close(self) -> None:
        with self._routing:
            self.closed = True  # a look under way (_reprobe) closes what it set up
            members = [m for m in self.members if m]
        for member in members:
            member.close()
        if self.resent_requests:
            warn(
                f"{self.resent_requests} policy requests were sent again to another endpoint after "
                f"{', '.join(b for b in self.bases if b in self.resent_from)} stopped answering"
            )


def load_endpoint(spec: str, args: dict, *, act: str | None, max_tokens: int, top_p: float) -> Policy:
    """`--policy http(s)://HOST/v1`, and several endpoints of one model (URL,URL or @FILE): the entry point
    `endpoint` of `eexp.policies`."""
    if is_fleet(spec):
        return FleetPolicy(spec, args, act=act, max_tokens=max_tokens, top_p=top_p)
    return HttpPolicy(spec, args, act=act, max_tokens=max_tokens, top_p=top_p)
