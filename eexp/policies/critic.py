"""A critic: a local model that judges the actions proposed at a state, and chooses among them.

A critic is trained with `eexp finetune` on `eexp critic-data` (state + proposed action -> `Yes` when it is the
expert's, `No` otherwise); any local chat model can be one (a checkpoint directory, an adapter, a .gguf file), since
a judgement is read from the model's log-likelihoods, never from text it writes. For each candidate action the
critic renders the critic prompt of the one serializer (`Serializer.critic_messages`: the state as imitation-data
renders it, then `Proposed action: <action>`), scores the two verdicts as whole assistant replies through the
model's own chat template (end of turn included, as `--act score` scores actions: `ModelPolicy.candidate_ids` and
`scores_for`), and gives P(Yes) = softmax over the two log-likelihoods. An over-long state is shortened as every
prompt is (`ModelPolicy.fit`: the oldest history first; the proposed action is never cut).

The interface a caller (eval's reranking) needs:

    critic = Critic("critic-dir")                        # or Critic(policy) for a policy already loaded
    scores = critic.score(state, ["click[a]", "click[b]"])   # [P(expert's action)] per candidate
    best, scores = critic.choose(state, candidates)      # the candidate with the highest score; ties: the first
    critic.describe(), critic.close()

`state` is the raw state dict every stage passes around (`goal`, `observation`, `history`, `admissible?`). Each
distinct candidate is one scoring call on its own prompt. The prompts of one state differ only at their end: a GGUF
model (llama.cpp keeps the longest common prefix of its context) evaluates the state's tokens once per state, a
transformers model evaluates every candidate's prompt in full (one forward pass each; its prompt cache is keyed by
the whole prompt).
"""

from __future__ import annotations

import math
import threading

from eexp.errors import PolicyError
from eexp.policies import load_policy
from eexp.policies.base import Policy
from eexp.policies.chat import ModelPolicy, reply_tokens
from eexp.prompts import CRITIC_VERDICTS, Serializer


class Critic:
    """Scores proposed actions by the probability that each is the expert's (see the module)."""

    def __init__(self, model: str | Policy, args: dict | None = None, *, serializer: Serializer | None = None):
        """`model`: what `--policy` takes for a local model (a checkpoint or adapter directory, a .gguf file, a Hub
        id in the cache), loaded with `args` (--policy-arg) in score mode; or a local model policy already loaded.
        `serializer`: how states are rendered; by default the settings the model was trained with (its card), as
        eval renders them, else the defaults."""
        policy = model if isinstance(model, Policy) else load_policy(model, args, act="score")
        if not isinstance(policy, ModelPolicy):
            policy.close()
            raise PolicyError(
                f"{getattr(policy, 'spec', None) or policy.name}: a critic must be a local model (a "
                f"checkpoint or adapter directory, or a .gguf file): it is read from the "
                f"log-likelihoods of its verdicts, which a {type(policy).__name__} does not give"
            )
        self.policy = policy
        self.serializer = serializer or Serializer.from_dict(
            policy.serializer_settings(), where=f"{policy.name}: serializer settings"
        )
        self._reserve = reply_tokens(list(CRITIC_VERDICTS))
        # eval's threads share one critic (one model in this process): they take turns with it
        self.lock = threading.Lock()

    def verdicts(self, state: dict, action: str, rendered: str | None = None) -> tuple[float, float]:
        """(P(Yes), P(No)) for one proposed action: the softmax of the two verdicts' log-likelihoods, summing to
        1. `rendered`: the state as `serializer.render_state` renders it, when the caller has it."""
        messages, ids = self.policy.fit(self.serializer.critic_messages(state, action, rendered), self._reserve)
        yes, no = self.policy.scores_for(ids, self.policy.candidate_ids(messages, list(CRITIC_VERDICTS)))
        p_yes = 1.0 / (1.0 + math.exp(min(no - yes, 700.0)))  # softmax of two, without overflow
        return p_yes, 1.0 - p_yes

    def score(self, state: dict, candidates: list[str]) -> list[float]:
        """P(the expert's action) for each candidate, in order; a candidate given twice gets the same score (it is
        scored once)."""
        rendered = self.serializer.render_state(state)
        seen: dict[str, float] = {}
        for action in candidates:
            if action not in seen:
                seen[action] = self.verdicts(state, action, rendered)[0]
        return [seen[a] for a in candidates]

    def choose(self, state: dict, candidates: list[str]) -> tuple[str, list[float]]:
        """(the candidate the critic scores highest, every candidate's score); a tie goes to the earlier candidate
        (a policy's proposals come in its own order). `candidates` must not be empty."""
        if not candidates:
            raise ValueError("no candidates to choose from")
        scores = self.score(state, candidates)
        best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
        return candidates[best], scores

    def describe(self) -> dict:
        """What records show of the critic (`model`, `model_sha256`, ...), as a policy's describe()."""
        return self.policy.describe()

    def close(self) -> None:
        self.policy.close()
