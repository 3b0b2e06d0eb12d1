"""`textworld`: games made by TextWorld's own generator (`tw-make` challenges), the engine ALFWorld is built on.

Games are generated on first use into the cache (`$EEXP_CACHE/textworld/<textworld version>/`, default
`~/.cache/eexp`), by generator subprocesses (one per CPU, up to 4) with PYTHONHASHSEED fixed, because TextWorld's
generator is only byte-stable across processes when string hashing is (a game does not depend on which others the
same process makes). A game is named by its task id (family and nominal seed), so a task id (`cooking-easy-00003`)
means the same game, byte for byte, on every machine with the same TextWorld version (the story file; TextWorld's
`.json` beside it also records where the textworld package is installed, and differs in that field only).

Families (challenge and settings) and splits, by nominal seed range:

- train: treasure-easy, treasure-medium, cooking-easy, cooking-medium; seeds 0 .. games-1 (`games`, default 25)
- test:  the same families, seeds 10000 .. 10000+eval_games-1 (`eval_games`, default 10)
- ood:   treasure-hard, cooking-hard and coin (families and difficulties never seen in train), seeds 20000 ..

Game seed rule. Some seeds make no game: TextWorld raises QuestGenerationError ("Current map configuration doesn't
permit quest of length: 5") for treasure-easy seeds 8 and 9 (train), on every machine, since the generator is
deterministic. Task `<family>-<NNNNN>` (nominal seed N) is the game made with the family's settings for N (its level)
and the first game seed of N, N+100000, N+200000, ... (GAME_SEED_TRIES at most) that makes one. Fallback seeds are
>= 100000, so they never collide with a nominal seed of any split (nor make a copy of another task's game), and the
rule is the same everywhere, so every split keeps its declared size and the same tasks on every machine. The seed
used is the task's `game_seed` (and is in `<task id>.game.json` beside the game in the cache, written last: a game
is complete when it is there); when no seed within the bound works, the error names the family and the seeds tried.
Only QuestGenerationError moves to the next seed; any other failure (a compiler that cannot run, ...) is an error
for that game, reported once the rest of the batch is made and cached.

Byte stability: Inform 7 writes the compile date into the story file as its serial number (`Serial "YYMMDD";` in
the generated Inform 6, header bytes 0x12-0x17), the one thing that differed between two machines (or two days).
Those six bytes are set to SERIAL after compiling; they lie outside the header checksum (bytes 0x40 to the end) and
the games never print them.

Tasks are interleaved across families, so any prefix of a split mixes them. The goal is the game's own objective.
Admissible commands come from TextWorld (closed set), the expert is the game's walkthrough (`policy_commands`).

Snapshots (`snapshot()`/`restore()`): the z-machine's state by jericho's `get_state()` (dynamic memory, stack,
program counter, frame pointers, next opcode, random generator, last output: what jericho's own `copy()` carries
into a new engine, so what TextWorld's `copy()` restores), plus the Python state of TextWorld's wrappers (the
current and previous GameState, the quest progression, the winning policies, the move count, the tracked infos).
`restore()` restarts the running engine of the same game (jericho's reset: fresh interpreter globals, as a replay
starts with, and a halted interpreter runs again) and sets that state into it, with a copy of the saved progression,
so the snapshot stays reusable; a snapshot of another game, or after the engine was dropped, starts that game's
engine first. Restored, the z-machine's memory, live stack and registers, every GameState field and the
progression's facts and valid actions equal a replay's (tests/test_envs_real.py). TextWorld's `copy()`, which
restore() used before, builds two new engines (each loads a private copy of libfrotz) and deep-copies the whole
GameState, the game description included: ~30x this restore, several times a replay of the 7 expert steps
(bench/bench_envs_real.py). Outside the saved state, as outside jericho's and TextWorld's `copy()`: the
interpreter's flag that the game has quit (a snapshot taken after the game really quit, past its end, restores a
game that has not: replay's engine halts at the next step, the restored one does not) and the iteration order of
the progression's fact sets (a Python set's, different between two processes replaying the same game too).
"undo" is refused by jericho's interpreter either way.

Faults: any exception inside the engine (or a timeout raised into it by the stage) marks the episode broken and is
raised as EnvError; the next `reset()` (or `restart()`) starts a fresh engine, so a stage goes on with the next task.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from eexp.cache import cache_root
from eexp.envs.base import Env, package_version
from eexp.errors import EnvError
from eexp.text import normalize_space

# family -> (tw-make challenge, settings as a function of the nominal seed: the task's, whatever game seed made it)
FAMILIES: dict[str, tuple[str, Any]] = {
    "treasure-easy": ("tw-treasure_hunter", lambda s: {"level": 1 + s % 10}),
    "treasure-medium": ("tw-treasure_hunter", lambda s: {"level": 11 + s % 10}),
    "treasure-hard": ("tw-treasure_hunter", lambda s: {"level": 21 + s % 10}),
    "cooking-easy": ("tw-cooking", lambda s: {"recipe": 1, "take": 1, "go": 1}),
    "cooking-medium": ("tw-cooking", lambda s: {"recipe": 2, "take": 2, "go": 6, "open": True, "cut": True}),
    "cooking-hard": (
        "tw-cooking",
        lambda s: {"recipe": 3, "take": 3, "go": 9, "open": True, "cut": True, "cook": True},
    ),
    "coin": ("tw-coin_collector", lambda s: {"level": 1 + s % 30}),
}
SPLIT_FAMILIES = {
    "train": ("treasure-easy", "treasure-medium", "cooking-easy", "cooking-medium"),
    "test": ("treasure-easy", "treasure-medium", "cooking-easy", "cooking-medium"),
    "ood": ("treasure-hard", "cooking-hard", "coin"),
}
SPLIT_SEED_START = {"train": 0, "test": 10000, "ood": 20000}
TASK_ID = re.compile(r"^([a-z]+-?[a-z]*)-(\d{5})$")
HASH_SEED = "0"  # PYTHONHASHSEED of the generator subprocess
GAME_SEED_STEP = 100000  # the game seeds of task seed N: N, N+100000, N+200000, ... (module docstring)
GAME_SEED_TRIES = 20
GENERATOR_JOBS = 4  # generator subprocesses at most (one per CPU)
SERIAL = "000000"  # the story files' serial number, instead of the compile date
MAX_OBS_CHARS = 4000

# TextWorld's feedback: a banner before the objective on reset, then a `>` prompt line padded with spaces and a
# status bar (`-= Kitchen =-1/3`) after every reply. The "*** The End ***" epilogue asks to RESTART/QUIT.
_PROMPT_TAIL = re.compile(r"\n>\s*[^\n]*$")
_EPILOGUE = re.compile(r"\*\*\* The End \*\*\*.*$", re.S)
_BANNER_LINE = re.compile(r"^[\s|\\/_$<>]*$")

# jericho warns that generated games are "not fully supported" (it knows no walkthrough for them): expected here.
warnings.filterwarnings("ignore", message=".*is not fully supported.*")


def clean(text: str, limit: int = MAX_OBS_CHARS) -> str:
    """Feedback without the ASCII banner, the prompt and status bar, the restart epilogue and blank-line runs."""
    text = _EPILOGUE.sub("", text)
    text = _PROMPT_TAIL.sub("", text.rstrip())
    lines = text.split("\n")
    while lines and _BANNER_LINE.match(lines[0]):  # the ASCII-art banner before the objective (reset)
        lines.pop(0)
    text = "\n".join(lines)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text if len(text) <= limit else text[:limit] + " …"


def generate_games(
    specs: list[dict], out_dir: Path, tries: int | None = None, jobs: int | None = None
) -> dict[str, dict]:
    """Generate the games `specs` ([{family, seed}], seed = the nominal seed) into out_dir by the game seed rule
    (module docstring), in generator subprocesses with PYTHONHASHSEED fixed: `jobs` of them (default: one per CPU,
    at most GENERATOR_JOBS) sharing the specs; a game does not depend on which others its process makes. Returns
    {task id: game record} (what `<task id>.game.json` holds). A game that cannot be made does not stop the others:
    every game that can be made is made and cached, then one EnvError names those that could not (family, nominal
    seed, the seeds tried)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = max(1, min(jobs or cpus, GENERATOR_JOBS, len(specs)))
    chunks = [specs[i::jobs] for i in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(lambda chunk: _run_generator(chunk, out_dir, tries or GAME_SEED_TRIES), chunks))
    results = {k: v for found, _ in runs for k, v in found.items()}
    failed = [r for r in results.values() if "error" in r]
    lines = [f"{r['id']} ({r['family']}): {r['error']}" for r in failed]
    lost = 0
    for (found, (returncode, tail)), chunk in zip(runs, chunks):
        missing = [game_name(s["family"], s["seed"]) for s in chunk if game_name(s["family"], s["seed"]) not in found]
        if missing:
            lost += len(missing)
            lines.append(f"the generator stopped (exit {returncode}) before {', '.join(missing)}: {tail}")
    if lines:
        raise EnvError(
            f"textworld: {len(failed) + lost} of {len(specs)} games could not be generated "
            f"(the {len(results) - len(failed)} others are made and cached): " + "; ".join(lines)
        )
    return results


def _run_generator(specs: list[dict], out_dir: Path, tries: int) -> tuple[dict[str, dict], tuple[int, str]]:
    """One generator subprocess over `specs`: ({task id: result}, (exit status, the last lines of its stderr))."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eexp.envs.textworld_env", str(out_dir)],
            env={**os.environ, "PYTHONHASHSEED": HASH_SEED},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        proc.stdin.write(json.dumps({"specs": specs, "tries": tries}))
        proc.stdin.close()
        for line in proc.stdout:  # one JSON line per spec, as each game is done
            result = json.loads(line)
            results[result["id"]] = result
            if result.get("tried") and "error" not in result:
                seeds = ", ".join(map(str, result["tried"]))
                print(
                    f"textworld: {result['id']}: game seed{'s' if len(result['tried']) > 1 else ''} {seeds} "
                    f"made no game; made with game seed {result['game_seed']}",
                    file=sys.stderr,
                )
        proc.wait()
        err.seek(0)
        tail = " | ".join(err.read().strip().splitlines()[-5:])
    return results, (proc.returncode, tail)


def stamp_serial(path: Path) -> None:
    """Set the story file's serial number (header bytes 0x12-0x17, the compile date by default) to SERIAL.

    The header checksum (0x1C-0x1D) sums the bytes from 0x40 to the end, so it stays valid; checked here."""
    data = bytearray(path.read_bytes())
    data[0x12:0x18] = SERIAL.encode("ascii")
    if z_checksum(bytes(data)) != int.from_bytes(data[0x1C:0x1E], "big"):
        raise EnvError(f"textworld: {path} has a bad header checksum after compiling")
    path.write_bytes(bytes(data))


def z_checksum(data: bytes) -> int:
    """The Z-machine checksum: the sum of the bytes from 0x40 to the file length (header word 0x1A, in units of 8
    bytes for version 8), modulo 0x10000."""
    length = int.from_bytes(data[0x1A:0x1C], "big") * 8
    return sum(data[0x40:length]) % 0x10000


def _generate_one(spec: dict, out_dir: Path, tries: int) -> dict:
    """Make task `spec`'s game by the game seed rule; its files are moved into out_dir when complete, the
    `.game.json` record last. Returns the record, or {id, family, seed, tried, error} when no game was made."""
    import textworld
    from textworld.challenges import CHALLENGES
    from textworld.generator.chaining import QuestGenerationError

    challenge, settings = FAMILIES[spec["family"]]
    nominal = int(spec["seed"])
    name = game_name(spec["family"], nominal)
    full = settings(nominal)  # the task's settings (its difficulty) come from the nominal seed, whatever game seed
    if challenge == "tw-cooking":
        full = {"recipe_seed": 0, "split": None, **full}
    record = {"id": name, "family": spec["family"], "seed": nominal}
    tried: list[int] = []
    errors: list[str] = []
    for game_seed in game_seeds(nominal, tries):
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".gen-") as tmp:
            options = textworld.GameOptions()
            options.seeds = game_seed
            options.path = str(Path(tmp) / f"{name}.z8")
            options.force_recompile = True
            try:
                game = CHALLENGES[challenge][1](dict(full), options)
            except QuestGenerationError as e:  # this seed makes no game (deterministic): the next seed
                tried.append(game_seed)
                errors.append(f"{type(e).__name__}: {e}")
                continue
            except Exception as e:
                return {**record, "tried": tried, "error": f"game seed {game_seed}: {type(e).__name__}: {e}"}
            try:
                textworld.generator.compile_game(game, options)
                stamp_serial(Path(options.path))
            except Exception as e:  # the compiler, not the seed: no fallback
                return {
                    **record,
                    "tried": tried,
                    "error": f"compiling with game seed {game_seed}: {type(e).__name__}: {e}",
                }
            record.update(game_seed=game_seed, tried=tried, serial=SERIAL, textworld=textworld.__version__)
            for suffix in (".json", ".ni", ".z8"):
                os.replace(Path(tmp) / f"{name}{suffix}", out_dir / f"{name}{suffix}")
            (Path(tmp) / f"{name}.game.json").write_text(json.dumps(record) + "\n")
            os.replace(Path(tmp) / f"{name}.game.json", out_dir / f"{name}.game.json")
            return record
    seeds = ", ".join(map(str, tried))
    return {
        **record,
        "tried": tried,
        "error": f"no game seed makes a {spec['family']} game (seeds tried: {seeds}; {errors[-1]})",
    }


def _generate_main(out_dir: str) -> None:
    """Subprocess side of generate_games: one JSON line per spec on stdout (everything else goes to stderr)."""
    assert os.environ.get("PYTHONHASHSEED") == HASH_SEED, "run through generate_games()"
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints (TextWorld, compilers) must not mix with results
    payload = json.load(sys.stdin)
    for spec in payload["specs"]:
        results.write(json.dumps(_generate_one(spec, Path(out_dir), payload["tries"])) + "\n")
        results.flush()


def game_seeds(seed: int, tries: int = 0) -> list[int]:
    """The game seeds tried for nominal seed `seed`, in order (the game seed rule)."""
    return [seed + k * GAME_SEED_STEP for k in range(tries or GAME_SEED_TRIES)]


def game_name(family: str, seed: int) -> str:
    return f"{family}-{seed:05d}"


class TextWorldEnv(Env):
    name = "textworld"
    splits = ("train", "test", "ood")
    can_snapshot = True
    closed_actions = True
    max_steps = 50
    action_format = "a text command, e.g. 'go north', 'take key from box', 'cook carrot with oven'"

    version = package_version("textworld")
    options = {"games": 25, "eval_games": 10, "max_obs_chars": MAX_OBS_CHARS}

    def __init__(self, games: int = 25, eval_games: int = 10, max_obs_chars: int = MAX_OBS_CHARS, **kwargs: Any):
        # an unknown option is an EnvError; those at their defaults are not recorded, so default ids stay short
        super().__init__(games=games, eval_games=eval_games, max_obs_chars=max_obs_chars, **kwargs)
        try:
            import textworld
        except ImportError as e:
            raise EnvError(f"textworld is not installed ({e}); pip install 'eexp[all]'") from None
        self._tw = textworld
        self.games, self.eval_games, self.max_obs_chars = int(games), int(eval_games), int(max_obs_chars)
        self.game_dir = cache_root() / "textworld" / textworld.__version__
        self._infos = textworld.EnvInfos(
            admissible_commands=True,
            policy_commands=True,
            won=True,
            lost=True,
            score=True,
            max_score=True,
            objective=True,
        )
        self._env = None  # the running game (textworld env), None when broken or not started
        self._state = None  # its last GameState
        self._task: dict | None = None
        self._tasks: dict[str, list[dict]] = {}

    # --- tasks ------------------------------------------------------------------------------------------------
    def _specs(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise EnvError(f"textworld has no split {split!r} (splits: {', '.join(self.splits)})")
        n = self.games if split == "train" else self.eval_games
        start = SPLIT_SEED_START[split]
        return [{"family": f, "seed": start + i} for i in range(n) for f in SPLIT_FAMILIES[split]]

    def _path(self, spec: dict, suffix: str = ".z8") -> Path:
        return self.game_dir / f"{game_name(spec['family'], spec['seed'])}{suffix}"

    def ensure_games(self, specs: list[dict]) -> None:
        """Generate the games of `specs` that are not in the cache yet (one batch). A game is complete when its
        `.game.json` record is there (written last); a game cached without one (older eexp) is made again."""
        missing = [s for s in specs if not all(self._path(s, x).exists() for x in (".game.json", ".json", ".z8"))]
        if missing:
            print(f"textworld: generating {len(missing)} games into {self.game_dir} (once)", file=sys.stderr)
            generate_games(missing, self.game_dir)

    def _record(self, spec: dict) -> dict:
        return json.loads(self._path(spec, ".game.json").read_text())

    def tasks(self, split: str) -> list[dict]:
        if split not in self._tasks:
            specs = self._specs(split)
            self.ensure_games(specs)
            tasks = []
            for spec in specs:
                data = json.loads(self._path(spec, ".json").read_text())
                goal = clean(data.get("objective") or "", self.max_obs_chars)
                tasks.append(
                    {
                        "id": game_name(spec["family"], spec["seed"]),
                        "split": split,
                        "goal": goal,
                        "category": spec["family"],
                        "game_seed": self._record(spec)["game_seed"],
                    }
                )
            self._tasks[split] = tasks
        return self._tasks[split]

    def game(self, task_id: str) -> dict:
        """How task `task_id`'s game was made (generating it if needed): {id, family, seed, game_seed, tried,
        serial, textworld}, `tried` being the game seeds that made no game."""
        m = TASK_ID.match(str(task_id))
        if not m or m.group(1) not in FAMILIES:
            raise EnvError(f"textworld: not a task id: {task_id!r} (e.g. cooking-easy-00003)")
        spec = {"family": m.group(1), "seed": int(m.group(2))}
        self.ensure_games([spec])
        return self._record(spec)

    def _game_file(self, task: dict) -> Path:
        record = self.game(task.get("id", ""))
        if task.get("game_seed") is not None and task["game_seed"] != record["game_seed"]:
            raise EnvError(
                f"textworld: task {record['id']} was recorded with game seed {task['game_seed']}, but "
                f"this machine makes it with game seed {record['game_seed']} (another TextWorld?)"
            )
        return self._path(record)

    # --- episode ----------------------------------------------------------------------------------------------
    def _guard(self, what: str, call):
        """Run an engine call; any failure (including a stage's timeout raised into it) breaks the episode."""
        if self._env is None:
            raise EnvError(f"textworld: no running game ({what}); call reset() to start a fresh one")
        try:
            return call()
        except BaseException as e:
            self._drop()
            if isinstance(e, EnvError):
                raise
            if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: not ours to turn into data
                raise
            raise EnvError(
                f"textworld: engine failed during {what}: {type(e).__name__}: {e} "
                "(the game was closed; reset() starts a fresh one)"
            ) from e

    def _drop(self) -> None:
        env, self._env, self._state = self._env, None, None
        if env is not None:
            try:
                env.close()
            except Exception:
                pass

    def reset(self, task: dict) -> str:
        path = self._game_file(task)
        if self._env is None or self._task is None or self._task.get("id") != task.get("id"):
            self._drop()
            self._env = self._tw.start(str(path), request_infos=self._infos)
        self._task = task
        self._state = self._guard("reset", self._env.reset)
        return clean(self._state.feedback, self.max_obs_chars)

    def restart(self) -> None:
        """Close the engine; the next reset() starts a fresh one."""
        self._drop()

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        if self._env is None or self._state is None:
            raise EnvError("textworld: no running game (it failed or was never started); call reset() first")
        valid = self.canonicalize(action) in {self.canonicalize(a) for a in (self._state.admissible_commands or [])}
        state, _, done = self._guard(f"step {action!r}", lambda: self._env.step(action))
        reward = float(state.score - (self._state.score or 0))
        self._state = state
        return clean(state.feedback, self.max_obs_chars), reward, bool(done), {"valid": valid}

    def admissible(self) -> list[str]:
        return list(self._state.admissible_commands or []) if self._state is not None else []

    def expert(self, task: dict) -> list[str]:
        """The game's walkthrough, as TextWorld computes it from the quest at the start of the game."""
        env = self._tw.start(str(self._game_file(task)), request_infos=self._infos)
        try:
            return list(env.reset().policy_commands or [])
        finally:
            env.close()

    def success(self) -> bool:
        return bool(self._state is not None and self._state.won)

    def score(self) -> float:
        if self._state is None or not self._state.max_score:
            return 0.0
        return float(self._state.score) / float(self._state.max_score)

    def canonicalize(self, action: str) -> str:
        return normalize_space(action.lower())

    def _layers(self) -> tuple:
        """TextWorld's wrappers of the running game, outside in: (StateTracking, Inform7Data, GameData, JerichoEnv)."""
        tracking = self._env._wrapped_env
        inform7 = tracking._wrapped_env
        data = inform7._wrapped_env
        return tracking, inform7, data, data._wrapped_env

    def snapshot(self) -> Any:
        return self._guard("snapshot", self._save)

    def _save(self) -> dict:
        tracking, inform7, _, jericho = self._layers()
        if self._state is not tracking.state:
            raise EnvError("textworld: the engine's state is not the episode's (snapshot)")
        progression = tracking._game_progression.copy() if tracking._game_progression is not None else None
        return {
            "task": self._task,
            "engine": jericho._jericho.get_state(),
            "progression": progression,
            "state": _detach(tracking.state, progression),
            "prev_state": _detach(inform7._prev_state, progression),
            "tracked_infos": list(inform7._tracked_infos),
            "last_action": tracking._last_action,
            "previous_policy": tracking._previous_winning_policy,  # tuples, replaced (never changed) by steps
            "current_policy": tracking._current_winning_policy,
            "moves": tracking._moves,
        }

    def restore(self, snap: Any) -> None:
        task = snap["task"]
        if self._env is None or self._task is None or self._task.get("id") != task.get("id"):
            self.reset(task)  # another game (or none running): start this one's engine
        self._task = task
        self._guard("restore", lambda: self._load(snap))

    def _load(self, snap: dict) -> None:
        tracking, inform7, data, jericho = self._layers()
        frotz = jericho._jericho
        frotz.reset()  # fresh interpreter globals (as replay's reset; clears a halt), then the saved state
        frotz.set_state(snap["engine"])
        progression = snap["progression"].copy() if snap["progression"] is not None else None
        state = _detach(snap["state"], progression)
        jericho.state = data.state = inform7.state = tracking.state = state
        jericho._reset = True
        inform7._prev_state = _detach(snap["prev_state"], progression)
        inform7._tracked_infos = list(snap["tracked_infos"])
        tracking._game_progression = progression
        tracking._last_action = snap["last_action"]
        tracking._previous_winning_policy = snap["previous_policy"]
        tracking._current_winning_policy = snap["current_policy"]
        tracking._moves = snap["moves"]
        self._state = state

    def close(self) -> None:
        self._drop()


def _detach(state, progression):
    """A shallow copy of a TextWorld GameState whose `_game_progression` is `progression`: every GameState of an
    episode refers to the one live progression, which later steps change in place."""
    if state is None:
        return None
    state = type(state)(state)
    if "_game_progression" in state:
        state["_game_progression"] = progression
    return state


if __name__ == "__main__":  # the generator subprocess (see generate_games)
    _generate_main(sys.argv[1])
