"""The eval stage: `Evaluation` turns tasks into episode records in task order (writing a success's trajectory
first, and counting steps, invalid actions and errors), and `evaluate` runs it over a run's tasks, with --shard and
--resume, and returns the run's summary."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from eexp.envs.base import Env
from eexp.records import utc_now
from eexp.runner import Stage, StageIO, in_shard
from eexp.stages.evaluate.episode import episode_id
from eexp.stages.evaluate.runner import Runner, resume_episodes
from eexp.stages.evaluate.settings import EvalSettings
from eexp.stages.evaluate.summary import failed_requests, summarize, thought_warnings


class Evaluation(Stage):
    """The eval stage: called with a task it yields the episodes done so far, in task order (`finish()` the rest).

    The trajectory of a successful episode goes to `trajectories` (a writer) before the episode itself is written,
    so a resume keeps only trajectories whose episode was written. Every episode (those of `previous`, from a
    resumed file, included) is kept for the summary; env_steps, invalid_actions and errors are counted."""

    def __init__(
        self,
        runner: Runner,
        settings: EvalSettings,
        *,
        count: Callable[..., None],
        warn: Callable[[str], None],
        trajectories=None,
        previous: dict[str, dict] | None = None,
    ):
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


def evaluate(
    io: StageIO,
    settings: EvalSettings,
    tasks: list[dict],
    *,
    jobs: int = 1,
    concurrency: int | None = None,
    env: Env | None = None,
    trajectories_path: str | None = None,
    warn: Callable[[str], None] = lambda message: None,
    cluster=None,
) -> dict:
    """Run one episode per task (those of this --shard), write them to io's output (resuming it with --resume) and
    return the summary of every episode of the run, with the run's settings as its episodes record them.
    `concurrency`: episodes at once in this process (None: the policy's default)."""
    others = [t for t in tasks if not in_shard(t["id"], io.shard)]  # the other slices' tasks: none without --shard
    tasks = [t for t in tasks if in_shard(t["id"], io.shard)]
    io.count("failed_requests", 0)
    with Runner(settings, jobs, concurrency, env=env, cluster=cluster) as runner:
        description = runner.description
        ids = [episode_id(settings, t, description) for t in tasks]
        other_slices = {episode_id(settings, t, description) for t in others}
        previous = resume_episodes(io, ids, trajectories_path, other_slices)
        if previous:
            warn(f"resuming: {len(previous)} of {len(tasks)} episodes already in {io.output}")
        stage = Evaluation(
            runner,
            settings,
            count=io.count,
            warn=warn,
            previous=previous,
            trajectories=io.side_output(trajectories_path),
        )
        # several endpoints behind one policy (eexp.policies.fleet) in this process: the requests sent again after
        # an endpoint stopped answering, in --stats and the summary. A -j worker's policy says it on stderr as it
        # closes.
        fleet = runner.local.policy if runner.local and hasattr(runner.local.policy, "resent_requests") else None
        if fleet is not None:
            io.count_at_end(lambda: {"resent_requests": fleet.resent_requests})
        io.run_source(stage, tasks, key=stage.episode_id, output_kind="episode", unit="ep")
    ordered = [stage.episodes[i] for i in ids if i in stage.episodes]
    summary = summarize(
        ordered, env=settings.env_name, policy=ordered[0]["policy"] if ordered else description["policy"]
    )
    # The run's settings, as its episodes record them (less what is per episode).
    first_meta = ordered[0]["meta"] if ordered else {}
    per_episode = ("seeds", "unparsed", "error", "thoughts_cut", "thoughts_stopped")
    summary["meta"] = {**{k: v for k, v in first_meta.items() if k not in per_episode}, "created_utc": utc_now()}
    if fleet is not None:
        summary["resent_requests"] = fleet.resent_requests
    for message in thought_warnings(summary):  # --act think: cut thoughts, a budget without a card
        warn(message)
    return summary
