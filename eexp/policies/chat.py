"""What every local model backend shares: rendering with the model's own chat template, fitting the context, and
the ways to pick an action (`--act generate|constrained|score|think`).

A backend (transformers, llama.cpp) supplies token-level hooks: `encode_chat` (messages -> ids through the
template), `_generate_ids` (free sampling from ids), `_constrained_ids` (sampling restricted to the candidate
replies) and `_logliks` (log-likelihood of each candidate reply after the prompt). Everything above the hooks,
and so every decision about actions, is written once here.

`--act think` is for models trained to reason before they act (SR targets are `Thought: ...` then `Action: ...`):
the reply is begun with the SR targets' label, `Thought:` (THOUGHT_PREFILL, a prefill: the assistant turn as the
template renders it, without its end of turn), so the model writes a thought at every step instead of choosing on
its first token between answering `Action:` at once (what it learned from the IL examples trained beside the SR
ones) and thinking first. The text before its first `Action:` line is its thought, and the action is then chosen
after that thought: ranked by log-likelihood among the admissible actions where the set is closed (as `score` does,
but as the continuation of prompt + thought + `Action: `), generated where it is open. A thought may take
`thought_tokens` tokens (eval sets it from --thought-tokens or the model card: eexp.policies.base.thought_budget;
else --max-tokens); one that never reaches `Action:` within them is cut where it stopped, and the action is chosen
after it anyway (`Reply.thought_cut`).
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Callable, NamedTuple

import numpy as np

from eexp.errors import PolicyError
from eexp.policies.actions import open_space, reply_from_text
from eexp.policies.base import MAX_TOKENS, Policy, Reply
from eexp.prompts import fit_messages, format_action

# The start of the action in a reasoning reply: an `Action:` at the start of a line (what parse_reply reads).
ACTION_LINE = re.compile(r"^[ \t]*Action[ \t]*:", re.IGNORECASE | re.MULTILINE)
_THOUGHT_LABEL = re.compile(r"^\s*Thought\s*:\s*", re.IGNORECASE)
# What a --act think reply begins with: the label of the SR targets' thought (format_action's `Thought:`, without the
# space after it, which the tokenizer joins to the thought's first word as training saw it).
THOUGHT_PREFILL = format_action("\0", thought="\0").split("\0", 1)[0].rstrip()

# How many tokens to keep free for a reply whose text is known (`Action: <admissible action>`), before it is
# tokenized: its characters / REPLY_CHARS_PER_TOKEN + REPLY_EXTRA_TOKENS. A trained BPE vocabulary averages about 4
# characters a token on English text, so 2 leaves a wide margin there; the extra tokens cover the end of turn and the
# template's framing after it. (init-model's 4,096-token vocabulary gets only 1.2-1.8 characters a token on shop and
# tools actions, so for those models this is an estimate, not a bound: a prompt can then end up a few tokens closer
# to the context size than reserved.)
REPLY_CHARS_PER_TOKEN = 2
REPLY_EXTRA_TOKENS = 8
# The share of the context a reply may take at most: the prompt always keeps the rest, so a large --max-tokens on a
# small context shortens the reply's budget instead of cutting the state down to nothing.
MAX_REPLY_SHARE = 0.5


def reply_tokens(replies: list[str]) -> int:
    """A generous bound on the tokens of the longest of `replies` (see REPLY_CHARS_PER_TOKEN)."""
    return max(len(r) for r in replies) // REPLY_CHARS_PER_TOKEN + REPLY_EXTRA_TOKENS


_WARN_LOCK = threading.Lock()


def warn(message: str) -> None:
    """`eexp: warning: MESSAGE` on stderr, written whole: one write of the line with its newline, under a lock. The
    threads of a policy's requests warn at once (print writes the text and the newline apart, and two such lines
    once shared one line of stderr)."""
    line = f"eexp: warning: {message}\n"
    with _WARN_LOCK:
        sys.stderr.write(line)
        sys.stderr.flush()


def render_chat_template(template: str, messages: list[dict], *, add_generation_prompt: bool, **special) -> str:
    """Render `messages` with a Jinja chat template exactly as transformers does (same sandbox, same filters),
    so a GGUF's stored template gives the text the training tokenizer saw."""
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # llama.cpp alone (the `gguf` extra): the same sandboxed Jinja settings as transformers
        return _render_jinja(template, messages, add_generation_prompt, special)
    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt, **special
    )
    return rendered[0]


def _render_jinja(template, messages, add_generation_prompt, special):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **special)


# --- the shared model policy ----------------------------------------------------------------------------------


class ModelPolicy(Policy):
    """A policy backed by a local model. Subclasses set `backend` and implement the hooks below."""

    backend = ""
    supports = ("generate", "constrained", "score", "think")

    def __init__(self, act: str | None = None, max_tokens: int = MAX_TOKENS, top_p: float = 1.0):
        if act is not None and act not in self.supports:
            raise PolicyError(
                f"--act {act} is not available with the {self.backend} backend (available: {', '.join(self.supports)})"
            )
        self.act_mode, self.max_tokens, self.top_p = act, max_tokens, top_p
        self._warned: set[str] = set()
        self._score_cache: tuple | None = None

    # hooks ------------------------------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        raise NotImplementedError

    def context_size(self) -> int:
        raise NotImplementedError

    def is_stop(self, token: int) -> bool:
        """End of turn / end of sequence."""
        raise NotImplementedError

    def _generate_ids(
        self, ids: list[int], *, seed: int, temperature: float, top_p: float, max_tokens: int
    ) -> tuple[str, str]:
        """(text, finish_reason) sampled after `ids`."""
        raise NotImplementedError

    def _constrained_ids(
        self, ids: list[int], candidates: list[list[int]], replies: list[str], *, seed: int, temperature: float
    ) -> tuple[str, str]:
        raise NotImplementedError

    def _logliks(self, ids: list[int], candidates: list[list[int]]) -> list[float]:
        raise NotImplementedError

    # context ----------------------------------------------------------------------------------------------------
    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message + " (said once per run)")

    def fit(self, messages: list[dict], reserve: int) -> tuple[list[dict], list[int]]:
        """The messages, shortened if need be, and their prompt ids, leaving `reserve` tokens free: shortened as
        training shortens an over-long example (`eexp.prompts.fit_messages`), with a warning; never an exception
        mid-run."""
        budget = self.context_size() - reserve
        measured: list[int] = []

        def length(candidate: list[dict]) -> int:
            nonlocal measured
            measured = self.encode_chat(candidate)
            return len(measured)

        # fit_messages measures the messages it returns last, so their ids are the last measured: the prompt is
        # tokenized once where it fits (a llama-server policy's tokenizing is a request)
        fitted, steps = fit_messages(messages, length, budget)
        ids = measured
        if steps:
            self.warn_once(
                "overflow",
                f"a prompt did not fit the context of {self.context_size()} tokens: "
                f"shortened it as training does (oldest history first, then the observation)",
            )
        if len(ids) > budget:  # a prompt that is not a rendered state, or one whose task alone is too long
            self.warn_once("cut", f"prompt of {len(ids)} tokens cut to the last {budget}")
            ids = ids[-budget:] if budget > 0 else ids[-1:]
        return fitted, ids

    def _reserve(self, tokens: int) -> int:
        """The tokens to keep free for a reply of up to `tokens`: at most MAX_REPLY_SHARE of the context."""
        return min(tokens, int(self.context_size() * MAX_REPLY_SHARE))

    def _budget(self, ids: list[int], max_tokens: int) -> int:
        return max(1, min(max_tokens, self.context_size() - len(ids)))

    # candidates -------------------------------------------------------------------------------------------------
    def encode_turns(self, messages: list[dict], replies: list[str]) -> list[list[int]]:
        """encode_chat of `messages` followed by each reply as an assistant turn (a backend may give them faster)."""
        return [
            self.encode_chat(messages + [{"role": "assistant", "content": r}], add_generation_prompt=False)
            for r in replies
        ]

    def candidate_ids(self, messages: list[dict], replies: list[str]) -> list[list[int]]:
        """Token ids of each reply as an assistant turn after the prompt, end of turn included, rendered by the
        template (so the tokens are the ones training produced)."""
        ids = self.encode_chat(messages)
        out = []
        for full in self.encode_turns(messages, replies):
            if full[: len(ids)] != ids or len(full) <= len(ids):
                raise PolicyError(
                    f"the {self.backend} chat template renders an assistant turn that does not extend "
                    f"the generation prompt; --act score/constrained need one that does"
                )
            cont = full[len(ids) :]
            for j, tok in enumerate(cont):
                if self.is_stop(tok):
                    cont = cont[: j + 1]  # stop at the end of the turn: what follows is the next turn's framing
                    break
            out.append(cont)
        return out

    # the interface ----------------------------------------------------------------------------------------------
    def mode_for(self, admissible: list[str] | None, context: dict | None = None) -> str:
        """The --act mode of one call: constrained/score need a list; by default a list that is only a sample of
        an open action space (the context env's closed_actions is False) is not a reason to constrain. `think`
        applies with or without a list (the action after the thought is then generated)."""
        if self.act_mode == "think":
            return "think"
        if not admissible:
            return "generate"
        if self.act_mode:
            return self.act_mode
        return "generate" if open_space(context) else "constrained"

    def generate(self, messages, *, seed, temperature, top_p=None, max_tokens=None) -> Reply:
        self.requests += 1  # --stats' policy_requests: one per reply asked for, as a server's policy counts them
        max_tokens = max_tokens or self.max_tokens
        _, ids = self.fit(messages, reserve=self._reserve(max_tokens))
        text, finish = self._generate_ids(
            ids,
            seed=seed,
            temperature=temperature,
            top_p=self.top_p if top_p is None else top_p,
            max_tokens=self._budget(ids, max_tokens),
        )
        reply = reply_from_text(text, None, seed=seed if temperature > 0 else 0, finish_reason=finish)
        return reply

    def act(self, messages, *, admissible, seed, temperature=0.0, context=None) -> Reply:
        return self.sample(messages, admissible=admissible, seeds=[seed], temperature=temperature, context=context)[0]

    def sample(self, messages, *, admissible, seeds, temperature=1.0, context=None) -> list[Reply]:
        """K replies back to back on one prompt: the backends keep the prompt's KV between the calls, and score
        mode ranks the candidates once for all K."""
        self.requests += len(seeds)
        mode = self.mode_for(admissible, context)
        if mode == "think":
            return self.think(messages, admissible=admissible, seeds=seeds, temperature=temperature, context=context)
        if mode == "generate":
            _, ids = self.fit(messages, reserve=self._reserve(self.max_tokens))
            out = []
            for seed in seeds:
                text, finish = self._generate_ids(
                    ids,
                    seed=seed,
                    temperature=temperature,
                    top_p=self.top_p,
                    max_tokens=self._budget(ids, self.max_tokens),
                )
                out.append(
                    reply_from_text(
                        text, admissible, context=context, seed=seed if temperature > 0 else 0, finish_reason=finish
                    )
                )
            return out
        replies = [format_action(a) for a in admissible]
        messages, ids = self.fit(messages, reserve=self._reserve(reply_tokens(replies)))
        candidates = self.candidate_ids(messages, replies)
        if mode == "constrained":
            out = []
            for seed in seeds:
                text, finish = self._constrained_ids(ids, candidates, replies, seed=seed, temperature=temperature)
                out.append(
                    reply_from_text(
                        text, admissible, context=context, seed=seed if temperature > 0 else 0, finish_reason=finish
                    )
                )
            return out
        logliks = self.scores_for(ids, candidates)
        return [pick_action(admissible, logliks, seed, temperature) for seed in seeds]

    # --act think -------------------------------------------------------------------------------------------------
    def think(self, messages, *, admissible, seeds, temperature=0.0, context=None) -> list[Reply]:
        """One reply per seed: a thought generated with the seed (greedy at temperature 0) after the prefill
        (THOUGHT_PREFILL), then the action after it: among the admissible actions by log-likelihood where the set is
        closed (argmax at temperature 0, else a draw from softmax(loglik / T) with the same seed), generated where it
        is open or not listed."""
        closed = bool(admissible) and not open_space(context)
        longest = reply_tokens([format_action(a) for a in admissible]) if closed else 0
        budget = self.thought_tokens or self.max_tokens
        messages, ids = self.fit(messages, reserve=self._reserve(budget + longest + REPLY_EXTRA_TOKENS))
        begun = self._assistant_ids(messages, ids, THOUGHT_PREFILL)[:-1]  # the prompt, then the turn's `Thought:`
        out = []
        for seed in seeds:
            text, finish = self._generate_ids(
                begun, seed=seed, temperature=temperature, top_p=self.top_p, max_tokens=self._budget(begun, budget)
            )
            split = split_thought(THOUGHT_PREFILL + text)
            prefix = split.prefix
            sampled_seed = seed if temperature > 0 else 0
            if closed:
                reply = self._action_after(messages, ids, prefix, admissible, seed, temperature)
            else:
                written = split.written
                if not written:  # cut, or an empty `Action:` line: generate the action after the thought
                    written, finish = self._generate_after(messages, ids, prefix + "Action:", seed, temperature)
                reply = reply_from_text(
                    f"{prefix}Action: {written}", admissible, context=context, seed=sampled_seed, finish_reason=finish
                )
            reply.thought, reply.thought_cut, reply.seed = split.thought, split.cut, sampled_seed
            out.append(reply)
        return out

    def _assistant_ids(self, messages: list[dict], ids: list[int], content: str) -> list[int]:
        """The ids of prompt + an assistant turn holding `content`, as the template renders the whole turn, through
        its end-of-turn token."""
        return self._through_end_of_turn(ids, self.encode_turns(messages, [content])[0])

    def _through_end_of_turn(self, ids: list[int], full: list[int]) -> list[int]:
        """`full` (the prompt `ids`, then an assistant turn, as the template renders it) through the turn's end."""
        if full[: len(ids)] != ids or len(full) <= len(ids):
            raise PolicyError(
                f"the {self.backend} chat template renders an assistant turn that does not extend "
                f"the generation prompt; --act think needs one that does"
            )
        for j in range(len(ids), len(full)):
            if self.is_stop(full[j]):
                return full[: j + 1]
        raise PolicyError(
            f"the {self.backend} chat template ends an assistant turn without an end-of-turn token; "
            f"--act think cannot tell where the action ends"
        )

    def _action_after(self, messages, ids, prefix, admissible, seed, temperature) -> Reply:
        """The admissible action chosen after `prefix` (the thought as written). Every candidate turn has the ids
        of the turn tokenized whole (prefix + `Action: <action>` + end of turn), as training tokenized it; the
        tokens all candidates share are the context, and each candidate is scored on the rest, so a token that
        merges across the `Action: ` boundary is scored with its candidate, never dropped or shared."""
        turns = self.encode_turns(messages, [prefix + format_action(a) for a in admissible])
        fulls = [self._through_end_of_turn(ids, full) for full in turns]
        shared = min(len(f) for f in fulls) - 1  # every candidate keeps at least one token to score
        first = fulls[0]
        for f in fulls[1:]:
            n = 0
            while n < shared and f[n] == first[n]:
                n += 1
            shared = n
        logliks = self.scores_for(first[:shared], [f[shared:] for f in fulls])
        reply = pick_action(admissible, logliks, seed, temperature)
        reply.text = prefix + reply.text
        return reply

    def _generate_after(self, messages, ids, content, seed, temperature) -> tuple[str, str]:
        """The first line generated after an assistant turn that begins with `content` (ending in `Action:`): the
        action of an open action space, as the model continues its own reply."""
        full = self._assistant_ids(messages, ids, content)[:-1]  # the turn so far, without its end of turn
        text, finish = self._generate_ids(
            full, seed=seed, temperature=temperature, top_p=self.top_p, max_tokens=self._budget(full, self.max_tokens)
        )
        return text.strip().split("\n", 1)[0].strip(), finish

    def scores_for(self, ids: list[int], candidates: list[list[int]]) -> list[float]:
        key = (tuple(ids), tuple(map(tuple, candidates)))
        if self._score_cache is None or self._score_cache[0] != key:
            self._score_cache = (key, self._logliks(ids, candidates))
        return self._score_cache[1]

    def rank(self, messages: list[dict], admissible: list[str]) -> list[tuple[str, float]]:
        """Every admissible action with its log-likelihood, best first (for analysis and tests)."""
        self.requests += 1
        replies = [format_action(a) for a in admissible]
        messages, ids = self.fit(messages, reserve=reply_tokens(replies))
        logliks = self.scores_for(ids, self.candidate_ids(messages, replies))
        return sorted(zip(admissible, logliks), key=lambda p: -p[1])


class ThoughtSplit(NamedTuple):
    """A reasoning reply read as --act think reads it (every backend, local or over HTTP)."""

    prefix: str  # the reply up to its first `Action:` line: what the action is chosen after
    thought: str | None  # the prefix without its `Thought:` label (None: no thought written)
    cut: bool  # the reply never reached `Action:` (cut by --max-tokens, or it stopped)
    written: str  # what the model wrote on its `Action:` line ("" when cut): an open space's action


def split_thought(text: str) -> ThoughtSplit:
    """The thought of a generated reply, and where the action goes after it. A reply that never reached `Action:`
    keeps what it wrote, closed by a blank line (the SR target's layout), and the action is asked for after it."""
    found = ACTION_LINE.search(text)
    if found:
        prefix, cut = text[: found.start()], False
        written = text[found.end() :].split("\n", 1)[0].strip()
    else:
        prefix, cut, written = (text.rstrip() + "\n\n" if text.strip() else ""), True, ""
    thought = _THOUGHT_LABEL.sub("", prefix.strip(), count=1).strip() or None
    return ThoughtSplit(prefix, thought, cut, written)


def longest_thought(messages: list[dict], count: Callable[[str], int]) -> int:
    """The tokens (`count`: text -> tokens) of the longest thought among the trained assistant turns of a training
    example, `Thought:` through the line break before its `Action:` line, as --act think generates it; 0 where no
    turn has a thought (IL, world-model and critic targets). finetune records the longest on the model card."""
    longest = 0
    for m in messages:
        content = m["content"]
        if (
            m["role"] == "assistant"
            and m.get("weight", 1)
            and _THOUGHT_LABEL.match(content)
            and ACTION_LINE.search(content)
        ):
            longest = max(longest, count(split_thought(content).prefix))
    return longest


def pick_action(admissible: list[str], logliks: list[float], seed: int, temperature: float) -> Reply:
    """Greedy at temperature 0; otherwise a draw from softmax(loglik / T) with the call's seed."""
    values = np.asarray(logliks, dtype=np.float64)
    if temperature <= 0:
        i, seed = int(np.argmax(values)), 0
    else:
        z = values / temperature
        p = np.exp(z - z.max())
        i = int(np.random.default_rng(seed).choice(len(values), p=p / p.sum()))
    action = admissible[i]
    return Reply(text=format_action(action), action=action, valid=True, seed=seed, finish_reason="stop")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
