"""`eexp curate`: N expert trajectories chosen for coverage (eexp.stages.curate)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import click

from eexp.cli.group import cli
from eexp.cli.options import field_options, stage_options
from eexp.fields import setting
from eexp.records import expect
from eexp.runner import Stage
from eexp.stages.curate import CURATE_BY, choose, coverage, pool_features

RANDOM_DRAWS = 20  # random choices whose mean coverage is said beside the curated one


class Curation(Stage):
    """Holds the whole pool (a choice for coverage needs all of it), then yields the chosen in pick order."""

    holds_whole_input = True

    def __init__(self, n: int, by: str, seed: int, min_share: float, count):
        self.n, self.by, self.seed, self.min_share, self.count = n, by, seed, min_share, count
        self.pool: list[dict] = []

    def __call__(self, trajectory: dict):
        # imitation-data drops unsuccessful trajectories, so choosing one would leave fewer than N demonstrations
        # (and an odd length or page makes a failure look rare, so coverage would pick it early)
        if not trajectory["success"]:
            self.count("unsuccessful_skipped")
            return ()
        self.pool.append(trajectory)
        return ()

    def finish(self):
        if not self.pool:  # nothing read (or the input failed before any record): nothing to choose or to say
            return
        picks = choose(self.pool, self.n, by=self.by, seed=self.seed, min_share=self.min_share)
        _, df = pool_features(self.pool, self.min_share)
        chosen = [i for i, _, _ in picks]
        covered = round(coverage(self.pool, chosen, self.min_share) * len(df))
        draws = [
            random.Random(f"curate-baseline-{d}").sample(range(len(self.pool)), len(chosen))
            for d in range(RANDOM_DRAWS)
        ]
        baseline = sum(coverage(self.pool, d, self.min_share) for d in draws) / RANDOM_DRAWS * len(df)
        self.count("features", len(df))
        self.count("features_covered", covered)
        click.echo(
            f"eexp: chose {len(chosen)} of {len(self.pool)} trajectories ({self.by}), covering {covered} of "
            f"{len(df)} features; {len(chosen)} at random cover {baseline:.1f} on average "
            f"({RANDOM_DRAWS} draws)",
            err=True,
        )
        for rank, (i, gain, new) in enumerate(picks):
            record = dict(self.pool[i])
            record["meta"] = {
                **(record.get("meta") or {}),
                "curation": {
                    "by": self.by,
                    "n": self.n,
                    "seed": self.seed,
                    "min_share": self.min_share,
                    "pool": len(self.pool),
                    "rank": rank,
                    "gain": round(gain, 6),
                    "new_features": new[:8],
                },
            }
            yield record


@dataclass(frozen=True, kw_only=True)
class CurateSettings:
    """curate's own options, a default and a help written once (made into click options by field_options)."""

    n: int = setting(help="How many trajectories to keep.", flag="-n", min=1, required=True)
    by: str = setting(
        "coverage",
        "coverage: greedy maximum coverage of the pool's features (categories, recurring actions and pages, action "
        "verbs), rare ones weighing more; random: a seeded uniform sample (the baseline).",
        choices=CURATE_BY,
    )
    seed: int = setting(0, "Seed of the tie-breaking order (and of --by random's sample).")
    min_share: float = setting(
        0.01,
        "An action or a page counts as a feature verbatim where at least this share of the pool's trajectories has "
        "it (and at least 2); rarer ones count by their verb only.",
        metavar="F",
        min=0,
        max=1,
    )


@cli.command("curate")
@stage_options(resumable=False)
@field_options(CurateSettings, "n", "by", "seed", "min_share")
def curate_command(io, n, by, seed, min_share):
    """Expert trajectories -> the N that cover the most, in the order chosen.

    Reads the whole pool (trajectory records; unsuccessful ones are left out, as imitation-data leaves them out,
    and counted in --stats), then chooses N by greedy maximum coverage of their features: the
    task's category, each action's verb, and the actions and first lines of observations that recur in the pool
    (numbers and quoted text generalized). A rare feature weighs more; when every feature is covered, coverage
    starts over. Each record is written as it came, with meta.curation saying how it was chosen. Stderr says how
    many features the choice covers and how many a random choice of N covers on average.

    \b
    Examples:
      eexp expert --env shop -n 1000 | eexp curate -n 125 > expert_curated.jsonl
      eexp curate --by random -n 125 expert.jsonl -o expert_random.jsonl
    """
    io.run(Curation(n, by, seed, min_share, io.count), validate=expect("trajectory"), output_key=lambda r: r.get("id"))
