"""The grounded writer: a deterministic rationale assembled from the observed outcomes, no model (`--reflector
grounded`, and `--fallback grounded`). Not the paper's method, and its examples' meta says so."""

from __future__ import annotations

import difflib
import re

from eexp.text import normalize_space
from eexp.stages.reflect.text import content_words, snippet


def _reward_clause(reward) -> str:
    return f", earning {reward:g}" if isinstance(reward, (int, float)) and reward > 0 else ""


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
            return snippet(" ... ".join(added)), True, content_words(" ".join(removed))
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
    goal_words = content_words(goal)
    # A word the task asks for that a small edit took away ("selected: pink" became "selected: blue"); a larger
    # rewrite of the same spot says nothing so specific.
    dropped = [w for w in removed if w in goal_words and w not in content_words(alt["next_observation"])] \
        if len(removed) <= 2 else []
    if dropped:
        return f"{lead}, which drops {', '.join(dropped)}, what the task asks for."
    over = _over_budget(goal, alt["next_observation"])
    if over:
        return f"{lead}{over}."
    # Goal words the chosen action's outcome brings and this one does not: the concrete reason it falls short.
    outcome_words = set(content_words(seen if small else alt["next_observation"]))
    lacking = [w for w in wanted if w not in outcome_words]
    if lacking:
        return f"{lead}, with nothing about {', '.join(lacking)}, which the task asks for."
    return f"{lead}, {_DETOURS[i % len(_DETOURS)]}."


def grounded_reflection(outcome: dict, shown: list[dict]) -> str:
    """A deterministic rationale from the observed outcomes: what each alternative led to, and why the chosen
    action's expected outcome moves toward the goal. Anticipatory about the chosen action by construction (it is
    never described as already seen), and free of list labels, so it passes the same filters as a model's."""
    state, expert = outcome["state"], outcome["expert"]
    goal = normalize_space(state["goal"]).rstrip(".")
    current, expected = state["observation"], expert["next_observation"]
    seen, small, _ = change(current, expected)
    # The goal words the chosen action's outcome newly offers: in what it changes, or on the new page it opens.
    offered = set(content_words(seen)) if small else set(content_words(expected)) - set(content_words(current))
    wanted = [w for w in content_words(goal) if w in offered]
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
