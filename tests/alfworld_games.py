"""The ten small ALFRED-style games tests/test_alfworld.py plays, written by eexp's generator
(eexp/envs/alfworld_gen.py, `eexp alfworld-games`) from fixed specs, in the layout `alfworld-download` produces:

    <root>/json_2.1.1/<split>/<task type>-<object>-<mrecep>-<receptacle>-<scene>/trial_T<...>/
        traj_data.json  initial_state.pddl  game.tw-pddl

Unlike `eexp alfworld-games` (every object type of the room, rooms and goals drawn, splits by ALFWorld's rules),
these rooms hold the task's object and 6 others, and each game's room, goal and expert are given below, so the tests
cover each task type and both experts on small games. The walkthrough is the hand-coded expert's winning run
("handcoded"), the planner's plan ("planner") or absent (None: a game file without one, whose expert is the
planner's). Deterministic: two calls write the same bytes.

    python tests/alfworld_games.py DIR      # writes the test games under DIR (ALFWORLD_DATA=DIR then reads them)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eexp.envs.alfworld_gen import DATA_VERSION, game_files, trial_name, walkthrough

# split -> [(task type, scene, object, receptacle or toggle, movable receptacle, walkthrough)]
GAMES = {
    "train": [
        ("pick_and_place_simple", 301, "CellPhone", "Bed", None, "handcoded"),
        ("look_at_obj_in_light", 301, "Book", "DeskLamp", None, "planner"),
        ("pick_clean_then_place_in_recep", 1, "Mug", "Cabinet", None, "planner"),
        ("pick_heat_then_place_in_recep", 1, "Egg", "CounterTop", None, "planner"),
        ("pick_cool_then_place_in_recep", 5, "Apple", "CounterTop", None, "handcoded"),
        ("pick_two_obj_and_place", 401, "SoapBar", "GarbageCan", None, "planner"),
    ],
    "valid_seen": [
        ("pick_and_place_simple", 1, "Apple", "Fridge", None, "handcoded"),
        ("pick_clean_then_place_in_recep", 401, "SoapBar", "Cart", None, None),
    ],
    "valid_unseen": [
        ("pick_and_place_simple", 201, "RemoteControl", "Sofa", None, "handcoded"),
        ("look_at_obj_in_light", 305, "CellPhone", "DeskLamp", None, "planner"),
    ],
}


def write_games(root: Path, games: dict | None = None) -> list[Path]:
    """Write the games under root/json_2.1.1/<split>/...; returns the trial folders. Deterministic."""
    folders = []
    for split, specs in (games or GAMES).items():
        for n, (task_type, scene, target, parent, _mrecep, walk) in enumerate(specs):
            seed = sum(map(ord, f"{split}/{task_type}/{scene}/{target}")) * 100 + n
            name, files, game = game_files(task_type, scene, target, parent, seed, trial_name(seed, n), seed)
            folder = Path(root) / DATA_VERSION / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for file, text in files.items():
                (folder / file).write_text(text)
            game_file = folder / "game.tw-pddl"
            game_file.write_text(json.dumps(game))
            if walk is not None:
                game["walkthrough"] = walkthrough(game_file, walk, seed)
                game_file.write_text(json.dumps(game))
            folders.append(folder)
    return folders


if __name__ == "__main__":
    for path in write_games(Path(sys.argv[1])):
        print(path)
