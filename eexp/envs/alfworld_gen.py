"""ALFWorld games generated offline from what the `alfworld` package ships, laid out as `alfworld-download` lays out
the released ones (`eexp alfworld-games OUT_DIR`; then ALFWORLD_DATA=OUT_DIR serves `--env alfworld`).

The release's games need the internet (`alfworld-download`). The `alfworld` 0.4.2 wheel ships what a game is made
from: ALFRED's 120 floor plans (`gen/layouts/FloorPlanN-openable.json`: the receptacles of a room with where the
agent stands to reach them; `FloorPlanN-objects.json`: the object types in the room), the goal library of the six
task types (`gen/goal_library.py`: each type's PDDL goal and sentence templates), ALFRED's constants (which receptacle
holds what; what can be heated, cooled, cleaned, toggled; which room types a task type is made in), the PDDL domain
and grammar, the planner and the hand-coded expert. A game here is what the release holds for one trial:

    <root>/json_2.1.1/<split>/<task type>-<object>-None-<receptacle>-<scene>/trial_T<...>/
        traj_data.json       {task_id, task_type, pddl_params, scene: {floor_plan, scene_num}, turk_annotations}
        initial_state.pddl   the room (its receptacles, objects placed in them) and the task type's goal
        game.tw-pddl         {pddl_domain, grammar (with the task sentence), pddl_problem, solvable, walkthrough}

What differs from the release: the release places objects where ALFRED's AI2-THOR scenes put them (physics, visibility,
a scene per trial); here they are sampled into receptacles that can hold them (ALFRED's VAL_RECEPTACLE_OBJECTS), every
pickable object type of the room present 1-3 times; receptacles the layout gives no position (a garbage can, a
toaster, the stove: one burner) stand at sampled places. Goal sentences are the goal library's templates, as
`alfworld-generate` writes them by default (no human annotations). So these are ALFWorld's engine, rooms, task types
and experts on games of our making, not the released split: results on them are not ALFWorld results.

Splits, as ALFWorld makes them: `valid_unseen` in the rooms of the released valid_unseen (FloorPlan 10, 219, 308,
424: a kitchen, a living room, a bedroom, a bathroom), which no train game uses; `train` in the other 116 rooms;
`valid_seen` holds task instances of train ({task type, object, receptacle, room}: ALFWorld's definition of seen) with
objects placed anew. The task types come in the proportions of the released splits (RELEASED). A game's room and goal
are drawn for its task type from the rooms where ALFRED makes that type (GOALS_VALID) and the goals a room allows.

Every game is solvable: alfworld's hand-coded expert plays it (what `alfworld-generate` records as the walkthrough);
where it does not win within MAX_WALKTHROUGH steps or loses track (STUCK_LOOKS), the PDDL planner's plan is recorded
instead, planned on the game focused on the task's objects and receptacles (focused()), renamed to the whole game's
numbering and replayed to a win in the whole game; where neither wins, the game is drawn again (the next attempt of
the same seed). Deterministic: a game is a function of (seed, split, task type, its number), so the same arguments
write the same bytes, whatever --jobs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

# The layout and task types the environment reads (eexp/envs/alfworld_env.py): the generator writes what it reads.
from eexp.envs.alfworld_env import DATA_VERSION, TASK_TYPES, _engine_calls
from eexp.errors import EnvError
from eexp.workers import open_pool

GENERATOR = "eexp alfworld-games"
GENERATOR_VERSION = 1
SPLITS = ("train", "valid_seen", "valid_unseen")
# The released ALFWorld games per task type (ALFWorld, Shridhar et al., ICLR 2021, its table of task types: 3,553
# train, 140 valid_seen, 134 valid_unseen; the two eval splits' counts are also those the AHEAD-ALFWorld-7B model card
# lists for the released files). A generated split draws its task types in these proportions.
RELEASED = {
    "train": {
        "pick_and_place_simple": 790,
        "look_at_obj_in_light": 308,
        "pick_clean_then_place_in_recep": 650,
        "pick_heat_then_place_in_recep": 459,
        "pick_cool_then_place_in_recep": 533,
        "pick_two_obj_and_place": 813,
    },
    "valid_seen": {
        "pick_and_place_simple": 35,
        "look_at_obj_in_light": 13,
        "pick_clean_then_place_in_recep": 27,
        "pick_heat_then_place_in_recep": 16,
        "pick_cool_then_place_in_recep": 25,
        "pick_two_obj_and_place": 24,
    },
    "valid_unseen": {
        "pick_and_place_simple": 24,
        "look_at_obj_in_light": 18,
        "pick_clean_then_place_in_recep": 31,
        "pick_heat_then_place_in_recep": 23,
        "pick_cool_then_place_in_recep": 21,
        "pick_two_obj_and_place": 17,
    },
}
SIZES = {"train": 600, "valid_seen": 140, "valid_unseen": 134}  # the default: CPU scale
FULL_SIZES = {split: sum(counts.values()) for split, counts in RELEASED.items()}  # the release's: 3,553 / 140 / 134
UNSEEN_ROOMS = (10, 219, 308, 424)  # the rooms of the released valid_unseen
ALL_ROOMS = tuple(list(range(1, 31)) + list(range(201, 231)) + list(range(301, 331)) + list(range(401, 431)))
SEEN_ROOMS = tuple(r for r in ALL_ROOMS if r not in UNSEEN_ROOMS)
ROOM_TYPES = {
    "Kitchen": range(1, 31),
    "LivingRoom": range(201, 231),
    "Bedroom": range(301, 331),
    "Bathroom": range(401, 431),
}
TOOLS = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}  # the receptacle a task type's state change needs
ACTION_GROUPS = {
    "pick_clean_then_place_in_recep": "Cleanable",
    "pick_heat_then_place_in_recep": "Heatable",
    "pick_cool_then_place_in_recep": "Coolable",
}

# ALFWorld uses SinkBasin and BathtubBasin as the receptacles (alfworld 0.4.2 removed Sink and Bathtub)
BASINS = {"Sink": "SinkBasin", "Bathtub": "BathtubBasin"}
# receptacle types a room lists among its objects without a position in the layout: placed at a sampled spot. The
# generator places all of these; tests/alfworld_games.py's small games the first twelve (as they always have)
EXTRA_RECEPTACLES = (
    "SinkBasin",
    "BathtubBasin",
    "GarbageCan",
    "CoffeeMachine",
    "StoveBurner",
    "Toaster",
    "Toilet",
    "TowelHolder",
    "HandTowelHolder",
    "ToiletPaperHanger",
    "SideTable",
    "Desk",
    "Drawer",
    "Shelf",
    "Cabinet",
    "Safe",
    "LaundryHamper",
    "Ottoman",
)
SMALL_EXTRAS = EXTRA_RECEPTACLES[:12]
LAMPS = ("DeskLamp", "FloorLamp")
LAMP_STANDS = ("Desk", "SideTable", "Dresser")
MAX_WALKTHROUGH = 150  # steps the hand-coded expert gets to win (alfworld's own agent gives up at 200)
STUCK_LOOKS = 5  # ... and `look`s: it says `look` when it has lost track (then it walks in circles)
ATTEMPTS = 40  # draws of one game before giving up (a room and goal that never work are not drawn)
ALL_OBJECTS = None  # initial_state's `distractors`: every pickable object type of the room
COUNTS = (1, 2, 3)  # instances of an object type (ALFRED's MAX_NUM_OF_OBJ_INSTANCES is 3)


# ---- the package ------------------------------------------------------------------------------------------------


def _import_alfworld():
    """Import alfworld without leaving a folder behind: its import makes $ALFWORLD_DATA (or ~/.cache/alfworld) and
    sets the variable; where it was not set, it points at a temporary folder during the import and is unset after."""
    if "alfworld.info" in sys.modules:
        return
    given = os.environ.get("ALFWORLD_DATA")
    if given is None:
        scratch = tempfile.mkdtemp(prefix="eexp-alfworld-")
        os.environ["ALFWORLD_DATA"] = scratch
    try:
        import alfworld.info  # noqa: F401
    finally:
        if given is None:
            os.environ.pop("ALFWORLD_DATA", None)
            shutil.rmtree(scratch, ignore_errors=True)


def _package() -> Path:
    _import_alfworld()
    import alfworld

    return Path(alfworld.__file__).parent


def _constants():
    _import_alfworld()
    from alfworld.gen import constants

    return constants


def _fix(text: str) -> str:
    """ALFRED's PlannedGameState.fix_pddl_str_chars: ids as PDDL names ('#' marks a type in the goal library)."""
    for old, new in (("-", "_minus_"), ("#", "-"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        text = text.replace(old, new)
    return text


def _coord(value: float) -> str:
    return f"{value:+06.2f}"


def _loc(x: float, z: float, rotation: int, horizon: int) -> str:
    return f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{rotation // 90}|{horizon}"


@functools.cache
def _layout(scene: int) -> tuple[dict, list[str]]:
    layouts = _package() / "gen" / "layouts"
    positions = json.loads((layouts / f"FloorPlan{scene}-openable.json").read_text())
    object_types = json.loads((layouts / f"FloorPlan{scene}-objects.json").read_text())
    return positions, object_types


# ---- one game -----------------------------------------------------------------------------------------------------


def room(
    scene: int, rng: random.Random, extras: tuple[str, ...] = EXTRA_RECEPTACLES
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The receptacles of a floor plan ({id: location}, {id: type}) and its object types; `extras`: the receptacle
    types placed at a sampled spot where the room has them without a position."""
    constants = _constants()
    positions, object_types = _layout(scene)
    where, kind = {}, {}
    for rid in sorted(positions):
        rtype = rid.split("|")[0]
        rtype = BASINS.get(rtype, rtype)
        if rtype not in constants.RECEPTACLES or rtype in constants.MOVABLE_RECEPTACLES_SET:
            continue
        x, z, rotation, horizon = positions[rid]
        if rtype in BASINS.values():  # ALFRED names a basin after its sink: Sink|x|y|z|SinkBasin
            rid = f"{rid}|{rtype}"
        where[rid], kind[rid] = _loc(x, z, int(rotation), int(horizon)), rtype
    for n, rtype in enumerate(t for t in extras if t in object_types and t not in kind.values()):
        x, z = rng.choice([-1.5, -1.0, 0.5, 1.0]), rng.choice([-1.5, -0.5, 0.5, 1.5])
        rid = f"{rtype}|{_coord(x)}|{_coord(0.9 + n * 0.01)}|{_coord(z)}"
        if rtype in BASINS.values():
            rid = rtype.replace("Basin", "") + rid[rid.index("|") :] + f"|{rtype}"
        where[rid], kind[rid] = _loc(x, z, 90 * rng.randrange(4), 30), rtype
    return where, kind, object_types


def _pickable(object_types) -> list[str]:
    """The object types of a room that can be picked up and put somewhere (no static receptacle, lamp or slice)."""
    constants = _constants()
    placeable = {t for ts in constants.VAL_RECEPTACLE_OBJECTS.values() for t in ts}
    return sorted(
        t
        for t in object_types
        if t in placeable
        and t in constants.OBJECTS_SET
        and t not in constants.RECEPTACLES - constants.MOVABLE_RECEPTACLES_SET
        and "Sliced" not in t
        and t not in LAMPS
    )


def initial_state(
    task_type: str,
    scene: int,
    target: str,
    parent: str,
    seed: int,
    distractors: int | None = 6,
    counts: tuple[int, ...] = (1, 1, 2),
    extras: tuple[str, ...] = SMALL_EXTRAS,
) -> tuple[str, dict]:
    """An ALFRED-style initial_state.pddl for one task in one room, and the traj_data's pddl_params. `parent` is the
    receptacle type, or the lamp of look_at_obj_in_light; `distractors` object types besides the target (None: all
    the room's), each present `counts` times (a choice; the target of pick_two_obj_and_place twice); `extras` as
    room() takes them. The defaults make tests/alfworld_games.py's small rooms; the generator passes its own."""
    constants = _constants()
    from alfworld.gen import goal_library

    rng = random.Random(seed)
    where, kind, object_types = room(scene, rng, extras)
    toggle = parent if task_type == "look_at_obj_in_light" else None
    placeable = {t for ts in constants.VAL_RECEPTACLE_OBJECTS.values() for t in ts}
    candidates = sorted(
        t
        for t in object_types
        if t in placeable
        and t in constants.OBJECTS_SET
        and t not in constants.RECEPTACLES - constants.MOVABLE_RECEPTACLES_SET
        and t not in (target, parent)
        and "Sliced" not in t
    )
    types = [target] + rng.sample(
        candidates, len(candidates) if distractors is None else min(distractors, len(candidates))
    )
    how_many = {t: (2 if t == target and task_type == "pick_two_obj_and_place" else rng.choice(counts)) for t in types}
    receptacles = sorted(where)
    objects: dict[str, tuple[str, str]] = {}  # id -> (type, receptacle)
    goal_receptacles = [r for r in receptacles if kind[r] == parent]
    for otype in types:
        homes = [r for r in receptacles if otype in constants.VAL_RECEPTACLE_OBJECTS.get(kind[r], ())]
        if otype == target and task_type != "look_at_obj_in_light":
            homes = [r for r in homes if kind[r] != parent] or homes  # the task is not done at the start
        if not homes:
            continue
        for i in range(how_many[otype]):
            home = rng.choice(homes)
            x, y, z = (rng.uniform(-2, 2) for _ in range(3))
            objects[f"{otype}|{_coord(x)}|{_coord(y)}|{_coord(z)}"] = (otype, home)
    if toggle:  # the lamp stands on a desk, side table or dresser
        stands = [r for r in receptacles if kind[r] in LAMP_STANDS]
        if not stands:
            raise ValueError(f"FloorPlan{scene} has nothing for a {toggle} to stand on")
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
        lines += [
            f"(objectType {o} {otype}Type)",
            f"(inReceptacle {o} {home})",
            f"(objectAtLocation {o} {where[home]})",
        ]
        if otype in LAMPS:
            lines.append(f"(toggleable {o})")
        else:
            lines.append(f"(pickupable {o})")
        for predicate, group in (
            ("cleanable", "Cleanable"),
            ("heatable", "Heatable"),
            ("coolable", "Coolable"),
            ("sliceable", "Sliceable"),
        ):
            if otype in constants.VAL_ACTION_OBJECTS[group]:
                lines.append(f"({predicate} {o})")
        if otype in constants.MOVABLE_RECEPTACLES_SET:
            lines.append(f"(isReceptacleObject {o})")
    for rtype in rtypes:
        for otype in otypes:
            if otype in constants.VAL_RECEPTACLE_OBJECTS.get(rtype, ()):
                lines.append(f"(canContain {rtype}Type {otype}Type)")
    lines.append(")")
    params = {
        "object_target": target,
        "parent_target": "" if toggle else parent,
        "toggle_target": toggle or "",
        "mrecep_target": "",
        "object_sliced": False,
    }
    goal = goal_library.gdict[task_type]["pddl"].format(obj=target, recep=parent, toggle=toggle or "", mrecep="")
    text = "\n".join(lines) + "\n" + goal.strip() + "\n"
    return _fix(text), params


def task_sentence(task_type: str, params: dict, seed: int) -> str:
    """The templated goal, as alfworld's get_templated_task_desc writes it (a template chosen by `seed`)."""
    _import_alfworld()
    from alfworld.gen import goal_library

    template = random.Random(seed).choice(goal_library.gdict[task_type]["templates"])
    return template.format(
        obj=params["object_target"].lower(),
        recep=params["parent_target"].lower(),
        toggle=params["toggle_target"].lower(),
        mrecep=params["mrecep_target"].lower(),
    )


def trial_name(seed: int, n: int) -> str:
    return f"trial_T2019{1000 + seed % 9000:04d}_{seed % 1000000:06d}_{n:06d}"


def game_files(
    task_type: str,
    scene: int,
    target: str,
    parent: str,
    seed: int,
    trial: str,
    n_sentence: int,
    distractors: int | None = 6,
    counts: tuple[int, ...] = (1, 1, 2),
    extras: tuple[str, ...] = SMALL_EXTRAS,
    extra: dict | None = None,
) -> tuple[str, dict[str, str], dict]:
    """The folder (relative to the split) and the three files of a game, without a walkthrough yet."""
    _import_alfworld()
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

    folder = f"{task_type}-{target}-None-{parent}-{scene}/{trial}"
    problem, params = initial_state(task_type, scene, target, parent, seed, distractors, counts, extras)
    sentence = task_sentence(task_type, params, n_sentence)
    traj = {
        "task_id": trial,
        "task_type": task_type,
        "pddl_params": params,
        "scene": {"floor_plan": f"FloorPlan{scene}", "scene_num": scene},
        "turk_annotations": {"anns": [{"task_desc": sentence}]},
        **(extra or {}),
    }
    grammar = _text(ALFRED_TWL2_PATH).replace("UNKNOWN GOAL", sentence)
    game = {"pddl_domain": _text(ALFRED_PDDL_PATH), "grammar": grammar, "pddl_problem": problem, "solvable": True}
    files = {"initial_state.pddl": problem, "traj_data.json": json.dumps(traj, indent=1, sort_keys=True) + "\n"}
    return folder, files, game


@functools.lru_cache(maxsize=4)
def _text(path: str) -> str:
    return Path(path).read_text()


# ---- the experts --------------------------------------------------------------------------------------------------

_ENVS: dict[str, object] = {}  # one engine per kind and process: fast-downward's library is loaded once


def _env(kind: str):
    """alfworld's wrappers over TextWorld's PDDL engine, as alfworld-generate builds them: the hand-coded expert,
    the planner, or none (to replay a plan)."""
    if kind not in _ENVS:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos
        from textworld.envs import PddlEnv

        infos = textworld.EnvInfos(admissible_commands=True, won=True, extras=["gamefile"])
        env = AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))
        _ENVS[kind] = env if kind == "replay" else AlfredExpert(env, expert_type=kind)
    return _ENVS[kind]


class _calls:
    """Around engine calls: eexp's memoized translation and grammar parsing (eexp/envs/alfworld_env.py, which also
    puts sys.argv back after TextWorld's PDDL translator)."""

    def __enter__(self):
        self.inner = _engine_calls()
        self.inner.__enter__()

    def __exit__(self, *exc):
        self.inner.__exit__(*exc)


def handcoded_walkthrough(
    game_file: Path, seed: int, limit: int = MAX_WALKTHROUGH, looks: int | None = STUCK_LOOKS
) -> list[str] | None:
    """The hand-coded expert's run (it explores with `random`, seeded here) when it wins within `limit` steps and
    at most `looks` of them `look` (None: any number), else None. The global `random` is put back after."""
    saved = random.getstate()
    random.seed(seed)
    env = _env("handcoded")
    with _calls():
        try:
            env.load(str(game_file))
            state = env.reset()
            actions, done = [], False
            while not done:
                if len(actions) >= limit or (looks is not None and actions.count("look") > looks):
                    return None
                action = state["extra.expert_plan"][0]
                state, _, done = env.step(action)
                actions.append(action)
        except Exception:  # alfworld's agent gives up by raising (timeout, a state it cannot parse)
            return None
        finally:
            random.setstate(saved)
    return actions if state.get("won") else None


def _declared(problem: str) -> dict[str, str]:
    """The problem's objects, receptacles and locations: {name: kind}."""
    found = {}
    for line in problem.splitlines():
        name, _, kind = line.partition(" - ")
        if kind in ("object", "receptacle", "location", "agent"):
            found[name] = kind
    return found


def focused(problem: str, keep: set[str], keep_receptacles: set[str]) -> str:
    """The PDDL problem with only the objects of the types in `keep`, and only the receptacles of the types in
    `keep_receptacles` or holding one of those objects (every location stays). The planner's search grows with every
    movable object and openable receptacle of the room (a pick_two game in a full kitchen: past 7 GB with every
    object, 42 s of CPU with the task's objects only, 3 s focused); a plan here holds in the whole game, since no
    action's precondition names an object or receptacle it does not use."""
    declared = _declared(problem)
    facts = [line[1:-1].split() for line in problem.splitlines() if line.startswith("(") and line.endswith(")")]
    rtype = {f[1]: f[2].removesuffix("Type") for f in facts if f[0] == "receptacleType" and len(f) == 3}
    objects = {n for n, kind in declared.items() if kind == "object" and n.split("_bar_", 1)[0] in keep}
    homes = {f[2] for f in facts if f[0] == "inReceptacle" and len(f) == 3 and f[1] in objects}
    dropped = {
        n
        for n, kind in declared.items()
        if (kind == "object" and n not in objects)
        or (kind == "receptacle" and n not in homes and rtype.get(n) not in keep_receptacles)
    }
    lines = [
        line
        for line in problem.splitlines()
        if not dropped.intersection(line.replace("(", " ").replace(")", " ").split())
    ]
    return "\n".join(lines) + "\n"


def _names(problem: str) -> dict[str, str]:
    """{PDDL id: the name a player reads}, as alfworld's AlfredDemangler numbers them (within a type, by id)."""
    from alfworld.agents.utils.misc import Demangler

    ids = _declared(problem)
    demangler = Demangler(game_infos={i: SimpleNamespace(id=i) for i in ids})
    return {i: demangler.demangle_alfred_name(i).strip().lower() for i in ids}


def _renamed(plan: list[str], small: str, whole: str) -> list[str]:
    """A plan written with the focused problem's names, in the whole game's (numbers within a type change when
    receptacles of that type are left out)."""
    full = _names(whole)
    mapping = {name: full[i] for i, name in _names(small).items()}
    return [re.sub(r"[a-z]+ \d+", lambda m: mapping.get(m.group(0), m.group(0)), action) for action in plan]


def planner_walkthrough(
    game_file: Path, keep: set[str] | None = None, keep_receptacles: set[str] = frozenset()
) -> list[str] | None:
    """The PDDL planner's plan from the first state (on the focused problem where `keep` is given), replayed to a
    win in the whole game in an engine of its own; else None."""
    with _calls():
        try:
            env = _env("planner")
            planned, game = game_file, None
            if keep is not None:
                game = json.loads(game_file.read_text())
                small = focused(game["pddl_problem"], keep, set(keep_receptacles))
                planned = game_file.with_name("focused.tw-pddl")
                planned.write_text(json.dumps({**game, "pddl_problem": small}))
            env.load(str(planned))
            plan = list(env.reset()["extra.expert_plan"] or [])
            if game is not None:
                plan = _renamed(plan, small, game["pddl_problem"])
            if not plan:
                return None
            replay = _env("replay")
            replay.load(str(game_file))
            state, done = replay.reset(), False
            for action in plan:
                if done or action not in (state["admissible_commands"] or []):
                    return None
                state, _, done = replay.step(action)
        except Exception:
            return None
    return plan if state.get("won") else None


def walkthrough(game_file: Path, kind: str, seed: int = 0) -> list[str]:
    """The given expert's walkthrough (tests/alfworld_games.py's games); a RuntimeError where it does not win."""
    argv = list(sys.argv)
    try:
        found = (
            handcoded_walkthrough(game_file, seed, looks=None)
            if kind == "handcoded"
            else planner_walkthrough(game_file)
        )
    finally:
        sys.argv[:] = argv
    if found is None:
        raise RuntimeError(f"the {kind} expert did not win {game_file}")
    return found


# ---- rooms and goals ----------------------------------------------------------------------------------------------


def room_type(scene: int) -> str:
    return next(name for name, scenes in ROOM_TYPES.items() if scene in scenes)


@functools.cache
def goals(scene: int) -> dict[str, tuple[tuple[str, str], ...]]:
    """The (object, receptacle or lamp) pairs each task type can have in a room, sorted: ALFRED's rooms for the task
    type (GOALS_VALID), an object that the room holds and the task type accepts, a receptacle that can hold it besides
    the one it must end in, the appliance its state change needs, a lamp with something to stand on."""
    constants = _constants()
    _, kind, object_types = room(scene, random.Random(0))  # the receptacle types do not depend on the draw
    rtypes = set(kind.values())
    objects = _pickable(object_types)
    found: dict[str, tuple[tuple[str, str], ...]] = {}
    for task_type in TASK_TYPES:
        pairs = []
        if room_type(scene) in constants.GOALS_VALID[task_type]:
            if task_type == "look_at_obj_in_light":
                lamps = [t for t in LAMPS if t in object_types] if rtypes & set(LAMP_STANDS) else []
                pairs = [
                    (o, lamp)
                    for o in objects
                    for lamp in lamps
                    if any(o in constants.VAL_RECEPTACLE_OBJECTS.get(r, ()) for r in rtypes)
                ]
            else:
                tool = TOOLS.get(task_type)
                group = ACTION_GROUPS.get(task_type)
                if tool is None or tool in rtypes:
                    for o in objects:
                        if group and o not in constants.VAL_ACTION_OBJECTS[group]:
                            continue
                        holders = sorted(r for r in rtypes if o in constants.VAL_RECEPTACLE_OBJECTS.get(r, ()))
                        pairs += [(o, r) for r in holders if r != tool and any(h != r for h in holders)]
        found[task_type] = tuple(sorted(pairs))
    return found


def rooms_for(task_type: str, pool: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(scene for scene in pool if goals(scene)[task_type])


def allocate(total: int, shares: dict[str, int]) -> dict[str, int]:
    """`total` games over the task types in proportion to `shares` (largest remainder; ties in TASK_TYPES order)."""
    whole = sum(shares.values())
    exact = {t: total * shares[t] / whole for t in TASK_TYPES}
    counts = {t: int(exact[t]) for t in TASK_TYPES}
    rest = sorted(TASK_TYPES, key=lambda t: (-(exact[t] - counts[t]), TASK_TYPES.index(t)))
    for t in rest[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


# ---- the generator ------------------------------------------------------------------------------------------------


def _draw(seed: int, split: str, task_type: str, k: int, attempt: int, seen: dict | None) -> tuple[int, str, str, int]:
    """A game's room, goal and placement seed: a function of its identity and the attempt."""
    rng = random.Random(f"eexp-alfworld-games/{seed}/{split}/{task_type}/{k}/{attempt}")
    if split == "valid_seen":
        known = (seen or {}).get(task_type, ())
        if known:  # one of train's task instances, objects placed anew
            scene, target, parent = rng.choice(known)
            return scene, target, parent, rng.randrange(2**31)
        used = sorted({i[0] for instances in (seen or {}).values() for i in instances})
        pool = rooms_for(task_type, tuple(used)) or rooms_for(task_type, SEEN_ROOMS)
    else:
        pool = rooms_for(task_type, UNSEEN_ROOMS if split == "valid_unseen" else SEEN_ROOMS)
    if not pool:
        raise EnvError(f"alfworld-games: no room of {split} can hold a {task_type} game")
    scene = rng.choice(pool)
    target, parent = rng.choice(goals(scene)[task_type])
    return scene, target, parent, rng.randrange(2**31)


def make_game(job: dict) -> dict:
    """One solvable game (the worker's unit): drawn, written under job['scratch'], played by the experts, redrawn
    where neither wins. Returns its folder, files (text) and how it went."""
    _import_alfworld()
    cpu = time.process_time()
    scratch = Path(job["scratch"])
    split, task_type, k = job["split"], job["task_type"], job["k"]
    for attempt in range(job.get("first_attempt", 0), job.get("first_attempt", 0) + ATTEMPTS):
        scene, target, parent, placement = _draw(job["seed"], split, task_type, k, attempt, job.get("seen"))
        trial = trial_name(placement, job["n"])
        extra = {
            "eexp": {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": job["seed"], "attempt": attempt}
        }
        folder, files, game = game_files(
            task_type,
            scene,
            target,
            parent,
            placement,
            trial,
            placement,
            distractors=ALL_OBJECTS,
            counts=COUNTS,
            extras=EXTRA_RECEPTACLES,
            extra=extra,
        )
        where = scratch / f"{split}-{job['n']}"
        where.mkdir(parents=True, exist_ok=True)
        game_file = where / "game.tw-pddl"
        for name, text in files.items():
            (where / name).write_text(text)
        game_file.write_text(json.dumps(game))
        argv = list(sys.argv)
        try:
            steps, expert = handcoded_walkthrough(game_file, placement), "handcoded"
            if steps is None:
                look = task_type == "look_at_obj_in_light"
                keep = {target, parent} if look else {target}
                receptacles = set() if look else {parent} | ({TOOLS[task_type]} if task_type in TOOLS else set())
                steps, expert = planner_walkthrough(game_file, keep, receptacles), "planner"
        finally:
            sys.argv[:] = argv
        shutil.rmtree(where, ignore_errors=True)
        if steps is None:
            continue
        traj = json.loads(files["traj_data.json"])
        traj["eexp"]["walkthrough"] = expert
        files["traj_data.json"] = json.dumps(traj, indent=1, sort_keys=True) + "\n"
        files["game.tw-pddl"] = json.dumps({**game, "walkthrough": steps})
        return {
            "split": split,
            "n": job["n"],
            "task_type": task_type,
            "folder": folder,
            "files": files,
            "scene": scene,
            "instance": (scene, target, parent),
            "expert": expert,
            "steps": len(steps),
            "attempt": attempt,
            "cpu_s": time.process_time() - cpu,
        }
    raise EnvError(
        f"alfworld-games: no solvable {task_type} game for {split} #{job['n']} in {ATTEMPTS} draws (seed {job['seed']})"
    )


def _worker_setup() -> None:
    """A worker's state: none; alfworld imported once, before its first game."""
    _import_alfworld()


def _make_game_in_worker(state: None, job: dict) -> dict:
    return make_game(job)


def game_plan(sizes: dict[str, int]) -> dict[str, list[tuple[str, int]]]:
    """Each split's games as (task type, k), in the order they are numbered."""
    return {
        split: [(t, k) for t, count in allocate(sizes[split], RELEASED[split]).items() for k in range(count)]
        for split in SPLITS
    }


def generate(
    out_dir: Path,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    jobs: int = 1,
    note: Callable[[str], None] | None = None,
) -> dict:
    """Write the games under out_dir/json_2.1.1/<split>/ and out_dir/eexp-games.json (what was made, how); returns
    that summary. The folder json_2.1.1 must not exist yet: the games are written beside it and moved in at the end,
    so an interrupted run leaves no half split behind."""
    sizes = {**SIZES, **(sizes or {})}
    for split, n in sizes.items():
        if split not in SPLITS or n < 0:
            raise EnvError(f"alfworld-games: bad size {split}={n}")
    if not sum(sizes.values()):
        raise EnvError("alfworld-games: nothing to generate (every split's size is 0)")
    for module in ("alfworld", "fast_downward", "textworld"):
        if importlib.util.find_spec(module) is None:
            raise EnvError(
                f"alfworld-games: the package {module} is not installed; pip install 'eexp[alfworld]' "
                "(alfworld==0.4.2 'textworld[pddl]')"
            )
    out_dir = Path(out_dir)
    final = out_dir / DATA_VERSION
    if final.exists():
        raise EnvError(
            f"{final}: already exists (alfworld-games writes a new data folder; remove it or choose another OUT_DIR)"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile_dir(out_dir))
    except OSError as e:
        raise EnvError(f"{out_dir}: cannot write ({e.strerror or e})") from None
    note = note or (lambda message: None)
    started = time.perf_counter()
    made: dict[str, list[dict]] = {}
    pool = None
    try:
        pool = open_pool(jobs, _worker_setup)  # eexp's worker processes (None: games made here, one by one)
        seen: dict[str, list] = {}
        for split, games in game_plan(sizes).items():
            if not games:
                made[split] = []
                continue
            t0 = time.perf_counter()
            job_list = [
                {
                    "seed": seed,
                    "split": split,
                    "task_type": t,
                    "k": k,
                    "n": n,
                    "scratch": str(staging / ".scratch"),
                    "seen": seen if split == "valid_seen" else None,
                }
                for n, (t, k) in enumerate(games)
            ]
            results = list(pool.map(_make_game_in_worker, job_list) if pool else map(make_game, job_list))
            results = _no_duplicates(results, job_list, made)
            for r in results:
                folder = staging / split / r["folder"]
                folder.mkdir(parents=True, exist_ok=True)
                for name, text in sorted(r["files"].items()):
                    (folder / name).write_text(text)
            made[split] = results
            if split == "train":
                for t in TASK_TYPES:
                    seen[t] = sorted({r["instance"] for r in results if r["task_type"] == t})
            cpu = sum(r["cpu_s"] for r in results)
            note(
                f"alfworld-games: {split}: {len(results)} games in {time.perf_counter() - t0:.0f} s "
                f"({cpu:.0f} s of CPU)"
            )
        shutil.rmtree(staging / ".scratch", ignore_errors=True)
        summary = _summary(made, sizes, seed)
        (staging / "eexp-games.json").write_text(json.dumps(summary, indent=1) + "\n")
        staging.rename(final)  # the games, then the summary: a summary means every game is there
        os.replace(final / "eexp-games.json", out_dir / "eexp-games.json")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()  # after a finished run there is nothing left in flight; after an error, drop it
    return dict(
        summary,
        seconds=round(time.perf_counter() - started, 1),
        cpu_seconds=round(sum(r["cpu_s"] for split in made.values() for r in split), 1),
    )


def tempfile_dir(out_dir: Path) -> str:
    return tempfile.mkdtemp(prefix=f".{DATA_VERSION}.", dir=out_dir)


def _problem_digest(result: dict) -> str:
    return hashlib.sha256(result["files"]["initial_state.pddl"].encode()).hexdigest()


def _no_duplicates(results: list[dict], jobs: list[dict], made: dict[str, list[dict]]) -> list[dict]:
    """No two games the same room with the same placement (in game order; a later twin is drawn again)."""
    taken = {_problem_digest(r) for split in made.values() for r in split}
    out = []
    for result, job in zip(results, jobs):
        while _problem_digest(result) in taken:
            result = make_game({**job, "first_attempt": result["attempt"] + 1})
        taken.add(_problem_digest(result))
        out.append(result)
    return out


def _summary(made: dict[str, list[dict]], sizes: dict[str, int], seed: int) -> dict:
    splits = {}
    for split in SPLITS:
        results = made.get(split, [])
        steps = [r["steps"] for r in results]
        splits[split] = {
            "games": len(results),
            "task_types": {t: sum(r["task_type"] == t for r in results) for t in TASK_TYPES},
            "rooms": sorted({r["scene"] for r in results}),
            "walkthrough": {e: sum(r["expert"] == e for r in results) for e in ("handcoded", "planner")},
            "walkthrough_steps": {
                "mean": round(sum(steps) / len(steps), 2) if steps else None,
                "max": max(steps) if steps else None,
            },
            "redrawn": sum(r["attempt"] > 0 for r in results),
        }
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "alfworld": importlib.metadata.version("alfworld"),
        "seed": seed,
        "sizes": {s: sizes[s] for s in SPLITS},
        "note": "generated games on ALFWorld's engine, not the released split: objects placed by sampling, not "
        "from AI2-THOR scenes; task types in the released proportions",
        "splits": splits,
    }
