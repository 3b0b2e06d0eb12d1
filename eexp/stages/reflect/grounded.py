"""The grounded writer: a short rationale assembled from the observed outcomes, no model (`--reflector grounded`,
and `--fallback grounded`). Not the paper's method, and its examples' meta says so.

It writes what a policy can say at inference, in the paper's style: what the chosen action should achieve (from the
observation it led to, said in anticipation), why each tried alternative falls short (described: "going back to
search would lose the pink mug found here"), then the closing `So my move is <action>.`. It pastes no page text and
never writes a rejected action as a command (version 1 quoted every outcome page and every alternative verbatim:
~160 words a thought, most of them page text the model would have to invent at test time, and SmolLM2 trained on it
took `click[back to search]`, quoted in the thoughts, in 246 of 2,258 steps against IL's 5 of 2,081).

Version 3: the web worlds (shop, miniwob) keep version 2's page sentences, and a turn to the next page of search
results says why from what the page shows (version 2 had "should move me toward the goal", and the SR model trained
on it almost never paged); every other world speaks its own words (worlds.py: no page, no place taken from the task
sentence, which version 2 turned into "lose the apple in fridge found here" on ALFWorld). Every number and place a
reflection names is one the record shows (claims.py, which the stage's filters apply)."""

from __future__ import annotations

import difflib
import re

from eexp.stages.reflect import worlds
from eexp.stages.reflect.claims import WEB_ENVS
from eexp.stages.reflect.text import STOP
from eexp.text import normalize_space

# Which grounded writer made an example: meta.extra records it, so data from the old writer can be told apart.
# 1: quoted the task, the page and every outcome; 2: described, short; 3: (this module) says why the chosen action
# turns a page of search results, and names no number or place that the record does not show (`claims`).
VERSION = 3
CLOSING = "So my move is"  # the thought's last sentence: `So my move is <expert action>.`
MAX_QUOTE_WORDS = 5  # a small edit ("selected: pink") is quoted when it is at most this long

# Words with their hyphens kept ("v-neck", "t-shirt"), so a goal's phrases read as the goal writes them.
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_BRACKETED = re.compile(r"^\s*([a-z_]+)\s*\[(.*?)\](?:\s*\[(.*)\])?\s*$", re.IGNORECASE)
_PUNCTUATION = re.compile(r"[,.;:!?()]")
_EDGE = STOP - {"over"}  # small words a phrase does not start or end with ("over ear headphones" keeps its own)
_CALL = re.compile(r"^\s*\[?\s*([A-Za-z_][\w.]*)\s*\(")
_BUDGET = re.compile(r"\b(?:under|less than|below|at most|no more than)\s+\$?(\d+(?:\.\d+)?)", re.IGNORECASE)
_PRICE = re.compile(r"\bprice:?\s*\$(\d+(?:\.\d+)?)", re.IGNORECASE)

# Buttons whose label is not a phrase, said as a person would.
_BUTTONS = {
    "back to search": "going back to search",
    "< prev": "going back a page",
    "prev": "going back a page",
    "next >": "going on to the next page",
    "next": "going on to the next page",
    "buy now": "buying now",
}
_DIRECTIONS = {
    "n": "north",
    "s": "south",
    "e": "east",
    "w": "west",
    "ne": "northeast",
    "nw": "northwest",
    "se": "southeast",
    "sw": "southwest",
    "u": "up",
    "d": "down",
}
_MOVES = set(_DIRECTIONS.values()) | {"up", "down", "in", "out", "left", "right", "forward", "back"}
_ONE_WORD = {
    "inventory": "checking the inventory",
    "look": "looking around",
    "i": "checking the inventory",
    "l": "looking around",
}
_DOUBLED = {
    "put",
    "get",
    "set",
    "cut",
    "stop",
    "drop",
    "dig",
    "plug",
    "shut",
    "chop",
    "run",
    "swim",
    "sit",
    "hit",
    "grab",
    "tap",
    "pat",
    "rub",
    "wrap",
    "trim",
    "nod",
    "hug",
}


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
    for part in _PUNCTUATION.split(goal):  # "in blue, size m": blue and size m are two phrases
        run: list[str] = []
        before = ""
        for token in _tokens(part) + [""]:
            if token and (token in wanted and token not in STOP or token in STOP and token in present):
                if not run and before and before not in STOP and before in present:
                    run.append(before)  # the word that names it: "size" of size m
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
    """ "a price of $63, over the budget of 30" when the goal sets a ceiling and the outcome shows one price above
    it."""
    budget, prices = _BUDGET.search(goal), _PRICE.findall(observation)
    if budget and len(prices) == 1 and float(prices[0]) > float(budget.group(1)):
        return f"a price of ${prices[0]}, over the budget of {budget.group(1)}"
    return ""


_DETOURS = (
    "would not move the task forward",
    "would be a detour from the task",
    "would bring me no closer to the goal",
)
_INVALID = (
    "is not accepted here, so it would waste a step",
    "would be refused here, a wasted step",
    "is not a move that works here",
)
_UNCHANGED = ("would change nothing", "would leave everything as it is", "would get me nowhere")


def _missing(goal: str, wanted: set[str], offered: set[str], present: set[str]) -> list[str]:
    """The goal's phrases the chosen action brings that an alternative's outcome does not (a phrase counts as
    offered only whole: "size m" is missing from a page that has sizes but not m)."""
    return [p for p in goal_phrases(goal, wanted, present) if not set(p.split()) - STOP <= offered]


def _plain_outcome(alt: dict, state: dict, expert: dict, i: int, said: str | None = None) -> str | None:
    """The sentence for an alternative whose outcome says it all in any world: it failed, was refused, changed
    nothing, ended the episode, or led where the chosen action leads; None otherwise."""
    said = said or _capital(describe_action(alt["action"]))
    if alt.get("error"):
        return f"{said} cannot be carried out from here."
    after = alt["next_observation"]
    if alt.get("valid") is False:
        return f"{said} {_INVALID[i % len(_INVALID)]}."
    if normalize_space(after) == normalize_space(state["observation"]):
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
    return None


def _alternative_sentence(alt: dict, state: dict, expert: dict, wanted: set[str], i: int) -> str:
    """Why one tried alternative falls short, from what it led to, in words (no page text, no command)."""
    plain = _plain_outcome(alt, state, expert, i)
    if plain is not None:
        return plain
    said = _capital(describe_action(alt["action"]))
    current, goal = state["observation"], state["goal"]
    expected = set(_tokens(expert["next_observation"]))
    after = alt["next_observation"]
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
        return (
            f"{said} should change just what is needed here{gives}."
            if wanted
            else f"{said} should set up the next step."
        )
    progress = f" (a reward of {reward:g})" if rewarded else ""
    if sum(len(p.split()) for p in wanted) >= 2 and all(
        phrase in normalize_space(expert["action"]).lower() for phrase in wanted
    ):
        return f"{said} should turn up matches for the task{progress}."  # a search for what the task names
    if wanted:
        return f"{said} should bring {_join(wanted)} into view, as the task asks{progress}."
    if normalize_space(expert["next_observation"]) == normalize_space(state["observation"]):
        return f"{said} should set up the next step{progress}."
    if rewarded:
        return f"{said} should bring progress{progress}."
    return f"{said} should move me toward the goal."


# --- paging through search results (the web worlds' `next >` / `< prev`) ----------------------------------------
_RESULTS = re.compile(r'^results for "(.*)" \(page (\d+) of (\d+)\)', re.IGNORECASE)
_LISTED = re.compile(r"^\[(.+)\] \$(\d+(?:\.\d+)?)\s*$")
_OPTION_LINE = re.compile(r"^([a-z][a-z ]*): ((?:\[[^\]]+\]\s*)+)$")
PAGING = {"next >": "next", "< prev": "prev"}


def _results(observation: str) -> tuple[str, int, int, list[tuple[str, str]]] | None:
    """A results page's query, page number, page count and listed (name, price) items; None for another page."""
    lines = observation.splitlines()
    head = _RESULTS.match(lines[0].strip()) if lines else None
    if not head:
        return None
    listed = [(m.group(1), m.group(2)) for m in map(_LISTED.match, (line.strip() for line in lines[1:])) if m]
    return head.group(1), int(head.group(2)), int(head.group(3)), listed


def _item_page(observation: str) -> tuple[str, dict[str, list[str]]] | None:
    """An item page's name (its first line) and options ({"color": ["blue", "pink"]}); None for another page."""
    lines = [line.strip() for line in observation.splitlines()]
    if len(lines) < 2 or not lines[1].startswith("price:"):
        return None
    options = {}
    for line in lines[2:]:
        m = _OPTION_LINE.match(line)
        if m:
            options[m.group(1)] = re.findall(r"\[([^\]]+)\]", m.group(2))
    return lines[0], options


def _wanted_options(goal: str, query: str, keys: set[str]) -> list[str]:
    """What the goal asks for past the item it names (the query searched for) and its budget: its options, as
    words ("pink") or as an option's name and value ("size m" where item pages have a size)."""
    budget = _BUDGET.search(goal)
    at = goal.lower().find(query.lower()) if query else -1
    tail = _tokens(goal[at + len(query) :] if at >= 0 else goal)
    drop = STOP | set(_tokens(query)) | ({budget.group(1)} if budget else set()) | {"am"}
    wanted, i = [], 0
    while i < len(tail):
        if tail[i] in keys and i + 1 < len(tail):
            wanted.append(f"{tail[i]} {tail[i + 1]}")
            i += 2
            continue
        if tail[i] not in drop:
            wanted.append(tail[i])
        i += 1
    return wanted


def _lacks(wanted: list[str], options: dict[str, list[str]]) -> list[str]:
    """The wanted options an item page does not offer ("size m" is offered only under size)."""
    values = {v.lower() for vals in options.values() for v in vals}
    missing = []
    for want in wanted:
        key, _, value = want.rpartition(" ")
        offered = value in {v.lower() for v in options.get(key, [])} if key else want in values
        if not offered:
            missing.append(want)
    return missing


def _paging_reflection(outcome: dict, shown: list[dict], direction: str) -> str | None:
    """Why turning the page of search results beats what this page offers, from what is shown: each listed item's
    price against the budget and its name against the query (on this page), and what each item an alternative
    opened offers. It says the item is not among these results only when every listed one is shown to fall short.
    None where the state is not a results page (the general sentences apply)."""
    state, expert = outcome["state"], outcome["expert"]
    goal, current = state["goal"], state["observation"]
    page = _results(current)
    if page is None:
        return None
    query, number, total, listed = page
    budget = _BUDGET.search(goal)
    limit = float(budget.group(1)) if budget else None
    query_words = [w for w in _tokens(query) if w not in STOP]
    opened = {}
    for alt in shown:
        item = _item_page(alt.get("next_observation") or "") if not alt.get("error") else None
        if item:
            opened[item[0]] = item[1]
    wanted = _wanted_options(goal, query, {key for options in opened.values() for key in options})

    def fault(name: str, price: str) -> str:
        """Why a listed item falls short, from this page or the page an alternative opened; "" if none is shown."""
        if limit is not None and float(price) > limit:
            return f"costs ${price}, over the budget of {budget.group(1)}"
        lacking = [w for w in query_words if w not in _tokens(name)]
        if lacking:
            return f"is not {_join(lacking)}"
        missing = _lacks(wanted, opened[name]) if name in opened else []
        return f"has no {_join(missing)}" if missing else ""

    faults = {name: fault(name, price) for name, price in listed}
    lines = []
    if direction == "next":
        if listed and all(faults.values()):
            lines.append(
                f"The item the task asks for is not among these results on page {number} of {total}, so "
                f"going on to the next page should show more of them."
            )
        else:
            lines.append(
                f"Going on to the next page should show more results for {query}, past page {number} of {total}."
            )
    else:
        lines.append(f"Going back a page should return to results I passed over for {query}.")
    named = set()
    for i, alt in enumerate(shown):
        said = _capital(describe_action(alt["action"]))
        target = _BRACKETED.match(normalize_space(alt["action"]))
        label = target.group(2).strip() if target and target.group(1).lower() == "click" else None
        if alt.get("error") or alt.get("valid") is False or label is None:
            lines.append(_alternative_sentence(alt, state, expert, set(), i))
        elif label in faults:
            named.add(label)
            why = faults[label]
            lines.append(
                f"{said} would open one that {why}." if why else _alternative_sentence(alt, state, expert, set(), i)
            )
        elif label == "back to search":
            lines.append(f"{said} would drop these results and start over.")
        elif label in PAGING:
            other = _results(alt.get("next_observation") or "")
            lines.append(
                f"{said} would only return to page {other[1]}."
                if other
                else _alternative_sentence(alt, state, expert, set(), i)
            )
        else:
            lines.append(_alternative_sentence(alt, state, expert, set(), i))
    rest = [f"{name} {faults[name]}" for name, _ in listed if name not in named and faults[name]]
    if rest:
        lines.append(f"Of the rest here, {_join(rest)}.")
    lines.append(f"{CLOSING} {expert['action']}.")
    return " ".join(lines)


# --- the worlds that are not web pages (worlds.py has their own sentences) ---------------------------------------
def _world_task(env: str, state: dict) -> str:
    """What the task asks, in words: the goal, and in the tools world the user's current request too."""
    request = worlds._request(state["observation"]) if env == "tools" else None
    return f"{state['goal']} {request[2]}" if request else state["goal"]


def _said(env: str, action: str) -> str:
    """An action in words, capitalized: τ²-bench's words to the user as asking or telling, never quoted."""
    told = worlds.tau2_describe(action) if env == "tau2" else None
    return _capital(told or describe_action(action))


def _world_expert(env: str, state: dict, expert: dict, wanted: list[str]) -> str:
    said = _said(env, expert["action"])
    reward = expert.get("reward")
    rewarded = isinstance(reward, (int, float)) and reward > 0
    if expert.get("done"):
        return f"{said} should finish the task." if rewarded else f"{said} should end the episode here."
    after = expert["next_observation"]
    special = None
    if env == "alfworld":
        special = worlds.alfworld_expert(said, expert["action"], state["goal"], after, wanted)
    elif env == "tools":
        special = worlds.tools_expert(said, expert["action"], state, expert)
    elif env == "tau2":
        special = worlds.tau2_expert(said, expert["action"], state, expert)
    if special:
        return special
    progress = f" (a reward of {reward:g})" if rewarded else ""
    if wanted:
        return f"{said} should bring {_join(wanted)} into view, as the task asks{progress}."
    if normalize_space(after) == normalize_space(state["observation"]):
        return f"{said} should set up the next step{progress}."
    if rewarded:
        return f"{said} should bring progress{progress}."
    return f"{said} should move me toward the goal."


def _world_alternative(env: str, alt: dict, state: dict, expert: dict, wanted: list[str], i: int) -> str:
    said = _said(env, alt["action"])
    plain = _plain_outcome(alt, state, expert, i, said)
    if plain is not None:
        return plain
    after = alt["next_observation"]
    special = None
    if env == "alfworld":
        special = worlds.alfworld_alternative(said, alt["action"], state["goal"], after, i)
    elif env == "textworld":
        special = worlds.textworld_alternative(said, alt["action"], state["goal"], after, i)
    elif env == "tools":
        special = worlds.tools_alternative(said, alt["action"], state, alt, i)
    elif env == "tau2":
        special = worlds.tau2_alternative(said, alt["action"], state, alt, i)
    if special:
        return special
    missing = [w for w in wanted if w not in set(_tokens(after))]
    if missing:
        return f"{said} would not bring {_join(missing)} into view."
    return worlds.detour(said, i)


def _world_reflection(outcome: dict, shown: list[dict], env: str) -> str:
    """The rationale in a world that is not a web page: its own words for its moves (worlds.py), and of the task's
    words only those the chosen action's outcome newly shows, one by one (version 2 joined them with the task's
    small words: "the apple in fridge", a place the task sentence names, not one anything showed)."""
    state, expert = outcome["state"], outcome["expert"]
    task = _world_task(env, state)
    # TextWorld's and ALFWorld's first observation carries the task's text: its words are not in view for that
    current = state["observation"].replace(state["goal"], " ")
    # (nor the action's own words: "open portal" does not bring "open" into view; its figures may: "up 1")
    new = (
        set(_tokens(expert["next_observation"]))
        - set(_tokens(current))
        - {w for w in _tokens(expert["action"]) if not w.isdigit()}
    )
    # ... and only things and figures: words the outcome names after an article ("a passkey", "a apple 1") or
    # numbers ("the dials read 1"), not the chatty words of TextWorld's task text ("hey", "there") that an outcome
    # happens to have too
    named = {
        w
        for pair in re.findall(r"\b(?:a|an|the|some)\s+([a-z-]+)(?:\s+([a-z-]+))?", expert["next_observation"].lower())
        for w in pair
    }
    wanted = []
    # τ²-bench's goal is the domain's tool list and policy: its words say nothing about what this state needs
    for token in _tokens(task) if env != "tau2" else []:
        if token in new & _goal_words(task) and (token in named or token.isdigit()) and token not in wanted:
            wanted.append(token)
    lines = [_world_expert(env, state, expert, wanted)]
    lines.extend(_world_alternative(env, alt, state, expert, wanted, i) for i, alt in enumerate(shown))
    lines.append(f"{CLOSING} {expert['action']}.")
    return " ".join(lines)


def grounded_reflection(outcome: dict, shown: list[dict]) -> str:
    """A deterministic rationale from the observed outcomes: what the chosen action should achieve, why each
    alternative shown falls short, and the closing `So my move is <action>.`. Anticipatory about the chosen action
    by construction, free of list labels and page text, so it passes the same filters as a model's. The web worlds
    (shop, miniwob) speak of pages; every other world in its own words (worlds.py)."""
    state, expert = outcome["state"], outcome["expert"]
    env = (outcome.get("env") or {}).get("name", "")
    if env not in WEB_ENVS:
        return _world_reflection(outcome, shown, env)
    action = _BRACKETED.match(normalize_space(expert["action"]))
    if action and action.group(1).lower() == "click" and action.group(2).strip().lower() in PAGING:
        paged = _paging_reflection(outcome, shown, PAGING[action.group(2).strip().lower()])
        if paged is not None:
            return paged
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
