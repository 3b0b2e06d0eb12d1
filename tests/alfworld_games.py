"""Small ALFRED-style games written offline, in the layout `alfworld-download` produces, for tests/test_alfworld.py.

`alfworld-download` needs the internet; the `alfworld` package ships the rest: the PDDL domain (`alfred.pddl`), the
grammar (`alfred.twl2`), the floor-plan layouts (`gen/layouts/FloorPlanN-openable.json`: the receptacles of a room
with their ids and where the agent stands to reach them; `FloorPlanN-objects.json`: the object types in the room), the
goal library (`gen/goal_library.py`: each task type's PDDL goal and sentence templates) and ALFRED's constants (which
receptacle can hold what, what can be heated, cooled, cleaned, toggled). A game here is what the released data holds
for one trial:

    <root>/json_2.1.1/<split>/<task type>-<object>-<mrecep>-<receptacle>-<scene>/trial_T<...>/
        traj_data.json       {task_type, pddl_params, scene: {floor_plan, scene_num}, task_id}
        initial_state.pddl   the room (the layout's receptacles, objects placed in them) and the task type's goal
        game.tw-pddl         {pddl_domain, grammar (with the task sentence), pddl_problem, solvable, walkthrough}

The walkthrough is what `alfworld-generate` records: the run of alfworld's hand-coded expert (AlfredExpert
"handcoded") that wins the game, or the planner's plan where `walkthrough="planner"` is asked. Everything is
deterministic (fixed seeds, sorted listings), so two calls write the same bytes.

    python tests/alfworld_games.py DIR      # writes the test games under DIR (ALFWORLD_DATA=DIR then reads them)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

# split -> [(task type, scene, object, receptacle or toggle, movable receptacle, walkthrough)]; the walkthrough
# is the hand-coded expert's run ("handcoded", what the release holds), the planner's plan ("planner") or absent
# (None: a game file without one, whose expert is the planner's).
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

# ALFWorld uses SinkBasin and BathtubBasin as the receptacles (alfworld 0.4.2 removed Sink and Bathtub)
BASINS = {"Sink": "SinkBasin", "Bathtub": "BathtubBasin"}
# receptacle types a room lists among its objects without a position in the layout: placed by the room's centre
EXTRA_RECEPTACLES = ("SinkBasin", "BathtubBasin", "GarbageCan", "CoffeeMachine", "StoveBurner", "Toaster", "Toilet",
                     "TowelHolder", "HandTowelHolder", "ToiletPaperHanger", "SideTable", "Desk")
DISTRACTORS = 6            # object types besides the task's, per room
LAMPS = ("DeskLamp", "FloorLamp")
MAX_WALKTHROUGH = 150


def _package() -> Path:
    import alfworld
    return Path(alfworld.__file__).parent


def _fix(text: str) -> str:
    """ALFRED's PlannedGameState.fix_pddl_str_chars: ids as PDDL names ('#' marks a type in the goal library)."""
    for old, new in (("-", "_minus_"), ("#", "-"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        text = text.replace(old, new)
    return text


def _coord(value: float) -> str:
    return f"{value:+06.2f}"


def _loc(x: float, z: float, rotation: int, horizon: int) -> str:
    return f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{rotation // 90}|{horizon}"


def room(scene: int, rng: random.Random) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The receptacles of a floor plan ({id: location}, {id: type}) and its object types."""
    from alfworld.gen import constants
    layouts = _package() / "gen" / "layouts"
    positions = json.loads((layouts / f"FloorPlan{scene}-openable.json").read_text())
    object_types = json.loads((layouts / f"FloorPlan{scene}-objects.json").read_text())
    where, kind = {}, {}
    for rid in sorted(positions):
        rtype = rid.split("|")[0]
        rtype = BASINS.get(rtype, rtype)
        if rtype not in constants.RECEPTACLES or rtype in constants.MOVABLE_RECEPTACLES_SET:
            continue
        x, z, rotation, horizon = positions[rid]
        if rtype in BASINS.values():   # ALFRED names a basin after its sink: Sink|x|y|z|SinkBasin
            rid = f"{rid}|{rtype}"
        where[rid], kind[rid] = _loc(x, z, int(rotation), int(horizon)), rtype
    for n, rtype in enumerate(t for t in EXTRA_RECEPTACLES if t in object_types and t not in kind.values()):
        x, z = rng.choice([-1.5, -1.0, 0.5, 1.0]), rng.choice([-1.5, -0.5, 0.5, 1.5])
        rid = f"{rtype}|{_coord(x)}|{_coord(0.9 + n * 0.01)}|{_coord(z)}"
        if rtype in BASINS.values():
            rid = rtype.replace("Basin", "") + rid[rid.index("|"):] + f"|{rtype}"
        where[rid], kind[rid] = _loc(x, z, 90 * rng.randrange(4), 30), rtype
    return where, kind, object_types


def initial_state(task_type: str, scene: int, target: str, parent: str, seed: int) -> tuple[str, dict]:
    """An ALFRED-style initial_state.pddl for one task in one room, and the traj_data's pddl_params."""
    from alfworld.gen import constants
    from alfworld.gen import goal_library
    rng = random.Random(seed)
    where, kind, object_types = room(scene, rng)
    toggle = parent if task_type == "look_at_obj_in_light" else None
    placeable = {t for ts in constants.VAL_RECEPTACLE_OBJECTS.values() for t in ts}
    candidates = sorted(t for t in object_types if t in placeable and t in constants.OBJECTS_SET
                        and t not in constants.RECEPTACLES - constants.MOVABLE_RECEPTACLES_SET
                        and t not in (target, parent) and "Sliced" not in t)
    types = [target] + rng.sample(candidates, min(DISTRACTORS, len(candidates)))
    counts = {t: (2 if t == target and task_type == "pick_two_obj_and_place" else rng.choice([1, 1, 2]))
              for t in types}
    receptacles = sorted(where)
    objects: dict[str, tuple[str, str]] = {}     # id -> (type, receptacle)
    goal_receptacles = [r for r in receptacles if kind[r] == parent]
    for otype in types:
        homes = [r for r in receptacles if otype in constants.VAL_RECEPTACLE_OBJECTS.get(kind[r], ())]
        if otype == target and task_type != "look_at_obj_in_light":
            homes = [r for r in homes if kind[r] != parent] or homes   # the task is not done at the start
        if not homes:
            continue
        for i in range(counts[otype]):
            home = rng.choice(homes)
            x, y, z = (rng.uniform(-2, 2) for _ in range(3))
            objects[f"{otype}|{_coord(x)}|{_coord(y)}|{_coord(z)}"] = (otype, home)
    if toggle:   # the lamp stands on a desk, side table or dresser
        stands = [r for r in receptacles if kind[r] in ("Desk", "SideTable", "Dresser")]
        objects[f"{toggle}|{_coord(0.5)}|{_coord(1.2)}|{_coord(-0.5)}"] = (toggle, rng.choice(stands))
    elif not goal_receptacles:
        raise ValueError(f"FloorPlan{scene} has no {parent}")
    start = _loc(rng.choice([-0.5, 0.0, 0.25]), rng.choice([-0.5, 0.0, 0.75]), 90 * rng.randrange(4), 30)

    lines = ["(define (problem plan_trial)", "(:domain alfred)", "(:objects", "agent1 # agent"]
    otypes = sorted({t for t, _ in objects.values()})
    rtypes = sorted(set(kind.values()))
    lines += [f"{t}Type # otype" for t in otypes] + [f"{t}Type # rtype" for t in rtypes]
    lines += [f"{o} # object" for o in sorted(objects)] + [f"{r} # receptacle" for r in receptacles]
    lines += [f"{loc} # location" for loc in sorted(set(where.values()) | {start})]
    lines += [")", "(:init", f"(atLocation agent1 {start})"]
    for r in receptacles:
        lines += [f"(receptacleType {r} {kind[r]}Type)", f"(receptacleAtLocation {r} {where[r]})"]
        if kind[r] in constants.OPENABLE_CLASS_SET:
            lines.append(f"(openable {r})")
    for o in sorted(objects):
        otype, home = objects[o]
        lines += [f"(objectType {o} {otype}Type)", f"(inReceptacle {o} {home})",
                  f"(objectAtLocation {o} {where[home]})"]
        if otype in LAMPS:
            lines.append(f"(toggleable {o})")
        else:
            lines.append(f"(pickupable {o})")
        for predicate, group in (("cleanable", "Cleanable"), ("heatable", "Heatable"), ("coolable", "Coolable"),
                                 ("sliceable", "Sliceable")):
            if otype in constants.VAL_ACTION_OBJECTS[group]:
                lines.append(f"({predicate} {o})")
        if otype in constants.MOVABLE_RECEPTACLES_SET:
            lines.append(f"(isReceptacleObject {o})")
    for rtype in rtypes:
        for otype in otypes:
            if otype in constants.VAL_RECEPTACLE_OBJECTS.get(rtype, ()):
                lines.append(f"(canContain {rtype}Type {otype}Type)")
    lines.append(")")
    params = {"object_target": target, "parent_target": "" if toggle else parent,
              "toggle_target": toggle or "", "mrecep_target": "", "object_sliced": False}
    goal = goal_library.gdict[task_type]["pddl"].format(obj=target, recep=parent, toggle=toggle or "", mrecep="")
    text = "\n".join(lines) + "\n" + goal.strip() + "\n"
    return _fix(text), params


def task_sentence(task_type: str, params: dict, seed: int) -> str:
    """The templated goal, as alfworld's get_templated_task_desc writes it (a template chosen by `seed`)."""
    from alfworld.gen import goal_library
    template = random.Random(seed).choice(goal_library.gdict[task_type]["templates"])
    return template.format(obj=params["object_target"].lower(), recep=params["parent_target"].lower(),
                           toggle=params["toggle_target"].lower(), mrecep=params["mrecep_target"].lower())


def walkthrough(game_file: Path, kind: str, seed: int = 0) -> list[str]:
    """What alfworld-generate's is_solvable records: the hand-coded expert's winning run, or the planner's plan.
    The hand-coded expert explores with `random` (seeded here), and TextWorld's PDDL translator overwrites
    sys.argv (put back here)."""
    argv = list(sys.argv)
    random.seed(seed)
    try:
        return _walkthrough(game_file, kind)
    finally:
        sys.argv[:] = argv


def _walkthrough(game_file: Path, kind: str) -> list[str]:
    import textworld
    from textworld.envs import PddlEnv
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos
    infos = textworld.EnvInfos(admissible_commands=True, won=True, extras=["gamefile"])
    env = AlfredExpert(AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False)), expert_type=kind)
    env.load(str(game_file))
    state = env.reset()
    if kind == "planner":
        return list(state["extra.expert_plan"])
    actions, done = [], False
    while not done:
        if len(actions) >= MAX_WALKTHROUGH:
            raise RuntimeError(f"the hand-coded expert did not win {game_file} in {MAX_WALKTHROUGH} steps")
        action = state["extra.expert_plan"][0]
        state, _, done = env.step(action)
        actions.append(action)
    return actions


def write_games(root: Path, games: dict | None = None) -> list[Path]:
    """Write the games under root/json_2.1.1/<split>/...; returns the trial folders. Deterministic."""
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
    domain = Path(ALFRED_PDDL_PATH).read_text()
    grammar = Path(ALFRED_TWL2_PATH).read_text()
    folders = []
    for split, specs in (games or GAMES).items():
        for n, (task_type, scene, target, parent, mrecep, walk) in enumerate(specs):
            seed = sum(map(ord, f"{split}/{task_type}/{scene}/{target}")) * 100 + n
            trial = f"trial_T2019{1000 + seed % 9000:04d}_{seed % 1000000:06d}_{n:06d}"
            folder = root / "json_2.1.1" / split / f"{task_type}-{target}-{mrecep or 'None'}-{parent}-{scene}" / trial
            folder.mkdir(parents=True, exist_ok=True)
            problem, params = initial_state(task_type, scene, target, parent, seed)
            (folder / "initial_state.pddl").write_text(problem)
            traj = {"task_id": trial, "task_type": task_type, "pddl_params": params,
                    "scene": {"floor_plan": f"FloorPlan{scene}", "scene_num": scene},
                    "turk_annotations": {"anns": [{"task_desc": task_sentence(task_type, params, seed)}]}}
            (folder / "traj_data.json").write_text(json.dumps(traj, indent=1, sort_keys=True) + "\n")
            game = {"pddl_domain": domain,
                    "grammar": grammar.replace("UNKNOWN GOAL", task_sentence(task_type, params, seed)),
                    "pddl_problem": problem, "solvable": True}
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
