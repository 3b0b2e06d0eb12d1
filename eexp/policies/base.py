"""The policy interface every stage that asks a model for something goes through (DESIGN.md "Policies").

Stages call `sample` (K proposals at one state, branch), `act` (one action, eval) and `generate` (free text,
reflect). Every sampled call carries an explicit seed >= 1 from `derive_seed(base seed, record id, k)`, recorded
in the output, so the same inputs and seeds give the same records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from eexp.io import InputError

MAX_TOKENS = 256  # most tokens per generated reply, where a stage does not ask for more (reflect)


class PolicyError(InputError):
    """A policy that cannot be loaded or used (missing or corrupt model, unknown spec, bad --policy-arg)."""


def derive_seed(base_seed: int, record_id: str, k: int) -> int:
    """A seed in [1, 2**31 - 1] from (base seed, record id, k): stable across machines and processes."""
    digest = hashlib.blake2b(f"{base_seed}\x1f{record_id}\x1f{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31 - 1) + 1


@dataclass
class Reply:
    """One answer of a policy. `action` is None when the reply had no parseable action (recorded, not dropped)."""

    text: str                  # the raw model output ("" for random / oracle)
    action: str | None         # the action, canonicalized and, when there is a list, matched to an admissible one
    thought: str | None = None
    valid: bool | None = None  # in the admissible list (None when the state has no list)
    seed: int = 0              # the seed of this call (0: not sampled, e.g. greedy or scoring)
    finish_reason: str = ""    # "stop", "length" (cut by max tokens), "error: ..." for a failed call
    thought_cut: bool = False  # --act think: the thought never reached `Action:` (cut; the action chosen after it)


class Policy:
    """Base class. Backends implement `generate`, and `score` where they can compute log-likelihoods."""

    spec: str = ""          # what the user passed to --policy
    name: str = ""          # a short name for records (file name, model name, "random", "oracle")
    sha256: str = ""        # content hash of the model file(s), "" for baselines and endpoints

    def generate(self, messages: list[dict], *, seed: int, temperature: float, top_p: float = 1.0,
                 max_tokens: int = MAX_TOKENS) -> Reply:
        raise NotImplementedError

    def act(self, messages: list[dict], *, admissible: list[str] | None, seed: int, temperature: float = 0.0,
            context: dict | None = None) -> Reply:
        """One action. `context` carries {"env", "task", "step"} for policies that need them (oracle, random)."""
        raise NotImplementedError

    def sample(self, messages: list[dict], *, admissible: list[str] | None, seeds: list[int],
               temperature: float = 1.0, context: dict | None = None) -> list[Reply]:
        """One reply per seed, issued back to back so the shared prompt is evaluated once."""
        return [self.act(messages, admissible=admissible, seed=s, temperature=temperature, context=context)
                for s in seeds]

    def serializer_settings(self) -> dict | None:
        """The serializer settings recorded with the model (checkpoint config or GGUF metadata), if any."""
        return None

    def describe(self) -> dict[str, Any]:
        """For `meta`: never includes secrets (API keys are read from the environment, not stored)."""
        return {"model": self.name, "model_sha256": self.sha256}

    def close(self) -> None:
        pass
