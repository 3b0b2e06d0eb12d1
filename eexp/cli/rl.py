"""`eexp rl`: reinforcement learning (GRPO-style) from a checkpoint. The recipe itself is the eexp.rl package; the
options, their defaults and help are RLConfig's fields (eexp/rl/config.py), made into click options here."""

from __future__ import annotations

from eexp.cli.group import cli
from eexp.cli.options import config_option, env_arg_option, field_options, quiet_transformers
from eexp.rl.config import RLConfig

# Every option is an RLConfig field (its default and help are written there), in its order; --env-arg fills
# env_kwargs.
RL_OPTIONS = [name for name in RLConfig.OPTIONS if name != "env_kwargs"]


@cli.command("rl")
@field_options(RLConfig, *RL_OPTIONS[:3])
@env_arg_option("Environment option (as in eval); repeatable.")
@field_options(RLConfig, *RL_OPTIONS[3:])
@config_option
def rl_command(env_args, **options):
    """Reinforcement learning (GRPO) from an IL, IWM or SR checkpoint, on one workstation.

    Each step samples --group-size episodes for each of --tasks-per-step tasks from the current weights (eval's
    episode loop), rewards each episode with the environment's success or score, and updates on the policy's own
    replies with group-relative advantages, a clipped policy-gradient loss and an optional KL term to the start.
    The first rollout batch is a probe: when none of its episodes succeeds, the run is refused. --reward
    expert-step needs no success: the policy acts at the states of expert trajectories and each sampled action is
    rewarded by its match with the expert's; outcome RL then continues from its output. --reward next-state
    (RWML) trains the world model the same way: at each transition of --outcomes (rollout's records) the policy
    predicts the next observation, asked as IWM trains it, and each prediction is rewarded by its token F1 with the
    recorded one (world-model-eval's score); outcome RL continues from its output too. Checkpoints, --resume and
    metrics.jsonl work as in finetune.

    \b
    Example:
      eexp rl --model runs/iwm --env shop -o runs/iwm-rl --max-steps 40 --reward score --lr 1e-4
      eexp rl --model runs/il-lora --env textworld --act generate -G 8 --kl-coef 0.01 -o runs/il-rl
      eexp rl --model runs/iwm --env shop -o runs/iwm-rl --max-steps 40 --resume
      eexp eval --policy runs/iwm-rl --env shop --split test --act score -o iwm-rl.jsonl
      eexp rl --model runs/il --env shop -o runs/il-es --reward expert-step --expert expert.jsonl --temperature 3
      eexp rl --model runs/iwm --env shop -o runs/iwm-ns --reward next-state --outcomes outcomes.jsonl --max-tokens 256
    """
    from eexp.rl.recipe import run_rl

    quiet_transformers()
    run_rl(RLConfig(env_kwargs=dict(env_args), **options))


rl_command.name = "rl"
