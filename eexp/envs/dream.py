"""`dream:MODEL@WORLD`: the environment WORLD as a world model dreams it (issue 53, item 3).

The tasks, the first observation of every episode and the admissible actions there are WORLD's own (an installed
environment: `shop`, `tools`, ...). Every later observation is the prediction of the world model MODEL, any backend
`--policy` loads (a checkpoint or adapter folder, a GGUF file, an http(s)://HOST/v1 server: eexp.policies), asked
exactly what IWM trains it on: the serializer's world-model prompt (eexp.prompts.Serializer.world_model_messages: the
world-model system prompt, the state with its recent history, `Action: <action>`), rendered with the serializer
settings recorded with the model; its reply is read as world-model-eval reads one (eexp.prompts.read_observation:
the `Observation:` label taken off, whitespace stripped). A dream never steps WORLD past its reset.

The end of an episode, its success and the next admissible actions: an IWM example teaches the next observation
alone (world-model-data trains no end-of-episode or success signal), so the model is not asked for them. WORLD reads
them from the predicted text where it can (Env.read_text; shop reads its own pages: the buttons a page shows are its
admissible actions, a purchase page ends the episode and is graded by shop's own score, from the product bought and
the options its last page showed selected); where it cannot, the episode ends only at the stage's step limit (eval's
--max-steps, rl's --episode-steps, default WORLD's max_steps; expert's gold path), success is never claimed
(false, score 0), every action is accepted (`valid`) and the action set after the first observation is open (no
admissible list). RULES says the same in the words `eexp envs dream` prints.

Determinism: each prediction's seed is derive_seed(dream_seed, sha256 of its prompt, 0), so the same state and action
are always asked with the same seed; with greedy decoding (dream_temperature 0, the default) a deterministic backend
(a checkpoint, a GGUF on one machine) predicts the same observation every time, and rollout's replays reach the
recorded states again (its state check stays on: a prediction that changes is a state mismatch, never silently
other data). Sampled dreams (dream_temperature > 0) are seeded alike, but a server may not honour seeds. Snapshots
are the dream's own state (the history and the predicted observation), so rollout restores without predicting again.

Every record made in a dream says so: `record_meta()` puts `dream` (the world model, its hash where the backend has
one, WORLD and its version and options, the decoding, the serializer, whether WORLD reads its text) into the meta of
expert's trajectories, rollout's outcomes and eval's episodes, and branch carries a dreamed trajectory's into its
records; the environment's name in every record is `dream:MODEL@WORLD` too.

Its place: an environment by contract (named by --env, found through `WRAPPERS` in eexp.envs.base, checked by `envs
--check`), but a world backed by a model, so the one module of eexp/envs/ that imports eexp/policies/: a layer of
its own, above the policies and below the stages (`LAYERS`, tests/test_imports.py). No environment and no policy
imports it; the other environments import no policy.
"""

from __future__ import annotations

import copy
import hashlib
import os
from typing import Any

import orjson

from eexp.envs.base import WRAPPERS, Env, env_class
from eexp.errors import EexpError, EnvError
from eexp.policies import load_policy, policy_kind
from eexp.policies.base import derive_seed
from eexp.prompts import Serializer, read_observation

KIND = "dream"
FORM = "dream:MODEL@WORLD"
DREAM_VERSION = "1"  # bumped whenever a dream is made otherwise (its prompt, its reading, its rules)
META_KEY = "dream"  # the key of record meta that says a record was dreamed (Env.record_meta)
# The dream's own options (--env-arg KEY=VALUE) and their defaults: world-model-eval's decoding (greedy, 512 tokens:
# an observation is longer than an action). Every other --env-arg is WORLD's.
OPTIONS: dict[str, Any] = {"dream_temperature": 0.0, "dream_top_p": 1.0, "dream_max_tokens": 512, "dream_seed": 0}
MODEL_FORMS = "a checkpoint or adapter folder, a .gguf file or an http(s)://HOST/v1 server, as --policy names one"
HOW = (
    f"name the world model and the environment it dreams as {FORM} (MODEL: {MODEL_FORMS}; WORLD: an installed "
    f"environment), e.g. --env dream:out/iwm@shop; `eexp envs dream` says more"
)
USAGE = f"dream: {HOW}"
RULES = {
    "tasks": "WORLD's tasks and splits; each episode's first observation and admissible actions are WORLD's own",
    "observations": "every later observation is the world model's prediction, asked IWM's prompt (the state and "
    "the action, serialized with the model's recorded settings)",
    "end": "where WORLD reads the predicted text (Env.read_text: shop), as it reads it; elsewhere the episode ends "
    "only at the stage's step limit (eval --max-steps, rl --episode-steps, default WORLD's; expert: the gold path's "
    "end)",
    "success": "WORLD's own check applied to the predicted text where WORLD reads it (shop grades a predicted "
    "purchase page); elsewhere never claimed (success false, score 0)",
    "admissible": "read from the predicted observation where WORLD reads it (shop: the page's buttons); elsewhere "
    "none (free text)",
    "determinism": "each prediction is seeded from its prompt; greedy decoding (dream_temperature 0, the default) "
    "on a deterministic backend predicts the same observation every time",
}
HELP = "\n".join(
    [
        f"{FORM}: WORLD as the world model MODEL dreams it.",
        f"  MODEL: {MODEL_FORMS}.",
        "  WORLD: an installed environment (`eexp envs`); its options are --env-arg KEY=VALUE as for WORLD itself.",
        *(f"  {key}: {text}." for key, text in RULES.items()),
        "  options (--env-arg): " + ", ".join(f"{k}={v}" for k, v in OPTIONS.items()) + ".",
        "  records: meta.dream names the world model, WORLD and the decoding; "
        "`eexp envs dream:MODEL@WORLD` describes one.",
        "  example: eexp expert --env dream:out/iwm@shop -n 20 | eexp branch -k 3 | eexp rollout > dreamed.jsonl",
    ]
)

_BOUND: dict[str, type] = {}  # name -> its class, made once per process


def prompt_key(messages: list[dict]) -> str:
    """The sha256 of a prompt's messages (compact JSON, keys in order): what a prediction's seed is derived from."""
    return hashlib.sha256(orjson.dumps(messages)).hexdigest()


def reads_text(world_class: Any) -> bool:
    """Whether WORLD reads its own observations' text (implements Env.read_text)."""
    method = getattr(world_class, "read_text", None)
    return method is not None and method is not Env.read_text


def split_options(kwargs: dict) -> tuple[dict, dict]:
    """(the dream's options, defaults filled in, WORLD's options): the `dream_` ones are the dream's."""
    dream = {key: kwargs.get(key, default) for key, default in OPTIONS.items()}
    world = {key: value for key, value in kwargs.items() if key not in OPTIONS}
    return dream, world


def check_dream_options(name: str, dream: dict) -> None:
    """An EnvError of one line for a dream option of the wrong type or out of its range."""

    def number(key: str, low: float, high: float | None = None, integer: bool = False) -> None:
        value = dream[key]
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value < low or (high is not None and value > high):
            span = f"from {low:g}" + (f" to {high:g}" if high is not None else "")
            raise EnvError(f"{name}: {key} must be {'an integer' if integer else 'a number'} {span}, not {value!r}")

    number("dream_temperature", 0)
    number("dream_top_p", 0, 1)
    if dream["dream_top_p"] == 0:
        raise EnvError(f"{name}: dream_top_p must be above 0")
    number("dream_max_tokens", 1, integer=True)
    number("dream_seed", 0, integer=True)


class DreamEnv(Env):
    """The class `dream` stands for; `bind("MODEL@WORLD")` makes the class of one world model over one WORLD (its
    name, version, splits and limits WORLD's), which stages make instances of like any environment's."""

    name = KIND
    form = FORM
    usage = USAGE
    help_text = HELP
    version = DREAM_VERSION
    splits: tuple[str, ...] = ()
    can_snapshot = True
    action_format = "WORLD's"
    closed_actions = False
    model_spec = ""  # MODEL, as the name gives it
    world_name = ""  # WORLD
    world_class: Any = None

    @classmethod
    def bind(cls, argument: str) -> type:
        name = f"{KIND}:{argument}"
        if name in _BOUND:
            return _BOUND[name]
        model, at, world = argument.rpartition("@")
        if not at:
            raise EnvError(f"{name}: no WORLD: {HOW}")
        if not model or not world:
            raise EnvError(f"{name}: {'no MODEL' if not model else 'no WORLD'}: {HOW}")
        if world.partition(":")[0] in WRAPPERS:
            raise EnvError(f"{name}: WORLD must be an installed environment, not {world!r}")
        try:
            world_class = env_class(world)
        except EnvError as e:
            raise EnvError(f"{name}: WORLD: {e}") from None
        closed = bool(getattr(world_class, "closed_actions", False)) and reads_text(world_class)
        bound = type(
            "DreamEnv",
            (cls,),
            {
                "name": name,
                "model_spec": model,
                "world_name": world,
                "world_class": world_class,
                "version": f"{getattr(world_class, 'version', '0')}+dream{DREAM_VERSION}",
                "splits": tuple(getattr(world_class, "splits", ())),
                "action_format": getattr(world_class, "action_format", ""),
                "max_steps": getattr(world_class, "max_steps", Env.max_steps),
                "closed_actions": closed,
                "__doc__": f"{name}: {world} as the world model {model} dreams it (eexp.envs.dream).",
            },
        )
        _BOUND[name] = bound
        return bound

    @classmethod
    def _check_bound(cls) -> None:
        if cls.world_class is None:
            raise EnvError(USAGE)

    @classmethod
    def check_options(cls, kwargs: dict[str, Any]) -> None:
        """The world model must be a model that is there, the dream's options numbers in range, and WORLD's
        options WORLD's to accept (its own check_options). Nothing is loaded or started."""
        cls._check_bound()
        dream, world = split_options(kwargs)
        check_dream_options(cls.name, dream)
        spec, kind = cls.model_spec, policy_kind(cls.model_spec)
        if kind is None:
            missing = "no such file or directory" if not os.path.exists(spec) else "not a model"
            raise EnvError(f"{cls.name}: the world model {spec!r}: {missing} (MODEL is {MODEL_FORMS})")
        if kind == "baseline":
            raise EnvError(f"{cls.name}: the world model {spec!r} writes no text (MODEL is {MODEL_FORMS})")
        if kind == "gguf" and not os.path.isfile(spec):
            raise EnvError(f"{cls.name}: the world model {spec!r}: no such file (MODEL is {MODEL_FORMS})")
        check = getattr(cls.world_class, "check_options", None)
        if check is not None:
            check(world)

    def __init__(self, **kwargs: Any):
        self._check_bound()
        dream, world_kwargs = split_options(kwargs)
        check_dream_options(self.name, dream)
        self.settings = dream
        self.world = self.world_class(**world_kwargs)  # WORLD's construction starts nothing either (the contract)
        recorded = getattr(self.world, "kwargs", world_kwargs)
        self.kwargs = {**dict(recorded), **{k: v for k, v in dream.items() if v != OPTIONS[k]}}
        self._policy = None
        self._serializer: Serializer | None = None
        self._described: dict = {}
        self._task: dict | None = None
        self._history: list[dict] = []
        self._observation = ""
        self._admissible: list[str] | None = None
        self._read: dict = {}  # what WORLD read from the last prediction

    # --- WORLD's, as they are -------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[dict]:
        return self.world.tasks(split)

    def task(self, split: str, task_id: str) -> dict:
        return self.world.task(split, task_id)

    def expert(self, task: dict) -> list[str]:
        return self.world.expert(task)

    def canonicalize(self, action: str) -> str:
        return self.world.canonicalize(action)

    # --- the episode ------------------------------------------------------------------------------------------
    def reset(self, task: dict) -> str:
        self._load()
        observation = self.world.reset(task)
        admissible = self.world.admissible()
        self._task = dict(task)
        self._history = []
        self._observation = observation
        self._admissible = list(admissible) if admissible is not None else None
        self._read = {}
        return observation

    def state(self) -> dict:
        """The raw state the world model is asked about: as trajectory_states and eval make one."""
        state = {
            "goal": self._task["goal"],
            "history": [dict(h) for h in self._history],
            "observation": self._observation,
        }
        if self._admissible is not None:
            state["admissible"] = list(self._admissible)
        return state

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        if self._task is None:
            raise EnvError(f"{self.name}: step() before reset()")
        if self._read.get("done"):
            return self._observation, 0.0, True, {"valid": False}
        s = self.settings
        messages = self._serializer.world_model_messages(self.state(), action)
        reply = self._policy.generate(
            messages,
            seed=derive_seed(s["dream_seed"], prompt_key(messages), 0),
            temperature=float(s["dream_temperature"]),
            top_p=float(s["dream_top_p"]),
            max_tokens=int(s["dream_max_tokens"]),
        )
        finish = reply.finish_reason or ""
        if finish.startswith("error"):  # nothing was predicted: an environment failure, never an invented page
            raise EnvError(f"{self.name}: the world model gave no prediction ({finish})")
        observation, _ = read_observation(reply.text)
        self._history.append({"observation": self._observation, "action": action})
        self._observation = observation
        self._read = (
            dict(self.world.read_text(self._task, [h["observation"] for h in self._history] + [observation]))
            if reads_text(type(self.world))
            else {}
        )
        admissible = self._read.get("admissible")
        self._admissible = list(admissible) if admissible is not None else None
        done = bool(self._read.get("done", False))
        return (
            observation,
            self.score() if done else 0.0,
            done,
            {"valid": bool(self._read.get("valid", True)), "finish_reason": finish},
        )

    def admissible(self) -> list[str] | None:
        return list(self._admissible) if self._admissible is not None else None

    def success(self) -> bool:
        return bool(self._read.get("success", False))

    def score(self) -> float:
        return float(self._read.get("score", 0.0))

    def snapshot(self) -> Any:
        return copy.deepcopy((self._task, self._history, self._observation, self._admissible, self._read))

    def restore(self, snap: Any) -> None:
        self._task, self._history, self._observation, self._admissible, self._read = copy.deepcopy(snap)

    # --- the world model ----------------------------------------------------------------------------------------
    def _load(self) -> None:
        """Load the world model (once, at the first episode) and the serializer recorded with it."""
        if self._policy is not None:
            return
        s = self.settings
        try:
            policy = load_policy(
                self.model_spec, {}, max_tokens=int(s["dream_max_tokens"]), top_p=float(s["dream_top_p"])
            )
        except EexpError as e:
            raise EnvError(f"{self.name}: the world model cannot be used: {e}") from None
        try:
            serializer = Serializer.from_dict(policy.serializer_settings(), f"{self.model_spec}: serializer settings")
        except EexpError as e:
            policy.close()
            raise EnvError(f"{self.name}: {e}") from None
        self._policy, self._serializer = policy, serializer
        described = policy.describe()
        self._described = {
            "model": described.get("model", ""),
            "model_sha256": described.get("model_sha256", ""),
            "backend": described.get("backend", ""),
            "serializer": serializer.to_dict(),
        }

    def record_meta(self) -> dict:
        """meta.dream of the records made in this dream. The world model is loaded for it if no episode has loaded
        it yet (what it is goes into the meta); one that cannot load is left out, as the record's own error says."""
        try:
            self._load()
        except EnvError:
            pass
        s = self.settings
        return {
            META_KEY: {
                "world_model": self.model_spec,
                **self._described,
                "world": self.world_name,
                "world_version": str(getattr(self.world_class, "version", "0")),
                "world_kwargs": dict(getattr(self.world, "kwargs", {})),
                "reads_text": reads_text(self.world_class),
                "temperature": s["dream_temperature"],
                "top_p": s["dream_top_p"],
                "max_tokens": s["dream_max_tokens"],
                "seed": s["dream_seed"],
                "dream_version": DREAM_VERSION,
            }
        }

    def describe(self) -> dict:
        return {
            **super().describe(),
            "world": self.world_name,
            "world_model": self.model_spec,
            "reads_text": reads_text(self.world_class),
            "rules": dict(RULES),
        }

    def close(self) -> None:
        policy, self._policy = self._policy, None
        try:
            if policy is not None:
                policy.close()
        finally:
            self.world.close()
