"""The grounded writer's sentences for the worlds that are not web pages: ALFWorld's rooms and receptacles, TextWorld's
rooms and containers, the tools world's folders and requests, τ²-bench's conversations, and a plain fallback for the
rest (ScienceWorld, BFCL). The web worlds (shop, miniwob) keep grounded.py's page sentences.

Each sentence says only what the record shows, in the world's own words: no "page" outside the web, no place the
task sentence names as if a thing were there ("put a cool apple in fridge" says where the apple must go, not where
it is), and only numbers and names that the state or an outcome has (`claims` checks every one)."""

from __future__ import annotations

import json
import re

from eexp.stages.reflect.text import STOP
from eexp.text import normalize_space

_DETOURS = (
    "would not move the task forward",
    "would be a detour from the task",
    "would bring me no closer to the goal",
)
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_NAME = r"[a-z]+(?: [a-z]+)* \d+"  # an ALFWorld name: "apple 1", "countertop 2"


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def detour(said: str, i: int) -> str:
    return f"{said} {_DETOURS[i % len(_DETOURS)]}."


# --- ALFWorld -----------------------------------------------------------------------------------------------------

_ALF_ACTION = re.compile(
    rf"^(go to|open|close|take|move|put|heat|cool|clean|slice|use|examine|toggle)\s+({_NAME})"
    rf"(?:\s+(?:from|to|in|on|with|in/on)\s+({_NAME}))?$"
)
# What the task's adjectives ask of a thing, by the verb that does it.
_ALF_CHANGE = {
    "heat": ("hot", "heat", "heated", "warm"),
    "cool": ("cool", "cold", "cooled", "chilled"),
    "clean": ("clean", "cleaned", "washed", "rinsed"),
    "slice": ("sliced", "slice"),
}
_ALF_SEE = re.compile(r"\bon the [a-z]+ \d+, you see ([^.]*)|\bin it, you see ([^.]*)")


def _kind(name: str) -> str:
    """ "apple 1" -> "apple"; "desk lamp 2" -> "desk lamp"."""
    return name.rsplit(" ", 1)[0]


def _task(goal: str) -> set[str]:
    """The words of ALFWorld's task sentence ("put a cool apple in fridge.": put, cool, apple, fridge)."""
    return set(_tokens(goal)) - STOP


def _seen(observation: str) -> list[str] | None:
    """The things an ALFWorld observation shows on or in a receptacle ("a apple 1, and a knife 1" -> ["apple 1",
    "knife 1"]; "nothing" -> []); None where it shows none."""
    m = _ALF_SEE.search(normalize_space(observation.lower()))
    if not m:
        return None
    listed = m.group(1) if m.group(1) is not None else m.group(2)
    return re.findall(rf"\b(?:a|an) ({_NAME})", listed)


def _things(names: list[str]) -> str:
    return _join(names) if len(names) <= 3 else _join(names[:2] + ["more"])


def alfworld_expert(said: str, action: str, goal: str, after: str, wanted: list[str]) -> str | None:
    m = _ALF_ACTION.match(normalize_space(action.lower()))
    if not m:
        return None
    verb, first, second = m.group(1), m.group(2), m.group(3)
    task = _task(goal)
    if verb in ("go to", "open") and wanted:
        return f"{said} should bring {_join(wanted)} into view, as the task asks."
    if verb == "go to" and _kind(first) in task:
        return f"{said} should take me to the {_kind(first)} the task names."
    if verb == "open":
        return f"{said} should let me see what it holds."
    if verb == "take" and _kind(first) in task:
        return f"{said} should put the {_kind(first)} the task asks for in my hands."
    if verb in ("move", "put") and second and _kind(second) in task:
        return f"{said} should leave it where the task asks."
    if verb in _ALF_CHANGE and set(_ALF_CHANGE[verb]) & task:
        return f"{said} should make it {_ALF_CHANGE[verb][0]}, as the task asks."
    if verb in ("use", "toggle") and _kind(first) in task:
        return f"{said} should give the light the task asks for."
    return None


def alfworld_alternative(said: str, action: str, goal: str, after: str, i: int) -> str | None:
    text = normalize_space(action.lower())
    task = _task(goal)
    low = normalize_space(after.lower())
    if text == "look":
        return f"{said} would only describe where I stand."
    if text == "inventory":
        return f"{said} would only list what I carry."
    m = _ALF_ACTION.match(text)
    if not m:
        return None
    verb, first, second = m.group(1), m.group(2), m.group(3)
    if verb == "examine":
        return f"{said} would only describe it."
    if verb in ("go to", "open"):
        if verb == "go to" and f"the {first} is closed" in low:
            return f"{said} would only find it closed."
        seen = _seen(after)
        if seen is not None:
            wanted = [s for s in seen if _kind(s) in task]
            if not seen:
                return f"{said} would find nothing there." if verb == "go to" else f"{said} would show it empty."
            if not wanted:
                return f"{said} would find only {_things(seen)} there, nothing the task asks for."
        return None
    if verb == "close":
        return f"{said} would only shut it."
    if verb == "take" and _kind(first) not in task:
        return f"{said} would pick up something the task does not ask for."
    if verb in ("move", "put") and second and _kind(second) not in task:
        return f"{said} would put it down where the task does not ask."
    if verb in _ALF_CHANGE and not set(_ALF_CHANGE[verb]) & task:
        return f"{said} would change it in a way the task does not ask for."
    if verb in ("use", "toggle") and _kind(first) not in task:
        return f"{said} would do nothing for the task."
    return None


# --- TextWorld ----------------------------------------------------------------------------------------------------


def textworld_alternative(said: str, action: str, goal: str, after: str, i: int) -> str | None:
    low = normalize_space(after.lower())
    move = action.lower().strip()
    if move in ("inventory", "i"):
        return f"{said} would only list what I carry."
    if move in ("look", "l"):
        return f"{said} would only describe where I am."
    if move.startswith("examine"):
        return f"{said} would only describe it."
    if "can't go that way" in low or "cannot go that way" in low:
        return f"{said} leads nowhere from here."
    # the answer to this very move, not a room's description that mentions a locked door somewhere
    if not low.startswith("-=") and "locked" in low[:80] and not move.startswith(("unlock", "lock")):
        return f"{said} would find it locked."
    if low.startswith(("you don't", "you can't", "you do not", "that's not", "i only understood")):
        return f"{said} would not work here."
    return None


# --- the tools world ----------------------------------------------------------------------------------------------

_REQUEST = re.compile(r"^request (\d+) of (\d+): (.*)$", re.MULTILINE)
_TOOL_CALL = re.compile(r"^\s*([a-z_]+)\((.*)\)\s*$", re.DOTALL)
_READS = {"ls": "only list this folder", "pwd": "only say where I am"}
_READS_FILE = {"cat": "read", "wc": "count the lines of", "grep": "search"}
_CHANGES = {"rm": "remove", "mv": "move", "cp": "copy", "touch": "create", "write": "write to", "mkdir": "create"}


def _request(observation: str) -> tuple[str, str, str] | None:
    m = _REQUEST.search(observation)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _call(action: str) -> tuple[str, list[str]] | None:
    m = _TOOL_CALL.match(action)
    if not m:
        return None
    return m.group(1), re.findall(r"""['"]([^'"]*)['"]""", m.group(2))


def _cwd(observation: str) -> str | None:
    """The folder a tools result says one is in (cd's and pwd's result), its last part."""
    for line in observation.splitlines():
        if line.startswith("result:"):
            try:
                result = json.loads(line[len("result:") :])
            except ValueError:
                return None
            where = result.get("current_working_directory") if isinstance(result, dict) else None
            return where.rstrip("/").rsplit("/", 1)[-1] if isinstance(where, str) and where.strip("/") else None
    return None


def tools_expert(said: str, action: str, state: dict, expert: dict) -> str | None:
    request = _request(state["observation"])
    call = _call(action)
    if request is None or call is None:
        return None
    number, total, text = request
    reward = expert.get("reward")
    if isinstance(reward, (int, float)) and reward > 0 and not expert.get("done"):
        return f"{said} should complete request {number} of {total}."
    name, args = call
    if name == "cd" and args:
        if args[0] == "..":
            where = _cwd(expert.get("next_observation") or "")
            return f"{said} should take me back up to {where}." if where else f"{said} should take me up a folder."
        folder = args[0].rstrip("/").rsplit("/", 1)[-1]
        if folder in _tokens(text):
            return f"{said} should take me into {folder}, the folder the request names."
        return f"{said} should take me into {folder}."
    if name in _CHANGES and args and args[0] in text:
        return f"{said} should {_CHANGES[name]} {args[0]}, as the request asks."
    if name in _READS_FILE and args and args[0] in text:
        return f"{said} should {_READS_FILE[name]} {args[0]}, which the request asks about."
    return None


def tools_alternative(said: str, action: str, state: dict, alt: dict, i: int) -> str | None:
    request = _request(state["observation"])
    call = _call(action)
    if request is None or call is None:
        return None
    text = request[2]
    name, args = call
    if '"error"' in (alt.get("next_observation") or "") or alt.get("valid") is False:
        return f"{said} would fail here."
    if name in _READS:
        return f"{said} would {_READS[name]}, leaving the request undone."
    if name == "cd" and args and args[0] != "..":
        folder = args[0].rstrip("/").rsplit("/", 1)[-1]
        if folder not in _tokens(text):
            return f"{said} would go into {folder}, which the request does not name."
        return None
    if name == "cd":
        return f"{said} would go up a folder instead."
    if name in _READS_FILE and args and args[0] not in text:
        return f"{said} would {_READS_FILE[name]} {args[0]}, which the request does not ask about."
    if name in _CHANGES and args and not any(a in text for a in args):
        return f"{said} would {_CHANGES[name]} {args[0]}, which the request does not ask for."
    return None


# --- τ²-bench -----------------------------------------------------------------------------------------------------


def tau2_describe(action: str) -> str | None:
    """Words said to the user, as a move ("asking the user to confirm"); None for a tool call."""
    text = normalize_space(action)
    if _call(text) is not None or text.startswith("{"):
        return None
    if text.endswith("?"):
        return "asking the user to confirm" if "confirm" in text.lower() else "asking the user a question"
    return "telling the user what I found"


def _conversation(state: dict) -> str:
    return "\n".join(
        [*(step.get("observation") or "" for step in state.get("history") or []), state.get("observation") or ""]
    )


def tau2_expert(said: str, action: str, state: dict, expert: dict) -> str | None:
    call = _call(action)
    current = normalize_space((state.get("observation") or "").lower())
    if call is None:
        if said.startswith("Asking the user to confirm"):
            return f"{said} should get the yes the policy requires before the change."
        return f"{said} should answer the user from what the tools returned."
    name, args = call
    if name == "done":
        return None
    if name.startswith(("get_", "find_", "list_", "search_", "calculate")):
        named = [a for a in args if a and a in _conversation(state)]
        if named and name.startswith("get_"):
            return f"{said} should look up {named[0]}, which the conversation names."
        return f"{said} should look up what the user's request needs."
    if current.startswith("user:") and "yes" in current:
        return f"{said} should make the change the user just agreed to."
    return f"{said} should make the change the user asked for."


def tau2_alternative(said: str, action: str, state: dict, alt: dict, i: int) -> str | None:
    after = normalize_space(alt.get("next_observation") or "")
    call = _call(action)
    if call is None:
        return None
    name, _ = call
    if after.lower().startswith("tool: error"):
        return f"{said} would fail with an error."
    if name == "done":
        return f"{said} would end the conversation here."
    if after and normalize_space(after) in normalize_space(_conversation(state)):
        return f"{said} would only fetch what the conversation already shows."
    return None
