"""branch: at every expert state of a trajectory, propose up to K alternative actions (DESIGN.md "branch").

Three ways to propose, as in the paper (Appendix B):

- `admissible`: K drawn uniformly, without replacement, from the state's admissible list (ALFWorld/ScienceWorld IWM);
- `policy`: K samples from the model at the given temperature, one seed each; a proposal that repeats another, equals
  the expert action or is not admissible is dropped and the gap is topped up from the admissible list (ALFWorld SR);
- `mixed`: half from the policy, the rest uniform admissible ones (WebShop).

Alternatives are deduplicated and never equal to the expert action after the environment's canonicalization.
No environment step is taken here; `rollout` executes them.

With `concurrency` N > 1 the policy's samples for up to N states are requested at once (a server batches them);
everything else (canonicalization, top-up, the records) is done in input order in the caller's thread, so the
records are those of a serial run.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterator

from eexp.envs.base import Env, env_class, make_idle_env
from eexp.envs.dream import META_KEY
from eexp.inflight import InOrder
from eexp.policies.base import Policy, derive_seed
from eexp.prompts import Serializer
from eexp.records import make_meta, trajectory_states
from eexp.runner import RecordError, Stage
from eexp.stages.rollout import INSTALL_HINT, EnvPool

PROPOSE_MODES = ("policy", "admissible", "mixed")


def parse_steps(spec: str | None) -> set[int] | None:
    """`0,2,5-7` -> {0, 2, 5, 6, 7}; None or "" -> None (every step). Raises ValueError with what is wrong."""
    if not spec:
        return None
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"expected step numbers and ranges like 0,2,5-7, got {part!r}") from None
        if a < 0 or b < a:
            raise ValueError(f"bad step range {part!r} (steps count from 0; a range is LOW-HIGH)")
        chosen.update(range(a, b + 1))
    return chosen


def spread(indices: list[int], n: int) -> list[int]:
    """At most n of `indices`, evenly spaced, first and last included (a long trajectory, sampled along its length)."""
    if n <= 0 or len(indices) <= n:
        return indices
    if n == 1:
        return indices[:1]
    return [indices[round(j * (len(indices) - 1) / (n - 1))] for j in range(n)]


class Brancher(Stage):
    """Turns a trajectory into its branch records. Call it with a trajectory; it yields one record per chosen step.

    `count(name, n)` receives the stage counts for --stats (`topped_up`, `short_of_k`, ...); `note(msg)` gets
    the one-time stderr notes.
    """

    def __init__(
        self,
        propose: str,
        k: int,
        *,
        policy: Policy | None = None,
        seed: int = 0,
        temperature: float = 1.0,
        serializer: Serializer | None = None,
        steps: set[int] | None = None,
        max_steps: int | None = None,
        count: Callable[[str, int], None] | None = None,
        note: Callable[[str], None] | None = None,
        env_factory: Callable[..., Env] = make_idle_env,
        policy_settings: dict | None = None,
        concurrency: int = 1,
    ):
        if propose not in PROPOSE_MODES:
            raise ValueError(f"propose must be one of {', '.join(PROPOSE_MODES)}, got {propose!r}")
        if propose != "admissible" and policy is None:
            raise ValueError(f"--propose {propose} needs a policy")
        self.propose, self.k, self.policy, self.seed = propose, k, policy, seed
        self.temperature = temperature
        self.serializer = serializer or Serializer()
        self.steps, self.max_steps = steps, max_steps
        self.count = count or (lambda name, n=1: None)
        self.note = note or (lambda msg: None)
        self._pool = EnvPool(env_factory)
        self._noted: set[str] = set()
        self._calls = InOrder(concurrency, name="eexp-branch")  # the policy's samples, up to N states at once
        # What every record's meta says about how it was made (the time is added per record).
        self.meta_fields: dict[str, Any] = {
            "propose": propose,
            "k": k,
            "seed": seed,
            "serializer": self.serializer.to_dict(),
        }
        if policy is not None:
            self.meta_fields.update(policy.describe())
            self.meta_fields.update(temperature=temperature, **(policy_settings or {}))

    # --- the environment, for canonicalization only ---------------------------------------------------------------

    def env_for(self, env_record: dict) -> Env:
        """One instance per (name, kwargs), made on first need (rollout's EnvPool): branch only canonicalizes with
        it (and hands it to the oracle / random baselines as context); it never steps it, so it is made without
        what only episodes need (make_idle_env: no user simulator, no games)."""
        name = env_record["name"]
        try:
            return self._pool.get(env_record)
        except Exception as e:  # not installed, or cannot start: every record of it would fail alike
            try:
                env_class(name)
                installed = True
            except Exception:
                installed = False
            if installed:  # the package is there: what went wrong is the environment's to say, not an install's
                raise RecordError(
                    f"environment {name!r} cannot be made here ({type(e).__name__}: {e}); branch "
                    f"needs it to canonicalize actions"
                ) from None
            raise RecordError(
                f"environment {name!r} is not available here ({type(e).__name__}: {e}); branch needs "
                f"it to canonicalize actions. {INSTALL_HINT}"
            ) from None

    def close(self) -> None:
        self._calls.close()
        self._pool.close()

    def _note_once(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self.note(message)

    # --- records ------------------------------------------------------------------------------------------------

    def chosen_steps(self, n_steps: int) -> list[int]:
        indices = [i for i in range(n_steps) if self.steps is None or i in self.steps]
        return spread(indices, self.max_steps or 0)

    def __call__(self, trajectory: dict) -> Iterator[dict]:
        tid = trajectory["id"]
        steps = trajectory["steps"]
        if not steps:
            # A trajectory whose environment failed before its first step (expert writes one, with its `error`, when
            # a reset times out): no state to branch from, as imitation-data takes no example from it. Skipped and
            # counted, not a bad line: under `branch | rollout -o FILE` a stop here kept a part of the outcomes.
            self.count("no_steps", 1)
            self._note_once(
                "no_steps",
                f"{tid}: no steps to branch from ({trajectory.get('error') or 'empty'}): skipped (--stats: no_steps)",
            )
            return
        chosen = set(self.chosen_steps(len(steps)))
        env_record = {
            "name": trajectory["env"]["name"],
            "version": trajectory["env"]["version"],
            "kwargs": trajectory["env"].get("kwargs") or {},
        }
        # a trajectory dreamed by a world model (eexp.envs.dream): its branch records say so, as it does
        meta = trajectory.get("meta") or {}
        dreamed = {META_KEY: meta[META_KEY]} if META_KEY in meta else {}
        for step, state, expert in trajectory_states(trajectory):
            if step not in chosen:
                continue
            record_id = f"{tid}#{step}"
            record = {
                "id": record_id,
                "source_id": tid,
                "trajectory_id": tid,
                "step": step,
                "env": env_record,
                "task": trajectory["task"],
                "prefix": [s["action"] for s in steps[:step]],
                "state": state,
                "expert": {"action": expert},
                "alternatives": [],
                "meta": make_meta(
                    "branch", env=env_record["name"], env_version=env_record["version"], **self.meta_fields, **dreamed
                ),
            }
            # What can fail for the record (an environment that is not there) fails here, at its own input line.
            env = (
                self.env_for(env_record)
                if self.k and (self.propose != "admissible" or state.get("admissible"))
                else None
            )
            self._calls.submit(self._proposals(record_id, state, env, trajectory["task"], step), tag=(record, env))
        yield from self._collect()

    def finish(self) -> Iterator[dict]:
        return self._collect(block=True)

    def _collect(self, block: bool = False) -> Iterator[dict]:
        for (record, env), replies in self._calls.ready(block):
            record["alternatives"] = self._choose(
                record["id"], record["state"], record["expert"]["action"], env, replies
            )
            yield record

    def _policy_share(self, admissible: list[str] | None) -> int:
        if self.propose == "admissible":
            return 0
        return math.ceil(self.k / 2) if self.propose == "mixed" and admissible else self.k

    def _proposals(self, record_id: str, state: dict, env: Env | None, task: dict, step: int) -> Callable[[], list]:
        """The slow part, as a call that may run in another thread: the policy's samples at this state, one per
        seed, issued together so a backend evaluates the prompt once (a server gets them side by side)."""
        n_policy = self._policy_share(state.get("admissible")) if self.k else 0
        if not n_policy:
            return list
        seeds = [derive_seed(self.seed, record_id, j) for j in range(n_policy)]
        messages = self.serializer.policy_messages(state)
        context = {"env": env, "task": task, "step": step}
        return lambda: self.policy.sample(
            messages, admissible=state.get("admissible"), seeds=seeds, temperature=self.temperature, context=context
        )

    def _choose(self, record_id: str, state: dict, expert: str, env: Env | None, replies: list) -> list[dict]:
        """The alternatives from the policy's replies, topped up from the admissible list."""
        admissible = state.get("admissible")
        if self.k == 0:
            return []
        if self.propose == "admissible" and not admissible:
            # Nothing to draw from: the record still exists (every step gets one), with no alternatives.
            self.count("no_admissible", 1)
            self._note_once(
                "no_admissible",
                "eexp: some states list no admissible actions, so --propose "
                "admissible gives them no alternatives (use --policy to propose with a model)",
            )
            return []
        canonical = env.canonicalize
        taken = {canonical(expert)}
        chosen: list[dict] = []

        def add(action: str, source: str, seed: int | None = None, thought: str | None = None) -> bool:
            key = canonical(action)
            if not key or key in taken:
                return False
            taken.add(key)
            # a thinking model's thought before the action (--act think, or a `Thought:` in a generated reply)
            chosen.append(
                {
                    "action": action,
                    "source": source,
                    **({"seed": seed} if seed else {}),
                    **({"thought": thought} if thought else {}),
                }
            )
            return True

        # 1. The policy's share (its samples, made by _proposals).
        n_policy = self._policy_share(admissible)
        if n_policy:
            seeds = [derive_seed(self.seed, record_id, j) for j in range(n_policy)]
            for seed, reply in zip(seeds, replies):
                if reply.thought_cut:  # --act think: the thought never reached `Action:` (--stats)
                    self.count("thoughts_cut", 1)
                if reply.action is None or (admissible is not None and reply.valid is False):
                    self.count("invalid_proposals", 1)
                elif not add(reply.action, "policy", reply.seed or seed, reply.thought):
                    self.count("repeated_proposals", 1)

        # 2. The rest uniformly from the admissible list, from a seed of this record alone.
        if admissible:
            pool, seen = [], set(taken)
            for a in admissible:
                key = canonical(a)
                if key not in seen:
                    seen.add(key)
                    pool.append(a)
            want = self.k - len(chosen)
            rng = random.Random(derive_seed(self.seed, f"{record_id}/admissible", 0))
            picked = rng.sample(pool, min(want, len(pool))) if want > 0 else []
            for a in picked:
                add(a, "admissible")
            planned = self.k - n_policy  # the admissible share by design (mixed, admissible)
            if len(picked) > planned:
                self.count("topped_up", len(picked) - planned)
        if len(chosen) < self.k:
            self.count("short_of_k", 1)
            self._note_once(
                "short_of_k",
                f"eexp: some states have fewer than K={self.k} distinct alternatives "
                "besides the expert action; all there were are taken (count: short_of_k in --stats)",
            )
        return chosen
