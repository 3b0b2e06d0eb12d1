"""`scienceworld`: the ScienceWorld simulator (Java, through py4j): 30 science task types with their own variations.

Splits use ScienceWorld's own variation splits. Six task types are held out of train for `ood` (freeze,
chemistry-mix-paint-tertiary-color, find-non-living-thing, lifespan-longest-lived-then-shortest-lived,
mendelian-genetics-unknown-plant, test-conductivity-of-unknown-substances; option `ood_tasks`):

- train / dev / test: the train / dev / test variations of the other 24 task types
- ood: the test variations of the held-out task types

At most `variations` variations per task type and split are used (default 10; 0 = all of them, ~7,200 in all), in
ScienceWorld's order, interleaved across task types so any prefix of a split mixes them. A task's goal is its
variation's task description, read once from the simulator and cached in `$EEXP_CACHE/scienceworld/`.

Stepping: ScienceWorld's Python `step()` enumerates every valid action-object combination after each action (a few
steps/s). Here a step is the raw server step plus score and completion (hundreds of steps/s); the valid actions are
computed only when `admissible()` is asked, and `replay()` steps a known prefix with the raw server step alone.
The expert is ScienceWorld's gold path (`generateGoldPath`); success is a score of 100. The simulator does not always
give the same gold path for a task, so the first one computed is cached in `$EEXP_CACHE/scienceworld/` and is the
expert of that task from then on; computing one reloads the simulator, so an episode in progress is put back (reset
and replay of its actions) and expert() leaves the live episode as it was.

Not deterministic everywhere: in the electrical task types the simulator completes the same circuit one step sooner
or later from one episode to the next (power-component-0: at the 8th or the 9th gold action, the 9th being `wait1`),
in a fresh JVM or not, after a reload or not. The gold path is not cut, so a trailing action is dropped (after done)
when the episode completes early and still there when it does not. `eexp envs --check scienceworld` reports it.

Valid-action list trimmed for a model to read (ScienceWorld lists 100-1,000+ combinations per state, mostly
nonsense such as "move cupboard to bowl"):
1. actions on the agent itself or on the air are dropped, and so are "reset task" and "move X to inventory"
   (that is "pick up X");
2. a two-object action (move, pour, dunk, use X in/on/to Y) and "mix X" are kept only when X is held: in the
   inventory, which is exactly when "put down X" is valid; "go to door to X" is dropped ("go to X" stays);
3. connect/disconnect are kept only in the electrical task types (power-component, test-conductivity), and only
   between terminals, wires, batteries and other power parts;
4. duplicates are dropped, the rest ordered by verb (navigation, manipulation, devices, focus, looking), then
   alphabetically (the simulator's own order depends on the JVM's history), and cut to `max_admissible` (default 60;
   the "look at" entries go first).
The list is a helpful sample, not every valid action (`closed_actions` is False): any text is a legal action.

Faults: Java process death, an exception in the bridge, or a step past `step_timeout` seconds (a watchdog kills
the JVM) raise EnvError; the environment then needs `reset()` (or `restart()`), which starts a fresh JVM.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from eexp.cache import cache_root
from eexp.envs.base import Env, package_version
from eexp.errors import EnvError
from eexp.io import write_atomic
from eexp.text import normalize_space

OOD_TASKS = (
    "freeze",
    "chemistry-mix-paint-tertiary-color",
    "find-non-living-thing",
    "lifespan-longest-lived-then-shortest-lived",
    "mendelian-genetics-unknown-plant",
    "test-conductivity-of-unknown-substances",
)
SPLIT_SOURCE = {"train": "train", "dev": "dev", "test": "test", "ood": "test"}
VERB_ORDER = (
    "go",
    "teleport",
    "open",
    "close",
    "pick",
    "put",
    "move",
    "pour",
    "dunk",
    "use",
    "mix",
    "connect",
    "disconnect",
    "activate",
    "deactivate",
    "eat",
    "read",
    "flush",
    "focus",
    "look",
    "inventory",
    "wait",
    "wait1",
    "task",
)
NOISE_OBJECTS = {"agent", "air"}
TWO_OBJECT_VERBS = {"move", "pour", "dunk", "use", "mix"}
WIRE_WORDS = ("anode", "cathode", "terminal", "wire", "battery", "generator", "solar panel")
INVALID_REPLY = "No known action matches that input."
MAX_OBS_CHARS = 3000


def _electrical(task_name: str) -> bool:
    return "power-component" in task_name or "conductivity" in task_name


class ScienceWorldEnv(Env):
    name = "scienceworld"
    version = package_version("scienceworld")
    splits = ("train", "dev", "test", "ood")
    can_snapshot = False
    closed_actions = False
    max_steps = 100
    action_format = "a command such as 'open door to kitchen', 'pick up thermometer', 'use thermometer on water'"

    DEFAULTS = {
        "variations": 10,
        "simplifications": "easy",
        "ood_tasks": ",".join(OOD_TASKS),
        "max_admissible": 60,
        "max_obs_chars": MAX_OBS_CHARS,
        "env_step_limit": 1000,
        "step_timeout": 0,
    }

    options = DEFAULTS

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)  # an unknown option is an EnvError; those at their defaults are not recorded
        opts = {**self.DEFAULTS, **kwargs}
        try:
            import scienceworld
        except ImportError as e:
            raise EnvError(f"scienceworld is not installed ({e}); pip install 'eexp[all]'") from None
        self._package = scienceworld
        self.variations = int(opts["variations"])
        self.simplifications = str(opts["simplifications"] or "")
        self.ood_tasks = tuple(t.strip() for t in str(opts["ood_tasks"]).split(",") if t.strip())
        self.max_admissible = int(opts["max_admissible"])
        self.max_obs_chars = int(opts["max_obs_chars"])
        self.env_step_limit = int(opts["env_step_limit"])
        self.step_timeout = float(opts["step_timeout"] or 0)
        self.cache = cache_root() / "scienceworld" / scienceworld.__version__
        self._sw = None  # the package's ScienceWorldEnv (one JVM), None until started or after a fault
        self._loaded: tuple | None = None
        self._task: dict | None = None
        self._score = 0.0
        self._done = False
        self._admissible: list[str] | None = None
        self._index: dict | None = None
        self._tasks: dict[str, list[dict]] = {}
        self._history: list[str] | None = None  # the actions of the episode in progress, to put it back
        self._gold: dict[str, list[str]] | None = None

    # --- the JVM ------------------------------------------------------------------------------------------------
    def _start(self) -> None:
        from scienceworld import ScienceWorldEnv as Simulator

        try:
            self._sw = Simulator("", envStepLimit=self.env_step_limit)
        except Exception as e:  # no java, or it would not start
            raise EnvError(
                f"scienceworld: cannot start the Java simulator ({type(e).__name__}: {e}); it needs Java 11+ on PATH"
            ) from None
        self._loaded = None

    def java_process(self):
        """The JVM's Popen object (for tests and for the watchdog), or None."""
        return self._sw._gateway.java_process if self._sw is not None else None

    def _kill(self) -> None:
        sw, self._sw, self._loaded = self._sw, None, None
        if sw is not None:
            proc = sw._gateway.java_process
            try:
                proc.kill()
                proc.wait(timeout=10)
            except Exception:
                pass
            # The JVM is gone: tell py4j so, and close its sockets, rather than have it send a shutdown command to a
            # dead port (gateway.shutdown() would). A client left "connected" makes every Java object collected later
            # reconnect and log a traceback from whatever code the garbage collector interrupts; in Python 3.11 that
            # formatting parses source with ast, which inside another ast.parse raises SystemError (CPython
            # gh-106905's shared recursion counter): CI failed once so.
            sw._gateway._gateway_client.is_connected = False
            try:
                sw._gateway._gateway_client.close()
                sw._gateway.shutdown_callback_server()
            except Exception:
                pass

    def restart(self) -> None:
        """Kill the JVM; the next reset() starts a fresh one."""
        self._kill()

    def close(self) -> None:
        if self._sw is not None:
            try:
                self._sw.close()
            except Exception:
                pass
        self._kill()

    def _server(self):
        if self._sw is None:
            raise EnvError(
                "scienceworld: the simulator is not running (it failed or was never started); "
                "call reset() to start a fresh one"
            )
        return self._sw.server

    def _call(self, what: str, fn, timeout_steps: int = 1):
        """One call into the JVM. Any failure (or the watchdog firing) leaves no half-working JVM behind."""
        server = self._server()
        fired = threading.Event()
        timer = None
        if self.step_timeout:

            def on_timeout():
                fired.set()
                proc = self.java_process()
                if proc is not None:
                    proc.kill()

            timer = threading.Timer(self.step_timeout * timeout_steps, on_timeout)
            timer.daemon = True
            timer.start()
        try:
            result = fn(server)
            if fired.is_set():  # it returned, but only after the watchdog had killed the JVM
                raise TimeoutError
            return result
        except BaseException as e:
            self._kill()
            if fired.is_set():
                raise EnvError(
                    f"scienceworld: {what} took longer than {self.step_timeout:g} s; the Java process "
                    "was killed (reset() starts a fresh one)"
                ) from None
            if not isinstance(e, Exception) or isinstance(e, EnvError):
                raise
            dead = "the Java process died" if self._java_dead(e) else "the simulator failed"
            raise EnvError(
                f"scienceworld: {dead} during {what}: {type(e).__name__}: {str(e)[:200]} (reset() starts a fresh one)"
            ) from e
        finally:
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _java_dead(e: Exception) -> bool:
        return type(e).__name__ in ("Py4JNetworkError", "Py4JError") or isinstance(e, (OSError, EOFError))

    # --- tasks --------------------------------------------------------------------------------------------------
    def _variation_index(self) -> dict:
        """{task type: {train, dev, test: [variation ids]}}, from the simulator once, then from the cache."""
        if self._index is None:
            path = self.cache / "variations.json"
            if path.exists():
                self._index = json.loads(path.read_text())
            else:
                self._ensure_running()
                index = {}
                for name in self._call("listing tasks", lambda s: list(s.getTaskNames())):

                    def load(s, name=name):
                        s.load(name, 0, "", False)
                        return {
                            "train": list(s.getVariationsTrain()),
                            "dev": list(s.getVariationsDev()),
                            "test": list(s.getVariationsTest()),
                        }

                    index[name] = self._call(f"loading {name}", load)
                self._loaded = None
                _write_json(path, index)
                self._index = index
        return self._index

    def _goals(self, keys: list[tuple[str, int]]) -> dict[str, str]:
        """Task descriptions of (task type, variation) pairs, cached in one JSON file."""
        path = self.cache / "goals.json"
        goals = json.loads(path.read_text()) if path.exists() else {}
        missing = [(n, v) for n, v in keys if f"{n}-{v}" not in goals]
        if missing:
            self._ensure_running()
            for n, v in missing:

                def describe(s, n=n, v=v):
                    s.load(n, v, self.simplifications, False)
                    return str(s.getTaskDescription())

                goals[f"{n}-{v}"] = " ".join(self._call(f"loading {n} {v}", describe).split())
            self._loaded = None
            _write_json(path, goals)
        return goals

    def tasks(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise EnvError(f"scienceworld has no split {split!r} (splits: {', '.join(self.splits)})")
        if split not in self._tasks:
            index = self._variation_index()
            unknown = [t for t in self.ood_tasks if t not in index]
            if unknown:
                raise EnvError(f"scienceworld: unknown task types in ood_tasks: {', '.join(unknown)}")
            types = [t for t in index if (t in self.ood_tasks) == (split == "ood")]
            per_type = {t: index[t][SPLIT_SOURCE[split]][: self.variations or None] for t in types}
            rounds = max((len(v) for v in per_type.values()), default=0)
            keys = [(t, per_type[t][i]) for i in range(rounds) for t in types if i < len(per_type[t])]
            goals = self._goals(keys)
            self._tasks[split] = [
                {"id": f"{t}-{v}", "split": split, "goal": goals[f"{t}-{v}"], "category": t} for t, v in keys
            ]
        return self._tasks[split]

    @staticmethod
    def _parse(task: dict) -> tuple[str, int]:
        name, _, var = str(task.get("id", "")).rpartition("-")
        if not name or not var.isdigit():
            raise EnvError(f"scienceworld: not a task id: {task.get('id')!r} (e.g. boil-3)")
        return name, int(var)

    # --- episode ------------------------------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        proc = self.java_process()
        if self._sw is None or proc is None or proc.poll() is not None:
            self._kill()
            self._start()

    def _load(self, name: str, var: int, gold: bool = False) -> None:
        key = (name, var, self.simplifications)
        if gold or self._loaded != key:
            if name not in self._variation_index():
                raise EnvError(f"scienceworld: unknown task type {name!r}")
            self._call(f"loading {name} {var}", lambda s: s.load(name, var, self.simplifications, gold))
            self._loaded = key

    def reset(self, task: dict) -> str:
        name, var = self._parse(task)
        self._ensure_running()
        self._load(name, var)
        self._task, self._score, self._done, self._admissible = task, 0.0, False, None
        self._history = None

        def first(s):
            s.reset()
            return s.step("look around")

        observation = self._clean(self._call("reset", first))
        self._history = []
        return observation

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        def one(s):
            observation = s.step(action)
            return observation, float(s.getScore()), bool(s.getCompleted()), int(s.getNumMoves())

        observation, score, completed, moves = self._call(f"step {action!r}", one)
        if self._history is not None:
            self._history.append(action)
        reward, self._score, self._admissible = score - self._score, score, None
        self._done = completed or score < 0 or moves > self.env_step_limit
        return (
            self._clean(observation),
            reward,
            self._done,
            {"valid": observation.strip() != INVALID_REPLY, "score": round(score * 100)},
        )

    def replay(self, task: dict, prefix: list[str]) -> str:
        """Reset, then the raw server step for every prefix action (no per-step score or valid-action calls)."""
        observation = self.reset(task)
        if prefix:

            def run(s):
                out = None
                for action in prefix:
                    out = s.step(action)
                return out, float(s.getScore()), bool(s.getCompleted()), int(s.getNumMoves())

            out, self._score, completed, moves = self._call(
                f"replaying {len(prefix)} actions", run, timeout_steps=len(prefix)
            )
            self._done = completed or self._score < 0 or moves > self.env_step_limit
            observation = self._clean(out)
            self._history = list(prefix)
        return observation

    def _clean(self, text: str) -> str:
        lines = [line.rstrip() for line in str(text).strip().split("\n")]
        text = "\n".join(lines)
        return text if len(text) <= self.max_obs_chars else text[: self.max_obs_chars] + " …"

    def admissible(self) -> list[str]:
        if self._admissible is None:
            name = self._parse(self._task)[0] if self._task else ""

            def fetch(s):
                return (
                    json.loads(s.getValidActionObjectCombinationsJSON())["validActions"],
                    json.loads(s.getPossibleObjectReferentLUTJSON()),
                )

            valid, referents = self._call("listing valid actions", fetch)
            self._admissible = trim_actions(valid, referents, name, self.max_admissible)
        return list(self._admissible)

    def expert(self, task: dict) -> list[str]:
        name, var = self._parse(task)
        key = f"{name}-{var}-{self.simplifications}-{self.env_step_limit}"
        path = self.cache / "gold.json"
        if self._gold is None or key not in self._gold:  # another instance may have computed it since
            self._gold = json.loads(path.read_text()) if path.exists() else {}
        if key not in self._gold:
            # The simulator's gold path is not always the same from one load to the next (find-plant-0): the first
            # one computed is cached and is the task's expert from then on, in every instance.
            gold = self._gold_path(name, var)
            on_disk = json.loads(path.read_text()) if path.exists() else {}
            self._gold = {**on_disk, key: on_disk.get(key, gold)}
            _write_json(path, self._gold)
        return list(self._gold[key])

    def _gold_path(self, name: str, var: int) -> list[str]:
        """The gold path from the simulator; the live episode is put back afterwards."""
        self._ensure_running()
        self._load(name, var, gold=True)
        try:
            gold = [str(a) for a in self._call("gold path", lambda s: list(s.getGoldActionSequence()))]
        finally:
            self._loaded = None
        self._put_back()
        return gold

    def _put_back(self) -> None:
        """Reload the episode in progress and replay its actions (the simulator was loaded for a gold path)."""
        if self._task is None or self._history is None or self._sw is None:
            return
        name, var = self._parse(self._task)
        self._load(name, var)
        history = list(self._history)

        def run(s):
            s.reset()
            s.step("look around")
            for action in history:
                s.step(action)

        self._call(f"putting back the episode ({len(history)} actions)", run, timeout_steps=len(history) + 1)

    def success(self) -> bool:
        return round(self._score * 100) >= 100

    def score(self) -> float:
        return max(0.0, self._score)

    def canonicalize(self, action: str) -> str:
        return normalize_space(action.lower())


def trim_actions(valid: list[dict], referents: dict, task_name: str, limit: int) -> list[str]:
    """The valid-action list cut to what a model can read (rules in the module docstring)."""
    held = {v["obj_ids"][0] for v in valid if v["action"].startswith("put down ") and v["obj_ids"]}
    electrical = _electrical(task_name)
    kept: dict[str, int] = {}
    for v in valid:
        action, ids = v["action"], v.get("obj_ids") or []
        verb = action.split(" ", 1)[0]
        if any(referents.get(str(i)) in NOISE_OBJECTS for i in ids):
            continue
        if action == "reset task" or action.endswith(" to inventory"):
            continue
        names = [str(referents.get(str(i), "")) for i in ids]
        if verb in ("connect", "disconnect") and not (
            electrical and all(any(w in n for w in WIRE_WORDS) for n in names)
        ):
            continue
        if verb == "mix" and ids and ids[0] not in held:
            continue
        if verb == "go" and any("door" in n for n in names):  # "go to door to kitchen" = "go to kitchen"
            continue
        if verb in TWO_OBJECT_VERBS and len(ids) == 2 and ids[0] not in held:
            continue
        rank = VERB_ORDER.index(verb) if verb in VERB_ORDER else len(VERB_ORDER)
        if action.startswith("look at "):
            rank = len(VERB_ORDER) + 1
        kept.setdefault(action, rank)
    ordered = sorted(kept, key=lambda a: (kept[a], a))  # not the simulator's order: it depends on the JVM's history
    return ordered[:limit] if limit else ordered


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), json.dumps(data).encode())
