"""`eexp corpus`: pages from random walks, the text of a shared language prior (`init-model --pretrain`)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from eexp.cli.group import cli
from eexp.cli.options import config_option, env_arg_option, field_options, output_option, quiet_option
from eexp.fields import setting
from eexp.io import Writer, closing
from eexp.runner import progress_bar


@dataclass(frozen=True, kw_only=True)
class CorpusSettings:
    """corpus's own options, a default and a help written once (made into click options by field_options)."""

    env_name: str = setting(help="Environment (see `eexp envs`).", flag="--env", metavar="NAME", required=True)
    splits: list[str] = setting(
        help="Walk the worlds of this split; repeatable. Default: every split.",
        factory=list,
        flag="--split",
        metavar="NAME",
        multiple=True,
    )
    walks: int = setting(1000, "Random walks per split.", metavar="N", min=1)
    holdout: int = setting(
        200,
        "Walk no task among the first N of a split other than train: the ones `eval -n N` plays.",
        metavar="N",
        min=0,
    )
    max_steps: int = setting(15, "Actions per walk.", min=0)
    seed: int = setting(0, "Which tasks, and which actions.")


@cli.command()
@field_options(CorpusSettings, "env_name")
@env_arg_option()
@field_options(CorpusSettings, "splits", "walks", "holdout", "max_steps", "seed")
@output_option
@quiet_option()
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
        # a run refused before its first page (an unknown split) leaves no empty file behind
        with closing(writer), progress_bar(quiet, unit="page") as bar:
            for record in corpus_pages(env, splits, walks, holdout, max_steps, seed):
                writer.write(record)
                pages += 1
                bar.update(1)
    finally:
        env.close()
    click.echo(f"eexp: {pages} distinct pages from {walks * len(splits)} walks over {', '.join(splits)}", err=True)
