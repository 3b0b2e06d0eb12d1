"""eval: run a policy on the tasks of an environment split, one episode per task, and summarize the run; compare
runs (`eval --compare`).

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

The package, one module per part: the run's settings (`settings`), the tasks of a run (`tasks`), an episode's
record and the loop that plays it (`episode`), where an off-path episode hands over (`off_path`), where episodes
run: here, in threads or in worker processes, in task order, and what a resumed file already holds (`runner`), the
stage that writes them (`stage`), the summary of a run, its table and warnings (`summary`), and `eval --compare`:
runs side by side, read from their episode files, with their tests, table and plot (`compare`). This file imports
the summary alone, so `compare`, which reads episode files only, loads no environment, policy or worker.
"""

from __future__ import annotations

# re-exported for library callers (recipes/pooled.py imports them from eexp.stages.evaluate.summary)
from eexp.stages.evaluate.summary import success_at, summarize

__all__ = ["success_at", "summarize"]
