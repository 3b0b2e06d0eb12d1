"""The policy interface every stage that asks a model for something goes through (DESIGN.md "Policies").

Stages call `sample` (K proposals at one state, branch), `act` (one action, eval) and `generate` (free text,
reflect). Every sampled call carries an explicit seed >= 1 from `derive_seed(base seed, record id, k)`, recorded
in the output, so the same inputs and seeds give the same records.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from eexp.errors import MAX_FAILED_SHARE, UsageProblem

MAX_TOKENS = 256  # most tokens per generated reply, where a stage does not ask for more (reflect)
# --act think: a thought may run this much past the longest thought the model was trained on (its card's
# thought_tokens), and at least THOUGHT_EXTRA tokens past it, before it is cut.
THOUGHT_MARGIN = 0.25
THOUGHT_EXTRA = 16


def thought_budget(longest: int) -> int:
    """The tokens a thought may take (--act think) for a model whose longest training thought took `longest`."""
    return longest + max(THOUGHT_EXTRA, math.ceil(longest * THOUGHT_MARGIN))


def derive_seed(base_seed: int, record_id: str, k: int) -> int:
    """A seed in [1, 2**31 - 1] from (base seed, record id, k): stable across machines and processes."""
    digest = hashlib.blake2b(f"{base_seed}\x1f{record_id}\x1f{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31 - 1) + 1


@dataclass
class Reply:
    """One answer of a policy. `action` is None when the reply had no parseable action (recorded, not dropped)."""

    text: str  # the raw model output ("" for random / oracle)
    action: str | None  # the action, canonicalized and, when there is a list, matched to an admissible one
    thought: str | None = None
    valid: bool | None = None  # in the admissible list (None when the state has no list)
    seed: int = 0  # the seed of this call (0: not sampled, e.g. greedy or scoring)
    finish_reason: str = ""  # "stop", "length" (cut by max tokens), "error: ..." for a failed call
    thought_cut: bool = False  # --act think: the thought never reached `Action:` (cut; the action chosen after it)


class Policy:
    """Base class. Backends implement `generate` and `act` (a model in this process, eexp.policies.chat's ModelPolicy,
    also ranks actions by log-likelihood for --act score)."""

    spec: str = ""  # what the user passed to --policy
    name: str = ""  # a short name for records (file name, model name, "random", "oracle")
    sha256: str = ""  # content hash of the model file(s), "" for baselines and endpoints
    # How many calls may overlap, from as many threads: the default of the stages' --concurrency. 1 (a model in
    # this process, a baseline that uses the environment it is given) means calls must come one at a time; a
    # backend whose calls are requests to a server says more, and is then thread-safe.
    concurrency: int = 1
    # Calls made, and calls that failed for good (after any retries), for the summary and --stats.
    requests: int = 0
    failed_requests: int = 0
    # --act think: most tokens of a thought (None: max_tokens); eval sets it (--thought-tokens, else the card's)
    thought_tokens: int | None = None

    def generate(
        self, messages: list[dict], *, seed: int, temperature: float, top_p: float = 1.0, max_tokens: int = MAX_TOKENS
    ) -> Reply:
        raise NotImplementedError

    def act(
        self,
        messages: list[dict],
        *,
        admissible: list[str] | None,
        seed: int,
        temperature: float = 0.0,
        context: dict | None = None,
    ) -> Reply:
        """One action. `context` carries {"env", "task", "step"} for policies that need them (oracle, random)."""
        raise NotImplementedError

    def sample(
        self,
        messages: list[dict],
        *,
        admissible: list[str] | None,
        seeds: list[int],
        temperature: float = 1.0,
        context: dict | None = None,
    ) -> list[Reply]:
        """One reply per seed, issued back to back so the shared prompt is evaluated once."""
        return [
            self.act(messages, admissible=admissible, seed=s, temperature=temperature, context=context) for s in seeds
        ]

    def serializer_settings(self) -> dict | None:
        """The serializer settings recorded with the model (checkpoint config or GGUF metadata), if any."""
        return None

    def trained_thought_tokens(self) -> int | None:
        """The longest thought of the model's training examples in its tokens (its card's thought_tokens), or None
        when the model records none (no thought trained, or a model eexp did not train)."""
        return None

    def describe(self) -> dict[str, Any]:
        """For `meta`: never includes secrets (API keys are read from the environment, not stored)."""
        return {"model": self.name, "model_sha256": self.sha256}

    def set_concurrency(self, n: int) -> None:
        """Serve up to `n` overlapping calls from now on (the stage's --concurrency; n > 1 only for a policy whose
        `concurrency` is above 1)."""
        self.concurrency = n

    def close(self) -> None:
        pass


def resolve_concurrency(policy: Policy, given: int | None) -> int:
    """The calls a stage keeps in flight on `policy`: `given` (--concurrency), else the policy's own default. More
    than one call at a time is only for a policy that serves them (a server); it is then told the limit."""
    if given is None:
        return max(1, policy.concurrency)
    if given > 1 and policy.concurrency <= 1:
        raise UsageProblem(
            f"--concurrency {given}: the policy {policy.spec or policy.name} answers one call at a "
            f"time (a model in this process, or a baseline); serve the model (llama.cpp's "
            f"llama-server, vLLM, SGLang) and give its http(s)://HOST/v1, or run -j N processes"
        )
    policy.set_concurrency(given)
    return given


def failure_problem(failed: int, requests: int, what: str) -> str | None:
    """The message a run ends with (exit 1) when more than MAX_FAILED_SHARE (eexp.errors) of its `requests` to `what`
    failed after their retries. Its records are written, and say which replies failed: a model that "scores" 0%
    because its server was down must not pass for a result."""
    if requests and failed / requests > MAX_FAILED_SHARE:
        return (
            f"{failed} of {requests} requests to {what} ({100 * failed / requests:.1f}%) failed after their "
            f"retries, more than the {100 * MAX_FAILED_SHARE:g}% a run may lose: the records are written, and "
            f'each failed reply is marked (finish_reason "error: ..."), but these results are not the '
            f"model's. Fix the server and rerun"
        )
    return None
