"""The claims check: the numbers and the places a reflection names, each looked for in what was observed.

A reflection is trained on as the policy's own thought, so what it asserts about the world must be what the record
shows: a number (a price, a page, a count, an id) must appear in the state (the task, the observations, the actions
taken or offered) or in an outcome (what the chosen action or a shown alternative led to), and a place where it
says something is ("the apple in the fridge", "the mug found here", "todo.txt in docs") must be one an observation
shows it at. The task sentence is no evidence of where a thing is: "put a cool apple in fridge" says where the apple
must go, and version 2 of the grounded writer turned it into "lose the apple in fridge found here" on ALFWorld.

What counts as a place is concrete per environment (`place_claims`): in ALFWorld a receptacle named with its
number ("cabinet 7") and "X in/on/at Y" for a receptacle Y, shown by its feedback ("On the countertop 1, you see a
apple 1", "In it, you see ...", "You pick up the X from the Y", "You move the X to the Y"); in the tools world "F
in D" for a folder D, shown by an `ls` listing made in D or the request's own "F in D" / "F from D"; in TextWorld
and ScienceWorld "X in/on Y", shown by one sentence of an observation naming both; in every world "the X found
here", shown by the current observation; in τ²-bench (no places) the numbers and ids. The task's text counts for
numbers ("over the budget of 30") but never places a thing. The `reflect` stage rejects a reflection with a claim
no observation shows (filter `unsupported_claim`), whoever wrote it; the words that say a plan or the task ("put
the apple in the fridge", "cooling it in fridge 1") are no claim."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from eexp.text import normalize_space

WEB_ENVS = frozenset({"shop", "miniwob", "webshop"})

# ALFRED's receptacle types as ALFWorld's text writes them ("countertop 1", "sinkbasin 2"), and a few spellings a
# model may use for them.
RECEPTACLES = frozenset(
    "armchair bathtub bathtubbasin bed cabinet cart coffeemachine coffeetable countertop desk diningtable drawer "
    "dresser fridge garbagecan handtowelholder laundryhamper microwave ottoman safe shelf sidetable sink sinkbasin "
    "sofa stoveburner toaster toilet toiletpaperhanger towelholder tvstand".split()
)
_RECEPTACLE_ALIASES = {
    "counter": "countertop",
    "table": "table",
    "stove": "stoveburner",
    "burner": "stoveburner",
    "basin": "sinkbasin",
    "bin": "garbagecan",
    "trash": "garbagecan",
    "refrigerator": "fridge",
    "cupboard": "cabinet",
    "oven": "microwave",
}

# Words before "in/on Y" that are no thing placed there: pronouns, quantifiers, verbs, adjectives of the task.
_NOT_A_THING = frozenset(
    "it its them they this that these those there here what which who something nothing anything everything one "
    "ones is are was were be been being am lies lie sits sit stays remains left kept found seen shown listed "
    "already still only also not no and or but so then than as to of for with from by at in on into onto inside "
    "a an the some any each every all both more less most least other another else i me my we us our you your "
    "he she his her him task goal cool cold hot heated cooled clean cleaned washed".split()
)
# Verbs that make "X in Y" a plan, the task or a described move, not a claim of where X is: "put the apple in the
# fridge", "cooling apple 1 in fridge 1", "looking for a mug on the shelves".
_INTENT = frozenset(
    "put puts putting place places placing placed move moves moving set sets setting bring brings bringing carry "
    "carrying drop dropping dropped return returning store storing leave leaving keep keeping heat heating cool "
    "cooling clean cleaning wash washing rinse rinsing slice slicing look looking search searching find finding "
    "check checking want wants need needs asks ask go going went into onto "
    "take taking took get getting grab grabbing pick picking toss tossing throw throwing insert inserting "
    "copy copying mv cp write writing create creating make making mkdir touch rename renaming delete deleting "
    "remove removing".split()
)
_NUMBER = re.compile(r"(?<![\w.])\$?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\w])")
_WORD = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_CLOSING = re.compile(r"\bso my move is\b.*$", re.IGNORECASE | re.DOTALL)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_ALF_NAME = re.compile(r"\b([a-z]+) (\d+)\b")
# ALFWorld's feedback sentences that place objects: "On the countertop 1, you see a apple 1, a bread 1.", "The
# fridge 1 is open. In it, you see a egg 1.", "You pick up the apple 1 from the countertop 1.", "You move the apple 1
# to the fridge 1." (also "put ... in/on").
_ALF_ON = re.compile(r"\b(?:on|in) the ([a-z]+ \d+), you see ([^.]*)")
_ALF_IN_IT = re.compile(r"\bthe ([a-z]+ \d+) is open\. in it, you see ([^.]*)")
_ALF_FROM = re.compile(r"\byou (?:pick up|take) the ([a-z]+ \d+) from the ([a-z]+ \d+)")
_ALF_TO = re.compile(r"\byou (?:move|put|place) the ([a-z]+ \d+) (?:to|in|on|into|onto) the ([a-z]+ \d+)")
_ALF_ITEMS = re.compile(r"\b(?:a|an|the) ([a-z]+ \d+)")
# A claim of place: THING (NUMBER)? (is|are|...)? in|on|inside|at (the)? PLACE (NUMBER)?
_RELATION = re.compile(
    r"\b([a-z][a-z0-9._-]*)(?: (\d+))?(?: (?:is|are|was|were|lies|lie|sits|sit|stays|remains|found|seen|shown|"
    r"kept|left|still|now|already))*\s+(in|on|inside|at)\s+(?:the |a |an )?([a-z][a-z0-9._-]*)(?: (\d+))?\b"
)
_HERE = re.compile(r"\b(?:found|shown|seen|listed) (?:here|on this page)\b")
_ARTICLE = frozenset({"the", "a", "an", "any", "these", "this", "those"})
_PLACING = ("in", "on", "inside", "at")


@dataclass(frozen=True)
class Claim:
    kind: str  # number | place
    text: str  # as the reflection says it
    what: str  # what it asserts, in words, for the filter's detail


def _norm_number(whole: str, fraction: str | None) -> str:
    value = whole.replace(",", "")
    if fraction and fraction.strip("0"):
        return f"{int(value)}.{fraction.rstrip('0')}"
    return str(int(value))


def numbers(text: str) -> set[str]:
    """The numbers of a text, normalized ("$1,200.50" -> 1200.5, "23.00" -> 23, "007" -> 7)."""
    return {_norm_number(m.group(1), m.group(2)) for m in _NUMBER.finditer(text.lower())}


def _prose(reflection: str) -> str:
    """The reflection less its closing `So my move is <action>.`: the chosen action is given, not claimed."""
    return _CLOSING.sub("", reflection)


@dataclass
class Evidence:
    """What a record shows: its texts (state and outcomes), the observations among them (which may place things),
    the current observation (what "here" is), the goal (which places nothing), and the environment's name."""

    env: str
    goal: str
    current: str
    observations: list[str]  # the state's (history, then the current one), then the outcomes'
    texts: list[str]
    in_state: int = 0  # how many of `observations` are the state's

    @classmethod
    def of(cls, outcome: dict, shown: list[dict]) -> "Evidence":
        state, expert = outcome["state"], outcome["expert"]
        history = state.get("history") or []
        observations = [step.get("observation") or "" for step in history] + [state.get("observation") or ""]
        observations.append(expert.get("next_observation") or "")
        observations += [alt.get("next_observation") or "" for alt in shown]
        actions = [step.get("action") or "" for step in history] + [expert.get("action") or ""]
        actions += [alt.get("action") or "" for alt in shown] + [str(a) for a in state.get("admissible") or []]
        errors = [alt.get("error") or "" for alt in shown]
        # the rewards the outcomes gave are observed too ("losing 100", "a reward of 5")
        rewards = [f"{abs(o['reward']):g}" for o in [expert, *shown] if isinstance(o.get("reward"), (int, float))]
        return cls(
            env=(outcome.get("env") or {}).get("name", ""),
            goal=state.get("goal") or "",
            current=state.get("observation") or "",
            observations=observations,
            texts=[state.get("goal") or "", *observations, *actions, *errors, *rewards],
            in_state=len(history) + 1,
        )

    # --- numbers ------------------------------------------------------------------------------------------------
    def number_set(self) -> set[str]:
        found: set[str] = set()
        for text in self.texts:
            found |= numbers(text)
        return found

    # --- places -------------------------------------------------------------------------------------------------
    def _observed_sentences(self) -> list[str]:
        """The observations' sentences, lowercased, less those that state the task (ALFWorld's "Your task is to:
        put a cool apple in fridge." is in its first observation; the tools world repeats its request)."""
        goal = normalize_space(self.goal.lower()).rstrip(".")
        out = []
        for obs in self.observations:
            for sentence in _SENTENCE.split(obs.lower()):
                flat = normalize_space(sentence)
                if not flat or "your task is" in flat or (goal and goal in flat) or flat.startswith("request "):
                    continue
                out.append(flat)
        return out

    def alfworld_facts(self) -> set[tuple[str, str]]:
        """(thing, receptacle) pairs ALFWorld's feedback showed, both with their numbers ("apple 1", "fridge 1")."""
        facts = set()
        for obs in self.observations:
            text = normalize_space(obs.lower())
            if "your task is" in text:
                text = text.split("your task is", 1)[0]
            for m in _ALF_ON.finditer(text):
                facts.update((item, m.group(1)) for item in _ALF_ITEMS.findall(" " + m.group(2)))
            for m in _ALF_IN_IT.finditer(text):
                facts.update((item, m.group(1)) for item in _ALF_ITEMS.findall(" " + m.group(2)))
            for m in _ALF_FROM.finditer(text):
                facts.add((m.group(1), m.group(2)))
            for m in _ALF_TO.finditer(text):
                facts.add((m.group(1), m.group(2)))
        return facts


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _same_kind(said: str, name: str) -> bool:
    """Whether a word a reflection says ("fridge", "counter", "apples") names the thing `name` is ("fridge 1")."""
    kind = name.split()[0]
    said = _singular(said)
    return (
        said == kind
        or _RECEPTACLE_ALIASES.get(said) == kind
        or (_RECEPTACLE_ALIASES.get(said) == "table" and kind.endswith("table"))
    )


def place_claims(reflection: str, env: str) -> list[tuple[Claim, tuple]]:
    """The places a reflection names, with what to look for: ("here", words) for a thing said to be on the current
    page or at the current spot, ("at", thing, number, place, number) for a thing said to be in or on a place, and
    ("name", place) for a named ALFWorld receptacle ("cabinet 7")."""
    prose = _prose(reflection).lower()
    out: list[tuple[Claim, tuple]] = []
    for m in _HERE.finditer(prose):
        # the thing said to be here: the words back to the nearest article ("lose the pink mug found here")
        before = _WORD.findall(prose[max(0, m.start() - 160) : m.start()])[-12:]
        cut = max((i for i, w in enumerate(before) if w in _ARTICLE), default=-1)
        phrase = before[cut + 1 :]
        if cut > 0 and before[cut - 1] in _PLACING:
            # "the apple in the fridge found here": the thing here is the apple; where it is, the relation says
            end = cut - 1
            cut = max((i for i, w in enumerate(before[:end]) if w in _ARTICLE), default=-1)
            phrase = before[cut + 1 : end]
        phrase = phrase[: next((i for i, w in enumerate(phrase) if w in _PLACING), len(phrase))]
        words = [w for w in phrase if w not in _NOT_A_THING]
        if words:
            said = " ".join(phrase)
            out.append((Claim("place", f"{said} {m.group(0)}", f"{said} here"), ("here", tuple(words))))
    for m in _RELATION.finditer(prose):
        thing, thing_no, prep, place, place_no = m.groups()
        if thing in _NOT_A_THING or place in _NOT_A_THING or thing.isdigit():
            continue
        before = _WORD.findall(prose[max(0, m.start() - 60) : m.start()])[-4:]
        # a verb of intent among the three words before ("put the apple in"), but not an adjective after an
        # article ("the cool apple in fridge")
        if thing in _INTENT or any(
            w in _INTENT and not (k and before[k - 1] in _ARTICLE) for k, w in enumerate(before) if k
        ):
            continue
        if thing.endswith("ing") or (before and before[-1].endswith("ing")):
            continue  # a move described ("focusing on stove", "taking the key in the box")
        if prep == "at" and env != "alfworld":
            continue  # "at a price", "at once": only ALFWorld's "at countertop 1" is a place
        if env == "alfworld" and not (_singular(place) in RECEPTACLES or place in _RECEPTACLE_ALIASES):
            continue  # "in the room", "in view", "in hand": no receptacle
        if env in WEB_ENVS:
            continue  # a web page's "in pink", "on sale": its places are its pages ("here")
        if env == "tools" and not _tools_place(place):
            continue
        if env not in ("alfworld", "tools", "textworld", "scienceworld"):
            continue
        out.append(
            (
                Claim(
                    "place",
                    m.group(0).strip(),
                    f"{thing}{' ' + thing_no if thing_no else ''} {prep} {place}{' ' + place_no if place_no else ''}",
                ),
                ("at", thing, thing_no, place, place_no),
            )
        )
    if env == "alfworld":
        for m in _ALF_NAME.finditer(prose):
            if m.group(1) in RECEPTACLES:
                out.append((Claim("place", m.group(0), m.group(0)), ("name", m.group(0))))
    return out


_TOOLS_FOLDER = re.compile(r"^[a-z][a-z0-9_-]*$")


def _tools_place(word: str) -> bool:
    return bool(_TOOLS_FOLDER.match(word)) and word not in ("folder", "file", "place", "order", "turn", "request")


def _tools_facts(evidence: Evidence) -> set[tuple[str, str]]:
    """(name, folder) pairs the tools world showed: every entry of an `ls` result (`current_directory_content`) with
    the folder it listed (the last `current_working_directory` a result gave before it, or the first observation's
    "you are in /workspace"), and the request's own "X in Y" / "X from Y" for a file X (where the user says it is;
    never its "into Y" or "to Y", where the user wants it). Each outcome starts from the state's folder."""
    facts: set[tuple[str, str]] = set()

    def read(observation: str, cwd: str) -> str:
        low = observation.lower()
        m = re.search(r"you are in /?([\w/.-]+?)\.?$", low, re.MULTILINE)
        if m:
            cwd = m.group(1).rstrip("/").rsplit("/", 1)[-1]
        for line in low.splitlines():
            if line.startswith("result:"):
                try:
                    result = json.loads(line[len("result:") :].strip())
                except ValueError:
                    continue
                if not isinstance(result, dict):
                    continue
                where = result.get("current_working_directory")
                if isinstance(where, str) and where.strip("/"):
                    cwd = where.rstrip("/").rsplit("/", 1)[-1]
                for name in result.get("current_directory_content") or []:
                    if isinstance(name, str):
                        facts.add((name.rstrip("/"), cwd))
            elif line.startswith("request"):
                facts.update((r.group(1), r.group(2)) for r in re.finditer(r"([\w-]+\.\w+) (?:in|from) ([\w-]+)", line))
        return cwd

    here = "workspace"
    for observation in evidence.observations[: evidence.in_state]:
        here = read(observation, here)
    for observation in evidence.observations[evidence.in_state :]:
        read(observation, here)
    return facts


def check(reflection: str, evidence: Evidence) -> list[Claim]:
    """The claims of a reflection that nothing in the record shows (empty: every claim is shown)."""
    prose = _prose(reflection)
    unsupported = []
    known = evidence.number_set()
    for m in _NUMBER.finditer(prose.lower()):
        value = _norm_number(m.group(1), m.group(2))
        if value not in known:
            unsupported.append(Claim("number", m.group(0), f"the number {m.group(0)}"))
    sentences = None
    facts = None
    # "here" is what the current observation shows, less the task's text that ALFWorld and TextWorld repeat in it
    here = evidence.current.lower()
    if evidence.goal.strip():
        here = here.replace(evidence.goal.lower().strip().rstrip("."), " ")
    here = re.sub(r"your task is to:?[^\n]*", " ", here)
    current = set(_WORD.findall(here))
    for claim, what in place_claims(reflection, evidence.env):
        if what[0] == "here":
            if not all(w in current or _singular(w) in current for w in what[1]):
                unsupported.append(claim)
            continue
        if what[0] == "name":
            if not any(what[1] in normalize_space(t.lower()) for t in evidence.texts):
                unsupported.append(claim)
            continue
        _, thing, thing_no, place, place_no = what
        if evidence.env == "alfworld":
            facts = evidence.alfworld_facts() if facts is None else facts
            ok = any(
                _same_kind(thing, f_thing)
                and (not thing_no or f_thing.endswith(" " + thing_no))
                and _same_kind(place, f_place)
                and (not place_no or f_place.endswith(" " + place_no))
                for f_thing, f_place in facts
            )
        elif evidence.env == "tools":
            facts = _tools_facts(evidence) if facts is None else facts
            ok = (thing, place) in facts
        else:
            sentences = evidence._observed_sentences() if sentences is None else sentences
            ok = any(_mentions(s, thing) and _mentions(s, place) for s in sentences)
        if not ok:
            unsupported.append(claim)
    return unsupported


def _mentions(sentence: str, word: str) -> bool:
    words = set(_WORD.findall(sentence))
    return word in words or _singular(word) in {_singular(w) for w in words}


def unsupported_claims(reflection: str, outcome: dict, shown: list[dict]) -> list[Claim]:
    """`check` against the record's own evidence: its state, the chosen action's outcome and the shown
    alternatives'."""
    return check(reflection, Evidence.of(outcome, shown))
