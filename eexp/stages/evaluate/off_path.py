"""eval --start off-path: where an episode hands over to the policy, after the expert's first steps and one action
that leaves the expert's path (a recovery test)."""

from __future__ import annotations

import random

from eexp.envs.base import Env
from eexp.errors import UsageProblem


def off_path_start(env: Env, task: dict, seed: int) -> dict:
    """Where an off-path episode hands over to the policy: after the expert's first k steps and one admissible
    action that is not the expert's next one. k is drawn from the seed; the injected action is the first, in a
    seeded order, that leaves the episode running (one that ends it leaves nothing to recover from); where no
    action at step k does, the next k in a seeded order of them is tried. `injected` is None where no state of the
    expert's path has such an action (the episode then starts at reset). Environments are reset and replayed to
    try each action, so none needs snapshots."""
    rng = random.Random(seed)
    expert = env.expert(task)
    ks = list(range(len(expert)))
    rng.shuffle(ks)
    for k in ks:
        env.replay(task, expert[:k])
        admissible = env.admissible()
        if admissible is None:
            raise UsageProblem(
                f"--start off-path draws the injected action from the admissible list, and the "
                f"{env.name} environment lists none at step {k} of task {task['id']}"
            )
        taken = env.canonicalize(expert[k])
        others = [a for a in admissible if env.canonicalize(a) != taken]
        rng.shuffle(others)
        for action in others:
            env.replay(task, expert[:k])
            _, _, done, info = env.step(action)
            if not done and (info or {}).get("valid", True) is not False:
                return {"mode": "off-path", "k": k, "prefix": expert[:k], "injected": action, "expert_next": expert[k]}
    return {"mode": "off-path", "k": None, "prefix": [], "injected": None, "expert_next": None}
