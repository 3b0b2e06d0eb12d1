"""`eexp corpus`: pages from random walks, the text of a shared language prior (`init-model --pretrain`)."""

from __future__ import annotations

import click

from eexp.cli.group import cli
from eexp.cli.options import config_option, parse_env_args
from eexp.io import Writer
from eexp.runner import progress_bar


@cli.command()
@click.option("--env", "env_name", required=True, metavar="NAME", help="Environment (see `eexp envs`).")
@click.option(
    "--env-arg",
    "env_args",
    multiple=True,
    callback=parse_env_args,
    metavar="KEY=VALUE",
    help="An environment option; repeatable.",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    metavar="NAME",
    help="Walk the worlds of this split; repeatable. Default: every split.",
)
@click.option(
    "--walks", type=click.IntRange(min=1), default=1000, show_default=True, metavar="N", help="Random walks per split."
)
@click.option(
    "--holdout",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    metavar="N",
    help="Walk no task among the first N of a split other than train: the ones `eval -n N` plays.",
)
@click.option("--max-steps", type=click.IntRange(min=0), default=15, show_default=True, help="Actions per walk.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which tasks, and which actions.")
@click.option(
    "-o", "--output", default="-", show_default=True, metavar="FILE", help="Write records here instead of stdout."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@config_option
def corpus(env_name, env_args, splits, walks, holdout, max_steps, seed, output, quiet):
    """Write the distinct pages that random walks see, one record per page: text for language-model pretraining.

    Each walk resets a task and takes uniformly drawn admissible actions. Only observations are written: no goal,
    no action, no reward, so the text teaches the environment's words and page layouts (ood categories too) and
    not which action is right. The first --holdout tasks of every split but train are never walked, so the worlds
    an `eval -n N` (N <= --holdout) scores are unseen. Environments with open action sets (no admissible list)
    give only their first pages. The same arguments give the same records.

    \b
    Example:
      eexp corpus --env shop --walks 2000 --holdout 200 -o pages.jsonl
      eexp init-model models/prior --pretrain pages.jsonl --pretrain-steps 2000
    """
    from eexp.envs.base import make_env
    from eexp.stages.corpus import corpus_pages

    env = make_env(env_name, **env_args)
    splits = list(splits or env.splits)
    pages = 0
    try:
        writer = Writer(output)
        try:
            with progress_bar(quiet, unit="page") as bar:
                for record in corpus_pages(env, splits, walks, holdout, max_steps, seed):
                    writer.write(record)
                    pages += 1
                    bar.update(1)
        finally:
            writer.close()
    finally:
        env.close()
    click.echo(f"eexp: {pages} distinct pages from {walks * len(splits)} walks over {', '.join(splits)}", err=True)
