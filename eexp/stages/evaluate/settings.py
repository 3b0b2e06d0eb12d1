"""eval's settings: everything that makes an episode what it is (`EvalSettings`, whose fields give eval's options
their defaults and help; `RunSettings`, the options about the run rather than an episode), the serializer a model
is evaluated with and --act think's thought budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from eexp.fields import setting
from eexp.policies.base import Policy, thought_budget
from eexp.prompts import Serializer
from eexp.stages.settings import shared


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
        None,
        "With --act think: most tokens of a thought (the reply is begun with `Thought:`, so every step has one). "
        "Default: the model card's longest training thought plus a quarter (at least 16 tokens more), where the card "
        "records one (finetune on SR examples; over HTTP, where the server names a model file here); else "
        "--max-tokens. A run with more than 5% of its thoughts cut says so.",
        min=1,
        metavar="N",
    )
    top_p: float = shared("top_p")
    serializer_overrides: dict = field(default_factory=dict)  # only the settings given on the command line
    max_steps: int | None = setting(
        None,
        "Most steps per episode (default: the environment's); with --start "
        "off-path, the policy's steps after the hand-over.",
        min=1,
    )
    start: str = setting(
        "reset",
        "Where each episode starts. reset: the task's first state. off-path: a recovery test; the expert's "
        "first k steps are played (k drawn per task from the seed), then one admissible action that is not the "
        "expert's and does not end the episode, and then the policy takes over. k, the played actions and the "
        "injected one are in the record's `start`, so every policy evaluated with one seed meets the same states.",
        choices=("reset", "off-path"),
        metavar="MODE",
    )
    critic: str | None = setting(
        None,
        "A critic (a local model trained on eexp critic-data) that reranks the policy's proposals at every step: "
        "the policy's own action and --critic-k - 1 samples at --critic-temperature; the critic chooses among the "
        "distinct valid ones the one most likely the expert's.",
        metavar="MODEL",
    )
    critic_k: int = setting(
        4, "With --critic: actions proposed per step (the policy's own, then samples).", min=1, metavar="K"
    )
    critic_temperature: float = setting(
        1.0, "With --critic: temperature of the proposals after the first.", min=0.0, metavar="T"
    )
    attempts: int = setting(
        1,
        "Attempts per task: a failed attempt is followed by another, up to N or the first "
        "success (the summary gives success@1..N; an episode's success is success within N).",
        min=1,
        metavar="N",
    )
    memory: str = setting(
        "none",
        "Between attempts: none (each attempt starts afresh), or reflexion: the policy writes a short "
        "diagnosis of each failed attempt from its actions, observations and the failure alone; the ones that pass "
        "reflect's filters open every later attempt's prompt. No weights change.",
        choices=("none", "reflexion"),
        metavar="MODE",
    )
    temperature: float = shared("temperature", 0.0)  # greedy, as the paper evaluates
    seed: int = shared("seed")
    # a picture of every state beside the text the model read (eexp.envs.screens); never part of an episode's id
    screenshots: str | None = setting(
        None,
        "Save a picture of every state, DIR/<episode id>/<step>.png, with the observation and the prompt the model "
        "read beside it (<step>.txt): for an environment that draws its states (miniwob).",
        metavar="DIR",
    )


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """eval's options that are about the run, not about an episode (so no worker needs them): which tasks, how many
    processes, what else is written, and --compare. Their defaults and help, written once (field_options)."""

    env_name: str | None = setting(
        None,
        "Environment to evaluate on (default: the environment of the input trajectories).",
        flag="--env",
        metavar="NAME",
    )
    split: str = setting(
        "test",
        "Split of the environment's tasks (with INPUT trajectories: only their tasks of this split when it is given, "
        "else all of theirs).",
    )
    n: int | None = setting(None, "Evaluate the first N tasks of the split (default: all).", flag="-n", min=1)
    jobs: int = setting(
        1,
        "Worker processes, each with its own environment and model (for a model in this process, or an environment "
        "that needs CPU); for a server use --concurrency.",
        short="-j",
        min=1,
    )
    summary_path: str | None = setting(
        None, "Write the summary JSON here (with --compare: the comparison).", flag="--summary", metavar="FILE"
    )
    trajectories_path: str | None = setting(
        None,
        "Also write each successful episode here as a trajectory record (expert data).",
        flag="--trajectories",
        metavar="FILE",
    )
    compare: bool = setting(
        False,
        "Compare episode files (INPUT...) instead of running episodes; NAME=FILE,FILE,... groups the runs (seeds) "
        "of one method.",
    )
    plot: str | None = setting(
        None, "With --compare: draw success rates and intervals per run and split.", metavar="PNG"
    )


def resolve_serializer(model_settings: dict | None, overrides: dict, where: str = "the model's") -> Serializer:
    """The model's recorded serializer settings, with the explicitly given ones on top (defaults for the rest).
    An unknown recorded setting is an error naming `where` (whose settings), not dropped."""
    return Serializer.from_dict({**(model_settings or {}), **overrides}, f"{where} serializer settings")


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
