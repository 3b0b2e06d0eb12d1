"""Option bundles every stage shares, and the glue from options to eexp.runner.

- `stage_options`: INPUT files (or `-`), `-o/--output`, `--resume`, `--shard I/N`, `--on-error`, `--stats`,
  `-q`, `--config`. The command receives a ready `StageIO` as its first argument.
- `output_option`, `resume_option`, `on_error_option`, `stats_option`, `quiet_option`, `env_arg_option`, `shard_option`,
  `config_option`: the same options of the commands that are no JSONL stage (expert, corpus, critic-eval, ...), one
  declaration each. A command's own options are fields of a settings dataclass (`field_options`).
- `sampling_options`: `--seed`, `--temperature`, `-k`.
- `serializer_options`: the state serializer's settings (history length, character limits).
- `cluster_options`: `--ray [ADDRESS]`, `--env-workers N`, `--worker-cpus X`: the environment workers of a `-j`
  stage on a Ray cluster. The command receives `cluster` (an eexp.workers_ray.Cluster, or None).
"""

from __future__ import annotations

import functools
from typing import Callable

import click
import yaml

from eexp.errors import yaml_problem
from eexp.fields import default_of
from eexp.prompts import Serializer
from eexp.runner import StageIO, parse_shard
from eexp.stages.settings import Generation


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None):
    """`--config run.yaml`: every option of the command can be given there (dashes or underscores)."""
    if not value:
        return value
    try:
        with open(value) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise click.BadParameter(f"cannot read {value}: {e.strerror}", ctx=ctx, param=param)
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise click.BadParameter(yaml_problem(e, value), ctx=ctx, param=param)
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value} must hold a mapping of option: value", ctx=ctx, param=param)
    names = {p.name for p in ctx.command.params}
    defaults = {}
    for key, val in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise click.BadParameter(
                f"{value}: unknown option {key!r} (options: {', '.join(sorted(names))})", ctx=ctx, param=param
            )
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def config_option(f: Callable) -> Callable:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="YAML file of option values (command-line options win).",
    )(f)


def _check_shard(ctx, param, value):
    try:
        return parse_shard(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param)


def shard_option(what: str = "by trajectory id") -> Callable:
    """--shard I/N: keep only slice I of N (`what` says what is sliced), so N machines split one run."""
    return click.option(
        "--shard", callback=_check_shard, metavar="I/N", help=f"Keep only slice I of N ({what}), for several machines."
    )


def output_option(f: Callable) -> Callable:
    """-o/--output FILE of a command that writes records (stdout by default)."""
    return click.option(
        "-o", "--output", default="-", show_default=True, metavar="FILE", help="Write records here instead of stdout."
    )(f)


def resume_option(skipped: str) -> Callable:
    """--resume: continue the -o file; `skipped` says what is skipped ("tasks already written there")."""
    return click.option("--resume", is_flag=True, help=f"Continue -o FILE: skip {skipped}.")


def on_error_option(f: Callable) -> Callable:
    return click.option(
        "--on-error",
        type=click.Choice(["fail", "skip"]),
        default="fail",
        show_default=True,
        help="On a bad input record: stop (exit 1), or skip it and count it.",
    )(f)


def stats_option(f: Callable) -> Callable:
    return click.option("--stats", metavar="FILE", help="Write a JSON summary of the run here.")(f)


def quiet_option(help: str = "No progress bar.") -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help=help)


def env_arg_option(help: str = "An environment option; repeatable.") -> Callable:
    """--env-arg KEY=VALUE, repeatable: the command receives `env_args`, a dict (values read as YAML scalars)."""
    return click.option("--env-arg", "env_args", multiple=True, callback=parse_env_args, metavar="KEY=VALUE", help=help)


def stage_options(f: Callable | None = None, *, resumable: bool = True) -> Callable:
    """The JSONL-stage options; the command gets `io: StageIO` as its first argument. A stage that chooses from its
    whole input (`@stage_options(resumable=False)`: curate) has no --resume or --shard: neither can continue or split
    a choice from all of it."""
    if f is None:
        return lambda g: stage_options(g, resumable=resumable)

    @functools.wraps(f)
    def wrapper(inputs, output, on_error, stats, quiet, resume=False, shard=None, **kwargs):
        io = StageIO(inputs, output, resume, shard, on_error, stats, quiet, resumable=resumable)
        try:
            return f(io, **kwargs)
        finally:
            io.release()

    decorators = [
        click.argument("inputs", nargs=-1, metavar="[INPUT]..."),
        output_option,
        *(
            [resume_option("inputs already done there"), shard_option("by trajectory id; eval's by task id")]
            if resumable
            else []
        ),
        on_error_option,
        stats_option,
        quiet_option(),
        config_option,
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper


def sampling_options(f: Callable | None = None, *, k: bool = True, settings=Generation) -> Callable:
    """--seed, --temperature, -k, with the defaults of `settings` (a dataclass with the fields of
    eexp.stages.settings.Generation: `@sampling_options(k=False, settings=EvalSettings)` for a stage that draws one
    sample per record and has its own default temperature)."""
    if f is None:
        return lambda g: sampling_options(g, k=k, settings=settings)
    f = field_options(settings, "seed", "temperature", fallback=Generation)(
        click.option(
            "-k",
            "k",
            type=click.IntRange(min=0),
            default=4,
            show_default=True,
            help="Samples (alternatives) per state.",
        )(f)
        if k
        else f
    )
    return f


def serializer_options(f: Callable | None = None, *, build: bool = True) -> Callable:
    """Options that build a `Serializer`; the command receives `serializer=`. With build=False it receives nothing:
    a command that only overrides the settings recorded with a model reads the ones given with
    explicit_serializer_settings (eval)."""
    if f is None:
        return lambda g: serializer_options(g, build=build)

    @functools.wraps(f)
    def wrapper(*args, history, max_observation_chars, max_history_chars, max_admissible, no_admissible, **kwargs):
        if not build:
            return f(*args, **kwargs)
        serializer = Serializer(
            history=history,
            max_observation_chars=max_observation_chars,
            max_history_chars=max_history_chars,
            show_admissible=not no_admissible,
            max_admissible=max_admissible,
        )
        return f(*args, serializer=serializer, **kwargs)

    d = Serializer()
    for decorator in reversed(
        [
            click.option(
                "--history",
                type=click.IntRange(min=0),
                default=d.history,
                show_default=True,
                help="Previous steps shown in a state.",
            ),
            click.option(
                "--max-observation-chars",
                type=click.IntRange(min=0),
                default=d.max_observation_chars,
                show_default=True,
                help="Clip the current observation to this many characters (0: no limit).",
            ),
            click.option(
                "--max-history-chars",
                type=click.IntRange(min=0),
                default=d.max_history_chars,
                show_default=True,
                help="Clip each observation in the history to this many characters (0: no limit).",
            ),
            click.option(
                "--max-admissible",
                # at least 1: --no-admissible is how a state lists none (0 left the heading over an empty list)
                type=click.IntRange(min=1),
                default=d.max_admissible,
                show_default=True,
                help="List at most this many admissible actions (--no-admissible: none).",
            ),
            click.option("--no-admissible", is_flag=True, help="Do not list admissible actions in the state."),
        ]
    ):
        wrapper = decorator(wrapper)
    return wrapper


# serializer option -> (Serializer field, how the option's value maps to it)
SERIALIZER_PARAMS = {
    "history": ("history", lambda v: v),
    "max_observation_chars": ("max_observation_chars", lambda v: v),
    "max_history_chars": ("max_history_chars", lambda v: v),
    "max_admissible": ("max_admissible", lambda v: v),
    "no_admissible": ("show_admissible", lambda v: not v),
}


def explicit_serializer_settings(ctx: click.Context) -> dict:
    """The serializer settings the user gave (command line, environment, --config), not click's defaults: only
    these override the settings recorded with the model."""
    given = {}
    for param, (name, convert) in SERIALIZER_PARAMS.items():
        source = ctx.get_parameter_source(param)
        if source is not None and source != click.core.ParameterSource.DEFAULT:
            given[name] = convert(ctx.params[param])
    return given


def _key_values(ctx, param, values, convert=lambda text: text) -> dict:
    """Repeated KEY=VALUE options as a dict (the last one wins), each value through `convert`."""
    args = {}
    for item in values or ():
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        args[key.strip()] = convert(val)
    return args


def parse_policy_args(ctx, param, values):
    """--policy-arg KEY=VALUE: strings; each backend checks and converts its own keys."""
    return _key_values(ctx, param, values)


def _yaml_scalar(text: str):
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def parse_env_args(ctx, param, values):
    """--env-arg KEY=VALUE: values are read as YAML scalars, so numbers and booleans keep their type."""
    return _key_values(ctx, param, values, _yaml_scalar)


def policy_options(f: Callable | None = None, *, settings=Generation, chooses_actions: bool = True) -> Callable:
    """--policy SPEC and its backend options, with the defaults of `settings` (a dataclass with fields of
    eexp.stages.settings.Generation: act, max_tokens, top_p). The command receives policy_spec, policy_args, act,
    max_tokens, top_p and loads the policy only when it needs one (`eexp.policies.load_policy`). A command whose
    model writes text rather than choosing an action (chooses_actions=False) gets no --act and receives no act."""
    if f is None:
        return lambda g: policy_options(g, settings=settings, chooses_actions=chooses_actions)
    fields = ("act", "max_tokens", "top_p") if chooses_actions else ("max_tokens", "top_p")
    f = field_options(settings, *fields, fallback=Generation)(f)
    for decorator in reversed(
        [
            click.option(
                "--policy",
                "policy_spec",
                metavar="SPEC",
                help="model.gguf | checkpoint or adapter dir | http(s)://host/v1 | ORG/NAME (Hub cache) | random "
                "| oracle | KIND:TARGET (a backend an installed plugin registers under the entry points "
                "eexp.policies). Several servers of one model as one policy: URL,URL or @FILE (one URL a "
                "line); each call goes to the one with the fewest requests in flight, a state's K samples "
                "together, and one that stops answering has its requests sent to the others; URL#N caps that "
                "one at N in flight (docs/scale.md). Where a model is needed and none is given: $EEXP_POLICY.",
            ),
            click.option(
                "--policy-arg",
                "policy_args",
                multiple=True,
                callback=parse_policy_args,
                metavar="KEY=VALUE",
                help="Backend option (n_ctx, n_threads, n_gpu_layers, model, "
                "api_key_env, timeout: an HTTP request's deadline in seconds, connection to last byte, ...); "
                "repeatable.",
            ),
        ]
    ):
        f = decorator(f)
    return f


def concurrency_option(what: str) -> Callable:
    """--concurrency N: policy calls in flight at once, across `what` (states, episodes)."""
    return click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help=f"Policy requests in flight at once, across {what}: a batching server (vLLM, SGLang, llama.cpp's "
        f"llama-server) is fast only when kept busy. The output is the serial run's, in the same order. Default: "
        f"the policy's (16 for an http(s) endpoint, or its --policy-arg concurrency; for several, the sum of "
        f"theirs); 1 for a model in this process, which takes one call at a time.",
    )


LOCAL_RAY = "local"  # `--ray` given without an address


def _warn(message: str) -> None:
    click.echo(message, err=True)


def _check_ray_address(ctx, param, value):
    if value is None or value == LOCAL_RAY or value == "auto":
        return value
    if not (value.startswith("ray://") or value.rpartition(":")[2].isdigit()):
        raise click.BadParameter(
            f"{value!r} is no Ray address (HOST:PORT, or auto); give it as "
            f"--ray=ADDRESS, or --ray alone for a local cluster, after the INPUT files",
            ctx=ctx,
            param=param,
        )
    return value


def cluster_options(f: Callable) -> Callable:
    """`--ray [ADDRESS]`, `--env-workers N`, `--worker-cpus X`: the command gets `cluster`, an
    eexp.workers_ray.Cluster with --ray (its stage's workers are Ray actors), else None. A command with `-j` gets
    both; -j above 1 and --ray are one or the other."""

    @functools.wraps(f)
    def wrapper(*args, ray_address, env_workers, worker_cpus, **kwargs):
        ctx = click.get_current_context()
        if ray_address is None:
            for name, value in (("env-workers", env_workers), ("worker-cpus", worker_cpus)):
                if value is not None:
                    raise click.UsageError(f"--{name} sets the workers of a Ray cluster: give --ray [ADDRESS]")
            return f(*args, cluster=None, **kwargs)
        if (kwargs.get("jobs") or 1) > 1:
            raise click.UsageError(
                "-j N starts worker processes on this machine and --ray puts the workers on a Ray "
                "cluster: give one of them (--env-workers N with --ray)"
            )
        if (kwargs.get("concurrency") or 1) > 1:
            raise click.UsageError(
                "--concurrency keeps policy requests in flight in one process; with --ray each "
                "environment worker runs its episodes one at a time (--env-workers N)"
            )
        from eexp.workers_ray import Cluster, import_ray

        import_ray()  # not installed: one line saying how to install it
        quiet = bool(ctx.params.get("quiet"))
        return f(
            *args,
            cluster=Cluster(
                address=None if ray_address == LOCAL_RAY else ray_address,
                workers=env_workers,
                cpus=worker_cpus or 1.0,
                note=(lambda message: None) if quiet else _warn,
                warn=_warn,
            ),
            **kwargs,
        )

    decorators = [
        click.option(
            "--ray",
            "ray_address",
            is_flag=False,
            flag_value=LOCAL_RAY,
            default=None,
            callback=_check_ray_address,
            metavar="[ADDRESS]",
            help="Run the environment workers as Ray actors on the cluster at ADDRESS (HOST:PORT of its "
            "head, or auto; eexp runs on one of its nodes); alone, on a local Ray cluster started for the "
            "run, which reaches nothing outside this machine (its servers listen on every interface, as Ray's "
            "do, and refuse any client without the token Ray makes for the cluster). The records are the "
            "serial run's, in the same order; a worker or node lost mid-run has its work run again elsewhere. "
            "Needs pip install 'eexp[ray]'.",
        ),
        click.option(
            "--env-workers",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="With --ray: environment workers (Ray actors). Default: the cluster's CPUs / --worker-cpus.",
        ),
        click.option(
            "--worker-cpus",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            metavar="X",
            help="With --ray: CPUs Ray reserves for each worker (fractions allowed). Default: 1.",
        ),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper


def policy_or_default(policy_spec: str | None, what: str) -> str:
    """--policy, else the configured default ($EEXP_POLICY), else a usage error saying how to give one: `what`
    says what the stage needs a model for."""
    from eexp.policies import DEFAULT_POLICY_ENV, default_policy

    spec = policy_spec or default_policy()
    if not spec:
        raise click.UsageError(
            f"{what}: give --policy SPEC (model.gguf, a checkpoint dir, http(s)://HOST/v1, ...), "
            f"or set a default for every stage with {DEFAULT_POLICY_ENV}=SPEC ({DEFAULT_POLICY_ENV} "
            f"is not set)"
        )
    return spec


def count_requests(io, policy) -> None:
    """--stats gets the policy's calls and failed calls (`policy_requests`, `failed_requests`) when the run ends,
    and, for several endpoints behind one policy (eexp.policies.fleet), the requests sent again to another after
    theirs stopped answering (`resent_requests`)."""
    io.count_at_end(
        lambda: {
            "policy_requests": policy.requests,
            "failed_requests": policy.failed_requests,
            **({"resent_requests": policy.resent_requests} if hasattr(policy, "resent_requests") else {}),
        }
    )


def check_requests(policy, policy_spec: str | None) -> None:
    """Exit 1 when more than MAX_FAILED_SHARE of the policy's calls failed (everything is written by then)."""
    from eexp.errors import PolicyError
    from eexp.policies.base import failure_problem

    if policy is not None:
        problem = failure_problem(policy.failed_requests, policy.requests, policy_spec)
        if problem:
            raise PolicyError(problem)


def quiet_transformers() -> None:
    """transformers and PEFT draw bars ("Writing model shards") and warnings of their own on stderr; eexp's commands
    keep stderr for their own messages."""
    import warnings

    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    # PEFT asks a model for is_gradient_checkpointing, which transformers 5 deprecates: a warning about the two
    # libraries' own calls, on every LoRA load, that the user can do nothing about
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class Separated(click.ParamType):
    """A list given as one separated value (`q_proj,v_proj`), or as a list (a --config file)."""

    name = "list"

    def __init__(self, sep: str = ","):
        self.sep = sep

    def convert(self, value, param, ctx):
        items = value if isinstance(value, (list, tuple)) else str(value).split(self.sep)
        return [str(v).strip() for v in items if str(v).strip()]


def _field_option(f, kind) -> Callable:
    """The click option (or argument) of one dataclass field: type and default from the field, help and click hints
    from its metadata (see dataclass_options)."""
    import types
    import typing

    meta = dict(f.metadata)
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    is_list = typing.get_origin(kind) is list
    default = default_of(f)
    if meta.get("argument"):
        return click.argument(f.name, nargs=-1, required=True, metavar=meta.get("metavar"))
    decls = ([meta["short"]] if "short" in meta else []) + [meta.get("flag") or "--" + f.name.replace("_", "-"), f.name]
    kw: dict = {
        "help": meta.get("help") or None,
        "metavar": meta.get("metavar"),
        "required": bool(meta.get("required")),
    }
    if not kw["required"]:  # click 8.3+ takes an explicit default, None too, as a value: --env would go unchecked
        kw["default"] = default
    element = typing.get_args(kind)[0] if is_list else kind
    if "choices" in meta:
        kw["type"] = click.Choice(meta["choices"])
    elif element in (int, float) and ("min" in meta or "max" in meta):
        ranged = click.IntRange if element is int else click.FloatRange
        open_ends = {k: meta[k] for k in ("min_open", "max_open") if k in meta}  # FloatRange only
        kw["type"] = ranged(min=meta.get("min"), max=meta.get("max"), **open_ends)
    elif element in (int, float, str):
        kw["type"] = element
    if kind is bool:
        kw.pop("type", None)
        if "/" not in meta.get("flag", ""):  # --json: a flag; --lora/--full: a pair, which shows its default
            kw["is_flag"] = True
        else:
            kw["show_default"] = True
    elif is_list and meta.get("multiple"):
        kw["multiple"] = True
    elif is_list and meta.get("sep"):
        kw.update(default=meta["sep"].join(default or []), show_default=True, type=Separated(meta["sep"]))
    elif default is not None:
        kw["show_default"] = True
    kw.update({key: meta[key] for key in CLICK_HINTS if key in meta})
    return click.option(*decls, **kw)


# setting() hints handed to click.option as they are, for what a field's type does not say: a click type of its own
# (click.Path), a callback that parses or checks the value, a default click should not show (0 meaning "no limit" is
# said in the help), an option whose value is optional (flag_value).
CLICK_HINTS = ("type", "callback", "show_default", "flag_value", "is_flag", "is_eager", "expose_value")


def dataclass_options(cls, name: str = "config") -> Callable:
    """Click options made from a dataclass's fields, so a default and its help are written once, in the dataclass
    (TRL's SFTConfig + TrlParser is the model). The type and default come from the field; the help and click hints
    from its metadata: help, flag ("--lora/--full"), short ("-o"), metavar, min/max, choices, required, argument
    (positional, one or more), multiple (a list given by repeating the option), sep (a list given as one value,
    e.g. comma-separated; a list in a --config file too). Option names are the field names, so a YAML file of
    `field: value` (the dataclass as `asdict` writes it) is a `--config` file. The options are the fields `cls.OPTIONS`
    names, in that order, where it has one (a config that extends another's), else every field in declaration order.
    The command receives `name=cls(...)`."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    fields = [by_name[n] for n in getattr(cls, "OPTIONS", by_name)]
    decorators = [_field_option(f, hints[f.name]) for f in fields]
    names = [f.name for f in fields]
    lists = {f.name for f in fields if typing.get_origin(hints[f.name]) is list}

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            values = {n: kwargs.pop(n) for n in names}
            values.update({n: list(values[n]) for n in lists if values[n] is not None})
            return f(*args, **{name: cls(**values)}, **kwargs)

        for decorator in reversed(decorators):
            wrapper = decorator(wrapper)
        return wrapper

    return decorate


def field_options(cls, *names: str, fallback=None) -> Callable:
    """Click options made from the fields `names` of a settings dataclass, in that order (a field `cls` does not
    have is taken from `fallback`), as dataclass_options makes them: the default and the help are the field's, so
    they are written once. The command receives each value under the field's name. For settings whose options are
    spread over shared bundles (policy_options, sampling_options) and a command's own."""
    import dataclasses
    import typing

    def find(name: str):
        for owner in (cls, fallback):
            if owner is not None and name in owner.__dataclass_fields__:
                field = next(f for f in dataclasses.fields(owner) if f.name == name)
                return _field_option(field, typing.get_type_hints(owner)[name])
        raise TypeError(f"{cls.__name__} has no field {name!r}")

    decorators = [find(name) for name in names]

    def decorate(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return decorate
