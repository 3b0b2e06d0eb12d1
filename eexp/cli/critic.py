"""`eexp critic-eval`: how well a critic (a model trained on `eexp critic-data`) tells the expert's action from the
alternatives on held-out outcome records (eexp.stages.critic, eexp.policies.critic)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import click

from eexp.cli.group import cli
from eexp.cli.options import config_option, field_options, on_error_option, parse_policy_args, quiet_option
from eexp.errors import PolicyError
from eexp.fields import setting
from eexp.io import Reader
from eexp.records import expect
from eexp.runner import progress_bar
from eexp.stages.critic import REJECTED, critic_accuracy, score_states


@dataclass(frozen=True, kw_only=True)
class CriticEvalSettings:
    """critic-eval's own options, a default and a help written once (made into click options by field_options)."""

    critic_spec: str = setting(
        help="The critic: a checkpoint or adapter directory, or a .gguf file (any local chat model; one trained on "
        "critic-data is the point).",
        flag="--critic",
        metavar="MODEL",
        required=True,
    )
    critic_args: list[str] = setting(
        help="Backend option of the critic, as --policy-arg (n_ctx, device, ...); repeatable.",
        factory=list,
        flag="--critic-arg",
        metavar="KEY=VALUE",
        multiple=True,
        callback=parse_policy_args,
    )
    rejected: str = setting(
        "all",
        "Which executed alternatives are scored against the expert's action: critic-data's choice (invalid, "
        "no-progress, all).",
        choices=REJECTED,
    )


@cli.command("critic-eval")
@click.argument("inputs", nargs=-1, metavar="[OUTCOMES]...")
@field_options(CriticEvalSettings, "critic_spec", "critic_args", "rejected")
@on_error_option
@quiet_option()
@config_option
def critic_eval(inputs, critic_spec, critic_args, rejected, on_error, quiet):
    """Measure a critic on outcome records: does it score the expert's action above the alternatives?

    At every state with an executed alternative that --rejected takes (critic-data's candidates), the critic
    scores the expert's action and each alternative: the probability that it is the expert's, from the softmax of
    its `Yes` and `No` log-likelihoods. Give it outcomes of trajectories it was not trained on (held-out tasks). One
    JSON object on stdout: `top1` (the share of states where the expert's action scores above every alternative;
    `chance_top1` is a random choice's), `pair_accuracy` (expert-alternative pairs ordered right), `accuracy` at
    0.5 over every example with `expert_accuracy`, `alternative_accuracy` and `balanced_accuracy`, the mean scores,
    the counts of states and examples, and how many states gave no candidates and why. A line on stderr says the
    main numbers.

    \b
    Examples:
      eexp critic-eval --critic critic/ heldout_outcomes.jsonl > critic_eval.json
      eexp expert --env shop --split test -n 50 | eexp branch -k 4 | eexp rollout | eexp critic-eval --critic critic/
    """
    from eexp.policies.critic import Critic

    counts: dict[str, int] = {}

    def count(name: str, n: int = 1) -> None:
        counts[name] = counts.get(name, 0) + n

    reader = Reader(list(inputs), on_error=on_error)
    check = expect("outcome")

    def outcomes():
        for item in reader:
            counts["records_in"] = counts.get("records_in", 0) + 1
            problem = check(item.record)
            if problem:
                reader.reject(item.error(problem))
                continue
            bar.update(1)
            yield item.record

    try:
        critic = Critic(critic_spec, critic_args)
    except PolicyError as e:  # the backends name their options as eval's --policy-arg; here they are --critic-arg
        raise PolicyError(str(e).replace("--policy-arg", "--critic-arg")) from None
    try:
        with progress_bar(quiet, unit="state") as bar:
            summary = critic_accuracy(score_states(critic, outcomes(), rejected, count))
    finally:
        critic.close()
    counts["skipped"] = reader.skipped
    result = {
        "critic": critic_spec,
        "rejected_filter": rejected,
        **summary,
        "counts": counts,
        "model_sha256": critic.describe().get("model_sha256", ""),
    }
    click.echo(json.dumps(result, indent=2))
    if not summary["states"]:
        click.echo(
            f"eexp: no state to score: none of the {counts.get('records_in', 0)} records has an executed "
            f"alternative that --rejected {rejected} takes",
            err=True,
        )
    else:
        click.echo(
            f"eexp: critic {critic_spec} on {summary['states']} states: expert scored first at "
            f"{summary['top1']:.1%} (chance {summary['chance_top1']:.1%}), pairs ordered right "
            f"{summary['pair_accuracy']:.1%}, balanced accuracy at 0.5 {summary['balanced_accuracy']:.1%}",
            err=True,
        )
