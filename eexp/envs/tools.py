"""`tools`: a BFCL-like multi-turn tool-use world over a small file system, pure Python and deterministic.

The user makes two or three requests, one at a time ("move todo.txt from docs into reports", "how many lines are
in log.txt in notes?"); the observation shows the result of the last call and the current request. Actions are
Python-style calls such as `cd('docs')` or `mv('todo.txt', '../reports')`, parsed with `ast` (literal string
arguments only, never evaluated). A bad call gets the tool's error message. A request is done when the file
system equals the one the gold calls produce and, for a question, when the answer (the gold call's result) was
among this request's results: BFCL's state and response checks. Success is every request done.

The action space is open, so `admissible()` returns a deterministic sample of well-formed calls built from the
tool signatures and the current directory (what the paper did for BFCL).

Splits: train (3000) and test (500) use mkdir, write, move, rename, delete, count and show requests; ood (500)
always includes a copy or search request (cp, grep), which never occur in train or test.
"""

from __future__ import annotations

import ast
import copy
import inspect
import random
from functools import lru_cache

import orjson

from eexp.envs.base import NumberedTasks
from eexp.errors import EnvError
from eexp.text import normalize_space

ROOT = "/workspace"
FOLDERS = ("docs", "reports", "photos", "music", "projects", "archive", "notes", "backup", "data", "temp")
FILE_STEMS = ("todo", "budget", "notes", "log", "draft", "summary", "plan", "ideas", "report", "list")
NEW_FOLDERS = ("old", "shared", "misc", "drafts", "final", "work")
NEW_FILES = ("memo.txt", "agenda.txt", "reminder.txt", "readme.txt", "copy.txt", "backup.txt")
LINES = (
    "buy milk",
    "call the bank",
    "pay rent",
    "meeting at noon",
    "fix the printer",
    "send the report",
    "book flights",
    "water the plants",
    "review the budget",
    "clean the desk",
    "order paper",
    "update the plan",
)
IN_KINDS = ("mkdir", "write", "move", "rename", "delete", "count", "show")
OOD_KINDS = ("copy", "search")
SPLIT_SIZES = {"train": 3000, "test": 500, "ood": 500}


class ToolError(Exception):
    """A tool's own error message (the call was well formed but cannot be done)."""


class FileSystem:
    """The tools' state: a tree of dicts (folders) and strings (files), and the current folder."""

    def __init__(self, tree: dict):
        self.root = tree
        self.cwd: list[str] = []

    # --- paths ----------------------------------------------------------------------------------------------
    def _parts(self, path: str) -> list[str]:
        """Absolute path components of `path` (relative to the current folder unless it starts with /workspace)."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("the path is empty")
        parts: list[str] = []
        if path == ROOT or path.startswith(ROOT + "/"):
            path = path[len(ROOT) :]
        else:
            parts = list(self.cwd)
        for piece in path.split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                if not parts:
                    raise ToolError(f"cannot go above {ROOT}")
                parts.pop()
            else:
                parts.append(piece)
        return parts

    def _folder(self, parts: list[str]) -> dict | None:
        node = self.root
        for p in parts:
            node = node.get(p) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                return None
        return node

    def _entry(self, path: str) -> tuple[dict, str]:
        """(parent folder, name) of an existing entry."""
        parts = self._parts(path)
        if not parts:
            raise ToolError(f"{path}: is the workspace itself")
        parent = self._folder(parts[:-1])
        if parent is None or parts[-1] not in parent:
            raise ToolError(f"{path}: no such file or folder")
        return parent, parts[-1]

    def _file(self, name: str) -> str:
        parent, leaf = self._entry(name)
        if isinstance(parent[leaf], dict):
            raise ToolError(f"{name}: is a folder")
        return parent[leaf]

    @staticmethod
    def _new_name(name: str) -> str:
        if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
            raise ToolError(f"{name!r}: not a valid name (no '/', not empty)")
        return name

    def where(self) -> str:
        return "/".join([ROOT] + self.cwd)

    # --- the tools (their signatures are the schemas) --------------------------------------------------------
    def ls(self) -> dict:
        folder = self._folder(self.cwd)
        return {"current_directory_content": [n + "/" if isinstance(folder[n], dict) else n for n in sorted(folder)]}

    def pwd(self) -> dict:
        return {"current_working_directory": self.where()}

    def cd(self, folder: str) -> dict:
        parts = self._parts(folder)
        if self._folder(parts) is None:
            raise ToolError(f"{folder}: no such folder")
        self.cwd = parts
        return {"current_working_directory": self.where()}

    def mkdir(self, dir_name: str) -> dict:
        here = self._folder(self.cwd)
        if self._new_name(dir_name) in here:
            raise ToolError(f"{dir_name}: already exists")
        here[dir_name] = {}
        return {"result": f"created folder {dir_name}"}

    def touch(self, file_name: str) -> dict:
        here = self._folder(self.cwd)
        if self._new_name(file_name) in here:
            raise ToolError(f"{file_name}: already exists")
        here[file_name] = ""
        return {"result": f"created file {file_name}"}

    def write(self, file_name: str, content: str) -> dict:
        here = self._folder(self.cwd)
        if isinstance(here.get(self._new_name(file_name)), dict):
            raise ToolError(f"{file_name}: is a folder")
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        here[file_name] = content
        return {"result": f"wrote {len(content)} characters to {file_name}"}

    def cat(self, file_name: str) -> dict:
        return {"file_content": self._file(file_name)}

    def wc(self, file_name: str) -> dict:
        text = self._file(file_name)
        return {"lines": len(text.splitlines()), "words": len(text.split())}

    def grep(self, file_name: str, pattern: str) -> dict:
        text = self._file(file_name)
        return {"matching_lines": [line for line in text.splitlines() if str(pattern) in line]}

    def _place(self, source: str, destination: str, keep: bool) -> dict:
        parent, name = self._entry(source)
        dest_parts = self._parts(destination)
        target = self._folder(dest_parts)
        if target is not None:  # into an existing folder, same name
            new_parent, new_name = target, name
        else:  # to a new name
            new_parent, new_name = self._folder(dest_parts[:-1]), dest_parts[-1]
            if new_parent is None:
                raise ToolError(f"{destination}: no such folder")
        if new_name in new_parent:
            raise ToolError(f"{destination}: {new_name} already exists there")
        moving = parent[name]
        if isinstance(moving, dict) and any(node is moving for node in self._ancestors(dest_parts)):
            raise ToolError(f"cannot put {source} inside itself")
        new_parent[new_name] = copy.deepcopy(moving) if keep else moving
        if not keep:
            del parent[name]
        shown = "/".join(self._parts(destination) + ([new_name] if target is not None else []))
        return {"result": f"{'copied' if keep else 'moved'} {source} to {ROOT}/{shown}".rstrip("/")}

    def _ancestors(self, parts: list[str]):
        node = self.root
        for p in parts:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                return
            yield node

    def mv(self, source: str, destination: str) -> dict:
        return self._place(source, destination, keep=False)

    def cp(self, source: str, destination: str) -> dict:
        return self._place(source, destination, keep=True)

    def rm(self, name: str) -> dict:
        parent, leaf = self._entry(name)
        del parent[leaf]
        return {"result": f"removed {name}"}


TOOL_NAMES = ("ls", "pwd", "cd", "mkdir", "touch", "write", "cat", "wc", "grep", "mv", "cp", "rm")
SIGNATURES = {name: inspect.signature(getattr(FileSystem, name)) for name in TOOL_NAMES}
TOOL_LINE = "tools: " + " ".join(f"{n}({', '.join(list(SIGNATURES[n].parameters)[1:])})" for n in TOOL_NAMES)


def parse_call(text: str) -> tuple[str, list, dict]:
    """(tool, args, kwargs) of a call written like Python, with literal arguments only. Raises ToolError."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ToolError("cannot parse the call; write it like ls() or cd('docs')") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ToolError("expected one call of a tool, like cat('notes.txt')")
    name = call.func.id
    if name not in SIGNATURES:
        raise ToolError(f"unknown tool {name!r} ({', '.join(TOOL_NAMES)})")
    try:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            raise ValueError
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except ValueError:
        raise ToolError(f"{name}: arguments must be plain values such as 'notes.txt'") from None
    try:
        SIGNATURES[name].bind(None, *args, **kwargs)
    except TypeError as e:
        raise ToolError(f"{name}: {e}") from None
    return name, args, kwargs


def execute(fs: FileSystem, text: str) -> dict:
    """Run one call; a tool's error comes back as {"error": ...} (raised as ToolError for the caller to show)."""
    name, args, kwargs = parse_call(text)
    return getattr(fs, name)(*args, **kwargs)


def render(result: dict) -> str:
    return orjson.dumps(result).decode()


def call(name: str, *args: str) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"


# --- task generation --------------------------------------------------------------------------------------------


def _where(parts: list[str]) -> str:
    return "the workspace" if not parts else "/".join(parts)


def _relative(src: list[str], dst: list[str]) -> str:
    """The relative path from folder src to folder dst."""
    common = 0
    while common < min(len(src), len(dst)) and src[common] == dst[common]:
        common += 1
    pieces = [".."] * (len(src) - common) + dst[common:]
    return "/".join(pieces) or "."


def _navigate(fs: FileSystem, to: list[str]) -> list[str]:
    """cd calls from the current folder to `to`: up with '..', then down one folder at a time."""
    calls = []
    here = list(fs.cwd)
    while here != to[: len(here)]:
        calls.append(call("cd", ".."))
        here.pop()
    for p in to[len(here) :]:
        calls.append(call("cd", p))
        here.append(p)
    return calls


def _folders(fs: FileSystem) -> list[list[str]]:
    out, stack = [], [[]]
    while stack:
        parts = stack.pop()
        out.append(parts)
        node = fs._folder(parts)
        stack.extend(parts + [n] for n in sorted(node, reverse=True) if isinstance(node[n], dict))
    return out


def _files(fs: FileSystem) -> list[tuple[list[str], str]]:
    return [(parts, n) for parts in _folders(fs) for n, v in sorted(fs._folder(parts).items()) if isinstance(v, str)]


def _request(kind: str, rng: random.Random, fs: FileSystem) -> tuple[str, list[str], list[int]] | None:
    """(request text, gold calls, indices of calls whose result answers the request), or None if impossible."""
    folders, files = _folders(fs), _files(fs)
    if kind in ("mkdir", "write"):
        where = rng.choice(folders)
        here = fs._folder(where)
        pool = [n for n in (NEW_FOLDERS if kind == "mkdir" else NEW_FILES) if n not in here]
        if not pool:
            return None
        name = rng.choice(pool)
        if kind == "mkdir":
            return (
                f"create a folder named {name} in {_where(where)}.",
                _navigate(fs, where) + [call("mkdir", name)],
                [],
            )
        text = rng.choice(LINES)
        return (
            f"create a file {name} in {_where(where)} that says '{text}'.",
            _navigate(fs, where) + [call("write", name, text)],
            [],
        )
    if not files:
        return None
    where, name = rng.choice(files)
    nav = _navigate(fs, where)
    src = _where(where)
    if kind in ("move", "copy") and rng.random() < (0.0 if kind == "move" else 0.5):
        pool = [n for n in NEW_FILES if n not in fs._folder(where)]
        new = rng.choice(pool) if pool else None
        if new is None:
            return None
        return f"make a copy of {name} in {src} named {new}.", nav + [call("cp", name, new)], []
    if kind in ("move", "copy"):
        targets = [f for f in folders if f != where and name not in fs._folder(f)]
        if not targets:
            return None
        dest = rng.choice(targets)
        verb = "move" if kind == "move" else "copy"
        return (
            f"{verb} {name} from {src} into {_where(dest)}.",
            nav + [call("mv" if kind == "move" else "cp", name, _relative(where, dest))],
            [],
        )
    if kind == "rename":
        pool = [n for n in NEW_FILES if n not in fs._folder(where)]
        if not pool:
            return None
        new = rng.choice(pool)
        return f"rename {name} in {src} to {new}.", nav + [call("mv", name, new)], []
    if kind == "delete":
        return f"delete {name} from {src}.", nav + [call("rm", name)], []
    if kind == "count":
        return f"how many lines are in {name} in {src}?", nav + [call("wc", name)], [len(nav)]
    if kind == "show":
        return f"show me what {name} in {src} says.", nav + [call("cat", name)], [len(nav)]
    if kind == "search":
        words = sorted({w for line in fs._folder(where)[name].splitlines() for w in line.split()})
        if not words:
            return None
        word = rng.choice(words)
        return (f"which lines of {name} in {src} contain '{word}'?", nav + [call("grep", name, word)], [len(nav)])
    raise ValueError(kind)


def _initial_tree(rng: random.Random) -> dict:
    stems = list(FILE_STEMS)
    rng.shuffle(stems)
    tree: dict = {}
    for folder in rng.sample(FOLDERS, rng.randint(2, 3)):
        tree[folder] = {
            f"{stems.pop()}.txt": "\n".join(rng.sample(LINES, rng.randint(1, 4))) for _ in range(rng.randint(1, 2))
        }
    for _ in range(rng.randint(1, 2)):
        tree[f"{stems.pop()}.txt"] = "\n".join(rng.sample(LINES, rng.randint(1, 4)))
    return tree


@lru_cache(maxsize=None)
def kinds_of(split: str, index: int) -> tuple[str, ...]:
    """The request kinds of a task, drawn before the world (cheap: `tasks()` needs the first for the category)."""
    rng = random.Random(f"tools/1/{split}/{index}/kinds")
    n = rng.choice((2, 3))
    if split != "ood":
        return tuple(rng.choice(IN_KINDS) for _ in range(n))
    kinds = [rng.choice(IN_KINDS + OOD_KINDS) for _ in range(n)]
    kinds[rng.randrange(n)] = rng.choice(OOD_KINDS)
    return tuple(kinds)


@lru_cache(maxsize=4096)
def build_task(split: str, index: int) -> dict:
    """The initial tree, the requests, their gold calls, and the state and answers each request must reach."""
    rng = random.Random(f"tools/1/{split}/{index}/world")
    tree = _initial_tree(rng)
    fs = FileSystem(copy.deepcopy(tree))
    requests = []
    for kind in kinds_of(split, index):
        made = _request(kind, rng, fs)
        for fallback in ("write", "mkdir"):  # a kind can become impossible (every name taken): fall back
            if made is None:
                made = _request(fallback, rng, fs)
        text, calls, answers = made
        results = [execute(fs, c) for c in calls]  # gold calls never fail: generated from the state
        requests.append(
            {
                "kind": kind,
                "text": text,
                "calls": tuple(calls),
                "answers": tuple(render(results[i]) for i in answers),
                "tree": copy.deepcopy(fs.root),
            }
        )
    return {"tree": tree, "requests": requests}


class ToolsEnv(NumberedTasks):
    name = "tools"
    version = "1"
    splits = ("train", "test", "ood")
    can_snapshot = True
    action_format = "one Python-style tool call with literal arguments, e.g. cd('docs') or mv('a.txt', '../b')"
    max_steps = 20
    closed_actions = False
    options = {}  # none: an --env-arg is an error, not a silent change of every trajectory id
    split_sizes = SPLIT_SIZES
    admissible_sample = 16

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state: dict | None = None
        self.spec: dict | None = None

    # --- tasks ----------------------------------------------------------------------------------------------
    def task_fields(self, split: str, index: int) -> dict:
        kinds = kinds_of(split, index)
        return {
            "category": kinds[0],
            "goal": f"help the user with {len(kinds)} requests about the files in {ROOT}, one at a time",
        }

    def expert(self, task: dict) -> list[str]:
        return [c for r in build_task(*self.locate(task))["requests"] for c in r["calls"]]

    # --- episode --------------------------------------------------------------------------------------------
    def reset(self, task: dict) -> str:
        split, index = self.locate(task)
        self.spec = build_task(split, index)
        self.state = {
            "fs": FileSystem(copy.deepcopy(self.spec["tree"])),
            "turn": 0,
            "answers": set(),
            "steps": 0,
            "task_id": task["id"],
        }
        return f"{TOOL_LINE}\nyou are in {ROOT}.\n{self._request_line()}"

    def _request_line(self) -> str:
        requests, turn = self.spec["requests"], self.state["turn"]
        if turn >= len(requests):
            return "all requests are done."
        return f"request {turn + 1} of {len(requests)}: {requests[turn]['text']}"

    def _turn_done(self) -> bool:
        request = self.spec["requests"][self.state["turn"]]
        return self.state["fs"].root == request["tree"] and all(a in self.state["answers"] for a in request["answers"])

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        s = self.state
        if s is None:
            raise EnvError("tools: step() before reset()")
        if s["turn"] >= len(self.spec["requests"]):
            return "error: all requests are already done.", 0.0, True, {"valid": False}
        s["steps"] += 1
        try:
            result = render(execute(s["fs"], action))
            valid = True
        except ToolError as e:
            result, valid = render({"error": str(e)}), False
        s["answers"].add(result)
        lines = [f"result: {result}"]
        reward = 0.0
        if self._turn_done():
            s["turn"] += 1
            s["answers"] = set()
            reward = 1.0 / len(self.spec["requests"])
            lines.append(f"request {s['turn']} done.")
        lines.append(self._request_line())
        done = s["turn"] >= len(self.spec["requests"])
        return "\n".join(lines), reward, done, {"valid": valid}

    def admissible(self) -> list[str] | None:
        """A deterministic sample of well-formed calls from the tool signatures and the current folder."""
        s = self.state
        if s is None or s["turn"] >= len(self.spec["requests"]):
            return []
        fs = s["fs"]
        here = fs._folder(fs.cwd)
        files = [n for n in sorted(here) if isinstance(here[n], str)]
        folders = [n for n in sorted(here) if isinstance(here[n], dict)]
        rng = random.Random(f"{s['task_id']}/{s['steps']}/{fs.where()}")
        calls = [call("ls"), call("pwd")] + ([call("cd", "..")] if fs.cwd else [])
        calls += [call("cd", f) for f in folders]
        for f in files:
            calls += [call("cat", f), call("wc", f), call("rm", f)]
            calls += [call("mv", f, d) for d in folders + ([".."] if fs.cwd else [])]
            calls += [call("cp", f, d) for d in folders]
            calls += [
                call("mv", f, rng.choice(NEW_FILES)),
                call("cp", f, rng.choice(NEW_FILES)),
                call("grep", f, rng.choice(rng.choice(LINES).split())),
            ]
        calls += [
            call("mkdir", rng.choice(NEW_FOLDERS)),
            call("touch", rng.choice(NEW_FILES)),
            call("write", rng.choice(NEW_FILES), rng.choice(LINES)),
        ]
        calls = list(dict.fromkeys(calls))
        if len(calls) > self.admissible_sample:
            calls = rng.sample(calls, self.admissible_sample)
        return calls

    def canonicalize(self, action: str) -> str:
        """The call as `ast.unparse` writes it (quotes and spacing normalized); anything else whitespace-normalized."""
        try:
            tree = ast.parse(action.strip(), mode="eval")
        except SyntaxError:
            return normalize_space(action)
        return ast.unparse(tree)

    # --- outcome --------------------------------------------------------------------------------------------
    def success(self) -> bool:
        return self.state is not None and self.state["turn"] >= len(self.spec["requests"])

    def score(self) -> float:
        """The fraction of requests done."""
        if self.state is None:
            return 0.0
        return round(self.state["turn"] / len(self.spec["requests"]), 4)

    def snapshot(self):
        return (copy.deepcopy(self.state), self.spec)

    def restore(self, snap) -> None:
        state, self.spec = snap
        self.state = copy.deepcopy(state)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "tasks": dict(SPLIT_SIZES),
            "tools": TOOL_LINE,
            "request_kinds": {"train": list(IN_KINDS), "test": list(IN_KINDS), "ood": list(IN_KINDS + OOD_KINDS)},
        }
