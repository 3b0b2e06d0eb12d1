"""`bfcl`: BFCLv3 multi-turn function calling (the `bfcl-eval` package's data, tool back-ends and checker).

Splits (the paper's): train = 75% of `multi_turn_base` (ids by a fixed seeded shuffle), test = the other 25%,
ood = the `multi_turn_long_context`, `multi_turn_miss_func` and `multi_turn_miss_param` categories.

An episode is one BFCL conversation. The observation shows the user's message at the start of each turn and the
results of the calls afterwards. An action is one call, or several as a Python list, in BFCL's own syntax:
`cd(folder='document')` or `[cd(folder='document'), ls()]`. Anything that is not a call (a plain reply to the user,
or `[]`) ends the turn, as in BFCL's inference loop; after the last turn the episode is done. Tools are listed in
the goal (signatures only) and, in miss-func conversations, announced in the observation when they appear.

Calls run through our own restricted executor: the action is parsed with `ast`, every call must name a public
method of one of the conversation's tool instances that is currently available, and every argument must be a
literal (`ast.literal_eval`); nothing is ever `eval`-ed. Success is decided by the package's official
`multi_turn_checker` over the calls made in each turn (it re-executes them itself; it only ever sees calls our
parser accepted, re-rendered from the parsed literals). The expert is the ground truth: each gold call in turn,
then a short reply that ends the turn. Branching deep-copies the tool instances (`snapshot()`).

Requires `pip install --no-deps bfcl-eval mpmath` (the full dependency set pulls in CUDA torch).
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import random
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from eexp.envs.base import Env, package_version
from eexp.errors import EnvError
from eexp.text import normalize_space

CATEGORIES = {
    "base": "multi_turn_base",
    "long_context": "multi_turn_long_context",
    "miss_func": "multi_turn_miss_func",
    "miss_param": "multi_turn_miss_param",
}
OOD = ("long_context", "miss_func", "miss_param")
TRAIN_FRACTION = 0.75
SPLIT_SEED = "eexp-bfcl-split"
END_TURN_REPLY = "Done."
UNABLE_REPLY = "I cannot do that with the tools and information I have; please tell me what is missing."
NEW_TOOLS_MESSAGE = "I have updated some more functions you can choose from. What about now?"  # BFCL's own
MAX_RESULT_CHARS = 1500


class CallError(ValueError):
    """The action is not a list of literal-argument calls (so it is a reply, which ends the turn)."""


def parse_calls(action: str) -> list[tuple[str, list, dict]]:
    """`f(a=1)` or `[f(a=1), g('x')]` -> [(name, args, kwargs)]; raises CallError for anything else."""
    try:
        tree = ast.parse(action.strip(), mode="eval").body
    except SyntaxError as e:
        raise CallError(f"not a call: {e.msg}") from None
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise CallError("not a call of a tool by name")
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        except ValueError:
            raise CallError(f"{node.func.id}: arguments must be literals") from None
        if any(k.arg is None for k in node.keywords):
            raise CallError(f"{node.func.id}: **kwargs are not allowed")
        calls.append((node.func.id, args, kwargs))
    return calls


def render_call(name: str, args: list, kwargs: dict) -> str:
    """The canonical text of a parsed call (what the checker sees)."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


@lru_cache(maxsize=None)
def _data_dir() -> Path:
    try:
        import bfcl_eval
    except ImportError as e:
        raise EnvError(f"bfcl-eval is not installed ({e}); pip install --no-deps bfcl-eval mpmath") from None
    return Path(bfcl_eval.__file__).parent / "data"


@lru_cache(maxsize=None)
def _load(category: str) -> tuple[list[dict], list[list[list[str]]]]:
    d = _data_dir()
    name = CATEGORIES[category]
    entries = [json.loads(line) for line in (d / f"BFCL_v4_{name}.json").read_text().splitlines() if line.strip()]
    answers = {}
    for line in (d / "possible_answer" / f"BFCL_v4_{name}.json").read_text().splitlines():
        if line.strip():
            a = json.loads(line)
            answers[a["id"]] = a["ground_truth"]
    return entries, [answers[e["id"]] for e in entries]


@lru_cache(maxsize=None)
def _func_docs(class_name: str) -> tuple[dict, ...]:
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    path = _data_dir() / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
    return tuple(json.loads(line) for line in path.read_text().splitlines() if line.strip())


def signature(doc: dict) -> str:
    """`mv(source: string, destination: string, overwrite?: boolean)` from a BFCL function doc."""
    params = doc.get("parameters", {})
    required = set(params.get("required", []))
    fields = [
        f"{k}{'' if k in required else '?'}: {v.get('type', 'any')}" for k, v in params.get("properties", {}).items()
    ]
    return f"{doc['name']}({', '.join(fields)})"


class BfclEnv(Env):
    name = "bfcl"
    version = package_version("bfcl-eval")
    splits = ("train", "test", "ood")
    can_snapshot = True
    closed_actions = False
    max_steps = 60
    action_format = "a call `f(x=1)` or a list `[f(x=1), g()]` in Python syntax; any other reply ends the turn"

    options = {"max_result_chars": MAX_RESULT_CHARS}

    def __init__(self, max_result_chars: int = MAX_RESULT_CHARS, **kwargs: Any):
        super().__init__(max_result_chars=max_result_chars, **kwargs)  # unknown options: EnvError
        self.max_result_chars = int(max_result_chars)
        _data_dir()
        self._entries: dict[str, tuple[dict, list, str]] = {}
        for category in CATEGORIES:
            entries, answers = _load(category)
            for e, gt in zip(entries, answers):
                self._entries[e["id"]] = (e, gt, category)
        self._tasks: dict[str, list[dict]] = {}
        self._ep: dict | None = None  # the episode: instances, turn, calls per turn, available functions

    # --- tasks ------------------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise EnvError(f"bfcl has no split {split!r} (splits: {', '.join(self.splits)})")
        if split not in self._tasks:
            base = [e["id"] for e, _ in zip(*_load("base"))]
            shuffled = list(base)
            random.Random(SPLIT_SEED).shuffle(shuffled)
            cut = round(len(base) * TRAIN_FRACTION)
            train = set(shuffled[:cut])
            if split == "train":
                ids = [i for i in base if i in train]
            elif split == "test":
                ids = [i for i in base if i not in train]
            else:
                ids = [e["id"] for c in OOD for e in _load(c)[0]]
            self._tasks[split] = [self._task(i, split) for i in ids]
        return self._tasks[split]

    def _task(self, task_id: str, split: str) -> dict:
        entry, _, category = self._entries[task_id]
        first = " ".join(m["content"] for m in entry["question"][0] if m.get("role") == "user")
        tools = "; ".join(signature(d) for d in self._available(entry, 0))
        return {"id": task_id, "split": split, "category": category, "goal": f"{first}\n\nTools: {tools}"}

    def _entry(self, task: dict) -> tuple[dict, list, str]:
        if task.get("id") not in self._entries:
            raise EnvError(f"bfcl: no such task {task.get('id')!r} (e.g. multi_turn_base_0)")
        return self._entries[task["id"]]

    @staticmethod
    def _available(entry: dict, turn: int) -> list[dict]:
        """Function docs available at a turn: the classes' docs minus excluded ones and those still missing."""
        missing = entry.get("missed_function") or {}
        held_back = {name for t, names in missing.items() if int(t) > turn for name in names}
        excluded = set(entry.get("excluded_function") or [])
        return [
            d
            for c in entry["involved_classes"]
            for d in _func_docs(c)
            if d["name"] not in held_back and d["name"] not in excluded
        ]

    # --- episode ----------------------------------------------------------------------------------------------
    def reset(self, task: dict) -> str:
        entry, _, category = self._entry(task)
        from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING, STATELESS_CLASSES

        instances = {}
        try:
            for c in entry["involved_classes"]:
                obj = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[c]), c)()
                if c not in STATELESS_CLASSES:
                    obj._load_scenario(
                        copy.deepcopy(entry["initial_config"].get(c, {})), long_context=(category == "long_context")
                    )
                instances[c] = obj
        except Exception as e:
            self._ep = None
            raise EnvError(f"bfcl: cannot set up the tools of {task['id']}: {type(e).__name__}: {e}") from e
        self._ep = {"task": task, "instances": instances, "turn": 0, "calls": [[]], "done": False}
        return self._turn_observation(entry, 0)

    def _turn_observation(self, entry: dict, turn: int) -> str:
        messages = entry["question"][turn]
        text = " ".join(m["content"] for m in messages if m.get("role") == "user")
        new = (entry.get("missed_function") or {}).get(str(turn))
        if new:
            docs = {d["name"]: d for d in self._available(entry, turn)}
            text = (
                (text or NEW_TOOLS_MESSAGE) + "\nNew tools: " + "; ".join(signature(docs[n]) for n in new if n in docs)
            )
        return f"User: {text}"

    def _methods(self) -> dict[str, Any]:
        entry = self._entry(self._ep["task"])[0]
        allowed = {d["name"] for d in self._available(entry, self._ep["turn"])}
        methods = {}
        for obj in self._ep["instances"].values():
            for name in dir(obj):
                if not name.startswith("_") and name in allowed and callable(getattr(obj, name)):
                    methods[name] = getattr(obj, name)
        return methods

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        if self._ep is None:
            raise EnvError("bfcl: no episode; call reset() first")
        if self._ep["done"]:
            return "The conversation is over.", 0.0, True, {"valid": False}
        try:
            calls = parse_calls(action)
        except CallError:
            calls = []
        if not calls:  # a reply (or []): the turn ends
            return self._end_turn()
        methods = self._methods()
        results, valid = [], True
        for name, args, kwargs in calls:
            if name not in methods:
                results.append(f"Error: no tool named {name!r} is available")
                valid = False
                continue
            self._ep["calls"][-1].append(render_call(name, args, kwargs))
            try:
                result = methods[name](*args, **kwargs)
            except Exception as e:  # a tool's own error, reported the way BFCL's executor does
                result = f"Error during execution: {e}"
            results.append(self._result_text(result))
        return "\n".join(results), 0.0, False, {"valid": valid}

    def _result_text(self, result: Any) -> str:
        if not isinstance(result, str):
            try:
                result = json.dumps(result, ensure_ascii=False)
            except (TypeError, ValueError):
                result = str(result)
        return result if len(result) <= self.max_result_chars else result[: self.max_result_chars] + " …"

    def _end_turn(self) -> tuple[str, float, bool, dict]:
        entry = self._entry(self._ep["task"])[0]
        self._ep["turn"] += 1
        if self._ep["turn"] >= len(entry["question"]):
            self._ep["done"] = True
            ok = self.success()
            return "The conversation is over.", 1.0 if ok else 0.0, True, {"valid": True}
        self._ep["calls"].append([])
        return self._turn_observation(entry, self._ep["turn"]), 0.0, False, {"valid": True}

    def admissible(self) -> None:
        return None

    def expert(self, task: dict) -> list[str]:
        _, gt, _ = self._entry(task)
        actions = []
        for turn in gt:
            actions.extend(turn)
            actions.append(END_TURN_REPLY if turn else UNABLE_REPLY)
        return actions

    def success(self) -> bool:
        """The official multi-turn checker on the calls of every turn (unfinished turns count as empty)."""
        if self._ep is None:
            return False
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

        entry, gt, _ = self._entry(self._ep["task"])
        turns = [list(c) for c in self._ep["calls"]] + [[] for _ in range(len(gt) - len(self._ep["calls"]))]
        decoded = [[[call] for call in turn] for turn in turns[: len(gt)]]
        # The checker caches tool instances in its module globals by model name: use a fresh name, then clean up.
        model = f"eexp_{uuid.uuid4().hex}"
        try:
            result = multi_turn_checker(decoded, gt, entry, CATEGORIES[self._entry(self._ep["task"])[2]], model)
        except Exception:
            return False
        finally:
            for key in [k for k in vars(multi_turn_utils) if k.startswith(model)]:
                delattr(multi_turn_utils, key)
        return bool(result.get("valid"))

    def canonicalize(self, action: str) -> str:
        try:
            calls = parse_calls(action)
        except CallError:
            return normalize_space(action)
        if not calls:
            return normalize_space(action)
        rendered = [render_call(*c) for c in calls]
        return rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"

    def snapshot(self) -> Any:
        return copy.deepcopy(self._ep)

    def restore(self, snap: Any) -> None:
        self._ep = copy.deepcopy(snap)

    def close(self) -> None:
        self._ep = None
