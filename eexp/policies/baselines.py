"""`random` and `oracle`: the baselines every result is read against. No model; they need the stage's context
{"env", "task", "step"} (oracle always, random only where the state lists no admissible actions)."""

from __future__ import annotations

import random

from eexp.errors import PolicyError
from eexp.policies.actions import canonicalizer, failed_reply, match_admissible
from eexp.policies.base import MAX_TOKENS, Policy, Reply


class RandomPolicy(Policy):
    """Uniform over the admissible actions, from the call's seed (the same seed picks the same action)."""

    spec = name = "random"

    def act(self, messages, *, admissible, seed, temperature=0.0, context=None) -> Reply:
        choices = admissible
        env = (context or {}).get("env")
        if not choices and env is not None:
            # Open action space: the environment's admissible() is a sample of plausible actions there (the
            # contract of closed_actions False), which is what "uniform" can mean.
            choices = env.admissible()
        if not choices:
            return failed_reply("random policy: this state lists no admissible actions", seed, admissible)
        action = random.Random(seed).choice(list(choices))
        valid = (action in admissible) if admissible is not None else None
        return Reply(text="", action=action, valid=valid, seed=seed, finish_reason="stop")

    def generate(self, messages, *, seed, temperature, top_p=1.0, max_tokens=MAX_TOKENS) -> Reply:
        return failed_reply("the random policy writes no text (use a model for reflect)", seed)

    def describe(self):
        return {"model": "random", "model_sha256": ""}


class OraclePolicy(Policy):
    """Follows the environment's expert: `env.expert(task)[step]` for the context's env, task and step."""

    spec = name = "oracle"

    def __init__(self):
        self._plans: dict[str, list[str]] = {}

    def act(self, messages, *, admissible, seed, temperature=0.0, context=None) -> Reply:
        context = context or {}
        env, task, step = context.get("env"), context.get("task"), context.get("step")
        if env is None or task is None or step is None:
            return failed_reply("oracle policy needs the stage's context (env, task, step)", seed, admissible)
        key = f"{getattr(env, 'name', '')}\x1f{task.get('split', '')}\x1f{task['id']}"
        if key not in self._plans:
            self._plans[key] = list(env.expert(task))  # the plan of a task is fixed: compute it once
        plan = self._plans[key]
        if step >= len(plan):
            return failed_reply(
                f"oracle policy: the expert has no action at step {step} (plan of {len(plan)})", seed, admissible
            )
        action = canonicalizer(context)(plan[step])
        if admissible is None:
            return Reply(text="", action=action, valid=None, seed=seed, finish_reason="stop")
        matched = match_admissible(action, admissible, canonicalizer(context))
        return Reply(text="", action=matched or action, valid=matched is not None, seed=seed, finish_reason="stop")

    def sample(self, messages, *, admissible, seeds, temperature=1.0, context=None):
        return [self.act(messages, admissible=admissible, seed=s, context=context) for s in seeds]

    def generate(self, messages, *, seed, temperature, top_p=1.0, max_tokens=MAX_TOKENS) -> Reply:
        return failed_reply("the oracle policy writes no text (use a model for reflect)", seed)

    def describe(self):
        return {"model": "oracle", "model_sha256": ""}


def load_baseline(spec: str, args: dict, *, act: str | None, max_tokens: int, top_p: float) -> Policy:
    """`--policy random` and `--policy oracle` (the entry point `baseline` of `eexp.policies`)."""
    if args:
        raise PolicyError(f"the {spec} policy takes no --policy-arg (got {', '.join(sorted(args))})")
    return RandomPolicy() if spec == "random" else OraclePolicy()
