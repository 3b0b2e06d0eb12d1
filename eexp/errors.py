"""The errors eexp reports to a person: each carries its exit code, and the `eexp` click group turns any of them into
`Error: message` and that code, once (eexp/cli/__init__.py), so commands need no try/except of their own.

    EexpError              exit 1: something the user can act on (a message, no traceback)
      InputError           bad input, with where it was found: `FILE:LINE: what is wrong` (eexp.io)
        PolicyError        a model that cannot be loaded or used (eexp.policies.base)
        WriteError         an output that cannot be written (eexp.io)
      EnvError             unknown environment, split or task, a missing package, a broken engine (eexp.envs.base)
      ModelError           a model, checkpoint, adapter or output path (eexp.models.init)
      TrainingError        finetune and rl: no data, out of memory, disk full (eexp.training)
      UsageProblem         exit 2: a combination of options click cannot check on its own

Internal signals that never reach a person as such (RecordError, which the stage runner turns into an InputError
at FILE:LINE or skips under --on-error skip; an environment's own errors) are not EexpErrors.
"""

from __future__ import annotations


class EexpError(Exception):
    exit_code = 1


class UsageProblem(EexpError):
    exit_code = 2


def entry_point_source(ep) -> str:
    """The installed package that registers an entry point (an environment or a policy backend), for errors."""
    dist = getattr(ep, "dist", None)
    return f"the package {dist.name}" if dist is not None and getattr(dist, "name", None) else \
        f"the package that registers {ep.value}"
