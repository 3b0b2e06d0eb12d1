"""The grounded writer: a short rationale assembled from the observed outcomes, no model (`--reflector grounded`,
and `--fallback grounded`). Not the paper's method, and its examples' meta says so.

It writes what a policy can say at inference, in the paper's style: what the chosen action should achieve (from the
observation it led to, said in anticipation), why each tried alternative falls short (described: "going back to
search would lose the pink mug found here"), then the closing `So my move is <action>.`. It pastes no page text and
never writes a rejected action as a command (version 1 quoted every outcome page and every alternative verbatim:
~160 words a thought, most of them page text the model would have to invent at test time, and SmolLM2 trained on it
took `click[back to search]`, quoted in the thoughts, in 246 of 2,258 steps against IL's 5 of 2,081)."""

from __future__ import annotations

import difflib
import re

from eexp.stages.reflect.text import STOP
from eexp.text import normalize_space

# Which grounded writer made an example: meta.extra records it, so data from the old writer can be told apart.
# 1: quoted the task, the page and every outcome; 2: described, short (this module).
VERSION = 2
CLOSING = "So my move is"     # the thought's last sentence: `So my move is <expert action>.`
MAX_QUOTE_WORDS = 5           # a small edit ("selected: pink") is quoted when it is at most this long

# Words with their hyphens kept ("v-neck", "t-shirt"), so a goal's phrases read as the goal writes them.
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_BRACKETED = re.compile(r"^\s*([a-z_]+)\s*\[(.*?)\](?:\s*\[(.*)\])?\s*$", re.IGNORECASE)
_PUNCTUATION = re.compile(r"[,.;:!?()]")
_EDGE = STOP - {"over"}       # small words a phrase does not start or end with ("over ear headphones" keeps its own)
_CALL = re.compile(r"^\s*\[?\s*([A-Za-z_][\w.]*)\s*\(")
_BUDGET = re.compile(r"\b(?:under|less than|below|at most|no more than)\s+\$?(\d+(?:\.\d+)?)", re.IGNORECASE)
_PRICE = re.compile(r"\bprice:?\s*\$(\d+(?:\.\d+)?)", re.IGNORECASE)

# Buttons whose label is not a phrase, said as a person would.
_BUTTONS = {"back to search": "going back to search", "< prev": "going back a page", "prev": "going back a page",
            "next >": "going on to the next page", "next": "going on to the next page", "buy now": "buying now"}
_DIRECTIONS = {"n": "north", "s": "south", "e": "east", "w": "west", "ne": "northeast", "nw": "northwest",
               "se": "southeast", "sw": "southwest", "u": "up", "d": "down"}
_MOVES = set(_DIRECTIONS.values()) | {"up", "down", "in", "out", "left", "right", "forward", "back"}
_ONE_WORD = {"inventory": "checking the inventory", "look": "looking around", "i": "checking the inventory",
             "l": "looking around"}
_DOUBLED = {"put", "get", "set", "cut", "stop", "drop", "dig", "plug", "shut", "chop", "run", "swim", "sit", "hit",
            "grab", "tap", "pat", "rub", "wrap", "trim", "nod", "hug"}


def gerund(verb: str) -> str:
    """`take` -> `taking`, `put` -> `putting`, `open` -> `opening` (plain English rules and a few exceptions)."""
    v = verb.lower()
    if v in _DOUBLED:
        return v + v[-1] + "ing"
    if v.endswith("ie"):
        return v[:-2] + "ying"
    if v.endswith("e") and not v.endswith(("ee", "oe", "ye")) and len(v) > 2:
        return v[:-1] + "ing"
    return v + "ing"


def describe_action(action: str) -> str:
    """An action in words, as a gerund phrase: `click[back to search]` -> `going back to search`, `search[red mug]`
    -> `searching for red mug`, `take key from box` -> `taking key from box`, `cd('docs')` -> `calling cd`. A
    monologue that names a move this way never spells the command out, so a model trained on it does not learn to
    write a rejected command where it thinks."""
    text = normalize_space(action)
    m = _BRACKETED.match(text)
    if m:
        verb, arg, more = m.group(1).lower(), m.group(2).strip(), (m.group(3) or "").strip()
        if verb == "click":
            return _BUTTONS.get(arg.lower(), f"clicking {arg}")
        if verb == "search":
            return f"searching for {arg}"
        if verb == "type" and more:
            return f"typing {more} into {arg}"
        if verb == "select" and more:
            return f"selecting {more} in {arg}"
        return f"{gerund(verb)} {arg}".strip()
    call = _CALL.match(text)
    if call:
        return f"calling {call.group(1)}"
    words = text.split()
    if not words:
        return "doing nothing"
    first = words[0].lower()
    if len(words) == 1 and first in _ONE_WORD:
        return _ONE_WORD[first]
    if first in _DIRECTIONS or first in _MOVES:
        return "going " + " ".join([_DIRECTIONS.get(first, first), *words[1:]])
    if first == "go" and len(words) > 1:
        return "going " + " ".join([_DIRECTIONS.get(words[1].lower(), words[1]), *words[2:]])
    if not first.isalpha():
        return f"doing {text}"
    return " ".join([gerund(first), *words[1:]])


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _goal_words(goal: str) -> set[str]:
    """The words of a goal worth finding on a page: not its small words, nor its budget's figure (a price of $30 on
    a page is not the "30" of "under 30 dollars")."""
    budget = _BUDGET.search(goal)
    return set(_tokens(goal)) - STOP - ({budget.group(1)} if budget else set())


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def goal_phrases(goal: str, wanted: set[str], present: set[str] = frozenset()) -> list[str]:
    """The goal's phrases made of `wanted` words, in the goal's order and wording, bridged by the goal's small
    words that `present` (an observation's words) has too, and led by the word before them when `present` has it:
    with wanted {canvas, slip, sneakers, yellow, 10} and "on" and "size" on the page, the goal `canvas slip on
    sneakers in yellow, size 10` gives [canvas slip on sneakers, yellow, size 10]."""
    phrases = []
    for part in _PUNCTUATION.split(goal):     # "in blue, size m": blue and size m are two phrases
        run: list[str] = []
        before = ""
        for token in _tokens(part) + [""]:
            if token and (token in wanted and token not in STOP or token in STOP and token in present):
                if not run and before and before not in STOP and before in present:
                    run.append(before)           # the word that names it: "size" of size m
                run.append(token)
                before = token
                continue
            before = token
            while run and run[-1] in _EDGE:
                run.pop()
            while run and run[0] in _EDGE:
                run.pop(0)
            phrase = " ".join(run)
            if any(t in wanted and t not in STOP for t in run) and phrase not in phrases:
                phrases.append(phrase)
            run = []
    return phrases


def change(before: str, after: str) -> tuple[str, bool, set[str], set[str]]:
    """What an action changed: when the new observation is mostly the old one with at most two spans edited (an
    option selected on the same page), the edited text, True, the words it added and those it removed; else the new
    observation, False, its words and no removed ones."""
    a, b = before.split(), after.split()
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    if a and matcher.ratio() >= 0.7:
        ops = [op for op in matcher.get_opcodes() if op[0] != "equal"]
        added = [" ".join(b[j1:j2]) for tag, _, _, j1, j2 in ops if tag in ("insert", "replace")]
        removed = [" ".join(a[i1:i2]) for tag, i1, i2, _, _ in ops if tag in ("delete", "replace")]
        if 0 < len(added) <= 2:
            new, old = set(_tokens(" ".join(added))), set(_tokens(" ".join(removed)))
            return " ... ".join(added), True, new - old, old - new
    return after, False, set(_tokens(after)), set()


def _quote(text: str) -> str | None:
    """A small edit, quotable inside a sentence: at most MAX_QUOTE_WORDS words, else None."""
    flat = normalize_space(text.replace('"', "'")).strip(" ,;")
    return f'"{flat}"' if flat and len(flat.split()) <= MAX_QUOTE_WORDS else None


def _over_budget(goal: str, observation: str) -> str:
    """"a price of $63, over the budget of 30" when the goal sets a ceiling and the outcome shows one price above
    it."""
    budget, prices = _BUDGET.search(goal), _PRICE.findall(observation)
    if budget and len(prices) == 1 and float(prices[0]) > float(budget.group(1)):
        return f"a price of ${prices[0]}, over the budget of {budget.group(1)}"
    return ""


_DETOURS = ("would not move the task forward", "would be a detour from the task",
            "would bring me no closer to the goal")
_INVALID = ("is not accepted here, so it would waste a step", "would be refused here, a wasted step",
            "is not a move that works here")
_UNCHANGED = ("would change nothing", "would leave everything as it is", "would get me nowhere")


def _missing(goal: str, wanted: set[str], offered: set[str], present: set[str]) -> list[str]:
    """The goal's phrases the chosen action brings that an alternative's outcome does not (a phrase counts as
    offered only whole: "size m" is missing from a page that has sizes but not m)."""
    return [p for p in goal_phrases(goal, wanted, present) if not set(p.split()) - STOP <= offered]


def _alternative_sentence(alt: dict, state: dict, expert: dict, wanted: set[str], i: int) -> str:
    """Why one tried alternative falls short, from what it led to, in words (no page text, no command)."""
    said = _capital(describe_action(alt["action"]))
    current, goal = state["observation"], state["goal"]
    expected = set(_tokens(expert["next_observation"]))
    if alt.get("error"):
        return f"{said} cannot be carried out from here."
    after = alt["next_observation"]
    if alt.get("valid") is False:
        return f"{said} {_INVALID[i % len(_INVALID)]}."
    if normalize_space(after) == normalize_space(current):
        return f"{said} {_UNCHANGED[i % len(_UNCHANGED)]}."
    if alt.get("done"):
        reward = alt.get("reward")
        if isinstance(reward, (int, float)) and reward < 0:
            return f"{said} would end the episode at once, losing {-reward:g}."
        if isinstance(reward, (int, float)) and 0 < reward < 1:
            return f"{said} would end the episode here, with only part of the task done."
        if isinstance(reward, (int, float)) and reward > 0:
            return f"{said} would end the episode here."
        return f"{said} would end the episode here with nothing gained."
    if normalize_space(after) == normalize_space(expert["next_observation"]):
        return f"{said} would end up in the same place, with nothing more to gain."
    edited, small, added, removed = change(current, after)
    goal_words = _goal_words(goal)
    if small:
        dropped = goal_phrases(goal, removed & goal_words, set(_tokens(current)))
        if dropped:
            return f"{said} would take away {_join(dropped)}, which the task asks for."
        missing = _missing(goal, wanted, added, expected)
        quoted = _quote(edited)
        if missing:
            return f"{said} would add {quoted or 'something else'} instead of {_join(missing)}."
        return f"{said} would only add {quoted or 'a detail'}, which does not move the task forward."
    here = set(_tokens(current)) & goal_words
    lost = goal_phrases(goal, here - added, set(_tokens(current)))
    if here and not added & goal_words:
        return f"{said} would leave this page and lose the {_join(lost)} found here."
    over = _over_budget(goal, after)
    if over:
        return f"{said} would show {over}."
    missing = _missing(goal, wanted, added, expected)
    if missing:
        return f"{said} would not offer {_join(missing)}."
    if lost:
        return f"{said} would lose {_join(lost)} from this page."
    return f"{said} {_DETOURS[i % len(_DETOURS)]}."


def _expert_sentence(state: dict, expert: dict, wanted: list[str], small: bool, edited: str) -> str:
    """What the chosen action should achieve, from the observation it led to, said in anticipation."""
    said = _capital(describe_action(expert["action"]))
    reward = expert.get("reward")
    rewarded = isinstance(reward, (int, float)) and reward > 0
    if expert.get("done"):
        return f"{said} should finish the task." if rewarded else f"{said} should end the episode here."
    if small:
        quoted = _quote(edited)
        gives = f", giving {_join(wanted)} as the task asks" if wanted else ""
        if quoted:
            return f"{said} should add {quoted}{gives}."
        return f"{said} should change just what is needed here{gives}." if wanted else \
            f"{said} should set up the next step."
    progress = f" (a reward of {reward:g})" if rewarded else ""
    if sum(len(p.split()) for p in wanted) >= 2 and \
            all(phrase in normalize_space(expert["action"]).lower() for phrase in wanted):
        return f"{said} should turn up matches for the task{progress}."     # a search for what the task names
    if wanted:
        return f"{said} should bring {_join(wanted)} into view, as the task asks{progress}."
    if normalize_space(expert["next_observation"]) == normalize_space(state["observation"]):
        return f"{said} should set up the next step{progress}."
    if rewarded:
        return f"{said} should bring progress{progress}."
    return f"{said} should move me toward the goal."


def grounded_reflection(outcome: dict, shown: list[dict]) -> str:
    """A deterministic rationale from the observed outcomes: what the chosen action should achieve, why each
    alternative shown falls short, and the closing `So my move is <action>.`. Anticipatory about the chosen action
    by construction, free of list labels and page text, so it passes the same filters as a model's."""
    state, expert = outcome["state"], outcome["expert"]
    goal, current = state["goal"], state["observation"]
    edited, small, added, _ = change(current, expert["next_observation"])
    # The goal's words the chosen action's outcome newly offers: in what it edits, or on the new page it opens.
    new = added if small else added - set(_tokens(current))
    wanted = new & _goal_words(goal)
    phrases = goal_phrases(goal, wanted, set(_tokens(expert["next_observation"])))
    lines = [_expert_sentence(state, expert, phrases, small, edited)]
    lines.extend(_alternative_sentence(alt, state, expert, wanted, i) for i, alt in enumerate(shown))
    lines.append(f"{CLOSING} {expert['action']}.")
    return " ".join(lines)
