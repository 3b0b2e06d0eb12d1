"""`eexp rl`: reinforcement learning (GRPO-style) from a checkpoint. The recipe itself is eexp/rl.py."""

from __future__ import annotations

import click

from eexp.cli import cli
from eexp.cli.options import UserError, config_option, parse_env_args, quiet_transformers


@cli.command("rl")
@click.option("--model", required=True, metavar="CKPT", help="The checkpoint to start from: an IL, IWM or SR "
              "model from `eexp finetune` (a full checkpoint, or a LoRA adapter, trained on on its base), or a GGUF "
              "file (imported once, as finetune does).")
@click.option("-o", "--output", required=True, metavar="OUT", help="Directory to write: model or adapter, "
              "tokenizer, config.yaml (options, serializer, probe, episodes used), metrics.jsonl (one row per step), "
              "and checkpoints/ while running.")
@click.option("--env", "env_name", required=True, metavar="NAME", help="Environment to act in (`eexp envs`).")
@click.option("--env-arg", "env_args", multiple=True, callback=parse_env_args, metavar="KEY=VALUE",
              help="Environment option (as in eval); repeatable.")
@click.option("--split", default="train", show_default=True, help="Split whose tasks RL trains on.")
@click.option("-n", "--tasks", type=click.IntRange(min=1), help="Use the first N tasks of the split (default: all).")
@click.option("--group-size", "-G", type=click.IntRange(min=2), default=8, show_default=True,
              help="Episodes sampled per task; advantages are relative to the group.")
@click.option("--tasks-per-step", type=click.IntRange(min=1), default=4, show_default=True,
              help="Tasks (groups) per RL step.")
@click.option("--max-steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="RL steps: each is one rollout batch (tasks-per-step x group-size episodes) and its updates.")
@click.option("--act", type=click.Choice(["score", "generate", "think"]), default=None,
              help="How an action is chosen: a draw from softmax(log-likelihood / T) over the admissible actions, "
              "free generation, or a generated thought and then the action after it (as eval --act think). "
              "Default: score where the environment's action set is closed, else generate.")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Sampling temperature of the episodes (above 0).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most tokens per generated reply (--act generate).")
@click.option("--episode-steps", type=click.IntRange(min=1), help="Most steps per episode (default: the "
              "environment's).")
@click.option("--reward", type=click.Choice(["success", "score", "success+score"]), default="success",
              show_default=True, help="The episode's reward: the environment's success (1/0), its score, or both.")
@click.option("--scale-rewards/--no-scale-rewards", default=True, show_default=True,
              help="Divide advantages by the group's standard deviation (GRPO), or only subtract its mean.")
@click.option("--clip", type=click.FloatRange(0, 1, min_open=True), default=0.2, show_default=True,
              help="PPO clip range of the probability ratio.")
@click.option("--kl-coef", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of the KL term to the starting model (0: no reference model is kept).")
@click.option("--ppo-epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Passes over each step's samples.")
@click.option("--minibatches", type=click.IntRange(min=1), default=1, show_default=True,
              help="Optimizer updates per pass (the samples split in seeded chunks).")
@click.option("--lr", type=float, help="Learning rate. Default: 1e-6 full, 1e-5 LoRA, 1e-4 for a model whose "
              "weights began random (`eexp init-model`).")
@click.option("--lr-scheduler", type=click.Choice(["constant", "cosine", "linear"]), default="constant",
              show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True)
@click.option("--lora/--full", default=False, show_default=True,
              help="Train a fresh LoRA adapter on a full checkpoint, or every weight (a LoRA --model is always "
              "trained as LoRA).")
@click.option("--lora-rank", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lora-alpha", type=float, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the task order, every episode's sampling and the minibatch order.")
@click.option("--save-every", type=click.IntRange(min=1), default=10, show_default=True, metavar="N",
              help="Resumable checkpoint every N RL steps.")
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--allow-zero-start", is_flag=True, help="Train even when no episode of the probe batch succeeds "
              "(refused by default: there is nothing to learn from).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 for a LoRA base on a GPU that supports it, fp32 otherwise.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint directory.")
@click.option("--export-gguf", is_flag=True, help="Finally write OUT/model.gguf (as `eexp export`).")
@click.option("--quant", default="q8_0", show_default=True, help="GGUF type for --export-gguf.")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint (exactly).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@config_option
def rl_command(env_name, env_args, **options):
    """Reinforcement learning (GRPO) from an IL, IWM or SR checkpoint, on one workstation.

    Each step samples --group-size episodes for each of --tasks-per-step tasks from the current weights (eval's
    episode loop), rewards each episode with the environment's success or score, and updates on the policy's own
    replies with group-relative advantages, a clipped policy-gradient loss and an optional KL term to the start.
    The first rollout batch is a probe: when none of its episodes succeeds, the run is refused. Checkpoints,
    --resume and metrics.jsonl work as in finetune.

    \b
    Example:
      eexp rl --model runs/iwm --env shop -o runs/iwm-rl --max-steps 40 --reward score --lr 1e-4
      eexp rl --model runs/il-lora --env textworld --act generate -G 8 --kl-coef 0.01 -o runs/il-rl
      eexp rl --model runs/iwm --env shop -o runs/iwm-rl --max-steps 40 --resume
      eexp eval --policy runs/iwm-rl --env shop --split test --act score -o iwm-rl.jsonl
    """
    from eexp.rl import RLConfig, run_rl
    quiet_transformers()
    cfg = RLConfig(env=env_name, env_kwargs=dict(env_args), **options)
    run_rl(cfg)


rl_command.name = "rl"
