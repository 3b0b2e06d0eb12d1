"""The errors eexp reports to a person: each carries its exit code, and the `eexp` click group turns any of them into
`Error: message` and that code, once (eexp/cli/group.py), so commands need no try/except of their own.

Each class says what happened, so code that catches one catches that and nothing else:

    EexpError              exit 1: something the user can act on (a message, no traceback)
      InputError           bad input, with where it was found: `FILE:LINE: what is wrong` (read by eexp.io)
        MissingFile        an input file that does not exist: `FILE: no such file`
        EmptyFile          an input file with no records: `FILE: empty file (no records)`
      UsageProblem         exit 2: a combination of options click cannot check on its own (the one usage error)
      WriteError           an output that cannot be written (a full disk, a read-only folder): `FILE: cannot write
                           (reason)` (eexp.io)
      OutputBusy           an output file or folder another eexp run is writing: `FILE: another eexp run (pid N) is
                           writing this file; ...` (eexp.io.lock_output)
      PolicyError          a model or server that cannot be loaded or used: a missing or corrupt model, an endpoint
                           that is down (eexp.policies)
        EndpointDown       a policy server that stopped answering mid-run (eexp.policies.http, eexp.policies.fleet)
      EnvError             an environment that cannot be used: unknown name, split or task, a missing package, a
                           broken engine (eexp.envs)
        UserFailed         tau2's user simulator endpoint failed (eexp.envs.tau2_env)
      ModelError           a model, checkpoint, adapter or output path of init-model, import-model, export, merge
                           (eexp.models)
        ConverterMissing   llama-cpp-python without its converter (eexp.models.llama_converter says how to install it)
      TrainingError        finetune and rl: no data, out of memory, disk full (eexp.training, eexp.rl)
      CardError            a model card that cannot be read (eexp.card)
      SerializerError      serializer settings that cannot be used (eexp.prompts)
      HubError             a Hugging Face Hub id that cannot be used (eexp.files)

Every class a person can meet is defined here, and imported from here alone (tests/test_errors.py checks both), with
one family of exceptions: the errors of reaching a recorded state (eexp.envs.reach: ReachError, StepTimeout,
StateMismatch, and tau2's UserNotRecorded), EnvErrors that a stage records as a record's `error` and that build their
message from the observations they compare, next to the code that compares them.

Internal signals that never reach a person as such (RecordError, which the stage runner turns into an InputError
at FILE:LINE or skips under --on-error skip; an endpoint's EndpointError, which the policy turns into a PolicyError;
an environment's own errors) are not EexpErrors.
"""

from __future__ import annotations

# A run that lost more than this share of its work exits 1, after writing everything (its records say what failed):
# policy requests that failed after their retries (eexp.policies.base.failure_problem), and records whose environment
# failed (expert's trajectories, rollout's outcomes, eval's episodes: environment_failures). What is left of such a
# run must not pass for a result: a model that "scores" 0% because its server was down, a rollout whose every
# outcome is an error.
MAX_FAILED_SHARE = 0.05


class EexpError(Exception):
    exit_code = 1


class Terminated(BaseException):
    """SIGTERM to eexp (eexp.workers.sigterm_raises, which the CLI's main installs), raised in the main thread: the
    run stops as on Ctrl-C (every `except BaseException` on the way keeps the lines written whole, worker processes
    are stopped and their semaphores released; killed at once, the parent left Python's "leaked semaphore objects"
    warning behind, and a `-j 1` stage no --stats); the CLI says `eexp: terminated` and exits 143 (128 + SIGTERM).
    Not a KeyboardInterrupt, which click would turn into Abort, nor an EexpError: a signal, not a problem to report."""


class InputError(EexpError):
    """Bad input, with where it was found: str() is `FILE:LINE: what is wrong`."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message, self.path, self.line = message, path, line
        where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
        super().__init__(where + message)


class MissingFile(InputError):
    """An input file that does not exist: `FILE: no such file`."""

    def __init__(self, path: str):
        super().__init__("no such file", path)

    def __reduce__(self):  # from a worker process: made again from its path
        return type(self), (self.path,)


class EmptyFile(InputError):
    """An input file that holds no record: `FILE: empty file (no records)`."""

    def __init__(self, path: str):
        super().__init__("empty file (no records)", path)

    def __reduce__(self):
        return type(self), (self.path,)


class UsageProblem(EexpError):
    """A combination of options click cannot check on its own: exit 2, as click's own usage errors."""

    exit_code = 2


class WriteError(EexpError):
    """A file that cannot be written (a full disk, a read-only folder): `FILE: cannot write (reason)...`.
    Keeps the errno of the OSError behind it."""

    def __init__(self, err: OSError, path: str | None, note: str = ""):
        self.errno, self.strerror = err.errno, err.strerror or str(err)
        self.message, self.path, self.note = f"cannot write ({self.strerror}){note}", path, note
        super().__init__(f"{path}: {self.message}" if path else self.message)

    def __reduce__(self):  # from a worker process: made again from what it was made of
        return type(self), (OSError(self.errno, self.strerror), self.path, self.note)


class OutputBusy(EexpError):
    """An output file (or a finetune's output folder) that another eexp run holds locked, refused at start: two
    writers of one file would lose or duplicate records. `pid` is the holder's, where the system says it."""

    def __init__(self, path: str, pid: int | None = None, folder: bool = False):
        self.path, self.pid, self.folder = path, pid, folder
        who = f"another eexp run (pid {pid})" if pid else "another eexp run"
        what = "into this folder" if folder else "this file"
        super().__init__(f"{path}: {who} is writing {what}; wait for it to end, or give another -o")

    def __reduce__(self):
        return type(self), (self.path, self.pid, self.folder)


class PolicyError(EexpError):
    """A policy that cannot be loaded or used (missing or corrupt model, unknown spec, bad --policy-arg, a server
    that is down)."""


class EnvError(EexpError):
    """A problem the user can act on: unknown environment, split or task, missing package, ..."""


class UserFailed(EnvError):
    """The user simulator's endpoint failed."""


class EndpointDown(PolicyError):
    """The server stopped answering mid-run: the run stops (its finished records are written whole)."""


class ModelError(EexpError):
    """A user-facing problem with a model, checkpoint, adapter or output path (the CLI prints it, exit 1)."""


class ConverterMissing(ModelError):
    """llama-cpp-python is installed but its converter is not: `python -m eexp.models.llama_converter` installs it."""


class TrainingError(EexpError):
    """A user-facing problem (bad model directory, no data, out of memory, disk full): message, exit 1."""


class CardError(EexpError):
    """A model card that cannot be read: the file and the key are named."""


class SerializerError(EexpError):
    """Serializer settings that cannot be used: an unknown setting or a value of the wrong type, named."""


class HubError(EexpError):
    """A Hub id that cannot be used: not in the cache while offline, unknown, gated, or without safetensors."""


def yaml_problem(e: Exception, path: str) -> str:
    """A YAML file that does not parse, in one line: `PATH:LINE: not valid YAML: what` (yaml's own message spans
    several lines, with an excerpt; its mark counts lines from 0), or `PATH: not UTF-8 text (byte N)`."""
    if isinstance(e, UnicodeDecodeError):
        return f"{path}: not UTF-8 text (byte {e.start})"
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else path
    return f"{where}: not valid YAML: {getattr(e, 'problem', None) or first_line(e)}"


def first_line(e: BaseException) -> str:
    """An exception's message in one line, for an error that quotes a library's (its first line, else its type)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def environment_failures(failed: int, total: int, what: str, field: str = "error") -> EnvError | None:
    """The error a run ends with (exit 1, once everything is written) when more than MAX_FAILED_SHARE of its `total`
    `what` (records, episodes) failed in the environment; None when fewer did."""
    if total and failed / total > MAX_FAILED_SHARE:
        return EnvError(
            f"{failed} of {total} {what} ({100 * failed / total:.1f}%) failed in the environment, more "
            f"than the {100 * MAX_FAILED_SHARE:g}% a run may lose: the records are written, each failure "
            f"with its reason (`{field}`), but what is left is not a result. Fix the environment and "
            f"rerun"
        )
    return None


def entry_point_source(ep) -> str:
    """The installed package that registers an entry point (an environment or a policy backend), for errors."""
    dist = getattr(ep, "dist", None)
    return (
        f"the package {dist.name}"
        if dist is not None and getattr(dist, "name", None)
        else f"the package that registers {ep.value}"
    )
