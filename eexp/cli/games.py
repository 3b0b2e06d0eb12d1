"""`alfworld-games`: ALFWorld games generated offline (eexp/envs/alfworld_gen.py), for where `alfworld-download`
cannot reach the internet or its 3,553 train games are more than a run needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from eexp.cli.group import cli
from eexp.cli.options import field_options, quiet_option
from eexp.envs import alfworld_gen
from eexp.fields import setting

SIZES, FULL = alfworld_gen.SIZES, alfworld_gen.FULL_SIZES


@dataclass(frozen=True, kw_only=True)
class AlfworldGamesSettings:
    """alfworld-games' own options, a default and a help written once (made into click options by field_options).
    A size left None is the default size, or the released one with --full: the help says both."""

    train: int | None = setting(
        None, f"Games in train  [default: {SIZES['train']}; --full: {FULL['train']:,}].", metavar="N", min=0
    )
    valid_seen: int | None = setting(
        None, f"Games in valid_seen (eexp's test split)  [default: {SIZES['valid_seen']}].", metavar="N", min=0
    )
    valid_unseen: int | None = setting(
        None, f"Games in valid_unseen (eexp's ood split)  [default: {SIZES['valid_unseen']}].", metavar="N", min=0
    )
    full: bool = setting(False, "The released split's sizes (3,553 / 140 / 134) where a size is not given.")
    seed: int = setting(0, "Which games: the same seed writes the same bytes.")
    jobs: int = setting(
        1,
        "Processes generating games side by side (the games do not depend on it).",
        short="-j",
        metavar="N",
        min=1,
    )


@cli.command("alfworld-games")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@field_options(AlfworldGamesSettings, "train", "valid_seen", "valid_unseen", "full", "seed", "jobs")
@quiet_option("No progress lines, no summary line.")
def alfworld_games(out_dir, train, valid_seen, valid_unseen, full, seed, jobs, quiet):
    """Generate solvable ALFWorld games into OUT_DIR, in the layout of alfworld-download's.

    Rooms, task types, goals, PDDL domain, grammar and experts are the `alfworld` package's (ALFRED's 120 floor
    plans and the goal library of the six task types); objects are placed by sampling into receptacles that can
    hold them, not from AI2-THOR scenes, so these are generated games on ALFWorld's engine, not the released split.
    The splits follow ALFWorld's rules: valid_unseen in the four rooms of the released valid_unseen, which no train
    game uses; train in the other 116; valid_seen holds train's task instances (task type, object, receptacle,
    room) with objects placed anew. Task types come in the released proportions. Every game is solvable: its
    walkthrough is the hand-coded expert's winning run, or the planner's plan (replayed to a win) where the
    hand-coded expert does not win; a game neither wins is drawn again. The same arguments write the same bytes.

    Writes OUT_DIR/json_2.1.1/{train,valid_seen,valid_unseen}/ (OUT_DIR/json_2.1.1 must not exist yet) and
    OUT_DIR/eexp-games.json (the sizes, task types, rooms and walkthrough experts per split); then
    ALFWORLD_DATA=OUT_DIR serves --env alfworld. A game costs about 2.4 s of CPU on a 2.0 GHz EPYC (Zen 1), less on
    newer CPUs (the engine's PDDL translation of a full room, the hand-coded expert's run): the default size (874
    games) in about 18 minutes with -j 2 on its 2 cores.

    \b
    Example:
      eexp alfworld-games games -j 2
      ALFWORLD_DATA=games eexp expert --env alfworld -n 200 -o expert.jsonl
      eexp alfworld-games games-full --full --seed 1
    """
    sizes = {"train": train, "valid_seen": valid_seen, "valid_unseen": valid_unseen}
    base = alfworld_gen.FULL_SIZES if full else alfworld_gen.SIZES
    sizes = {split: base[split] if n is None else n for split, n in sizes.items()}
    if not any(sizes.values()):
        raise click.UsageError("nothing to generate: --train, --valid-seen and --valid-unseen are all 0")
    note = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    summary = alfworld_gen.generate(out_dir, sizes, seed=seed, jobs=jobs, note=note)
    if not quiet:
        splits = summary["splits"]
        made = ", ".join(f"{splits[s]['games']} {s}" for s in alfworld_gen.SPLITS)
        experts = {e: sum(splits[s]["walkthrough"][e] for s in splits) for e in ("handcoded", "planner")}
        redrawn = sum(splits[s]["redrawn"] for s in splits)
        click.echo(
            f"alfworld-games: wrote {made} games to {out_dir / alfworld_gen.DATA_VERSION} "
            f"(walkthroughs: {experts['handcoded']} hand-coded, {experts['planner']} planner; {redrawn} "
            f"redrawn) in {summary['seconds']:.0f} s; ALFWORLD_DATA={out_dir} serves --env alfworld",
            err=True,
        )
