"""The generation and sampling settings the stages share, each default and help written once: the stages' settings
dataclasses (eval's `EvalSettings`, reflect's `Settings`) take their fields from here, and the CLI makes its options
from the fields (`eexp.cli.options.field_options`), as `eexp finetune` does from `FinetuneConfig`. A field is made
by `setting()` (eexp.fields, the bottom layer, which training's and rl's configs import too)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from eexp.fields import setting
from eexp.policies import ACT_MODES  # the action modes load_policy takes, the stages' --act choices
from eexp.policies.base import MAX_TOKENS  # the policies' default reply length, the stages' too


@dataclass(frozen=True)
class Generation:
    """How a policy answers and samples (branch's settings, and the source of eval's and reflect's)."""

    act: str | None = setting(
        None,
        "How an action is chosen: free generation, generation constrained to the admissible actions, ranking "
        "them by log-likelihood, or think: the reply is begun with `Thought:`, the model writes its thought (eval: "
        "up to --thought-tokens; elsewhere --max-tokens), then the action is ranked after it (closed action sets) or "
        "generated (open ones); over HTTP the action after the thought is chosen by the server's guided decoding, as "
        "constrained does, not ranked. Default: constrained where the environment's admissible actions are the "
        "closed set of its actions, generate where it lists none or only a sample of an open space.",
        choices=ACT_MODES,
    )
    max_tokens: int = setting(MAX_TOKENS, "Most tokens per generated reply.", min=1)
    top_p: float = setting(
        1.0,
        "Nucleus sampling: draw each token from the most likely ones whose probabilities add up to this share "
        "(above 0; 1: from all tokens).",
        min=0,
        min_open=True,
        max=1,
    )
    seed: int = setting(0, "Base seed; every sampled call derives its own seed >= 1 from it.")
    temperature: float = setting(1.0, "Sampling temperature (0: greedy, the most likely reply every time).", min=0)


def shared(name: str, default=dataclasses.MISSING):
    """Generation's field `name` (its help and hints) for another settings dataclass, with its own default if given."""
    f = Generation.__dataclass_fields__[name]
    return field(default=f.default if default is dataclasses.MISSING else default, metadata=f.metadata)
