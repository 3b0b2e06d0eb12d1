"""A language-modelling corpus from an environment's public surface: the pages a random walk sees.

A pretrained language model has read web pages like the ones an agent meets, but it has never been given the
agent's tasks or shown the right actions. `eexp corpus` makes the same kind of text for a model trained from
scratch: random walks (uniform over the admissible actions) over the worlds of every split, and of each walk only
the observations, each distinct page once. No goal, no action and no reward is written, so the corpus teaches the
words and the page layouts of the whole catalogue, ood categories included, and nothing about which action is
right. The tasks an evaluation plays are held out: `eval -n N` plays the first N tasks of a split, and
`--holdout N` walks only the tasks after them in every split but train, so the test and ood worlds the models are
scored on are never walked.

Every method then starts from one base pretrained on this corpus (`init-model --pretrain`), the CPU analogue of
a shared pretrained LM: the comparison between methods stays fair because the prior is the same for each.
"""

from __future__ import annotations

import hashlib
import random
from typing import Iterator

from eexp.envs.base import Env
from eexp.errors import EnvError
from eexp.records import make_meta


def walk_tasks(env: Env, splits: list[str], walks: int, holdout: int, seed: int) -> Iterator[dict]:
    """`walks` tasks per split, drawn with replacement from the split (after the first `holdout` for every split
    but train), in a fixed order for a seed. Every split is checked before the first is walked: a split with no
    task to walk is said before any page is written."""
    pools = {}
    for split in splits:
        if split not in env.splits:
            raise EnvError(f"{env.name} has no split {split!r} (splits: {', '.join(env.splits)})")
        tasks = list(env.tasks(split))
        if split != "train":
            tasks = tasks[holdout:]
        if not tasks:
            raise EnvError(f"{env.name} split {split!r} has no tasks after the first {holdout} (--holdout)")
        pools[split] = tasks
    return _draw(env.name, pools, walks, seed)


def _draw(name: str, pools: dict[str, list[dict]], walks: int, seed: int) -> Iterator[dict]:
    for split, tasks in pools.items():
        rng = random.Random(f"eexp-corpus/{name}/{split}/{seed}")
        for _ in range(walks):
            yield rng.choice(tasks)


def random_walk(env: Env, task: dict, rng: random.Random, max_steps: int) -> Iterator[str]:
    """The observations of one walk: the first page, then one page per uniformly drawn admissible action."""
    yield env.reset(task)
    for _ in range(max_steps):
        actions = env.admissible()
        if not actions:  # the episode is over, or the action set is open (nothing to draw from)
            return
        observation, _, done, _ = env.step(rng.choice(actions))
        yield observation
        if done:
            return


def corpus_pages(env: Env, splits: list[str], walks: int, holdout: int, max_steps: int, seed: int) -> Iterator[dict]:
    """One record per distinct page, in the order the walks first see them (same arguments, same records)."""
    seen: set[str] = set()
    settings = {"splits": splits, "walks": walks, "holdout": holdout, "max_steps": max_steps, "seed": seed}
    if env.kwargs:  # the --env-arg values change the worlds walked: recorded, as expert records them, when given
        settings["env_kwargs"] = dict(env.kwargs)
    for number, task in enumerate(walk_tasks(env, splits, walks, holdout, seed)):
        rng = random.Random(f"eexp-corpus/{env.name}/walk/{seed}/{number}")
        for observation in random_walk(env, task, rng, max_steps):
            digest = hashlib.sha256(observation.encode("utf-8")).hexdigest()[:16]
            if digest in seen:
                continue
            seen.add(digest)
            yield {
                "id": f"page:{env.name}:{digest}",
                "env": env.name,
                "observation": observation,
                "meta": make_meta("corpus", env_version=str(env.version), split=task.get("split", ""), **settings),
            }
