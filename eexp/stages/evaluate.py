"""eval: run a policy on the tasks of an environment split, one episode per task, and summarize the run
(`eval --compare` is eexp.compare).

An episode renders each state with the serializer the model was trained with (its recorded settings, overridable),
asks the policy for one action (greedy by default, as the paper evaluates) and steps the environment until it says
done or `max_steps` is reached. An unparseable action counts as invalid and is still sent to the environment, whose
own error observation the policy then sees; an exception inside the environment ends that episode with
stop_reason "error" and the run goes on.

Episodes run in this process, one at a time or `concurrency` at once (threads sharing the one policy, for a server
that batches its requests; an environment per thread), or in worker processes (`jobs > 1`: one environment and one
model per worker). Results come back in task order whatever the parallelism, and every random choice is seeded
from (base seed, episode id, step), so `-j 2` and `--concurrency 8` write the episodes `-j 1` writes (against a
deterministic policy: a batching server's own floating-point results can depend on what it batched together).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import orjson

from eexp.envs.base import Env, EnvError, make_env
from eexp.envs.screens import can_screenshot, save_step
from eexp.errors import EexpError, EmptyFile, MissingFile, UsageProblem
from eexp.inflight import InOrder
from eexp.io import InputError, Reader, Stage, StageIO, in_shard, read_records, write_atomic
from eexp.policies import policy_kind
from eexp.policies.base import Policy, PolicyError, derive_seed, failure_problem, resolve_concurrency, thought_budget
from eexp.prompts import Serializer, clip
from eexp.records import expect, make_meta, short_hash, utc_now
from eexp.stages.settings import setting, shared
from eexp.stats import wilson
from eexp.workers import WorkerPool, open_pool

UNPARSED_CHARS = 300  # how much of an unparseable reply is kept (sent to the env, and in meta)
# --act think: a run with more than this share of its thoughts cut at the thought budget warns (their actions were
# chosen after half a thought, so the run does not measure the model as it was trained to act)
MAX_CUT_SHARE = 0.05


@dataclass
class EvalSettings:
    """Everything a worker needs to rebuild the evaluator (picklable: sent to spawned processes). The defaults and
    help of eval's options are these fields' (eexp.cli.options.field_options)."""

    env_name: str
    policy_spec: str
    env_kwargs: dict = field(default_factory=dict)
    policy_args: dict = field(default_factory=dict)
    act: str | None = shared("act")
    max_tokens: int = shared("max_tokens")
    thought_tokens: int | None = setting(
        None, "With --act think: most tokens of a thought (the reply is begun with `Thought:`, so every step has one). "
        "Default: the model card's longest training thought plus a quarter (at least 16 tokens more), where the card "
        "records one (finetune on SR examples; over HTTP, where the server names a model file here); else "
        "--max-tokens. A run with more than 5% of its thoughts cut says so.", min=1, metavar="N")
    top_p: float = shared("top_p")
    serializer_overrides: dict = field(default_factory=dict)  # only the settings given on the command line
    max_steps: int | None = setting(None, "Most steps per episode (default: the environment's); with --start "
                                    "off-path, the policy's steps after the hand-over.", min=1)
    start: str = setting(
        "reset", "Where each episode starts. reset: the task's first state. off-path: a recovery test; the expert's "
        "first k steps are played (k drawn per task from the seed), then one admissible action that is not the "
        "expert's and does not end the episode, and then the policy takes over. k, the played actions and the "
        "injected one are in the record's `start`, so every policy evaluated with one seed meets the same states.",
        choices=("reset", "off-path"), metavar="MODE")
    critic: str | None = setting(
        None, "A critic (a local model trained on eexp critic-data) that reranks the policy's proposals at every step: "
        "the policy's own action and --critic-k - 1 samples at --critic-temperature; the critic chooses among the "
        "distinct valid ones the one most likely the expert's.", metavar="MODEL")
    critic_k: int = setting(4, "With --critic: actions proposed per step (the policy's own, then samples).", min=1,
                            metavar="K")
    critic_temperature: float = setting(1.0, "With --critic: temperature of the proposals after the first.", min=0.0,
                                        metavar="T")
    attempts: int = setting(1, "Attempts per task: a failed attempt is followed by another, up to N or the first "
                            "success (the summary gives success@1..N; an episode's success is success within N).",
                            min=1, metavar="N")
    memory: str = setting(
        "none", "Between attempts: none (each attempt starts afresh), or reflexion: the policy writes a short "
        "diagnosis of each failed attempt from its actions, observations and the failure alone; the ones that pass "
        "reflect's filters open every later attempt's prompt. No weights change.",
        choices=("none", "reflexion"), metavar="MODE")
    temperature: float = shared("temperature", 0.0)  # greedy, as the paper evaluates
    seed: int = shared("seed")
    # a picture of every state beside the text the model read (eexp.envs.screens); never part of an episode's id
    screenshots: str | None = None


def resolve_serializer(model_settings: dict | None, overrides: dict, where: str = "the model's") -> Serializer:
    """The model's recorded serializer settings, with the explicitly given ones on top (defaults for the rest).
    An unknown recorded setting is an error naming `where` (whose settings), not dropped."""
    return Serializer.from_dict({**(model_settings or {}), **overrides}, f"{where} serializer settings")


class Evaluator:
    """One environment and one policy; runs one episode at a time."""

    def __init__(self, settings: EvalSettings, *, env: Env | None = None, policy: Policy | None = None,
                 critic=None):
        self.settings = settings
        self.env = env if env is not None else make_env(settings.env_name, **settings.env_kwargs)
        if policy is None:
            from eexp.policies import load_policy
            policy = load_policy(settings.policy_spec, settings.policy_args, act=settings.act,
                                 max_tokens=settings.max_tokens, top_p=settings.top_p)
        self.policy = policy
        self.serializer = resolve_serializer(policy.serializer_settings(), settings.serializer_overrides,
                                             f"{policy.spec or policy.name}:")
        self.max_steps = settings.max_steps or self.env.max_steps
        # --act think: the thought budget ({tokens, from, trained?}), given to the policy
        self.thought = resolve_thought_tokens(settings, policy) if settings.act == "think" else None
        if self.thought:
            policy.thought_tokens = self.thought["tokens"]
        # a critic is a model in this process: threads share one and take turns with it (critic.lock)
        self.critic = critic
        if critic is None and settings.critic:
            from eexp.policies.critic import Critic
            self.critic = Critic(settings.critic)

    def describe(self) -> dict:
        """What the parent needs for ids and meta (it may never load the policy itself)."""
        return {"policy": self.policy.name or self.settings.policy_spec, "policy_info": self.policy.describe(),
                "serializer": self.serializer.to_dict(), "max_steps": self.max_steps,
                "env_version": self.env.version,
                **({"thought_tokens": self.thought} if self.thought else {}),
                **({"critic": {"spec": self.settings.critic, **self.critic.describe(), "k": self.settings.critic_k,
                               "temperature": self.settings.critic_temperature}} if self.critic else {})}

    def _reranked(self, messages, state, admissible, seed, context) -> tuple:
        """(reply, what the critic saw): the policy's own reply and critic_k - 1 samples; the critic chooses among
        the distinct valid actions (with one or none, the policy's own reply stands)."""
        s = self.settings
        own = self.policy.act(messages, admissible=admissible, seed=seed, temperature=s.temperature, context=context)
        samples = self.policy.sample(messages, admissible=admissible,
                                     seeds=[derive_seed(seed, "critic", j) for j in range(s.critic_k - 1)],
                                     temperature=s.critic_temperature, context=context) if s.critic_k > 1 else []
        by_action: dict[str, Any] = {}
        for reply in [own, *samples]:
            if reply.action is not None and reply.valid is not False and reply.action not in by_action:
                by_action[reply.action] = reply
        candidates = list(by_action)
        if len(candidates) < 2:
            return own, {"candidates": candidates, "scores": None, "chosen": 0 if candidates else None}
        with self.critic.lock:
            best, scores = self.critic.choose(state, candidates)
        return by_action[best], {"candidates": candidates, "scores": [round(x, 4) for x in scores],
                                 "chosen": candidates.index(best)}

    def run(self, task: dict, this_id: str) -> tuple[dict, dict | None]:
        """(episode record, trajectory record if the episode succeeded, else None). With `attempts` > 1 a failed
        attempt is followed by another, up to `attempts` or the first success; with memory "reflexion" the policy
        diagnoses each failed attempt and the kept diagnoses open every later attempt's prompt (eexp.stages.memory).
        The record is the last attempt's episode, with every attempt in meta.attempts; `success` is success within
        the attempts."""
        s = self.settings
        notes: list[str] = []
        attempts: list[dict] = []
        # attempt 1 is seeded as a single-attempt run's episode is, so success@1 is that run's success
        first_id = this_id if s.attempts == 1 else \
            episode_id(dataclasses.replace(s, attempts=1, memory="none"), task, self.describe())
        for attempt in range(s.attempts):
            episode, trajectory = self._attempt(task, this_id, first_id, attempt, notes)
            if s.attempts == 1:
                return episode, trajectory
            record = {"attempt": attempt, "success": episode["success"], "score": episode["score"],
                      "steps": episode["steps"], "invalid_actions": episode["invalid_actions"],
                      "stop_reason": episode["stop_reason"], "actions": episode["actions"], "memory": list(notes)}
            if "error" in episode["meta"]:   # counted and warned about by Evaluation, as a last attempt's is
                record["error"] = episode["meta"]["error"]
            failed = failed_requests(episode)
            if failed:                       # counted by summarize and the stage, every attempt's
                record["failed_requests"] = failed
            attempts.append(record)
            if episode["success"] or attempt == s.attempts - 1:
                break
            if s.memory == "reflexion" and episode["stop_reason"] != "error":
                from eexp.stages.memory import diagnose
                record["diagnosis"] = diagnose(self.policy, task["goal"], episode["actions"],
                                               episode["observations"],
                                               seed=derive_seed(s.seed, f"{this_id}\x1fdiagnosis", attempt),
                                               temperature=s.temperature)
                if record["diagnosis"]["kept"]:
                    notes.append(record["diagnosis"]["text"])
        episode["meta"].update(attempts=attempts, attempts_allowed=s.attempts, memory=s.memory)
        if trajectory is not None:   # a success at attempt k, made with the notes of the attempts before it
            trajectory["meta"].update(attempt=attempts[-1]["attempt"], attempts_allowed=s.attempts, memory=s.memory,
                                      memory_notes=attempts[-1]["memory"])
        return episode, trajectory

    def _attempt(self, task: dict, episode_id: str, first_id: str, attempt: int,
                 notes: list[str]) -> tuple[dict, dict | None]:
        """One episode; attempt 0 is the episode a single-attempt run plays (seeded from its id, first_id), later
        ones seed each step from the attempt too and carry the memory's notes in their prompts."""
        env, s = self.env, self.settings
        seed_key = first_id if attempt == 0 else f"{episode_id}\x1fattempt{attempt}"
        actions: list[str] = []
        observations: list[str] = []
        admissibles: list[list[str] | None] = []
        seeds: list[int] = []
        thoughts: list[str | None] = []
        thoughts_cut = 0
        unparsed: list[dict] = []
        invalid = 0
        stop_reason = "max_steps"
        error = None
        success, score = False, 0.0
        shots = s.screenshots if s.screenshots and can_screenshot(env) else None
        # the folder of this attempt's screenshots: the episode's, and for later attempts one of their own
        shots_id = episode_id if attempt == 0 else f"{episode_id}.attempt{attempt}"
        start = None
        lead = 0   # the steps played for the policy before it takes over (off-path starts)
        critic_steps: list[dict] = []
        try:
            observation = env.reset(task)
            if s.start == "off-path":
                start = off_path_start(env, task, derive_seed(s.seed, f"off-path\x1f{task['id']}", 0))
                if start["injected"] is not None:
                    # the states it went through are the policy's history, as if it had acted them
                    played = start["prefix"] + [start["injected"]]
                    observation = env.reset(task)
                    for action in played:
                        observations.append(observation)
                        actions.append(action)
                        thoughts.append(None)   # kept parallel to actions: no thought behind a played step
                        observation, _, _, _ = env.step(action)
                    lead = len(played)
            observations.append(observation)
            for step in range(self.max_steps):
                admissible = env.admissible()
                state = {"goal": task["goal"], "observation": observation,
                         "history": [{"observation": o, "action": a} for o, a in zip(observations, actions)]}
                if admissible is not None:
                    state["admissible"] = admissible
                seed = derive_seed(s.seed, seed_key, step)
                messages = self.serializer.policy_messages(state)
                if notes:
                    from eexp.stages.memory import with_memory
                    messages = with_memory(messages, notes)
                if shots:
                    save_step(env, shots, shots_id, step, observation, prompt=messages[-1]["content"])
                context = {"env": env, "task": task, "step": step}
                if self.critic is not None:
                    reply, judged = self._reranked(messages, state, admissible, seed, context)
                    critic_steps.append(judged)
                else:
                    reply = self.policy.act(messages, admissible=admissible, seed=seed, temperature=s.temperature,
                                            context=context)
                seeds.append(seed)
                thoughts.append(reply.thought)
                thoughts_cut += bool(reply.thought_cut)
                if reply.action is None:
                    # Unparseable: still sent, so the policy sees the environment's own error observation.
                    action = clip(reply.text or "", UNPARSED_CHARS)
                    unparsed.append({"step": step, "text": action, "finish_reason": reply.finish_reason})
                else:
                    action = reply.action
                observation, _reward, done, info = env.step(action)
                actions.append(action)
                observations.append(observation)
                admissibles.append(admissible)
                if reply.action is None or (info or {}).get("valid", reply.valid) is False:
                    invalid += 1
                if done:
                    stop_reason = "done"
                    break
            if shots:   # the state the last action led to, numbered after the policy's steps
                save_step(env, shots, shots_id, len(actions) - lead, observation)
            success = bool(env.success())
            score = float(env.score())
            if success:
                stop_reason = "success"
        except (PolicyError, UsageProblem):   # the policy cannot go on (its server is gone), or the environment
            raise                               # cannot start off the path: the run stops, not this episode
        except Exception as e:  # noqa: BLE001 - an environment failure ends this episode, never the run
            stop_reason, success, score = "error", False, 0.0
            error = f"{type(e).__name__}: {e}"

        desc = self.describe()
        meta_fields: dict[str, Any] = {
            **desc["policy_info"], "env": env.name, "env_version": env.version, "env_kwargs": dict(s.env_kwargs),
            "split": task.get("split", ""), "policy": desc["policy"], "policy_spec": s.policy_spec,
            "act": s.act, "temperature": s.temperature, "seed": s.seed, "seeds": seeds,
            "max_steps": self.max_steps, "max_tokens": s.max_tokens, "serializer": desc["serializer"],
        }
        if s.act == "think":  # steps whose thought never reached `Action:` (cut, the action chosen after it)
            meta_fields["thoughts_cut"] = thoughts_cut
            meta_fields["thought_tokens"] = desc["thought_tokens"]   # the budget, and where it came from
        if self.critic is not None:   # the critic, and at each step its candidates, their scores and its choice
            meta_fields["critic"] = desc["critic"]
            meta_fields["critic_steps"] = critic_steps
        if unparsed:
            meta_fields["unparsed"] = unparsed
        if error:
            meta_fields["error"] = error
        if start is not None:   # actions[:played] were played for the policy, not chosen by it
            meta_fields["start"] = {**start, "played": lead}
        episode = {"id": episode_id, "task": task, "policy": desc["policy"], "actions": actions,
                   "observations": observations, "success": success, "score": score,
                   "steps": len(actions) - lead, "invalid_actions": invalid, "stop_reason": stop_reason,
                   "meta": make_meta("eval", **meta_fields)}
        if s.act == "think" or any(t is not None for t in thoughts):  # the thought before each action (None: none)
            episode["thoughts"] = thoughts
        trajectory = None
        if success:
            trajectory = episode_trajectory(episode, env.env_record(), admissibles)
        return episode, trajectory


def resolve_thought_tokens(settings: EvalSettings, policy: Policy) -> dict:
    """--act think's thought budget: {tokens, from: option | card | max_tokens, trained: the card's longest
    training thought, where it records one}. --thought-tokens, else the card's longest thought plus the margin
    (eexp.policies.base.thought_budget), else --max-tokens."""
    trained = policy.trained_thought_tokens()
    known = {"trained": trained} if trained else {}
    if settings.thought_tokens:
        return {"tokens": settings.thought_tokens, "from": "option", **known}
    if trained:
        return {"tokens": thought_budget(trained), "from": "card", **known}
    return {"tokens": settings.max_tokens, "from": "max_tokens"}


def thought_steps(episode: dict) -> int:
    """The steps of an episode whose reply had a thought (a played off-path step has none)."""
    return sum(1 for t in episode.get("thoughts") or () if t)


def off_path_start(env: Env, task: dict, seed: int) -> dict:
    """Where an off-path episode hands over to the policy: after the expert's first k steps and one admissible
    action that is not the expert's next one. k is drawn from the seed; the injected action is the first, in a
    seeded order, that leaves the episode running (one that ends it leaves nothing to recover from); where no
    action at step k does, the next k in a seeded order of them is tried. `injected` is None where no state of the
    expert's path has such an action (the episode then starts at reset). Environments are reset and replayed to
    try each action, so none needs snapshots."""
    import random
    rng = random.Random(seed)
    expert = env.expert(task)
    ks = list(range(len(expert)))
    rng.shuffle(ks)
    for k in ks:
        env.replay(task, expert[:k])
        admissible = env.admissible()
        if admissible is None:
            raise UsageProblem(f"--start off-path draws the injected action from the admissible list, and the "
                               f"{env.name} environment lists none at step {k} of task {task['id']}")
        taken = env.canonicalize(expert[k])
        others = [a for a in admissible if env.canonicalize(a) != taken]
        rng.shuffle(others)
        for action in others:
            env.replay(task, expert[:k])
            _, _, done, info = env.step(action)
            if not done and (info or {}).get("valid", True) is not False:
                return {"mode": "off-path", "k": k, "prefix": expert[:k], "injected": action, "expert_next": expert[k]}
    return {"mode": "off-path", "k": None, "prefix": [], "injected": None, "expert_next": None}


def episode_trajectory(episode: dict, env_record: dict, admissibles: list[list[str] | None]) -> dict:
    """A successful episode as a DESIGN.md trajectory, so a strong policy's successes can serve as expert data."""
    steps = []
    for observation, action, admissible in zip(episode["observations"], episode["actions"], admissibles):
        step = {"observation": observation, "action": action}
        if admissible is not None:
            step["admissible"] = admissible
        steps.append(step)
    meta = episode["meta"]
    return {"id": episode["id"], "source_id": episode["id"], "env": env_record, "task": episode["task"],
            "steps": steps, "final_observation": episode["observations"][-1], "success": episode["success"],
            "score": episode["score"],
            "meta": make_meta("eval", source="policy", policy=episode["policy"], policy_spec=meta.get("policy_spec"),
                              model_sha256=meta.get("model_sha256", ""), temperature=meta.get("temperature"),
                              seed=meta.get("seed"), serializer=meta.get("serializer"),
                              invalid_actions=episode["invalid_actions"])}


def episode_id(settings: EvalSettings, task: dict, description: dict) -> str:
    """Deterministic from the environment, the task and the policy (and the settings that change an episode), so
    --resume can tell what is done and two runs of the same thing have the same ids."""
    info = description.get("policy_info") or {}
    # --act think: the reply begun with `Thought:` and the thought's budget change the episode (kept out of the other
    # modes' ids, which stay what they were)
    think = (settings.max_tokens, "prefill", description["thought_tokens"]["tokens"]) if settings.act == "think" \
        else ()
    # an off-path start is another episode (kept out of reset's ids, which stay what they were)
    start = (settings.start,) if settings.start != "reset" else ()
    attempts = (settings.attempts, settings.memory) if settings.attempts > 1 else ()
    critic = description.get("critic")
    critic = (critic["spec"], critic.get("model_sha256", ""), critic["k"], critic["temperature"]) if critic else ()
    return short_hash("episode", settings.env_name, settings.env_kwargs, task.get("split", ""), task["id"],
                      description["policy"], info.get("model_sha256", ""), settings.act, settings.temperature,
                      settings.seed, description["max_steps"], description["serializer"], *think, *start,
                      *attempts, *critic)


# --- where episodes run ----------------------------------------------------------------------------------------

_local = threading.local()


# -j N: an eexp.workers.Pool whose workers each keep an Evaluator (an environment and a model)

def _close_evaluator(evaluator: Evaluator) -> None:
    evaluator.env.close()
    evaluator.policy.close()
    if evaluator.critic is not None:
        evaluator.critic.close()


def _worker_describe(evaluator: Evaluator, _: Any) -> dict:
    return evaluator.describe()


def _worker_run(evaluator: Evaluator, item: tuple[dict, str]) -> tuple[dict, dict | None]:
    return evaluator.run(*item)


class Runner:
    """Runs episodes here: one at a time, or up to `concurrency` at once in threads around the one policy (which must
    serve overlapping calls: a server); or in `jobs` spawned worker processes, each with its own environment and
    model.

    The processes are an eexp.workers.Pool (spawned; Ctrl-C is the parent's; stopped at once on an abort).
    """

    def __init__(self, settings: EvalSettings, jobs: int = 1, concurrency: int | None = None, *,
                 env: Env | None = None, policy: Policy | None = None, critic=None, cluster=None):
        if jobs > 1 and concurrency is not None and concurrency > 1:
            raise UsageProblem(f"-j {jobs} runs worker processes and --concurrency {concurrency} keeps requests in "
                               f"flight in one process: give one of them (--concurrency for a server)")
        self.settings, self.jobs = settings, jobs
        self.processes: WorkerPool | None = None   # -j N, or a cluster's workers (--ray: eexp.workers_ray)
        self.calls: InOrder | None = None     # episodes in this process (threads when concurrency > 1)
        self.local: Evaluator | None = None
        self.thread_envs: list[Env] = []
        self._envs_lock = threading.Lock()
        if policy is None:
            self.processes = open_pool(jobs, Evaluator, (settings,), _close_evaluator, cluster)
        if self.processes is not None:
            try:
                self.processes.submit(_worker_describe, None)
                [self.description] = self.processes.ready(block=True)
            except BaseException:
                self.close(abort=True)
                raise
            self.concurrency = 1
        else:
            self.local = Evaluator(settings, env=env, policy=policy, critic=critic)
            self.description = self.local.describe()
            try:
                self.concurrency = resolve_concurrency(self.local.policy, concurrency)
            except BaseException:
                self.close(abort=True)
                raise
            self.calls = InOrder(self.concurrency, name="eexp-episode")

    def _run_here(self, item: tuple[dict, str]) -> tuple[dict, dict | None]:
        """One episode in this process: with threads, each thread keeps an evaluator (an environment) of its own
        around the shared policy."""
        if self.concurrency == 1:
            return self.local.run(*item)
        evaluator = getattr(_local, "evaluator", None)
        if evaluator is None or evaluator.policy is not self.local.policy:
            evaluator = _local.evaluator = Evaluator(self.settings, policy=self.local.policy,
                                                     critic=self.local.critic)
            with self._envs_lock:
                self.thread_envs.append(evaluator.env)
        return evaluator.run(*item)

    def submit(self, item: tuple[dict, str]) -> None:
        """Start an episode (with one at a time: run it now)."""
        if self.processes is not None:
            self.processes.submit(_worker_run, item)
        else:
            self.calls.submit(lambda: self._run_here(item))

    def ready(self, block: bool = False) -> Iterator[tuple[dict, dict | None]]:
        """The results of the episodes submitted, in the order submitted: those done, and (waiting for them) the
        oldest ones while `block` or while 2 x jobs are in flight, so memory stays bounded."""
        if self.calls is not None:
            for _, result in self.calls.ready(block):
                yield result
            return
        yield from self.processes.ready(block)

    def map(self, items: Iterable[tuple[dict, str]]) -> Iterator[tuple[dict, dict | None]]:
        """Results in the order of `items`, each as soon as it and all before it are done."""
        for item in items:
            self.submit(item)
            yield from self.ready()
        yield from self.ready(block=True)

    def close(self, abort: bool = False) -> None:
        """Wait for the workers; after Ctrl-C or an error (`abort`), stop them at once (an episode cut short is
        simply run again by --resume)."""
        if self.processes is not None:
            if abort:
                self.processes.terminate()
            else:
                self.processes.close()
            self.processes = None
        if self.calls is not None:
            self.calls.close()
            self.calls = None
            with self._envs_lock:
                envs, self.thread_envs = self.thread_envs, []
            for env in envs:
                env.close()
        if self.local is not None:
            self.local.policy.close()
            self.local.env.close()
            if self.local.critic is not None:
                self.local.critic.close()
            self.local = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(abort=exc_type is not None)


# --- tasks -----------------------------------------------------------------------------------------------------

def split_tasks(env: Env, split: str, n: int | None, warn: Callable[[str], None]) -> list[dict]:
    """The first n tasks of a split, in the split's fixed order (so the same -n means the same tasks)."""
    if split not in env.splits:
        raise EnvError(f"{env.name} has no split {split!r} (splits: {', '.join(env.splits)})")
    tasks = list(env.tasks(split))
    if not tasks:
        raise EnvError(f"{env.name} split {split!r} has no tasks")
    if n is not None and n > len(tasks):
        warn(f"{env.name} {split} has {len(tasks)} tasks, fewer than -n {n}: evaluating all {len(tasks)}")
    return tasks[:n] if n is not None else tasks


# --- summary ---------------------------------------------------------------------------------------------------

def rate_fields(successes: int, n: int) -> dict:
    low, high = wilson(successes, n)
    return {"success_rate": successes / n if n else 0.0, "ci_low": low, "ci_high": high}


def summarize(episodes: list[dict], *, env: str, policy: str, split: str | None = None) -> dict:
    """The DESIGN.md summary: success rate with its 95% Wilson interval, means, invalid rate, per category."""
    n = len(episodes)
    if split is None:
        split = "+".join(sorted({e["task"].get("split", "") for e in episodes})) or ""
    successes = sum(1 for e in episodes if e["success"])
    steps = sum(e["steps"] for e in episodes)
    summary = {"env": env, "split": split, "policy": policy, "n": n, "successes": successes,
               **rate_fields(successes, n),
               "mean_score": sum(e["score"] for e in episodes) / n if n else 0.0,
               "mean_steps": steps / n if n else 0.0,
               "invalid_rate": sum(e["invalid_actions"] for e in episodes) / steps if steps else 0.0,
               "stop_reasons": dict(Counter(e["stop_reason"] for e in episodes))}
    summary["failed_requests"] = sum(failed_requests(e) for e in episodes)
    summary["policy_steps"] = sum(policy_steps(e) for e in episodes)
    if any("attempts" in (e.get("meta") or {}) for e in episodes):   # --attempts N
        summary["success_at"] = success_at(episodes)
        diagnoses = [a["diagnosis"] for e in episodes for a in e["meta"].get("attempts", ()) if "diagnosis" in a]
        if diagnoses:
            summary["diagnoses"] = {"written": len(diagnoses), "kept": sum(d["kept"] for d in diagnoses),
                                    "rejected": dict(Counter(d["reason"] for d in diagnoses if not d["kept"]))}
    think = [e for e in episodes if "thoughts_cut" in (e.get("meta") or {})]   # --act think
    if think:
        think_steps = sum(e["steps"] for e in think)
        summary["thoughts_cut"] = sum(e["meta"]["thoughts_cut"] for e in think)
        summary["thought_steps"] = sum(thought_steps(e) for e in think)   # steps with a thought
        summary["thought_share"] = summary["thought_steps"] / think_steps if think_steps else 0.0
        summary["thoughts_cut_share"] = summary["thoughts_cut"] / think_steps if think_steps else 0.0
    groups: dict[str, list[dict]] = {}
    for e in episodes:
        if e["task"].get("category"):
            groups.setdefault(e["task"]["category"], []).append(e)
    if groups:
        summary["by_category"] = {
            cat: {"n": len(eps), "successes": sum(1 for e in eps if e["success"]),
                  **rate_fields(sum(1 for e in eps if e["success"]), len(eps)),
                  "mean_score": sum(e["score"] for e in eps) / len(eps)}
            for cat, eps in sorted(groups.items())}
    return summary


def success_at(episodes: list[dict]) -> list[dict]:
    """success@k for k = 1..the most attempts any episode was allowed: the share of tasks solved within k attempts
    (a task solved at attempt j counts for every k >= j), each with its 95% Wilson interval."""
    allowed = max(max(len(e["meta"].get("attempts") or ()), e["meta"].get("attempts_allowed", 0))
                  for e in episodes)
    out = []
    for k in range(1, allowed + 1):
        solved = sum(any(a["success"] for a in (e["meta"].get("attempts") or [])[:k]) for e in episodes)
        out.append({"k": k, "successes": solved, **rate_fields(solved, len(episodes))})
    return out


def failed_requests(episode: dict) -> int:
    """Steps whose policy call failed for good (a server that did not answer, after the retries): the reply is
    recorded as unparsed, with finish_reason "error: ...". A baseline makes no requests: its "error" replies (random
    with no admissible list to draw from) are the state's, not a failure to count."""
    meta = episode.get("meta") or {}
    if policy_kind(meta.get("policy_spec")) == "baseline":
        return 0
    if meta.get("attempts"):   # --attempts N: every attempt's (the record's own unparsed are its last attempt's)
        return sum(a.get("failed_requests", 0) for a in meta["attempts"])
    return sum(1 for u in meta.get("unparsed", ()) if str(u.get("finish_reason", "")).startswith("error"))


def policy_steps(episode: dict) -> int:
    """The steps the policy was asked for an action: every attempt's, with --attempts N."""
    return sum(a["steps"] for a in episode["meta"].get("attempts") or [episode])


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


THOUGHT_BUDGET_FROM = {"option": "--thought-tokens", "card": "the model card", "max_tokens": "--max-tokens"}


def thought_warnings(summary: dict) -> list[str]:
    """What a --act think run says on stderr about its thoughts: too many cut, or a budget taken from --max-tokens
    for want of a model card that records the longest training thought."""
    if "thoughts_cut" not in summary:
        return []
    budget = (summary.get("meta") or {}).get("thought_tokens") or {}
    out = []
    if budget.get("from") == "max_tokens":
        out.append(f"warning: --act think: the model card records no training thought (a model not trained on SR "
                   f"examples or trained before eexp recorded it, or a server whose model file is not on this "
                   f"machine), so a thought may take --max-tokens {budget.get('tokens')} tokens; --thought-tokens N "
                   f"sets it")
    if summary["thoughts_cut_share"] > MAX_CUT_SHARE:
        steps = round(summary["mean_steps"] * summary["n"])
        share = 100 * summary["thoughts_cut_share"]
        out.append(f"warning: {summary['thoughts_cut']} of {steps} thoughts ({share:.1f}%, more than "
                   f"{100 * MAX_CUT_SHARE:g}%) were cut at the thought budget of {budget.get('tokens')} tokens "
                   f"before they reached `Action:`, so their actions were chosen after an unfinished thought: give "
                   f"a larger --thought-tokens")
    return out


def format_summary(summary: dict) -> str:
    """The readable table printed on stderr."""
    lines = [f"eval {summary['env']} {summary['split']}  policy {summary['policy']}  n={summary['n']}",
             f"  success   {pct(summary['success_rate'])}  95% CI [{pct(summary['ci_low'])}, "
             f"{pct(summary['ci_high'])}]  ({summary['successes']}/{summary['n']})",
             f"  score     {summary['mean_score']:.3f} mean",
             f"  steps     {summary['mean_steps']:.1f} mean",
             f"  invalid   {pct(summary['invalid_rate'])} of actions",
             *([f"  failed    {summary['failed_requests']} policy requests (no answer after the retries; their "
                f"steps count as invalid)"] if summary.get("failed_requests") else []),
             "  ended     " + ", ".join(f"{k} {v}" for k, v in sorted(summary["stop_reasons"].items()))]
    for at in summary.get("success_at", ()):
        lines.append(f"  success@{at['k']} {pct(at['success_rate'])}  95% CI [{pct(at['ci_low'])}, "
                     f"{pct(at['ci_high'])}]  ({at['successes']}/{summary['n']})")
    if summary.get("diagnoses"):
        d = summary["diagnoses"]
        lines.append(f"  diagnoses {d['kept']} of {d['written']} kept" + (
            " (rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(d["rejected"].items())) + ")"
            if d["rejected"] else ""))
    if "thoughts_cut" in summary:
        budget = (summary.get("meta") or {}).get("thought_tokens") or {}
        within = f" within {budget['tokens']} tokens ({THOUGHT_BUDGET_FROM[budget['from']]})" if budget else ""
        lines.append(f"  thoughts  {pct(summary['thought_share'])} of steps had one "
                     f"({summary['thought_steps']}/{round(summary['mean_steps'] * summary['n'])}); "
                     f"{pct(summary['thoughts_cut_share']).strip()} cut ({summary['thoughts_cut']} never reached "
                     f"`Action:`{within}; the action chosen after them)")
    if summary.get("by_category"):
        width = max(len(c) for c in summary["by_category"])
        lines.append("  by category:")
        for cat, c in summary["by_category"].items():
            lines.append(f"    {cat:<{width}}  {pct(c['success_rate'])}  [{pct(c['ci_low'])}, {pct(c['ci_high'])}]"
                         f"  ({c['successes']}/{c['n']})  score {c['mean_score']:.3f}")
    return "\n".join(lines)


# --- a run: its tasks, its resume, the stage ---------------------------------------------------------------------

def tasks_from_trajectories(reader: Reader, env_name: str | None, split: str | None, n: int | None,
                            warn: Callable[[str], None]) -> tuple[str, dict, Env, list[dict]]:
    """(env name, env kwargs, env, tasks): the distinct tasks of the input trajectories, in input order, looked up
    in the environment (so categories and the environment's own task fields are those of the split)."""
    check = expect("trajectory")
    env = None
    env_kwargs: dict = {}
    env_from = None
    index: dict[str, dict[str, dict]] = {}
    tasks: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for item in reader:
        record = item.record
        problem = check(record)
        if problem:
            reader.reject(item.error(problem))
            continue
        name, kwargs = record["env"]["name"], record["env"].get("kwargs") or {}
        if env is None:
            if env_name and name != env_name:
                raise item.error(f"a trajectory of environment {name!r}, but --env is {env_name!r}")
            env_name, env_kwargs, env_from = name, kwargs, f"{item.path}:{item.line}"
            env = make_env(name, **kwargs)
        elif (name, kwargs) != (env_name, env_kwargs):
            reader.reject(item.error(f"environment {name!r} {kwargs or ''} differs from {env_name!r} "
                                     f"{env_kwargs or ''} of the first trajectory ({env_from}): evaluate one "
                                     f"environment at a time"))
            continue
        task_split, task_id = record["task"]["split"], record["task"]["id"]
        if split is not None and task_split != split:
            continue
        if (task_split, task_id) in seen:
            continue
        if task_split not in env.splits:
            reader.reject(item.error(f"{env_name} has no split {task_split!r} (splits: {', '.join(env.splits)})"))
            continue
        if task_split not in index:
            index[task_split] = {t["id"]: t for t in env.tasks(task_split)}
        if task_id not in index[task_split]:
            reader.reject(item.error(f"{env_name} has no task {task_id!r} in split {task_split!r}"))
            continue
        seen.add((task_split, task_id))
        tasks.append(index[task_split][task_id])
    if env is None or not tasks:
        raise InputError("no tasks to evaluate in the input trajectories" + (f" (split {split})" if split else ""))
    if n is not None and n > len(tasks):
        warn(f"the input holds {len(tasks)} tasks, fewer than -n {n}: evaluating all {len(tasks)}")
    return env_name, env_kwargs, env, tasks[:n] if n is not None else tasks


def find_tasks(reader: Reader | None, env_name: str | None, env_args: dict, split: str | None, n: int | None,
               warn: Callable[[str], None]) -> tuple[str, dict, Env, list[dict]]:
    """(env name, env kwargs, env, tasks) of a run: the first n tasks of `split` of the environment `env_name`
    when no trajectories are read (`reader` None), else the tasks of the trajectories (of `split`, when given)."""
    if reader is None:
        env = make_env(env_name, **env_args)
        return env_name, dict(env_args), env, split_tasks(env, split, n, warn)
    return tasks_from_trajectories(reader, env_name, split, n, warn)


def worker_policy_args(policy_spec: str, policy_args: dict, jobs: int) -> dict:
    """N llama.cpp or torch processes each using every core fight over them (torch's spinning threads made a step
    ~10x slower here): with -j N a local model gets its share of the cores, unless n_threads is given."""
    policy_args = dict(policy_args)
    if jobs > 1 and policy_kind(policy_spec) in ("gguf", "checkpoint") and "n_threads" not in policy_args:
        policy_args["n_threads"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return policy_args


def resume_episodes(io: StageIO, ids: list[str], trajectories_path: str | None) -> dict[str, dict]:
    """With --resume: the episodes already complete in -o FILE (id -> record), after making the file safe to append
    to; the trajectories file is cut back to the episodes kept. Without it: nothing (and a fresh trajectories file)."""
    if not io.resume:
        return {}
    done = io.done(lambda r: r.get("id"), kind="episode")
    foreign = done - set(ids)
    if foreign:
        raise EexpError(f"cannot resume {io.output}: it holds {len(foreign)} episode(s) of another evaluation (a "
                        f"different environment, split, policy or setting); write to a new file")
    previous = {}
    if done:
        for record in read_records([io.output]):
            if record.get("id") in done:
                previous[record["id"]] = record
    if trajectories_path:
        try:
            kept = [r for r in read_records([trajectories_path]) if r.get("id") in done]
        except (MissingFile, EmptyFile):   # not written yet, or no trajectory kept so far
            kept = []
        write_atomic(trajectories_path, b"".join(orjson.dumps(r) + b"\n" for r in kept))
    return previous


class Evaluation(Stage):
    """The eval stage: called with a task it yields the episodes done so far, in task order (`finish()` the rest).

    The trajectory of a successful episode goes to `trajectories` (a writer) before the episode itself is written,
    so a resume keeps only trajectories whose episode was written. Every episode (those of `previous`, from a
    resumed file, included) is kept for the summary; env_steps, invalid_actions and errors are counted."""

    def __init__(self, runner: Runner, settings: EvalSettings, *, count: Callable[..., None],
                 warn: Callable[[str], None], trajectories=None, previous: dict[str, dict] | None = None):
        self.runner, self.settings, self.count, self.warn = runner, settings, count, warn
        self.trajectories = trajectories
        self.episodes: dict[str, dict] = dict(previous or {})

    def episode_id(self, task: dict) -> str:
        return episode_id(self.settings, task, self.runner.description)

    def __call__(self, task: dict) -> Iterator[dict]:
        self.runner.submit((task, self.episode_id(task)))
        return self._collect(self.runner.ready())

    def finish(self) -> Iterator[dict]:
        return self._collect(self.runner.ready(block=True))

    def _collect(self, results: Iterable[tuple[dict, dict | None]]) -> Iterator[dict]:
        for episode, trajectory in results:
            if self.trajectories is not None and trajectory is not None:
                self.trajectories.write(trajectory)
            self.episodes[episode["id"]] = episode
            self.count("failed_requests", failed_requests(episode))
            # every attempt's steps and errors (--attempts N: the record is the last attempt's episode)
            tries = episode["meta"].get("attempts") or [{**episode, "error": episode["meta"].get("error")}]
            for attempt in tries:
                self.count("env_steps", attempt["steps"])
                self.count("invalid_actions", attempt["invalid_actions"])
                if attempt["stop_reason"] == "error":
                    self.count("errors")
                    which = f" (attempt {attempt['attempt'] + 1})" if "attempt" in attempt else ""
                    self.warn(f"task {episode['task']['id']}{which}: environment error: {attempt.get('error')}")
            yield episode


def evaluate(io: StageIO, settings: EvalSettings, tasks: list[dict], *, jobs: int = 1,
             concurrency: int | None = None, env: Env | None = None, trajectories_path: str | None = None,
             warn: Callable[[str], None] = lambda message: None, cluster=None) -> dict:
    """Run one episode per task (those of this --shard), write them to io's output (resuming it with --resume) and
    return the summary of every episode of the run, with the run's settings as its episodes record them.
    `concurrency`: episodes at once in this process (None: the policy's default)."""
    tasks = [t for t in tasks if in_shard(t["id"], io.shard)]
    io.count("failed_requests", 0)
    with Runner(settings, jobs, concurrency, env=env, cluster=cluster) as runner:
        description = runner.description
        ids = [episode_id(settings, t, description) for t in tasks]
        previous = resume_episodes(io, ids, trajectories_path)
        if previous:
            warn(f"resuming: {len(previous)} of {len(tasks)} episodes already in {io.output}")
        stage = Evaluation(runner, settings, count=io.count, warn=warn, previous=previous,
                           trajectories=io.side_output(trajectories_path))
        io.run_source(stage, tasks, key=stage.episode_id, output_kind="episode", unit="ep")
    ordered = [stage.episodes[i] for i in ids if i in stage.episodes]
    summary = summarize(ordered, env=settings.env_name,
                        policy=ordered[0]["policy"] if ordered else description["policy"])
    # The run's settings, as its episodes record them (less what is per episode).
    first_meta = ordered[0]["meta"] if ordered else {}
    per_episode = ("seeds", "unparsed", "error", "thoughts_cut")
    summary["meta"] = {**{k: v for k, v in first_meta.items() if k not in per_episode}, "created_utc": utc_now()}
    for message in thought_warnings(summary):   # --act think: cut thoughts, a budget without a card
        warn(message)
    return summary


def check_failed_requests(summary: dict, policy: str) -> None:
    """Exit 1 (after everything is written) when more than MAX_FAILED_SHARE of the run's policy calls failed."""
    problem = failure_problem(summary.get("failed_requests", 0), summary["policy_steps"], policy)
    if problem:
        raise PolicyError(problem)


def write_summary(path: str | None, summary: dict) -> None:
    if path:
        write_atomic(path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
