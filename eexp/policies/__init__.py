"""Policies: one interface over llama.cpp, transformers (+ PEFT), OpenAI-compatible endpoints, random and oracle,
and any backend an installed package registers under the entry-point group `eexp.policies`.

`load_policy(spec)` is what every stage calls with the user's `--policy SPEC`:

    random | oracle            baselines (no model)
    model.gguf                 llama-cpp-python
    DIR                        a transformers checkpoint (config.json) or a PEFT adapter (adapter_config.json)
    ORG/NAME[@REVISION]        a Hugging Face Hub model (no such local path): safetensors only, through the HF cache
    http(s)://host:port/v1     an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server)
    URL,URL[#N] | @FILE        several endpoints of one model behind one policy (eexp.policies.fleet)
    KIND:TARGET                the backend a plugin registers as KIND (its loader gets TARGET)

Every kind, eexp's own included, is an entry point of `eexp.policies`: its name is the kind `policy_kind` returns,
its object a loader `load(target, args, *, act, max_tokens, top_p) -> Policy` (DESIGN.md "Policies" is the
contract). eexp's own kinds are read from the form of the spec; a plugin's from its `KIND:` prefix. Each of eexp's
own loaders lives in its backend's module (`load_baseline` in baselines.py, `load_endpoint` in fleet.py, `load_gguf`
in llama.py, `load_checkpoint` in hf.py), registered in pyproject.toml as a plugin's is: this module imports no
backend, and a backend's module is imported when its kind is first asked for.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any, Callable

from eexp.errors import PolicyError, entry_point_source
from eexp.files import hub_id
from eexp.policies.base import MAX_TOKENS, Policy, Reply, derive_seed

__all__ = [
    "Policy",
    "Reply",
    "derive_seed",
    "default_policy",
    "load_policy",
    "policy_kind",
    "policy_registry",
    "ACT_MODES",
    "DEFAULT_POLICY_ENV",
]

ACT_MODES = ("generate", "constrained", "score", "think")

SPEC_FORMS = (
    "random, oracle, a .gguf file, a checkpoint or adapter directory, a Hugging Face Hub id "
    "(ORG/NAME[@REVISION]), http(s)://HOST/v1, or several: URL,URL or @FILE"
)
BASELINES = ("random", "oracle")
# The default policy, as llm has a default model: the stages that need a model and are given no --policy use it.
DEFAULT_POLICY_ENV = "EEXP_POLICY"
GROUP = "eexp.policies"
# The kinds eexp registers itself, read from the form of a spec; a plugin cannot take these names.
BUILTIN_KINDS = ("baseline", "endpoint", "gguf", "checkpoint")

Loader = Callable[..., Policy]


def policy_registry() -> dict[str, Any]:
    """kind -> entry point, for every installed policy backend. eexp's own kinds are eexp's: a plugin that
    registers one of those names is not used for it."""
    known: dict[str, Any] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in BUILTIN_KINDS and not ep.value.startswith("eexp."):
            continue
        known[ep.name] = ep
    return known


def _split_plugin(spec: str, known: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, target) when `spec` is `KIND:TARGET` for an installed plugin kind, else None."""
    kind, sep, target = spec.partition(":")
    if sep and kind in known and kind not in BUILTIN_KINDS:
        return kind, target
    return None


def default_policy() -> str | None:
    """The configured default policy spec ($EEXP_POLICY), or None."""
    return os.environ.get(DEFAULT_POLICY_ENV, "").strip() or None


def policy_kind(spec: str | None) -> str | None:
    """What a --policy SPEC names: baseline, endpoint, gguf, checkpoint (a directory), a plugin's kind (`KIND:...`),
    or None. The one place a spec is read; `load_policy` then checks that the thing exists."""
    if not spec:
        return None
    if ":" in spec and not spec.startswith(("http://", "https://")):
        plugin = _split_plugin(spec, policy_registry())
        if plugin:
            return plugin[0]
    if spec in BASELINES:
        return "baseline"
    if spec.startswith(("http://", "https://", "@")):  # one URL, a list of them, or @FILE listing them
        return "endpoint"
    if spec.lower().endswith(".gguf"):
        return "gguf"
    if os.path.isdir(spec):
        return "checkpoint"
    if hub_id(spec):  # a transformers checkpoint in the Hugging Face cache (loaded by the checkpoint backend)
        return "checkpoint"
    return None


def load_policy(
    spec: str, args: dict | None = None, *, act: str | None = None, max_tokens: int = MAX_TOKENS, top_p: float = 1.0
) -> Policy:
    """The policy named by `spec`, with backend options `args` (--policy-arg) and the action mode `act`
    (None: constrained where a state lists admissible actions, generate where it does not; think: a thought, then
    the action after it)."""
    if not spec:
        raise PolicyError(f"no policy given (--policy: {SPEC_FORMS})")
    if act is not None and act not in ACT_MODES:
        raise PolicyError(f"unknown --act {act!r} (choose from {', '.join(ACT_MODES)})")
    known = policy_registry()
    kind = policy_kind(spec)
    if kind is None:
        plugins = sorted(k for k in known if k not in BUILTIN_KINDS)
        forms = SPEC_FORMS + (
            f", or KIND:TARGET for an installed plugin (kinds: {', '.join(plugins)})" if plugins else ""
        )
        if os.path.exists(spec):
            raise PolicyError(f"{spec}: not a policy (expected {forms})")
        raise PolicyError(f"{spec}: no such file or directory, and not a known policy (expected {forms})")
    plugin = _split_plugin(spec, known)
    target = plugin[1] if plugin else spec
    policy = _loader(kind, known)(target, dict(args or {}), act=act, max_tokens=max_tokens, top_p=top_p)
    if not isinstance(policy, Policy):
        raise PolicyError(
            f"the {kind!r} policy backend returned {type(policy).__name__}, not an "
            f"eexp.policies.Policy (it comes from {entry_point_source(known[kind])})"
        )
    if plugin:
        policy.spec = spec  # what the user passed to --policy, as records show it
    return policy


def _loader(kind: str, known: dict[str, Any]) -> Loader:
    """The loader registered for `kind`; a plugin that fails to import is one line naming its package."""
    if kind not in known:  # one of eexp's own kinds, but its entry points are not installed
        raise PolicyError(
            f"the {kind!r} policy backend is not registered: eexp's entry points are missing "
            f"(reinstall eexp: ./install.sh, or pip install -e .)"
        )
    ep = known[kind]
    try:
        return ep.load()
    except PolicyError:  # the package's own message (and install hint), as it wrote it
        raise
    except Exception as e:  # ImportError included: one line, not a traceback
        raise PolicyError(
            f"the {kind!r} policy backend is registered but cannot load: {type(e).__name__}: {e} "
            f"(it comes from {entry_point_source(ep)})"
        ) from None
