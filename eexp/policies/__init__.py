"""Policies: one interface over llama.cpp, transformers (+ PEFT), OpenAI-compatible endpoints, random and oracle.

`load_policy(spec)` is what every stage calls with the user's `--policy SPEC`:

    random | oracle            baselines (no model)
    model.gguf                 llama-cpp-python
    DIR                        a transformers checkpoint (config.json) or a PEFT adapter (adapter_config.json)
    http(s)://host:port/v1     an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server)
"""

from __future__ import annotations

import os

from eexp.policies.base import Policy, PolicyError, Reply, derive_seed

__all__ = ["Policy", "PolicyError", "Reply", "derive_seed", "load_policy", "policy_kind", "ACT_MODES"]

ACT_MODES = ("generate", "constrained", "score", "think")

SPEC_FORMS = "random, oracle, a .gguf file, a checkpoint or adapter directory, or http(s)://HOST/v1"
BASELINES = ("random", "oracle")


def policy_kind(spec: str | None) -> str | None:
    """What a --policy SPEC names, from its form alone: baseline, endpoint, gguf, checkpoint (a directory), or None.
    The one place a spec is read; `load_policy` then checks that the thing exists."""
    if not spec:
        return None
    if spec in BASELINES:
        return "baseline"
    if spec.startswith(("http://", "https://")):
        return "endpoint"
    if spec.lower().endswith(".gguf"):
        return "gguf"
    if os.path.isdir(spec):
        return "checkpoint"
    return None


def load_policy(spec: str, args: dict | None = None, *, act: str | None = None, max_tokens: int = 256,
                top_p: float = 1.0) -> Policy:
    """The policy named by `spec`, with backend options `args` (--policy-arg) and the action mode `act`
    (None: constrained where a state lists admissible actions, generate where it does not; think: a thought, then
    the action after it, local models only)."""
    if not spec:
        raise PolicyError(f"no policy given (--policy: {SPEC_FORMS})")
    if act is not None and act not in ACT_MODES:
        raise PolicyError(f"unknown --act {act!r} (choose from {', '.join(ACT_MODES)})")
    common = {"act": act, "max_tokens": max_tokens, "top_p": top_p}
    kind = policy_kind(spec)
    if kind == "baseline":
        if args:
            raise PolicyError(f"the {spec} policy takes no --policy-arg (got {', '.join(sorted(args))})")
        from eexp.policies.baselines import OraclePolicy, RandomPolicy
        return RandomPolicy() if spec == "random" else OraclePolicy()
    if kind == "endpoint":
        if act == "think":
            raise PolicyError("--act think continues the model's own reply (its thought) with the action, which a "
                              "chat-completions endpoint cannot do; use a local model (a .gguf file or a checkpoint "
                              "directory), or --act generate, whose replies keep the model's thought too")
        from eexp.policies.http import HttpPolicy
        return HttpPolicy(spec, args, **common)
    if kind == "gguf":
        if not os.path.isfile(spec):
            raise PolicyError(f"{spec}: no such GGUF file")
        from eexp.policies.llama import LlamaCppPolicy
        return LlamaCppPolicy(spec, args, **common)
    if kind == "checkpoint":
        if os.path.isfile(os.path.join(spec, "adapter_config.json")) or \
                os.path.isfile(os.path.join(spec, "config.json")):
            from eexp.policies.hf import TransformersPolicy
            return TransformersPolicy(spec, args, **common)
        raise PolicyError(f"{spec}: a directory, but neither a transformers checkpoint (config.json) nor a PEFT "
                          f"adapter (adapter_config.json)")
    if os.path.exists(spec):
        raise PolicyError(f"{spec}: not a policy (expected {SPEC_FORMS})")
    raise PolicyError(f"{spec}: no such file or directory, and not a known policy (expected {SPEC_FORMS})")
