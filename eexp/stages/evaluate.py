"""eval: run a policy on the tasks of an environment split, one episode per task; summarize and compare runs.

An episode renders each state with the serializer the model was trained with (its recorded settings, overridable),
asks the policy for one action (greedy by default, as the paper evaluates) and steps the environment until it says
done or `max_steps` is reached. An unparseable action counts as invalid and is still sent to the environment, whose
own error observation the policy then sees; an exception inside the environment ends that episode with
stop_reason "error" and the run goes on.

Episodes run in this process, in worker processes (`jobs > 1`: one environment and one model per worker), or in
threads sharing one policy for an HTTP endpoint (the requests run concurrently; the environments are per thread).
Results come back in task order whatever the parallelism, and every random choice is seeded from
(base seed, episode id, step), so `-j 2` writes the same episodes as `-j 1`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from eexp.envs.base import Env, EnvError, make_env
from eexp.io import InputError
from eexp.policies import policy_kind
from eexp.policies.base import Policy, derive_seed
from eexp.prompts import Serializer, clip
from eexp.records import make_meta, short_hash
from eexp.stats import mcnemar_exact, paired_bootstrap, seed_spread, sign_flip_exact, wilson

UNPARSED_CHARS = 300  # how much of an unparseable reply is kept (sent to the env, and in meta)


@dataclass
class EvalSettings:
    """Everything a worker needs to rebuild the evaluator (picklable: sent to spawned processes)."""

    env_name: str
    policy_spec: str
    env_kwargs: dict = field(default_factory=dict)
    policy_args: dict = field(default_factory=dict)
    act: str | None = None
    max_tokens: int = 256
    top_p: float = 1.0
    serializer_overrides: dict = field(default_factory=dict)  # only the settings given on the command line
    max_steps: int | None = None                               # None: the environment's own default
    temperature: float = 0.0
    seed: int = 0


def resolve_serializer(model_settings: dict | None, overrides: dict) -> Serializer:
    """The model's recorded serializer settings, with the explicitly given ones on top (defaults for the rest)."""
    return Serializer.from_dict({**(model_settings or {}), **overrides})


class Evaluator:
    """One environment and one policy; runs one episode at a time."""

    def __init__(self, settings: EvalSettings, *, env: Env | None = None, policy: Policy | None = None):
        self.settings = settings
        self.env = env if env is not None else make_env(settings.env_name, **settings.env_kwargs)
        if policy is None:
            from eexp.policies import load_policy
            policy = load_policy(settings.policy_spec, settings.policy_args, act=settings.act,
                                 max_tokens=settings.max_tokens, top_p=settings.top_p)
        self.policy = policy
        self.serializer = resolve_serializer(policy.serializer_settings(), settings.serializer_overrides)
        self.max_steps = settings.max_steps or self.env.max_steps

    def describe(self) -> dict:
        """What the parent needs for ids and meta (it may never load the policy itself)."""
        return {"policy": self.policy.name or self.settings.policy_spec, "policy_info": self.policy.describe(),
                "serializer": self.serializer.to_dict(), "max_steps": self.max_steps,
                "env_version": self.env.version}

    def run(self, task: dict, episode_id: str) -> tuple[dict, dict | None]:
        """(episode record, trajectory record if the episode succeeded, else None)."""
        env, s = self.env, self.settings
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
        try:
            observation = env.reset(task)
            observations.append(observation)
            for step in range(self.max_steps):
                admissible = env.admissible()
                state = {"goal": task["goal"], "observation": observation,
                         "history": [{"observation": o, "action": a} for o, a in zip(observations, actions)]}
                if admissible is not None:
                    state["admissible"] = admissible
                seed = derive_seed(s.seed, episode_id, step)
                reply = self.policy.act(self.serializer.policy_messages(state), admissible=admissible, seed=seed,
                                        temperature=s.temperature,
                                        context={"env": env, "task": task, "step": step})
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
            success = bool(env.success())
            score = float(env.score())
            if success:
                stop_reason = "success"
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
        if unparsed:
            meta_fields["unparsed"] = unparsed
        if error:
            meta_fields["error"] = error
        episode = {"id": episode_id, "task": task, "policy": desc["policy"], "actions": actions,
                   "observations": observations, "success": success, "score": score, "steps": len(actions),
                   "invalid_actions": invalid, "stop_reason": stop_reason, "meta": make_meta("eval", **meta_fields)}
        if s.act == "think" or any(t is not None for t in thoughts):  # the thought before each action (None: none)
            episode["thoughts"] = thoughts
        trajectory = None
        if success:
            trajectory = episode_trajectory(episode, env.env_record(), admissibles)
        return episode, trajectory


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
    # --act think: the thought's length limit changes the episode (kept out of the other modes' ids, which stay
    # what they were)
    think = (settings.max_tokens,) if settings.act == "think" else ()
    return short_hash("episode", settings.env_name, settings.env_kwargs, task.get("split", ""), task["id"],
                      description["policy"], info.get("model_sha256", ""), settings.act, settings.temperature,
                      settings.seed, description["max_steps"], description["serializer"], *think)


# --- where episodes run ----------------------------------------------------------------------------------------

_worker: Evaluator | None = None
_worker_error: BaseException | None = None
_local = threading.local()


def _init_worker(settings: EvalSettings) -> None:
    global _worker, _worker_error
    # Ctrl-C is the parent's to handle: it stops the workers itself, without a traceback from each of them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent killed (kill -9, OOM): close the environment and the model and exit, instead of running on until
    # the next result finds the pipe broken (or, idle, waiting for work forever).
    from eexp.workers import die_with_parent
    die_with_parent(_close_worker)
    try:
        _worker = Evaluator(settings)
    except BaseException as e:  # noqa: BLE001 - kept and raised in the parent by the first call, with its message
        _worker_error = e


def _close_worker() -> None:
    if _worker is not None:
        _worker.env.close()
        _worker.policy.close()


def _worker_describe() -> dict:
    if _worker_error is not None:
        raise _worker_error
    return _worker.describe()


def _worker_run(item: tuple[dict, str]) -> tuple[dict, dict | None]:
    if _worker_error is not None:
        raise _worker_error
    return _worker.run(*item)


class Runner:
    """Runs episodes here (jobs=1), in threads around one endpoint policy, or in `jobs` spawned processes.

    Spawned, not forked: a forked copy of a process that holds llama.cpp or torch threads can deadlock. The
    processes are a multiprocessing.Pool, whose terminate() stops them at once on Ctrl-C (a ProcessPoolExecutor
    would let each worker finish the episodes already queued to it).
    """

    def __init__(self, settings: EvalSettings, jobs: int = 1, *, env: Env | None = None,
                 policy: Policy | None = None):
        self.settings, self.jobs = settings, jobs
        self.processes = None
        self.threads: ThreadPoolExecutor | None = None
        self.local: Evaluator | None = None
        self.thread_envs: list[Env] = []
        if jobs > 1 and policy is None and policy_kind(settings.policy_spec) != "endpoint":
            self.processes = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker,
                                                                        initargs=(settings,))
            try:
                self.description = self.processes.apply(_worker_describe)
            except BaseException:
                self.close(abort=True)
                raise
        else:
            self.local = Evaluator(settings, env=env, policy=policy)
            self.description = self.local.describe()
            if jobs > 1:
                # HTTP policies are thread-safe: one policy, concurrent requests, an environment per thread.
                self.threads = ThreadPoolExecutor(jobs)

    def _thread_run(self, item: tuple[dict, str]) -> tuple[dict, dict | None]:
        evaluator = getattr(_local, "evaluator", None)
        if evaluator is None:
            evaluator = _local.evaluator = Evaluator(self.settings, policy=self.local.policy)
            self.thread_envs.append(evaluator.env)
        return evaluator.run(*item)

    def map(self, items: Iterable[tuple[dict, str]]) -> Iterator[tuple[dict, dict | None]]:
        """Results in the order of `items`, each as soon as it and all before it are done."""
        if self.processes is not None:
            yield from self.processes.imap(_worker_run, items, chunksize=1)
        elif self.threads is not None:
            yield from self.threads.map(self._thread_run, items)
        else:
            for item in items:
                yield self.local.run(*item)

    def close(self, abort: bool = False) -> None:
        """Wait for the workers; after Ctrl-C or an error (`abort`), stop them at once (an episode cut short is
        simply run again by --resume)."""
        if self.processes is not None:
            if abort:
                self.processes.terminate()
            else:
                self.processes.close()
            self.processes.join()
            self.processes = None
        if self.threads is not None:
            self.threads.shutdown(wait=True, cancel_futures=True)
            self.threads = None
            for env in self.thread_envs:
                env.close()
        if self.local is not None:
            self.local.policy.close()
            self.local.env.close()

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
    if any("thoughts_cut" in (e.get("meta") or {}) for e in episodes):  # --act think
        summary["thoughts_cut"] = sum((e.get("meta") or {}).get("thoughts_cut", 0) for e in episodes)
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


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_summary(summary: dict) -> str:
    """The readable table printed on stderr."""
    lines = [f"eval {summary['env']} {summary['split']}  policy {summary['policy']}  n={summary['n']}",
             f"  success   {pct(summary['success_rate'])}  95% CI [{pct(summary['ci_low'])}, "
             f"{pct(summary['ci_high'])}]  ({summary['successes']}/{summary['n']})",
             f"  score     {summary['mean_score']:.3f} mean",
             f"  steps     {summary['mean_steps']:.1f} mean",
             f"  invalid   {pct(summary['invalid_rate'])} of actions",
             "  ended     " + ", ".join(f"{k} {v}" for k, v in sorted(summary["stop_reasons"].items()))]
    if "thoughts_cut" in summary:
        lines.append(f"  thoughts  {summary['thoughts_cut']} of {round(summary['mean_steps'] * summary['n'])} "
                     f"never reached `Action:` (cut; the action chosen after them)")
    if summary.get("by_category"):
        width = max(len(c) for c in summary["by_category"])
        lines.append("  by category:")
        for cat, c in summary["by_category"].items():
            lines.append(f"    {cat:<{width}}  {pct(c['success_rate'])}  [{pct(c['ci_low'])}, {pct(c['ci_high'])}]"
                         f"  ({c['successes']}/{c['n']})  score {c['mean_score']:.3f}")
    return "\n".join(lines)


# --- compare ---------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """The episodes of one file for one split."""

    label: str
    path: str
    split: str
    policy: str
    episodes: dict[str, dict]  # task id -> episode, in file order


def load_runs(files: list[tuple]) -> tuple[str, list[Run]]:
    """(environment name, runs) from episode files given as (path, [(record, line)]) or (path, [(record, line)],
    label). A label names the method a file belongs to (`eval --compare IL=a.jsonl,b.jsonl`: one run per seed);
    files without one are labelled by their name. Files of different environments are refused: their tasks and
    success tests are not comparable."""
    env_name, env_from = None, None
    runs: list[Run] = []
    unlabelled = [f[0] for f in files if len(f) < 3 or not f[2]]
    named = iter(_labels(unlabelled))
    labels = [f[2] if len(f) > 2 and f[2] else next(named) for f in files]
    explicit = {f[2] for f in files if len(f) > 2 and f[2]}
    seen: dict[str, set] = {}
    for f, label in zip(files, labels):
        path, records = f[0], f[1]
        if (len(f) < 3 or not f[2]) and label in explicit:
            raise InputError(f"the run name {label!r} is both a label given with {label}=FILES and this file's name: "
                             f"give this file a label of its own (NAME={path})", path)
        if path in seen.setdefault(label, set()) and path != "-":
            raise InputError(f"given twice for {label!r}: one file is one run (one seed)", path)
        seen[label].add(path)
        by_split: dict[str, Run] = {}
        for record, line in records:
            meta = record.get("meta") or {}
            env = meta.get("env")
            if not isinstance(env, str) or not env:
                raise InputError("meta.env missing: cannot tell which environment this episode is from", path, line)
            if env_name is None:
                env_name, env_from = env, path
            elif env != env_name:
                raise InputError(f"episodes of environment {env!r}, but {env_from} holds episodes of {env_name!r}: "
                                 f"--compare needs runs of one environment (compare each environment separately)",
                                 path, line)
            split = record["task"].get("split") or meta.get("split") or ""
            run = by_split.setdefault(split, Run(label, path, split, record["policy"], {}))
            task_id = record["task"]["id"]
            if task_id in run.episodes:
                raise InputError(f"task {task_id!r} ({split}) appears twice: --compare pairs one episode per task "
                                 f"and file (put repeated runs, e.g. seeds, in separate files: NAME=A.jsonl,"
                                 f"B.jsonl)", path, line)
            run.episodes[task_id] = record
        runs.extend(by_split.values())
    return env_name or "", runs


def _labels(paths: list[str]) -> list[str]:
    """Short names for the runs: the file name without .jsonl, the full path where two would clash."""
    short = [os.path.basename(p)[: -len(".jsonl")] if p.endswith(".jsonl") else os.path.basename(p) for p in paths]
    counts = Counter(short)
    return [s if counts[s] == 1 else p for s, p in zip(short, paths)]


def compare_runs(env: str, runs: list[Run], *, seed: int = 0, alpha: float = 0.05, resamples: int = 10000) -> dict:
    """Per split: every run with its interval, and every run after the first tested against the first over the
    tasks both ran (exact McNemar on success, seeded paired bootstrap on score).

    Runs that share a label are the seeds of one method (compare_seeded): then every method is one row with the
    spread of its seeds, tested against the first over tasks x seeds."""
    if len({(r.split, r.label) for r in runs}) < len(runs):
        return compare_seeded(env, runs, seed=seed, alpha=alpha, resamples=resamples)
    splits: dict[str, list[dict]] = {}
    firsts: dict[str, Run] = {}
    for run in runs:
        eps = list(run.episodes.values())
        successes = sum(1 for e in eps if e["success"])
        row = {"run": run.label, "file": run.path, "policy": run.policy, "split": run.split, "n": len(eps),
               "successes": successes, **rate_fields(successes, len(eps)),
               "mean_score": sum(e["score"] for e in eps) / len(eps)}
        first = firsts.setdefault(run.split, run)
        if first is not run:
            row["vs_first"] = paired_test(first, run, seed=seed, alpha=alpha, resamples=resamples)
        splits.setdefault(run.split, []).append(row)
    return {"env": env, "alpha": alpha, "resamples": resamples, "seed": seed, "splits": splits}


SEEDED_TEST = "sign-flip"  # eexp.stats.sign_flip_exact over tasks, successes summed over seeds


def compare_seeded(env: str, runs: list[Run], *, seed: int = 0, alpha: float = 0.05,
                   resamples: int = 10000) -> dict:
    """Per split, one row per method (label) pooling its seeds' runs: episodes and successes over all seeds, the
    per-seed success rates and scores with their mean, sd, min and max, and every method after the first tested
    against the first over the tasks every run of both holds: the exact sign-flip test on the per-task successes
    summed over seeds (eexp.stats.sign_flip_exact, which says why this test) and a seeded paired bootstrap over
    tasks of the per-task mean score."""
    groups: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        groups.setdefault(run.split, {}).setdefault(run.label, []).append(run)
    splits: dict[str, list[dict]] = {}
    for split, methods in groups.items():
        rows = []
        first = None
        for label, seeds in methods.items():
            eps = [e for r in seeds for e in r.episodes.values()]
            successes = sum(1 for e in eps if e["success"])
            per_seed = [seed_row(r) for r in seeds]
            rates = seed_spread([p["success_rate"] for p in per_seed])
            scores = seed_spread([p["mean_score"] for p in per_seed])
            policies = list(dict.fromkeys(r.policy for r in seeds))
            row = {"run": label, "files": [r.path for r in seeds], "policy": policies[0] if len(policies) == 1
                   else f"{len(policies)} models", "split": split, "seeds": len(seeds), "n": len(eps),
                   "successes": successes, "success_rate": successes / len(eps) if eps else 0.0,
                   "mean_score": sum(e["score"] for e in eps) / len(eps) if eps else 0.0,
                   "seed_success": {"mean": rates.mean, "sd": rates.sd, "min": rates.low, "max": rates.high},
                   "seed_score": {"mean": scores.mean, "sd": scores.sd, "min": scores.low, "max": scores.high},
                   "per_seed": per_seed}
            if len(seeds) == 1:  # one run: its Wilson interval, as in a comparison of single runs
                row.update(rate_fields(successes, len(eps)))
            if first is None:
                first = seeds
            else:
                row["vs_first"] = seeded_test(first, seeds, seed=seed, alpha=alpha, resamples=resamples)
            rows.append(row)
        splits[split] = rows
    return {"env": env, "alpha": alpha, "resamples": resamples, "seed": seed, "seeded": True,
            "success_test": SEEDED_TEST, "splits": splits}


def seed_row(run: Run) -> dict:
    """One seed's run inside a method's row: its file, model, eval seed, rate with its own Wilson interval."""
    eps = list(run.episodes.values())
    successes = sum(1 for e in eps if e["success"])
    meta = (eps[0].get("meta") or {}) if eps else {}
    return {"file": run.path, "policy": run.policy, "eval_seed": meta.get("seed"), "n": len(eps),
            "successes": successes, **rate_fields(successes, len(eps)),
            "mean_score": sum(e["score"] for e in eps) / len(eps) if eps else 0.0}


def seeded_test(first: list[Run], other: list[Run], *, seed: int, alpha: float, resamples: int) -> dict:
    runs = first + other
    common = [t for t in first[0].episodes if all(t in r.episodes for r in runs)]
    s_first, s_other = len(first), len(other)
    diffs, rate_diffs, scores_a, scores_b = [], [], [], []
    for t in common:
        k_first = sum(1 for r in first if r.episodes[t]["success"])
        k_other = sum(1 for r in other if r.episodes[t]["success"])
        diffs.append(s_first * k_other - s_other * k_first)
        rate_diffs.append(k_other / s_other - k_first / s_first)
        scores_a.append(sum(r.episodes[t]["score"] for r in first) / s_first)
        scores_b.append(sum(r.episodes[t]["score"] for r in other) / s_other)
    n = len(common)
    p = sign_flip_exact(diffs)
    boot = paired_bootstrap(scores_a, scores_b, resamples=resamples, seed=seed)
    return {"first": first[0].label, "paired_n": n, "seeds_first": s_first, "seeds_this": s_other,
            "tasks_better": sum(1 for d in diffs if d > 0), "tasks_worse": sum(1 for d in diffs if d < 0),
            "success_diff": sum(rate_diffs) / n if n else 0.0, "success_test": SEEDED_TEST, "success_p": p,
            "success_verdict": verdict(sum(diffs), p, alpha, n),
            "score_diff": boot.mean_diff, "score_ci_low": boot.ci_low, "score_ci_high": boot.ci_high,
            "bootstrap_p": boot.p_value, "score_verdict": verdict(boot.mean_diff, boot.p_value, alpha, n)}


def paired_test(first: Run, run: Run, *, seed: int, alpha: float, resamples: int) -> dict:
    common = [t for t in first.episodes if t in run.episodes]
    a = [first.episodes[t] for t in common]
    b = [run.episodes[t] for t in common]
    only_first = sum(1 for x, y in zip(a, b) if x["success"] and not y["success"])
    only_this = sum(1 for x, y in zip(a, b) if y["success"] and not x["success"])
    p = mcnemar_exact(only_first, only_this)
    n = len(common)
    boot = paired_bootstrap([x["score"] for x in a], [y["score"] for y in b], resamples=resamples, seed=seed)
    return {"first": first.label, "paired_n": n, "only_first": only_first, "only_this": only_this,
            "success_diff": (sum(y["success"] for y in b) - sum(x["success"] for x in a)) / n if n else 0.0,
            "mcnemar_p": p, "success_verdict": verdict(only_this - only_first, p, alpha, n),
            "score_diff": boot.mean_diff, "score_ci_low": boot.ci_low, "score_ci_high": boot.ci_high,
            "bootstrap_p": boot.p_value, "score_verdict": verdict(boot.mean_diff, boot.p_value, alpha, n)}


def verdict(diff: float, p: float, alpha: float, n: int) -> str:
    if n == 0:
        return "no common tasks"
    if p < alpha and diff > 0:
        return "better"
    if p < alpha and diff < 0:
        return "worse"
    return "no significant difference"


def format_comparison(result: dict) -> str:
    if result.get("seeded"):
        return format_seeded(result)
    out = []
    for split, rows in result["splits"].items():
        out.append(f"{result['env']} {split}: success with 95% Wilson intervals; each run against the first over "
                   f"the tasks both ran (exact McNemar on success, paired bootstrap on score, alpha "
                   f"{result['alpha']})")
        w_run = max(len("run"), *(len(r["run"]) for r in rows))
        w_pol = max(len("policy"), *(len(r["policy"]) for r in rows))
        out.append(f"  {'run':<{w_run}}  {'policy':<{w_pol}}  {'n':>5}  {'success':>7}  {'95% CI':<16}  "
                   f"{'score':>6}  vs first")
        for r in rows:
            ci = f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]"
            vs = "(reference)"
            t = r.get("vs_first")
            if t:
                vs = (f"{t['paired_n']} paired: success {100 * t['success_diff']:+.1f} pts "
                      f"(McNemar p={t['mcnemar_p']:.3g}, {t['success_verdict']}); "
                      f"score {t['score_diff']:+.3f} [{t['score_ci_low']:+.3f}, {t['score_ci_high']:+.3f}] "
                      f"(bootstrap p{p_text(t['bootstrap_p'], result['resamples'])}, {t['score_verdict']})")
            out.append(f"  {r['run']:<{w_run}}  {r['policy']:<{w_pol}}  {r['n']:>5}  {pct(r['success_rate']):>7}  "
                       f"{ci:<16}  {r['mean_score']:6.3f}  {vs}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def format_seeded(result: dict) -> str:
    """The table of a comparison with seeds: per method the pooled success, the seeds' min-max and sd."""
    out = []
    for split, rows in result["splits"].items():
        out.append(f"{result['env']} {split}: success pooled over seeds, with the seeds' range and sd (a single run: "
                   f"its 95% Wilson interval); each method against the first over tasks x seeds (exact sign-flip "
                   f"test on per-task successes summed over seeds, paired bootstrap over tasks on score, alpha "
                   f"{result['alpha']})")
        w_run = max(len("run"), *(len(r["run"]) for r in rows))
        w_pol = max(len("policy"), *(len(r["policy"]) for r in rows))
        out.append(f"  {'run':<{w_run}}  {'policy':<{w_pol}}  {'seeds':>5}  {'n':>5}  {'success':>7}  "
                   f"{'seeds min-max / 95% CI':<24}  {'sd':>5}  {'score':>6}  vs first")
        for r in rows:
            s = r["seed_success"]
            if r["seeds"] > 1:
                spread, sd = f"{pct(s['min'])} - {pct(s['max'])}", f"{100 * s['sd']:5.1f}"
            else:
                spread, sd = f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]", "    -"
            vs = "(reference)"
            t = r.get("vs_first")
            if t:
                vs = (f"{t['paired_n']} tasks x {t['seeds_first']}|{t['seeds_this']} seeds: success "
                      f"{100 * t['success_diff']:+.1f} pts ({t['tasks_better']} tasks better, {t['tasks_worse']} "
                      f"worse; sign-flip p={t['success_p']:.3g}, {t['success_verdict']}); "
                      f"score {t['score_diff']:+.3f} [{t['score_ci_low']:+.3f}, {t['score_ci_high']:+.3f}] "
                      f"(bootstrap p{p_text(t['bootstrap_p'], result['resamples'])}, {t['score_verdict']})")
            out.append(f"  {r['run']:<{w_run}}  {r['policy']:<{w_pol}}  {r['seeds']:>5}  {r['n']:>5}  "
                       f"{pct(r['success_rate']):>7}  {spread:<24}  {sd:>5}  {r['mean_score']:6.3f}  {vs}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def p_text(p: float, resamples: int) -> str:
    """`=0.031`, or `<0.0001` for a bootstrap p of 0 (no resample crossed zero: it is below 1 / resamples)."""
    return f"<{1 / resamples:g}" if p == 0 else f"={p:.3g}"


def plot_comparison(result: dict, path: str) -> None:
    """Success rate with its interval per run, grouped by split, as a PNG (matplotlib, Agg: no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(result["splits"])
    labels = list(dict.fromkeys(r["run"] for rows in result["splits"].values() for r in rows))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(splits) * max(1, len(labels)) ** 0.5 + 2.5), 4.0))
    seeded = bool(result.get("seeded"))
    dots_labelled = False
    for i, label in enumerate(labels):
        xs, ys, lo, hi, ns, dots = [], [], [], [], [], []
        for j, split in enumerate(splits):
            for r in result["splits"][split]:
                if r["run"] == label:
                    x = j - 0.4 + width * (i + 0.5)
                    xs.append(x)
                    ys.append(100 * r["success_rate"])
                    if seeded and r["seeds"] > 1:  # the seeds' range as the whisker, each seed a dot
                        s = r["seed_success"]
                        lo.append(100 * (r["success_rate"] - s["min"]))
                        hi.append(100 * (s["max"] - r["success_rate"]))
                        dots += [(x, 100 * p["success_rate"]) for p in r["per_seed"]]
                        ns.append(f"{r['seeds']} seeds")
                    else:
                        lo.append(100 * (r["success_rate"] - r["ci_low"]))
                        hi.append(100 * (r["ci_high"] - r["success_rate"]))
                        ns.append(f"n={r['n']}")
        policy = next(r["policy"] for rows in result["splits"].values() for r in rows if r["run"] == label)
        ax.bar(xs, ys, width * 0.9, yerr=[lo, hi], capsize=4, alpha=0.85,
               label=label if policy in (label, "") else f"{label} ({policy})")
        if dots:
            ax.scatter([d[0] for d in dots], [d[1] for d in dots], s=14, color="black", zorder=3,
                       label=None if dots_labelled else "one seed")
            dots_labelled = True
        for x, y, h, n in zip(xs, ys, hi, ns):
            ax.annotate(f"{y:.0f}%\n{n}", (x, min(y + h, 100)), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize="x-small")
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylim(0, 112)
    ax.set_ylabel("success rate (%), 95% Wilson interval" if not seeded else
                  "success rate (%), pooled over seeds\nwhisker: the seeds' min-max (one run: 95% Wilson)")
    ax.set_title(f"{result['env']}: success per run and split")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["EvalSettings", "Evaluator", "Runner", "episode_id", "episode_trajectory", "split_tasks", "summarize",
           "format_summary", "load_runs", "compare_runs", "format_comparison", "plot_comparison"]
