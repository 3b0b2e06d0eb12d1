"""`alfworld`: ALFWorld (Shridhar et al., 2021), the paper's headline benchmark, through the `alfworld` package.

ALFRED's household tasks as text games: TextWorld's PDDL engine (`textworld[pddl]`, fast-downward) wrapped as
alfworld's AlfredTWEnv wraps it (AlfredDemangler: objects named `countertop 1`, `apple 2`; AlfredInfos). Install
with `pip install 'eexp[alfworld]'`; the games come from `alfworld-download` (needs the internet, ~2 GB), which fills
$ALFWORLD_DATA (alfworld's default: ~/.cache/alfworld):

    $ALFWORLD_DATA/json_2.1.1/{train,valid_seen,valid_unseen}/<task>-<object>-<mrecep>-<receptacle>-<scene>/<trial>/
        traj_data.json  game.tw-pddl  initial_state.pddl

Splits, as in the paper and ALFWorld: train = `train` (3,553 solvable games in the release), test = `valid_seen`
(140, seen rooms), ood = `valid_unseen` (134, unseen rooms). Games are collected as AlfredTWEnv collects them: a trial
folder with traj_data.json and game.tw-pddl, of one of the six task types, not a movable-receptacle or sliced task,
marked solvable; in path order. A task's id is `<task folder>/<trial>`, its goal the game's task sentence, its
category the task type (ALFWorld's six, which eval --summary breaks success down by). The listing is read once per
data folder and kept in $EEXP_CACHE/alfworld/ (checked against the folder's files by size and mtime).

Actions are the admissible commands (a closed set: go to, open, close, take X from Y, move X to Y, heat/cool/clean X
with Y, use, examine, look, inventory, help); any other text gets ALFWorld's "Nothing happens." and valid False. A
step returns the engine's feedback; the first observation drops TextWorld's welcome banner. Success is ALFWorld's
`won` (the PDDL goal holds); the score is 1 for a won game, else 0.

The expert (option `expert`): `walkthrough` (default), the gold walkthrough game.tw-pddl carries (what
`alfworld-generate` recorded with alfworld's hand-coded expert; the official early-experience notes use it), or the
planner's plan where a game has none; `planner`, the PDDL planner's plan from the start (AlfredExpert "planner", as
ALFWorld's DAgger training does). Plans are computed in an engine of their own, so expert() leaves the live episode
alone.

Snapshots: the engine's state is a state id in fast-downward's state registry (its C library, one private copy per
engine) plus the Python side (PddlState's facts, the last GameState, the operators in reach). snapshot() saves both;
restore() sets them back (microseconds). reset() on the game already loaded restores the game's first state instead of
translating the PDDL again (0.3 s), so the registry and every snapshot of that game stay valid; a snapshot of another
game (or taken before the engine was restarted) is reached by resetting and replaying the actions it records.
rollout compares every reached observation with the recorded one (reach.py), which catches a drift onto another state.
A step writes the admissible list of the state it reaches only when that list is asked for (the next step,
admissible(), a snapshot): deriving it is most of a step's time, and rollout leaves each alternative's state unasked,
so IWM's rollout at K=8 took about 0.1 CPU-s a state on generated games (0.29 when every step wrote it), and takes
0.45 times that since _engine_calls parses the grammar's conditions once and copies its contexts without deepcopy
(the same records; on a 2.0 GHz EPYC: 0.29 -> 0.13 CPU-s a state, an expert's trajectory 3.6 -> 1.9).

Offline: nothing here reaches the network (the data is local; alfworld-download is the user's step). TextWorld's PDDL
translator overwrites sys.argv; it is put back after every engine call (_engine_calls, which also memoizes the PDDL
translation, TextWorld's grammar parsing and its contexts' deep copies while the engine runs: most of a step's time).
A game's translation is kept on disk after its first load ($EEXP_CACHE/alfworld/sas/, _translate_once): most of a
load's time, paid once a game, not once an episode.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

from eexp.cache import cache_root
from eexp.envs.base import Env, package_version
from eexp.errors import EnvError
from eexp.io import write_atomic
from eexp.text import normalize_space

SPLIT_FOLDERS = {"train": "train", "test": "valid_seen", "ood": "valid_unseen"}
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
DATA_VERSION = "json_2.1.1"
EXPERTS = ("walkthrough", "planner")
INDEX_FORMAT = 1
_TASK_SENTENCE = re.compile(r'"task"\s*:\s*\[\s*\{\s*"rhs"\s*:\s*"Your task is to: ([^"]*?)\.?"')
_BANNER = re.compile(r"^\s*-= Welcome to TextWorld, ALFRED! =-\s*")
MISSING = (
    "alfworld: no ALFWorld games in {path} (ALFWORLD_DATA{how}); run `alfworld-download` once (it needs the "
    "internet) or set ALFWORLD_DATA to the folder it filled"
)


def data_root() -> Path:
    """$ALFWORLD_DATA, else alfworld's own default (~/.cache/alfworld); read without importing alfworld, whose import
    creates the folder."""
    return Path(os.environ.get("ALFWORLD_DATA") or Path.home() / ".cache" / "alfworld").expanduser()


def split_folder(split: str) -> Path:
    return data_root() / DATA_VERSION / SPLIT_FOLDERS[split]


def _missing(path: Path) -> EnvError:
    how = " is not set: alfworld's default" if not os.environ.get("ALFWORLD_DATA") else ""
    return EnvError(MISSING.format(path=path, how=how))


def _trial_folders(folder: Path) -> list[Path]:
    """The trial folders of a split (those with a traj_data.json), in path order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if "traj_data.json" in files:
            found.append(Path(root))
    return sorted(found)


def _signature(folder: Path, trials: list[Path]) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for trial in trials:
        game = trial / "game.tw-pddl"
        stat = game.stat() if game.exists() else None
        digest.update(f"{trial.relative_to(folder)}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_tasks(split: str) -> list[dict]:
    """Every game of a split, as AlfredTWEnv collects them, cached by the folder's signature."""
    folder = split_folder(split)
    if not folder.is_dir():
        raise _missing(folder)
    trials = _trial_folders(folder)
    signature = _signature(folder, trials)
    cache = cache_root() / "alfworld" / f"tasks-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]}.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("format") == INDEX_FORMAT and cached.get("signature") == signature:
            return cached["tasks"]
    except (OSError, ValueError):
        pass
    tasks = []
    for trial in trials:
        rel = trial.relative_to(folder).as_posix()
        if "movable" in rel or "Sliced" in rel:  # as AlfredTWEnv: not supported
            continue
        game_file = trial / "game.tw-pddl"
        if not game_file.exists():
            continue
        reading = trial / "traj_data.json"  # the file an error names (a truncated download: which one)
        try:
            task_type = json.loads(reading.read_text()).get("task_type")
            reading = game_file
            game = json.loads(game_file.read_text())
        except (OSError, ValueError) as e:
            raise EnvError(
                f"alfworld: cannot read {reading} ({e}); run `alfworld-download` again to replace it"
            ) from None
        if task_type not in TASK_TYPES or not game.get("solvable"):
            continue
        found = _TASK_SENTENCE.search(game.get("grammar", ""))
        if not found or "UNKNOWN GOAL" in found.group(1):
            raise EnvError(f"alfworld: {game_file} has no task sentence in its grammar (run alfworld-generate on it)")
        tasks.append({"id": rel, "split": split, "goal": found.group(1).strip(), "category": task_type})
    if not tasks:
        raise _missing(folder)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(cache), json.dumps({"format": INDEX_FORMAT, "signature": signature, "tasks": tasks}).encode())
    return tasks


# PddlEnv objects not in use, by whether they compute the planner's plan. Each holds a private copy of fast-downward's
# C library, loaded once: the library cannot be unloaded and loaded again in one process (dlclose, then the next
# load_lib, crashes), so an engine's PddlEnv goes back here when it is closed and the next engine takes it.
_FREE: dict[bool, list] = {False: [], True: []}
_FREE_LOCK = threading.Lock()
_EPOCHS = itertools.count(1)


def _take_pddl(policy: bool):
    with _FREE_LOCK:
        if _FREE[policy]:
            return _FREE[policy].pop()
    import textworld
    from textworld.envs import PddlEnv

    return PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True, policy_commands=policy, extras=["gamefile"]))


def _gather_infos_lazily(pddl) -> None:
    """PddlEnv._gather_infos (textworld 1.7) without its admissible list, which _admissible() writes when asked.

    Writing the list derives the command of every applicable action through TextWorld's grammar: 70-80% of a step's
    time in a full room. Rollout steps each of a state's K alternatives from a restored snapshot and never asks the
    list of the state an alternative reaches, so it is written only for the states that are asked (the next step,
    admissible(), a snapshot). It is a function of the state (the grammar takes the first applicable rule, no
    randomness), written while the engine is still at that state: the same list, in the same order."""
    state, facts = pddl.state, pddl._pddl_state
    state["command_templates"] = sorted(set(action.template for action in pddl._logic.actions.values()))
    state["won"] = facts.check_goal()
    state["lost"] = False
    state["_entity_infos"] = dict(pddl._entity_infos)
    state["_facts"] = list(facts.facts)
    if pddl.request_infos.facts:
        state["facts"] = list(map(pddl._get_human_readable_fact, state["_facts"]))
    state["last_action"] = None
    state["_last_action"] = pddl._last_action
    state["_valid_actions"] = list(facts.all_applicable_actions())
    if pddl.request_infos.moves:
        state["moves"] = pddl._moves


def _admissible(pddl) -> list[str]:
    """The current state's admissible commands, written now if _gather_infos_lazily left them out (as
    PddlEnv._gather_infos writes them: derived through the grammar, deduplicated, sorted)."""
    state = pddl.state
    if "admissible_commands" not in state:
        mapping = {k: info.name for k, info in pddl._entity_infos.items()}
        commands = []
        for action in state["_valid_actions"]:
            context = {
                "state": pddl._pddl_state,
                "facts": list(pddl._pddl_state.facts),
                "variables": {ph.name: pddl._entity_infos[var.name] for ph, var in action.mapping.items()},
                "mapping": action.mapping,
                "entity_infos": pddl._entity_infos,
            }
            action.command_template = pddl._logic.grammar.derive(action.command_template, context)
            commands.append(action.format_command(mapping))
        state["_valid_commands"] = commands
        state["admissible_commands"] = sorted(set(commands))
    return state["admissible_commands"] or []


class _Engine:
    """One game in TextWorld's PDDL engine with alfworld's wrappers, and the engine's state saved and set back."""

    def __init__(self, game_file: Path, policy: bool = False):
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

        self.policy = policy
        self.pddl = _take_pddl(policy)
        if not policy:  # the planner's engine replans in _gather_infos: it keeps TextWorld's own
            self.pddl._gather_infos = functools.partial(_gather_infos_lazily, self.pddl)
        self.env = AlfredInfos(AlfredDemangler(self.pddl, shuffle=False))
        self.game_file = game_file
        with _engine_calls():
            self.env.load(str(game_file))
            self.state = self.env.reset()  # translates the PDDL (0.3 s): once per engine
        lib = self.pddl.downward_lib
        lib.get_state_id.argtypes, lib.get_state_id.restype = [], ctypes.c_int
        lib.set_state_id.argtypes, lib.set_state_id.restype = [ctypes.c_int], None
        self.first = self.save()

    def admissible(self) -> list[str]:
        return _admissible(self.pddl)

    def save(self) -> dict:
        _admissible(self.pddl)  # a snapshot is stepped from again: its list is written once, here
        pddl, facts = self.pddl, self.pddl._pddl_state
        return {
            "id": pddl.downward_lib.get_state_id(),
            "facts": {k: frozenset(v) for k, v in facts._facts.items()},
            "vars_by_name": dict(facts._vars_by_name),
            "vars_by_type": {k: frozenset(v) for k, v in facts._vars_by_type.items()},
            "var_counts": facts._var_counts.copy(),
            "operators": dict(getattr(facts, "_operators", {})),
            "state": pddl.state,
            "prev_state": pddl.prev_state,
            "last_action": pddl._last_action,
            "moves": pddl._moves,
        }

    def load(self, saved: dict) -> None:
        pddl, facts = self.pddl, self.pddl._pddl_state
        pddl.downward_lib.set_state_id(saved["id"])
        facts._facts.clear()
        facts._facts.update({k: set(v) for k, v in saved["facts"].items()})
        facts._vars_by_name = dict(saved["vars_by_name"])
        facts._vars_by_type.clear()
        facts._vars_by_type.update({k: set(v) for k, v in saved["vars_by_type"].items()})
        facts._var_counts = saved["var_counts"].copy()
        facts._operators = dict(saved["operators"])
        pddl.state, pddl.prev_state = saved["state"], saved["prev_state"]
        pddl._last_action, pddl._moves = saved["last_action"], saved["moves"]
        self.state = saved["state"]

    def step(self, command: str):
        _admissible(self.pddl)  # PddlEnv.step finds the command in the list of the state it leaves
        self.state, _, done = self.env.step(command)
        return self.state, done

    def close(self) -> None:
        pddl, self.pddl, self.env = self.pddl, None, None
        if pddl is not None:
            with _FREE_LOCK:
                _FREE[self.policy].append(pddl)


_PARSED: dict = {}  # TextWorld's grammar snippets, parsed once (textgen._parse_and_convert)


def _parse_once(*args, **kwargs):
    key = (args, tuple(sorted(kwargs.items())))
    if key not in _PARSED:
        if len(_PARSED) >= 20000:  # the grammar's rules and each game's task sentence: a bound, never reached
            _PARSED.clear()
        _PARSED[key] = _ORIGINAL["parse"](*args, **kwargs)
    return copy.deepcopy(_PARSED[key])  # derive() sets attributes on the symbols it gets


_QUERIES: dict = {}  # the grammar rules' conditions (Rule.parse_conjunctive_query), parsed once


def _query_once(expr: str):
    """Rule.parse_conjunctive_query with its parse kept. TextWorld parses a rule's condition anew each time the rule
    is tried, a quarter of an evaluation's time; the Rule is made anew from the kept predicates (immutable: slotted
    and hashed), as the original makes it."""
    from textworld.logic import Rule

    if expr not in _QUERIES:
        if len(_QUERIES) >= 20000:  # ALFWorld's grammar has a few dozen conditions: a bound, never reached
            _QUERIES.clear()
        _QUERIES[expr] = _ORIGINAL["query"].__func__(Rule, expr).preconditions
    return Rule("query", _QUERIES[expr], [])


def _copy_context(context: dict) -> dict:
    """textgen.copy_context with the variables and the mapping copied one level down, not deep-copied (a quarter of an
    evaluation's time). A derivation adds entries to its copies and only reads the entities and placeholders in
    them: ALFWorld's grammar's expressions are attribute reads ({o.name}, {r.indefinite}) and placeholders and
    variables are immutable; so every copy holds what a deep copy holds."""
    return {
        "state": context["state"],
        "facts": context["facts"],
        "variables": dict(context["variables"]),
        "mapping": dict(context["mapping"]),
        "entity_infos": context["entity_infos"],
    }


@functools.lru_cache(maxsize=8)
def _translate_once(domain: str, problem: str, verbose: bool = False, optimize: bool = False):
    """fast_downward.pddl2sas (the parsed task and its SAS text) with the SAS text kept on disk, in
    $EEXP_CACHE/alfworld/sas/, zlib-compressed (about 25 kB a generated game, both translations): the translation is
    most of a game's load (0.4-0.9 CPU-s each, twice a game), and the games are loaded again and again (each
    evaluation episode, the expert, each rollout trajectory). On a hit only the PDDL is parsed and normalized
    (milliseconds): the task pddl2sas returns is that one (the translation reads it and changes nothing in it:
    tested), and the SAS text is the same bytes (the translator is deterministic, whatever PYTHONHASHSEED). Plain
    text, keyed by the translator's version, the options and the PDDL, so nothing is unpickled and a changed game is
    a miss."""
    import fast_downward

    key = hashlib.sha256(
        f"{package_version('fast-downward-textworld')}\0{bool(optimize)}\0{domain}\0{problem}".encode()
    ).hexdigest()
    path = cache_root() / "alfworld" / "sas" / key[:2] / f"{key}.sas.z"
    try:
        sas = zlib.decompress(path.read_bytes()).decode()
    except (OSError, zlib.error, UnicodeDecodeError):  # not kept yet, or torn by hand: translate it again
        task, sas = _ORIGINAL["pddl2sas"](domain, problem, verbose=verbose, optimize=optimize)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(str(path), zlib.compress(sas.encode(), 6))
        return task, sas
    sys.argv = ["translate.py", "domain", "task"]  # as pddl2sas sets it: the translator's options module reads it
    from fast_downward.translate import normalize
    from fast_downward.translate.pddl_parser import lisp_parser, parsing_functions

    with fast_downward.interface.CapturingStdout():  # stdout is the records' stream
        task = parsing_functions.parse_task(
            lisp_parser.parse_nested_list(domain.split("\n")), lisp_parser.parse_nested_list(problem.split("\n"))
        )
        normalize.normalize(task)
    return task, sas


_ORIGINAL: dict = {}


class _engine_calls:
    """Around every call into the engine: sys.argv put back (TextWorld's PDDL translator, fast_downward.pddl2sas,
    sets it), and TextWorld's slow pure steps replaced while the call runs: the translation of a game's PDDL
    (PddlEnv translates it at load() and again at reset(), 0.3 s each) and the parsing of grammar snippets and of
    rules' conditions (TextWorld parses them anew at every text it writes) memoized, and the grammar's contexts
    copied without deepcopy (_copy_context). Together they give what the originals give (the same observations and
    admissible lists, in order, on every test game, stepped by the expert and at random: tested; and on generated
    games, bench/bench_envs_real.py); an evaluation's engine time falls by more than half.

    One call at a time in a process: the engine is not thread-safe (the translator, TextWorld's grammar parser and
    these patches are shared by every engine), and `--concurrency N` plays N episodes in threads. Unserialised, 59 of
    60 episodes of an eval with --concurrency 8 failed to load their game. The policy's requests, the slow part
    there, still overlap: they are made outside engine calls."""

    depth = 0  # calls nest (a new engine inside a guarded call): the outermost one puts things back
    lock = threading.RLock()

    def __enter__(self):
        import fast_downward
        from textworld.envs.pddl import textgen
        from textworld.logic import Rule

        _engine_calls.lock.acquire()
        self.argv = list(sys.argv)
        if _engine_calls.depth == 0:
            _ORIGINAL.setdefault("parse", textgen._parse_and_convert)
            _ORIGINAL.setdefault("pddl2sas", fast_downward.pddl2sas)
            _ORIGINAL.setdefault("copy_context", textgen.copy_context)
            _ORIGINAL.setdefault("query", Rule.__dict__["parse_conjunctive_query"])  # the classmethod itself
            textgen._parse_and_convert, fast_downward.pddl2sas = _parse_once, _translate_once
            textgen.copy_context, Rule.parse_conjunctive_query = _copy_context, staticmethod(_query_once)
        _engine_calls.depth += 1

    def __exit__(self, *exc):
        import fast_downward
        from textworld.envs.pddl import textgen
        from textworld.logic import Rule

        try:
            _engine_calls.depth -= 1
            if _engine_calls.depth == 0:
                textgen._parse_and_convert, fast_downward.pddl2sas = _ORIGINAL["parse"], _ORIGINAL["pddl2sas"]
                textgen.copy_context = _ORIGINAL["copy_context"]
                Rule.parse_conjunctive_query = _ORIGINAL["query"]
            sys.argv[:] = self.argv
        finally:
            _engine_calls.lock.release()


class AlfWorldEnv(Env):
    name = "alfworld"
    version = package_version("alfworld")
    splits = ("train", "test", "ood")
    can_snapshot = True
    closed_actions = True
    max_steps = 50  # ALFWorld's evaluation episodes
    action_format = (
        "go to X | open X | close X | take X from Y | move X to Y | heat/cool/clean X with Y | use X | "
        "examine X | look | inventory"
    )
    options = {"expert": "walkthrough"}

    def __init__(self, expert: str = "walkthrough", **kwargs: Any):
        super().__init__(expert=expert, **kwargs)
        if expert not in EXPERTS:
            raise EnvError(f"alfworld: expert must be one of {', '.join(EXPERTS)}, not {expert!r}")
        for module in ("alfworld", "fast_downward"):  # found, not imported: alfworld's import makes folders
            if importlib.util.find_spec(module) is None:
                raise EnvError(
                    f"alfworld: the package {module} is not installed; pip install 'eexp[alfworld]' "
                    "(alfworld==0.4.2 'textworld[pddl]')"
                )
        self.expert_kind = expert
        self._tasks: dict[str, list[dict]] = {}
        self._engine: _Engine | None = None
        self._task: dict | None = None
        self._history: list[str] = []
        self._done = False
        self._plans: dict[tuple[str, str], list[str]] = {}
        self._epoch = 0  # a new engine, a new registry: older snapshots are replayed instead

    @classmethod
    def check_options(cls, kwargs: dict[str, Any]) -> None:
        """The games must be there (rollout asks before its first record; tasks() says the same per split)."""
        folder = data_root() / DATA_VERSION
        if not folder.is_dir():
            raise _missing(folder)

    # --- tasks ------------------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise EnvError(f"alfworld has no split {split!r} (splits: {', '.join(self.splits)})")
        if split not in self._tasks:
            self._tasks[split] = read_tasks(split)
        return self._tasks[split]

    def _game_file(self, task: dict) -> Path:
        split, task_id = task.get("split"), str(task.get("id", ""))
        if split not in SPLIT_FOLDERS:
            raise EnvError(f"alfworld: task {task_id!r} has no split of alfworld's ({', '.join(self.splits)})")
        folder = split_folder(split)
        path = folder / task_id / "game.tw-pddl"
        # an id is a folder of the split's (an absolute id or one with `..` would name a file elsewhere)
        if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
            if not folder.is_dir():
                raise _missing(folder)
            raise EnvError(f"alfworld: no game {task_id!r} in {folder}")
        return path

    # --- episode ----------------------------------------------------------------------------------------------
    def _guard(self, what: str, call):
        """Run an engine call; any failure inside it (a stage's step timeout included) closes the game, since the
        engine may be half-way through a step."""
        try:
            with _engine_calls():
                return call()
        except BaseException as e:
            self._drop()
            if isinstance(e, EnvError) or not isinstance(e, Exception):  # a timeout, KeyboardInterrupt: as they are
                raise
            raise EnvError(
                f"alfworld: engine failed during {what}: {type(e).__name__}: {e} "
                "(the game was closed; reset() starts it again)"
            ) from e

    def _drop(self) -> None:
        engine, self._engine = self._engine, None
        self._task = None
        if engine is not None:
            engine.close()

    def reset(self, task: dict) -> str:
        path = self._game_file(task)
        if self._engine is None or self._engine.game_file != path:
            self._drop()
            self._engine = self._guard("loading the game", lambda: _Engine(path))
            self._epoch = next(_EPOCHS)
        else:
            self._guard("reset", lambda: self._engine.load(self._engine.first))
        self._task, self._history, self._done = task, [], False
        return _BANNER.sub("", self._engine.state.feedback).strip()

    def _live(self) -> _Engine:
        if self._engine is None or self._task is None:
            raise EnvError("alfworld: no game running (it failed or was never started); call reset() first")
        return self._engine

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        engine = self._live()
        command = self.canonicalize(action)
        valid = command in set(self._guard(f"step {action!r}", engine.admissible))
        state, done = self._guard(f"step {action!r}", lambda: engine.step(command))
        self._history.append(command)
        won = bool(state.get("won"))
        self._done = bool(done)
        return str(state.feedback).strip(), 1.0 if won else 0.0, bool(done), {"valid": valid}

    def admissible(self) -> list[str]:
        if self._engine is None or self._task is None:
            return []
        return list(self._guard("admissible", self._engine.admissible))

    def success(self) -> bool:
        return bool(self._engine is not None and self._task is not None and self._engine.state.get("won"))

    def score(self) -> float:
        return 1.0 if self.success() else 0.0

    def canonicalize(self, action: str) -> str:
        return normalize_space(str(action).lower())

    # --- the expert: from the game file or a planner of its own ------------------------------------------------
    def expert(self, task: dict) -> list[str]:
        path = self._game_file(task)
        key = (str(path), self.expert_kind)
        if key not in self._plans:
            plan = None
            if self.expert_kind == "walkthrough":
                try:
                    plan = json.loads(path.read_text()).get("walkthrough")
                except (OSError, ValueError) as e:
                    raise EnvError(f"alfworld: cannot read {path}: {e}") from None
            if not plan:
                plan = self._plan(path)
            self._plans[key] = [str(a) for a in plan]
        return list(self._plans[key])

    def _plan(self, path: Path) -> list[str]:
        """The PDDL planner's plan from the game's first state, in an engine of its own."""

        def run():
            engine = _Engine(path, policy=True)
            try:
                return list(engine.state.get("policy_commands") or [])
            finally:
                engine.close()

        plan = self._guard_expert(run)
        if not plan:
            raise EnvError(f"alfworld: the planner found no plan for {path}")
        return plan

    @staticmethod
    def _guard_expert(call):
        try:
            with _engine_calls():
                return call()
        except EnvError:
            raise
        except Exception as e:
            raise EnvError(f"alfworld: the planner failed: {type(e).__name__}: {e}") from e

    # --- snapshots ----------------------------------------------------------------------------------------------
    def snapshot(self) -> Any:
        engine = self._live()
        saved = self._guard("snapshot", engine.save)
        return {
            "task": self._task,
            "epoch": self._epoch,
            "game": str(engine.game_file),
            "engine": saved,
            "history": tuple(self._history),
            "done": self._done,
        }

    def restore(self, snap: Any) -> None:
        task = snap["task"]
        if self._engine is not None and self._epoch == snap["epoch"] and str(self._engine.game_file) == snap["game"]:
            self._guard("restore", lambda: self._engine.load(snap["engine"]))
            self._task, self._history, self._done = task, list(snap["history"]), snap["done"]
            return
        self.replay(task, list(snap["history"]))  # another engine: reach it again (deterministic)

    def close(self) -> None:
        self._drop()
