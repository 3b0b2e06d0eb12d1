"""curate: choose N expert trajectories for coverage rather than at random (LIMI: a few chosen demonstrations can
beat many).

A trajectory is described by a set of features, read from the record alone (no environment):
- `category:<c>`: the task's category, where tasks have one (shop: t-shirt, sneakers, ...);
- `action:<a>`: an action, verbatim, where it recurs: taken in at least `min_share` of the pool's trajectories
  (shop: click[next >], click[buy now], a size or a colour; BFCL: a call that recurs whole);
- `verb:<v>`: every action's verb, the text before its first `[` or `(` (search, click; a BFCL function name), so a
  rare action still counts by its kind;
- `page:<p>`: the first line of each observation, with numbers as `#` and quoted text as `"…"`, where it recurs as
  actions must (shop: the search page, `results for "…" (page # of #)`);
- `steps:<n>`: the trajectory's length (shop: a search that needs the next results page is one step longer).

Greedy maximum coverage: each pick is the trajectory whose features not yet covered weigh most, a feature weighing
1 / (the number of pool trajectories that have it), so rare features count for more; ties go to the earlier in a
seeded shuffle of the pool. When every feature is covered, coverage starts over (the next picks cover a second time),
so N larger than the features need keeps spreading over them. `by="random"` is the baseline: a seeded uniform
sample of N, through the same code, so a recipe compares the two with one stage.

Every chosen record is the input trajectory with `meta.curation` added: how it was chosen (by, seed, n, rank, the
gain and up to 8 of the new features). `coverage()` says what share of the pool's features a choice covers.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

CURATE_BY = ("coverage", "random")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_QUOTED = re.compile(r'"[^"]*"')
_VERB = re.compile(r"^\s*([^\[(]*?)\s*[\[(]")


def verb(action: str) -> str:
    """`click[blue]` -> click, `cd(folder='x')` -> cd, `look around` -> look around."""
    found = _VERB.match(action)
    return (found.group(1) if found else action).strip().lower()


def page(observation: str) -> str:
    first = observation.strip().split("\n", 1)[0].strip().lower()
    return _QUOTED.sub('"…"', _NUMBER.sub("#", first))[:120]


def raw_features(trajectory: dict) -> set[str]:
    """Every candidate feature of a trajectory (the recurring filter is applied over the pool)."""
    feats = set()
    category = (trajectory.get("task") or {}).get("category")
    if category:
        feats.add(f"category:{category}")
    feats.add(f"steps:{len(trajectory.get('steps', []))}")
    for step in trajectory.get("steps", []):
        action = str(step.get("action", ""))
        feats.add(f"action:{action.strip().lower()}")
        feats.add(f"verb:{verb(action)}")
        feats.add(f"page:{page(str(step.get('observation', '')))}")
    return feats


def pool_features(trajectories: list[dict], min_share: float) -> tuple[list[set[str]], Counter]:
    """Each trajectory's features, with verbatim actions and pages kept only where they recur in at least
    `min_share` of the pool (category and verb features always count); and how many trajectories have each."""
    raw = [raw_features(t) for t in trajectories]
    df = Counter(f for feats in raw for f in feats)
    floor = max(2, math.ceil(min_share * len(trajectories)))
    keep = {f for f, n in df.items() if not f.startswith(("action:", "page:")) or n >= floor}
    feats = [fs & keep for fs in raw]
    return feats, Counter({f: df[f] for f in keep})


def choose(
    trajectories: list[dict], n: int, *, by: str = "coverage", seed: int = 0, min_share: float = 0.01
) -> list[tuple[int, float, list[str]]]:
    """[(index into trajectories, gain, new features)] of the n chosen, in pick order."""
    if by not in CURATE_BY:
        raise ValueError(f"by must be one of {', '.join(CURATE_BY)}, got {by!r}")
    order = list(range(len(trajectories)))
    random.Random(seed).shuffle(order)
    n = min(n, len(trajectories))
    if by == "random":
        return [(i, 0.0, []) for i in order[:n]]
    feats, df = pool_features(trajectories, min_share)
    weight = {f: 1.0 / k for f, k in df.items()}
    covered: set[str] = set()
    left = order[:]  # in shuffled order: max() keeps the first of equal gains
    picks = []
    while len(picks) < n:
        if all(not (feats[i] - covered) for i in left):
            covered = set()  # everything the rest has is covered: start a second round of coverage
        # summed in sorted order: a set's order changes with PYTHONHASHSEED, and a float sum with its order, which
        # would let equal gains differ in the last bit and skip the seeded tie-break
        gains = {i: math.fsum(weight[f] for f in sorted(feats[i] - covered)) for i in left}
        best = max(left, key=lambda i: gains[i])
        new = sorted(feats[best] - covered)
        covered |= feats[best]
        left.remove(best)
        picks.append((best, gains[best], new))
    return picks


def coverage(trajectories: list[dict], chosen: list[int], min_share: float = 0.01) -> float:
    """The share of the pool's features that the chosen trajectories have."""
    feats, df = pool_features(trajectories, min_share)
    have = set().union(*(feats[i] for i in chosen)) if chosen else set()
    return len(have) / len(df) if df else 1.0
