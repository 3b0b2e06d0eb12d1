"""Where eval's episodes run: `Runner` plays them in this process (one at a time, or `--concurrency N` in threads
around one policy) or in worker processes (`-j N`, or a cluster's with --ray), and hands their results back in the
order they were submitted; `worker_policy_args`, a local model's share of the cores; `resume_episodes`, what a
resumed output file already holds."""

from __future__ import annotations

import os
import threading
from typing import Any, Iterable, Iterator

import orjson

from eexp.envs.base import Env
from eexp.errors import EexpError, EmptyFile, MissingFile, UsageProblem
from eexp.inflight import InOrder
from eexp.io import read_records, write_atomic
from eexp.policies import policy_kind
from eexp.policies.base import Policy, resolve_concurrency
from eexp.runner import StageIO, resumed_with_another_shard
from eexp.stages.evaluate.episode import Evaluator
from eexp.stages.evaluate.settings import EvalSettings
from eexp.workers import WorkerPool, open_pool

# --concurrency N: each thread keeps its own Evaluator (an environment) around the shared policy
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

    def __init__(
        self,
        settings: EvalSettings,
        jobs: int = 1,
        concurrency: int | None = None,
        *,
        env: Env | None = None,
        policy: Policy | None = None,
        critic=None,
        cluster=None,
    ):
        if jobs > 1 and concurrency is not None and concurrency > 1:
            raise UsageProblem(
                f"-j {jobs} runs worker processes and --concurrency {concurrency} keeps requests in "
                f"flight in one process: give one of them (--concurrency for a server)"
            )
        self.settings, self.jobs = settings, jobs
        self.processes: WorkerPool | None = None  # -j N, or a cluster's workers (--ray: eexp.workers_ray)
        self.calls: InOrder | None = None  # episodes in this process (threads when concurrency > 1)
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
            evaluator = _local.evaluator = Evaluator(self.settings, policy=self.local.policy, critic=self.local.critic)
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
        oldest ones while `block` or while 2 x jobs (workers) or 2 x concurrency (threads) are in flight, so memory
        stays bounded."""
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


def check_worker_copies(spec: str | None, args: dict, jobs: int) -> None:
    """`eval -j N` loads the policy once in each of its N worker processes: with a transformers model on a GPU that
    is N copies on one device (an 8B model in bf16 is 16 GB each). Refused, with what to do instead; on a CPU each
    worker gets its share of the cores (worker_policy_args)."""
    if jobs <= 1 or policy_kind(spec) != "checkpoint":
        return
    device = str(args.get("device", "auto"))
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        raise UsageProblem(
            f"-j {jobs} with --policy {spec} would load {jobs} copies of the model onto {device} (one "
            "per worker process). Run -j 1 (one model, batched scoring), serve the model once "
            "(vllm serve, after `eexp merge` for an adapter) and evaluate it with --policy "
            "http://127.0.0.1:PORT/v1 -j N, or keep the workers on the CPU (--policy-arg device=cpu)"
        )


def worker_policy_args(policy_spec: str, policy_args: dict, jobs: int) -> dict:
    """N llama.cpp or torch processes each using every core fight over them (torch's spinning threads made a step
    ~10x slower here): with -j N a local model gets its share of the cores, unless n_threads is given."""
    policy_args = dict(policy_args)
    if jobs > 1 and policy_kind(policy_spec) in ("gguf", "checkpoint") and "n_threads" not in policy_args:
        policy_args["n_threads"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return policy_args


def resume_episodes(
    io: StageIO, ids: list[str], trajectories_path: str | None, other_slices: set[str] = frozenset()
) -> dict[str, dict]:
    """With --resume: the episodes already complete in -o FILE (id -> record; the file itself is cut back to them by
    its writer, at the run's first episode); the trajectories file is cut back to the episodes kept. Without it:
    nothing (and a fresh trajectories file).
    `other_slices`: the ids of this run's episodes in the other --shard slices (a file begun with another slice)."""
    if trajectories_path:
        io.check_side_path(trajectories_path)
    if not io.resume:
        return {}
    done = io.done(lambda r: r.get("id"), kind="episode", whole_records=True)
    foreign = done - set(ids)
    if foreign & other_slices:
        raise resumed_with_another_shard(io.output, min(foreign & other_slices), io.shard)
    if foreign:
        raise EexpError(
            f"cannot resume {io.output}: it holds {len(foreign)} episode(s) of another evaluation (a "
            f"different environment, split, policy or setting); write to a new file"
        )
    previous = {}
    if done:
        for record in io.resumed_records():
            if record.get("id") in done:
                previous[record["id"]] = record
    if trajectories_path:
        try:
            kept = [r for r in read_records([trajectories_path]) if r.get("id") in done]
        except (MissingFile, EmptyFile):  # not written yet, or no trajectory kept so far
            kept = []
        write_atomic(trajectories_path, b"".join(orjson.dumps(r) + b"\n" for r in kept))
    return previous
