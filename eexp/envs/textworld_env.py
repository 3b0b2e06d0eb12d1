"""`textworld`: games made by TextWorld's own generator (`tw-make` challenges), the engine ALFWorld is built on.

Games are generated on first use into the cache (`$EEXP_CACHE/textworld/<textworld version>/`, default
`~/.cache/eexp`): one generator subprocess per batch, with PYTHONHASHSEED fixed, because TextWorld's generator is only
byte-stable across processes when string hashing is. A game is named by its family and seed, so a task id
(`cooking-easy-00003`) means the same game on every machine with the same TextWorld version.

Families (challenge and settings) and splits, by game seed range:

- train: treasure-easy, treasure-medium, cooking-easy, cooking-medium; seeds 0 .. games-1 (`games`, default 25)
- test:  the same families, seeds 10000 .. 10000+eval_games-1 (`eval_games`, default 10)
- ood:   treasure-hard, cooking-hard and coin (families and difficulties never seen in train), seeds 20000 ..

Tasks are interleaved across families, so any prefix of a split mixes them. The goal is the game's own objective.
Admissible commands come from TextWorld (closed set), the expert is the game's walkthrough (`policy_commands`),
and `snapshot()` is TextWorld's `copy()` (a copy of the z-machine memory and the Python state).

Faults: any exception inside the engine (or a timeout raised into it by the stage) marks the episode broken and is
raised as EnvError; the next `reset()` (or `restart()`) starts a fresh engine, so a stage goes on with the next task.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from eexp.cache import cache_root
from eexp.envs.base import Env, EnvError

# family -> (tw-make challenge, settings as a function of the game seed)
FAMILIES: dict[str, tuple[str, Any]] = {
    "treasure-easy": ("tw-treasure_hunter", lambda s: {"level": 1 + s % 10}),
    "treasure-medium": ("tw-treasure_hunter", lambda s: {"level": 11 + s % 10}),
    "treasure-hard": ("tw-treasure_hunter", lambda s: {"level": 21 + s % 10}),
    "cooking-easy": ("tw-cooking", lambda s: {"recipe": 1, "take": 1, "go": 1}),
    "cooking-medium": ("tw-cooking", lambda s: {"recipe": 2, "take": 2, "go": 6, "open": True, "cut": True}),
    "cooking-hard": ("tw-cooking", lambda s: {"recipe": 3, "take": 3, "go": 9, "open": True, "cut": True,
                                               "cook": True}),
    "coin": ("tw-coin_collector", lambda s: {"level": 1 + s % 30}),
}
SPLIT_FAMILIES = {
    "train": ("treasure-easy", "treasure-medium", "cooking-easy", "cooking-medium"),
    "test": ("treasure-easy", "treasure-medium", "cooking-easy", "cooking-medium"),
    "ood": ("treasure-hard", "cooking-hard", "coin"),
}
SPLIT_SEED_START = {"train": 0, "test": 10000, "ood": 20000}
TASK_ID = re.compile(r"^([a-z]+-?[a-z]*)-(\d{5})$")
HASH_SEED = "0"   # PYTHONHASHSEED of the generator subprocess
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
    while lines and _BANNER_LINE.match(lines[0]):   # the ASCII-art banner before the objective (reset)
        lines.pop(0)
    text = "\n".join(lines)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text if len(text) <= limit else text[:limit] + " …"


def generate_games(specs: list[dict], out_dir: Path) -> None:
    """Generate the games `specs` ([{family, seed}]) into out_dir in one subprocess with PYTHONHASHSEED fixed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONHASHSEED": HASH_SEED}
    proc = subprocess.run([sys.executable, "-m", "eexp.envs.textworld_env", str(out_dir)],
                          input=json.dumps(specs), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise EnvError("textworld: game generation failed: " + " | ".join(tail))


def _generate_main(out_dir: str) -> None:
    """Subprocess side of generate_games: make and compile each game (same process = same hash seed)."""
    import textworld
    from textworld.challenges import CHALLENGES

    assert os.environ.get("PYTHONHASHSEED") == HASH_SEED, "run through generate_games()"
    for spec in json.load(sys.stdin):
        challenge, settings = FAMILIES[spec["family"]]
        name = game_name(spec["family"], spec["seed"])
        options = textworld.GameOptions()
        options.seeds = spec["seed"]
        options.path = str(Path(out_dir) / f"{name}.z8")
        options.force_recompile = True
        full = {"recipe_seed": 0, "split": None, **settings(spec["seed"])} if challenge == "tw-cooking" \
            else settings(spec["seed"])
        game = CHALLENGES[challenge][1](full, options)
        textworld.generator.compile_game(game, options)


def game_name(family: str, seed: int) -> str:
    return f"{family}-{seed:05d}"


class TextWorldEnv(Env):
    name = "textworld"
    splits = ("train", "test", "ood")
    can_snapshot = True
    closed_actions = True
    max_steps = 50
    action_format = "a text command, e.g. 'go north', 'take key from box', 'cook carrot with oven'"

    def __init__(self, games: int = 25, eval_games: int = 10, max_obs_chars: int = MAX_OBS_CHARS, **kwargs: Any):
        super().__init__(**kwargs)
        if kwargs:
            raise EnvError(f"textworld: unknown options {', '.join(sorted(kwargs))} "
                           "(known: games, eval_games, max_obs_chars)")
        # Recorded kwargs are only those that differ from the defaults, so default ids stay short.
        self.kwargs = {k: v for k, v in (("games", games), ("eval_games", eval_games),
                                         ("max_obs_chars", max_obs_chars))
                       if v != {"games": 25, "eval_games": 10, "max_obs_chars": MAX_OBS_CHARS}[k]}
        try:
            import textworld
        except ImportError as e:
            raise EnvError(f"textworld is not installed ({e}); pip install 'eexp[all]'") from None
        self._tw = textworld
        self.version = f"textworld-{textworld.__version__}"
        self.games, self.eval_games, self.max_obs_chars = int(games), int(eval_games), int(max_obs_chars)
        self.game_dir = cache_root() / "textworld" / textworld.__version__
        self._infos = textworld.EnvInfos(admissible_commands=True, policy_commands=True, won=True, lost=True,
                                         score=True, max_score=True, objective=True)
        self._env = None     # the running game (textworld env), None when broken or not started
        self._state = None   # its last GameState
        self._task: dict | None = None
        self._tasks: dict[str, list[dict]] = {}

    # --- tasks ------------------------------------------------------------------------------------------------
    def _specs(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise EnvError(f"textworld has no split {split!r} (splits: {', '.join(self.splits)})")
        n = self.games if split == "train" else self.eval_games
        start = SPLIT_SEED_START[split]
        return [{"family": f, "seed": start + i} for i in range(n) for f in SPLIT_FAMILIES[split]]

    def _path(self, spec: dict) -> Path:
        return self.game_dir / f"{game_name(spec['family'], spec['seed'])}.z8"

    def ensure_games(self, specs: list[dict]) -> None:
        """Generate the games of `specs` that are not in the cache yet (one batch)."""
        missing = [s for s in specs if not (self._path(s).exists() and self._path(s).with_suffix(".json").exists())]
        if missing:
            print(f"textworld: generating {len(missing)} games into {self.game_dir} (once)", file=sys.stderr)
            generate_games(missing, self.game_dir)

    def tasks(self, split: str) -> list[dict]:
        if split not in self._tasks:
            specs = self._specs(split)
            self.ensure_games(specs)
            tasks = []
            for spec in specs:
                data = json.loads(self._path(spec).with_suffix(".json").read_text())
                goal = clean(data.get("objective") or "", self.max_obs_chars)
                tasks.append({"id": game_name(spec["family"], spec["seed"]), "split": split, "goal": goal,
                              "category": spec["family"]})
            self._tasks[split] = tasks
        return self._tasks[split]

    def _game_file(self, task: dict) -> Path:
        m = TASK_ID.match(str(task.get("id", "")))
        if not m or m.group(1) not in FAMILIES:
            raise EnvError(f"textworld: not a task id: {task.get('id')!r} (e.g. cooking-easy-00003)")
        spec = {"family": m.group(1), "seed": int(m.group(2))}
        self.ensure_games([spec])
        return self._path(spec)

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
            if not isinstance(e, Exception):   # KeyboardInterrupt, SystemExit: not ours to turn into data
                raise
            raise EnvError(f"textworld: engine failed during {what}: {type(e).__name__}: {e} "
                           "(the game was closed; reset() starts a fresh one)") from e

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
        return " ".join(action.lower().split())

    def snapshot(self) -> Any:
        return self._guard("snapshot", lambda: (self._env.copy(), self._state, self._task))

    def restore(self, snap: Any) -> None:
        env, state, task = snap
        self._drop()
        self._env, self._state, self._task = env.copy(), state, task   # copy again: the snapshot stays reusable

    def close(self) -> None:
        self._drop()


if __name__ == "__main__":   # the generator subprocess (see generate_games)
    _generate_main(sys.argv[1])
