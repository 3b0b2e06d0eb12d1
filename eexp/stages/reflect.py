"""reflect: one self-reflection example per expert state, grounded in the outcomes observed by rollout.

Paper §4.3: a model sees the state, the chosen (expert) action with its outcome and a few alternatives with theirs,
and writes a first-person monologue explaining why the chosen action is the better one. The training example is
`state -> Thought: <monologue>\n\nAction: <expert action>`: the alternatives and the outcomes are only in the prompt
that *writes* the reflection, never in the training input (at inference the model has only the state).

Three reflectors: `self` (the model being trained writes its own reflections, the paper's setting), `teacher` (a
stronger model, recorded as teacher-assisted) and `grounded` (a deterministic rationale assembled from the observed
outcomes, no model: for CPU experiments and tests; not the paper's method, and its meta says so).

Every reflection goes through the same filters, from what the paper's public code base learned about its generated
reflections and what SmolLM2-135M did here: a cut-off reply, an empty, short or over-long one, label leakage, a copy
of the template's own words, one off the topic or going round in circles, the chosen action's outcome narrated as
already seen, a different concluding action. A monologue repeated twice is repaired (first copy kept), not rejected.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Callable, Iterator

from eexp.io import InputError
from eexp.prompts import Serializer, clip, format_action, normalize_space
from eexp.records import example_meta

# --- the prompt template -----------------------------------------------------------------------------------------

REQUIRED_SLOTS = ("situation", "chosen_action", "chosen_outcome", "alternatives")
# Templates shipped with eexp, by name. `short` is for small models (~100M-1B parameters): the default asks for 150-300
# words of prose, which SmolLM2-135M-Instruct answered with rambling that ran into --max-tokens (9 of 12 states cut
# off at 1,024 tokens, 15 s each); with one worked example and two or three sentences asked for, it stays on the
# task more often and a reflection costs ~2.5 s (README.md here: "Self-reflection with a small model").
BUILTIN_TEMPLATES = {"default": "reflect.txt", "short": "reflect-short.txt"}
OPTIONAL_SLOTS = ("goal", "max_words")
_SLOT = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Template:
    """A reflection prompt with `{slot}` placeholders. Only the slot names below are replaced, so any other braces
    in a user's template (JSON examples, say) stay as written."""

    text: str
    source: str = "default"

    @classmethod
    def load(cls, path: str | None = None) -> "Template":
        """A built-in template by name (default, short), or a template file."""
        path = path or "default"
        if path in BUILTIN_TEMPLATES and not os.path.exists(path):
            name = BUILTIN_TEMPLATES[path]
            return cls(resources.files("eexp").joinpath(f"templates/{name}").read_text(encoding="utf-8"), path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise InputError("no such template file", path) from None
        except UnicodeDecodeError:
            raise InputError("the template is not UTF-8 text", path) from None
        except OSError as e:
            raise InputError(f"cannot read the template ({e.strerror})", path) from None
        template = cls(text, path)
        missing = [s for s in REQUIRED_SLOTS if "{" + s + "}" not in text]
        if missing:
            names = ", ".join("{" + s + "}" for s in missing)
            raise InputError(f"the template has no {names} slot{'s' if len(missing) > 1 else ''} (a reflection "
                             f"template needs {', '.join('{' + s + '}' for s in REQUIRED_SLOTS)})", path)
        return template

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def fill(self, **values: str) -> str:
        return _SLOT.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), self.text)

    @cached_property
    def phrases(self) -> frozenset[tuple[str, ...]]:
        """Every run of COPY_RUN words in the template's own text (slots excluded): a reflection that repeats one
        is copying the instructions or the worked example instead of reasoning about its own state."""
        runs = set()
        for part in _SLOT.split(self.text)[::2]:  # split() alternates text and slot names
            words = [w.lower() for w in _WORD.findall(part)]
            runs.update(tuple(words[i:i + COPY_RUN]) for i in range(len(words) - COPY_RUN + 1))
        return frozenset(runs)


# --- what the reflector is shown ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    max_alternatives: int = 3      # the paper finds SR best at K = 2-4
    max_words: int = 500           # the repo's soft cap; the prompt asks for 150-300
    min_words: int = 10            # a few words explain nothing (and are what a broken model emits)
    max_outcome_chars: int = 600   # each outcome shown to the reflector
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int = 0


def executed(alternative: dict) -> bool:
    """Rollout tried it: it has an outcome (an observation, or the error that stopped it)."""
    return alternative.get("next_observation") is not None or bool(alternative.get("error"))


def shown_alternatives(outcome: dict, limit: int) -> list[dict]:
    """The first `limit` executed alternatives, valid or not, errors included, in the record's order."""
    return [a for a in outcome["alternatives"] if executed(a)][:limit]


def render_outcome(alternative: dict, max_chars: int) -> str:
    if alternative.get("error"):
        return f"It could not be carried out: {clip(alternative['error'], max_chars)}"
    text = clip(alternative["next_observation"], max_chars)
    if alternative.get("valid") is False:
        return f"(not accepted here) {text}"
    return text


def render_alternatives(alternatives: list[dict], max_chars: int) -> str:
    """Each alternative under its own action text: no numbers and no labels a monologue could copy."""
    blocks = []
    for alt in alternatives:
        body = render_outcome(alt, max_chars).replace("\n", "\n  ")
        blocks.append(f"- {alt['action']}\n  What followed: {body}")
    return "\n".join(blocks)


def reflection_prompt(outcome: dict, shown: list[dict], template: Template, serializer: Serializer,
                      settings: Settings) -> list[dict]:
    state = outcome["state"]
    text = template.fill(
        situation=serializer.render_state(state),
        goal=state["goal"],
        chosen_action=outcome["expert"]["action"],
        chosen_outcome=clip(outcome["expert"]["next_observation"], settings.max_outcome_chars),
        alternatives=render_alternatives(shown, settings.max_outcome_chars),
        max_words=str(settings.max_words),
    )
    return [{"role": "user", "content": text}]


# --- the grounded reflector (no model) ----------------------------------------------------------------------------

def snippet(text: str, max_chars: int = 160) -> str:
    """One line of an observation, short enough to quote inside a sentence."""
    flat = " ".join(text.replace('"', "'").split())
    if len(flat) <= max_chars:
        return flat
    cut = flat[:max_chars].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " ..."


def _reward_clause(reward) -> str:
    return f", earning {reward:g}" if isinstance(reward, (int, float)) and reward > 0 else ""


# Words of a goal that say nothing about what to look for: function words and the generic verbs of instructions.
_STOP = frozenset("a an the and or of to in on for with from by at is are be me my i you your it this that need "
                  "find want get some any under over than less more please looking look take put go make use "
                  "first then will task actions cause costs priced dollars".split())


def _content_words(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text.lower()):
        if w not in _STOP and w not in out:
            out.append(w)
    return out


def change(before: str, after: str) -> tuple[str, bool, list[str]]:
    """What an action changed, quotable: the words it added when the new observation is mostly the old one (an
    option selected on the same page), else the start of the new observation. Also: whether it was only such a
    small edit, and the words the edit removed."""
    a, b = before.split(), after.split()
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    if a and matcher.ratio() >= 0.7:
        ops = [op for op in matcher.get_opcodes() if op[0] != "equal"]
        added = [" ".join(b[j1:j2]) for tag, _, _, j1, j2 in ops if tag in ("insert", "replace")]
        removed = [w for tag, i1, i2, _, _ in ops if tag in ("delete", "replace") for w in a[i1:i2]]
        if 0 < len(added) <= 2:
            return snippet(" ... ".join(added)), True, _content_words(" ".join(removed))
    return snippet(after), False, []


_DETOURS = ("which is not the step the task needs now", "which does not bring me closer to what I need",
            "which is a detour from the task")
_BUDGET = re.compile(r"\b(?:under|less than|below|at most|no more than)\s+\$?(\d+(?:\.\d+)?)", re.IGNORECASE)
_PRICE = re.compile(r"\bprice:?\s*\$(\d+(?:\.\d+)?)", re.IGNORECASE)


def _over_budget(goal: str, observation: str) -> str:
    """", at $63, over the budget of 30" when the goal sets a ceiling and the outcome shows one price above it."""
    budget, prices = _BUDGET.search(goal), _PRICE.findall(observation)
    if budget and len(prices) == 1 and float(prices[0]) > float(budget.group(1)):
        return f", at ${prices[0]}, over the budget of {budget.group(1)}"
    return ""


def _alternative_sentence(alt: dict, current: str, goal: str, wanted: list[str], i: int) -> str:
    action = alt["action"]
    if alt.get("error"):
        return f'"{action}" cannot even be carried out from here ({snippet(alt["error"], 100)}), so it gets me ' \
               f'nowhere.'
    seen, small, removed = change(current, alt["next_observation"])
    if alt.get("valid") is False:
        return f'"{action}" is not accepted here (it only gets "{seen}"), so it would waste a step.'
    if normalize_space(alt["next_observation"]) == normalize_space(current):
        return f'"{action}" leaves everything as it is, so it brings me no closer to the goal.'
    if alt.get("done"):
        reward = alt.get("reward")
        lost = isinstance(reward, (int, float)) and reward < 0
        gained = f", losing {-reward:g}" if lost else _reward_clause(reward) or " with nothing gained"
        return f'"{action}" would end the episode at once ("{seen}"){gained}, leaving no way to put things ' \
               f'right afterwards.'
    lead = (f'"{action}" only adds "{seen}"' if small else f'"{action}" leads to "{seen}"') \
        + _reward_clause(alt.get("reward"))
    goal_words = _content_words(goal)
    # A word the task asks for that a small edit took away ("selected: pink" became "selected: blue"); a larger
    # rewrite of the same spot says nothing so specific.
    dropped = [w for w in removed if w in goal_words and w not in _content_words(alt["next_observation"])] \
        if len(removed) <= 2 else []
    if dropped:
        return f"{lead}, which drops {', '.join(dropped)}, what the task asks for."
    over = _over_budget(goal, alt["next_observation"])
    if over:
        return f"{lead}{over}."
    # Goal words the chosen action's outcome brings and this one does not: the concrete reason it falls short.
    outcome_words = set(_content_words(seen if small else alt["next_observation"]))
    lacking = [w for w in wanted if w not in outcome_words]
    if lacking:
        return f"{lead}, with nothing about {', '.join(lacking)}, which the task asks for."
    return f"{lead}, {_DETOURS[i % len(_DETOURS)]}."


def grounded_reflection(outcome: dict, shown: list[dict]) -> str:
    """A deterministic rationale from the observed outcomes: what each alternative led to, and why the chosen
    action's expected outcome moves toward the goal. Anticipatory about the chosen action by construction (it is
    never described as already seen), and free of list labels, so it passes the same filters as a model's."""
    state, expert = outcome["state"], outcome["expert"]
    goal = " ".join(state["goal"].split()).rstrip(".")
    current, expected = state["observation"], expert["next_observation"]
    seen, small, _ = change(current, expected)
    # The goal words the chosen action's outcome newly offers: in what it changes, or on the new page it opens.
    offered = set(_content_words(seen)) if small else set(_content_words(expected)) - set(_content_words(current))
    wanted = [w for w in _content_words(goal) if w in offered]
    lines = [f'My task: {goal}. What is in front of me: "{snippet(current)}".']
    if shown:
        lines.append("Weighing the moves I have:")
        lines.extend(_alternative_sentence(alt, current, goal, wanted, i) for i, alt in enumerate(shown))
    reward = expert.get("reward")
    if expert.get("done") and isinstance(reward, (int, float)) and reward > 0:
        aim = "should complete the task"
    elif isinstance(reward, (int, float)) and reward > 0:
        aim = f"should bring progress (a reward of {reward:g})"
    else:
        aim = "moves me toward the goal"
    match = f" brings {', '.join(wanted)} from the task and" if wanted else ""
    lines.append(f'So my move is "{expert["action"]}": I expect it to {"add" if small else "lead to"} "{seen}", '
                 f"which{match} {aim}.")
    return " ".join(lines)


# --- filters ----------------------------------------------------------------------------------------------------

FILTERS = ("truncated", "model_error", "empty", "too_short", "too_long", "label_leakage", "template_copy",
           "off_topic", "repetitive", "outcome_narration", "different_action")
# What --stats reports: why states gave no example, each filter, repairs, fallbacks, and what was kept.
COUNTS = ("kept", *FILTERS, "repeated", "fallback_grounded", "no_alternatives", "all_alternatives_failed",
          "unreachable", "expert_not_executed")
COPY_RUN = 5              # words in a row shared with the template that count as copying it
MAX_REPEATED_RUNS = 0.4   # a monologue whose three-word runs repeat more than this is going round in circles

# Labels a generator copies from its prompt (~16% of one batch in the paper's code base): who demonstrated the
# action, list positions, template headings, meta talk. Plain words like "alternative" or "option" alone are fine
# English.
_LEAKAGE = re.compile(
    r"\bexperts?\b|\bdemonstrat(?:or|ion)s?\b"
    r"|\b(?:alternative|option|action|move|choice|candidate)\s*(?:#\s*)?\d+\b"
    r"|\b(?:first|second|third|fourth|fifth|sixth|last)\s+(?:alternative|option|candidate)s?\b"
    r"|\b(?:listed|given|provided|shown)\s+(?:above|below)\b"
    r"|\bthe move (?:i|you) will make\b|\bother moves you could make\b|\bwhat followed\b"
    r"|\bas an ai\b|\bai (?:assistant|model)\b|\blanguage model\b",
    re.IGNORECASE)

# Words that make a sentence anticipatory rather than a report of what happened.
_ANTICIPATION = re.compile(
    r"\b(?:will|should|would|could|might|may|can't|cannot|expect\w*|likely|probably|hope\w*|if|once|going to|"
    r"want to|plan|intend|aim)\b|'ll\b", re.IGNORECASE)

# Ways of reporting a result as seen ("now I see cup 1": ~25% of ALFWorld navigation reflections in the paper's code
# base).
_NARRATION = re.compile(
    r"\b(?:now|already)\s+(?:i\s+)?(?:can\s+)?(?:see|saw|notice|have|found|got)\b"
    r"|\bi\s+(?:can\s+)?(?:now|already)\s+(?:see|saw|notice|have|found|got|know)\b"
    r"|\b(?:after|having)\s+(?:\w+ing|done|taken|made)\b[^.]*?\b(?:i\s+(?:see|saw|found|got|noticed|have)|"
    r"it\s+(?:shows?|showed|worked|led|resulted|returned|gave))\b"
    r"|\b(?:it|this|that|my (?:move|action|choice))\s+(?:worked|succeeded|led to|resulted in|showed|gave me)\b"
    r"|\b(?:led to|resulted in|showed|returned|gave me|revealed)\b",
    re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+", re.IGNORECASE)
_ACTION_LINE = re.compile(r"^[ \t*_#>-]*Action\s*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_BOUNDARY = re.compile(r"[.!?]+(?=\s)|\n")


@dataclass
class Verdict:
    text: str                 # the cleaned monologue (Action lines and a leading "Thought:" removed)
    reason: str | None = None  # the first filter it failed, or None when kept
    detail: str = ""
    repeated: bool = False     # the monologue came twice and the first copy was kept
    concluded: str | None = None


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of sentences and lines, whitespace-only spans left out."""
    cuts = [0] + [m.end() for m in _BOUNDARY.finditer(text)] + [len(text)]
    spans = []
    for a, b in zip(cuts, cuts[1:]):
        start = a + (len(text[a:b]) - len(text[a:b].lstrip()))
        if text[start:b].strip():
            spans.append((start, b))
    return spans


def _norm(sentence: str) -> str:
    sentence = re.sub(r"^\s*thought\s*:\s*", "", sentence, flags=re.IGNORECASE)
    return " ".join(sentence.lower().split())


def trim_repeat(text: str) -> tuple[str, bool]:
    """Cut a monologue that starts over (~3% of long generations say it all twice, in the paper's code base).

    A restart is a sentence equal to the first one, followed by copies of the next ones, to the end of the text or
    for at least two sentences; the copy may stop mid-sentence (a reply cut by max tokens). The first copy is kept.
    """
    spans = sentences(text)
    norms = [_norm(text[a:b]) for a, b in spans]
    for p in range(1, len(norms)):
        if norms[p] != norms[0]:
            continue
        m = min(len(norms) - p, p)
        matched = 0
        for i in range(m):
            cut_copy = p + i == len(norms) - 1 and len(norms[p + i].split()) >= 3 and \
                norms[i].startswith(norms[p + i])
            if norms[p + i] != norms[i] and not cut_copy:
                break
            matched += 1
        if matched >= 2 or (p + matched == len(norms) and len(norms[0].split()) >= 8):
            return text[: spans[p][0]].rstrip(), True
    return text, False


def _canon(action: str) -> str:
    return " ".join(action.strip().strip("`'\"").split()).casefold()


def _concluding_action(prose: str, expert: str, alternatives: list[str]) -> str | None:
    """Without an `Action:` line, the action the last sentence settles on, when it names exactly one option."""
    spans = sentences(prose)
    if not spans:
        return None
    last = prose[spans[-1][0]: spans[-1][1]].casefold()
    named = [a for a in [expert, *alternatives] if _canon(a) and _canon(a) in " ".join(last.split())]
    return named[0] if len(named) == 1 else None


def _new_words(outcome: dict, shown: list[dict], situation: str) -> set[str]:
    """Words of the chosen action's outcome that appear nowhere else the reflector could have read them: if the
    monologue reports them as seen, it is narrating a result it cannot know at inference."""
    known = set(w.lower() for w in _WORD.findall(situation))
    for alt in shown:
        known.update(w.lower() for w in _WORD.findall(alt.get("next_observation") or alt.get("error") or ""))
    known.update(w.lower() for w in _WORD.findall(outcome["expert"]["action"]))
    fresh = {w.lower() for w in _WORD.findall(outcome["expert"]["next_observation"])} - known
    return {w for w in fresh if len(w) >= 3 or w.isdigit()}


def judge(reply: str, finish_reason: str, *, expert: str, alternatives: list[str], new_words: set[str],
          max_words: int, min_words: int = 1, template: Template | None = None,
          topic: set[str] | None = None) -> Verdict:
    """Clean a reply and run the filters in a fixed order; the first that fails is the reason."""
    text, repeated = trim_repeat(reply.strip())
    if finish_reason.startswith("error"):
        return Verdict("", "model_error", finish_reason, repeated)
    if finish_reason == "length" and not repeated:
        # A repeated monologue usually runs into the token limit in its second copy; with that copy cut off the
        # first is whole. Anything else cut by max tokens ends mid-thought.
        return Verdict(text, "truncated", "the reply was cut off by --max-tokens", repeated)
    action_lines = _ACTION_LINE.findall(text)
    prose = _ACTION_LINE.sub("", text)
    prose = _ANSWER_CUE.sub("", prose.strip()).strip()
    prose = re.sub(r"\n{3,}", "\n\n", prose)
    concluded = next((a for a in reversed(action_lines) if a.strip()), None)
    verdict = Verdict(prose, None, "", repeated, concluded)
    words = len(prose.split())
    if words == 0:
        verdict.reason, verdict.detail = "empty", "no monologue"
        return verdict
    if words < min_words:
        verdict.reason, verdict.detail = "too_short", f"{words} words (--min-words {min_words})"
        return verdict
    if words > max_words:
        verdict.reason, verdict.detail = "too_long", f"{words} words (--max-words {max_words})"
        return verdict
    leak = _LEAKAGE.search(prose)
    if leak:
        verdict.reason, verdict.detail = "label_leakage", f"mentions {leak.group(0)!r}"
        return verdict
    copied = _copied_phrase(prose, template) if template is not None else None
    if copied:
        verdict.reason, verdict.detail = "template_copy", f"repeats the template's words {copied!r}"
        return verdict
    content = set(_content_words(prose))
    if topic and not content & topic:
        verdict.reason, verdict.detail = "off_topic", "names nothing from the task or the moves"
        return verdict
    repeated_runs = _repeated_run_share(prose)
    if repeated_runs > MAX_REPEATED_RUNS:
        verdict.reason, verdict.detail = "repetitive", f"{repeated_runs:.0%} of its three-word runs are repeats"
        return verdict
    narration = _narrated_sentence(prose, expert, new_words)
    if narration:
        verdict.reason, verdict.detail = "outcome_narration", f"reports the chosen action's result as seen: " \
                                                                f"{clip(narration, 160)!r}"
        return verdict
    if concluded is None:
        concluded = _concluding_action(prose, expert, alternatives)
        verdict.concluded = concluded
    if concluded is not None and _canon(concluded) != _canon(expert):
        verdict.reason, verdict.detail = "different_action", f"concludes {concluded!r}, not {expert!r}"
    return verdict


# What a reply may open with before the monologue: the template's answer cue ("Why:") or a "Thought:" label.
_ANSWER_CUE = re.compile(r"^\s*(?:(?:thought|why|reasoning|reflection)\s*:\s*)+", re.IGNORECASE)


def _copied_phrase(prose: str, template: Template) -> str | None:
    words = [w.lower() for w in _WORD.findall(prose)]
    for i in range(len(words) - COPY_RUN + 1):
        if tuple(words[i:i + COPY_RUN]) in template.phrases:
            return " ".join(words[i:i + COPY_RUN])
    return None


def _repeated_run_share(prose: str) -> float:
    """The share of three-word runs that already occurred earlier in the text (0 for short texts)."""
    words = [w.lower() for w in _WORD.findall(prose)]
    runs = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1 - len(set(runs)) / len(runs) if len(runs) >= 15 else 0.0


def topic_words(outcome: dict, alternatives: list[str]) -> set[str]:
    """What a reflection on this state should name at least one of: the goal's content words and those of the
    moves' arguments (`red mug` of click[red mug]; a whole action when it has no brackets)."""
    def argument(action: str) -> str:
        inner = re.search(r"\[(.*)\]", action)
        return inner.group(1) if inner else action
    words = _content_words(" ".join([outcome["state"]["goal"], argument(outcome["expert"]["action"]),
                                     *map(argument, alternatives)]))
    return set(words)


def _narrated_sentence(prose: str, expert: str, new_words: set[str]) -> str | None:
    """A sentence that reports the chosen action's result as already seen. With no anticipatory word, either it
    quotes two or more words only that result contains ("You bought kiko jeans. Thank you for shopping.", copied
    from the outcome by SmolLM2-135M), or it has a narration phrase and is about the chosen action (it names it, or
    quotes one such word)."""
    chosen = _canon(expert)
    for a, b in sentences(prose):
        sentence = prose[a:b]
        if _ANTICIPATION.search(sentence):
            continue
        words = {w.lower() for w in _WORD.findall(sentence)}
        if len(words & new_words) >= 2:
            return sentence.strip()
        if not _NARRATION.search(sentence):
            continue
        if (chosen and chosen in " ".join(sentence.casefold().split())) or words & new_words:
            return sentence.strip()
    return None


# --- the stage --------------------------------------------------------------------------------------------------

Writer = Callable[[list[dict], int], tuple[str, str]]  # (prompt messages, seed) -> (reply text, finish_reason)


@dataclass
class Reflector:
    """Who writes the reflections: `self`/`teacher` call `write`; `grounded` has no model (write is None)."""

    kind: str                      # self | teacher | grounded
    write: Writer | None = None
    model: str = ""
    model_sha256: str = ""


def policy_writer(policy, settings: Settings) -> Writer:
    def write(messages: list[dict], seed: int) -> tuple[str, str]:
        reply = policy.generate(messages, seed=seed, temperature=settings.temperature, top_p=settings.top_p,
                                max_tokens=settings.max_tokens)
        return reply.text or "", reply.finish_reason or ""
    return write


def reflect_examples(outcome: dict, *, reflector: Reflector, template: Template, serializer: Serializer,
                     settings: Settings, count: Callable[..., None] = lambda name, n=1: None,
                     reject: Callable[[dict], None] = lambda record: None,
                     fallback: str | None = None) -> Iterator[dict]:
    """At most one SR example for an outcome record. Records that cannot give one are counted (and rejected
    reflections passed to `reject`); nothing here stops the run. With fallback="grounded", a model's rejected
    reflection is replaced by the grounded rationale, labelled as such in meta and counted."""
    if outcome.get("error"):
        count("unreachable")              # rollout could not reach the state: nothing was observed
        return
    expert = outcome["expert"]
    if expert.get("next_observation") is None:
        count("expert_not_executed")      # no outcome to justify the chosen action with
        return
    shown = shown_alternatives(outcome, settings.max_alternatives)
    if not shown:
        count("no_alternatives")
        return
    if all(a.get("error") for a in shown):
        # Nothing observed to contrast with: a rationale would be ungrounded (the STaR-like baseline the paper
        # shows hurts), so the state gives no reflection.
        count("all_alternatives_failed")
        return
    state = outcome["state"]
    seed = 0
    if reflector.write is None:
        reply, finish_reason = grounded_reflection(outcome, shown), "stop"
    else:
        from eexp.policies.base import derive_seed
        seed = derive_seed(settings.seed, outcome["id"], 0)
        reply, finish_reason = reflector.write(
            reflection_prompt(outcome, shown, template, serializer, settings), seed)
    alternatives = [a["action"] for a in shown]
    verdict = judge(reply, finish_reason, expert=expert["action"], alternatives=alternatives,
                    new_words=_new_words(outcome, shown, serializer.render_state(state)),
                    max_words=settings.max_words, min_words=settings.min_words, template=template,
                    topic=topic_words(outcome, alternatives))
    if verdict.repeated:
        count("repeated")

    def meta(kind: str, **more) -> dict:
        extra = {"alternatives": alternatives, "template_sha256": template.sha256, **more}
        if kind == "grounded":
            extra["paper_method"] = False
            extra["note"] = "grounded: deterministic rationale from observed outcomes, no model; not the paper's " \
                            "method"
        else:
            extra.update(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens)
        if kind == "teacher":
            extra["teacher_assisted"] = True
        model, sha = ("", "") if kind == "grounded" else (reflector.model, reflector.model_sha256)
        return example_meta(stage="reflect", kind="sr", env=outcome["env"]["name"],
                            env_version=outcome["env"]["version"], task_id=outcome["task"]["id"],
                            trajectory_id=outcome["trajectory_id"], step=outcome["step"], action=expert["action"],
                            action_source="expert", model=model, model_sha256=sha, reflector=kind, seed=seed,
                            serializer=serializer.to_json(), extra=extra)

    example_id = f"sr:{outcome['id']}"
    text, kind, more = verdict.text, reflector.kind, {}
    if verdict.reason:
        count(verdict.reason)
        reject({"id": example_id, "source_id": outcome["id"], "reason": verdict.reason, "detail": verdict.detail,
                "reply": reply, "finish_reason": finish_reason, "meta": meta(reflector.kind)})
        if fallback != "grounded" or reflector.write is None:
            return
        count("fallback_grounded")
        text, kind = grounded_reflection(outcome, shown), "grounded"
        more = {"fallback_for": reflector.kind, "rejected": verdict.reason}
    else:
        count("kept")
    yield {
        "id": example_id,
        "source_id": outcome["id"],
        "messages": serializer.policy_messages(state) + [
            {"role": "assistant", "content": format_action(expert["action"], text)}],
        "meta": meta(kind, **more),
    }
