"""The options of an RL run (`RLConfig`, the trainer's extended), what each name of --reward stands for (`REWARDS`),
and the constants of the probe and the loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from eexp.fields import setting
from eexp.training.config import TRAINER_RESUME_FREE, Objectives, TrainerConfig, retold

# `eexp rl --reward NAME`: what an RL step draws and how it is rewarded (an eexp.rl.objective.RLObjective). The
# outcome rewards are one objective, GRPO over whole episodes, rewarded three ways.
_EPISODES = "eexp.rl.rollouts:Episodes"
REWARDS = Objectives(
    "reward",
    {
        "success": _EPISODES,
        "score": _EPISODES,
        "success+score": _EPISODES,
        "expert-step": "eexp.rl.expert_step:ExpertStep",
        "next-state": "eexp.rl.next_state:NextState",
    },
)
PACK_TOKENS = 4096  # tokens in one packed forward pass of the update (rows x longest row): bounds its memory (9 GiB
#                   for a 0.5B-parameter shape in bf16 with its 152k vocabulary, measured on an H100)
ENCODE_CACHE_SIZE = 50_000  # tokenized prompts and replies the live policy remembers (then it starts over)
RL_ACT_MODES = ("score", "generate", "think")
# Options that may differ between a run and its --resume without changing the result: the trainer's (RL's own all
# change it).
RESUME_FREE = TRAINER_RESUME_FREE
ZERO_START_ADVICE = (
    "RL learns only from groups whose episodes differ, and with no success every group is all "
    "failures (verl-agent issue #41: RL cannot start from 0% success). Start from an IL, IWM or SR "
    "checkpoint that succeeds some of the time when sampled (`eexp finetune`, more updates if it "
    "does not; `eexp eval --temperature 1` shows it), train with --reward expert-step first "
    "(rewarded by agreement with the expert's actions at the expert's states: no success needed), "
    "or pass --allow-zero-start to try anyway (with --reward score partial scores can still "
    "differ)"
)


@dataclass(kw_only=True)
class RLConfig(TrainerConfig):
    """Every option of `eexp rl`, with its default and help (the command's options are made from these fields;
    --env-arg, parsed as YAML scalars, fills env_kwargs): the trainer's (TrainerConfig), some as RL tells them, and
    the episodes', the reward's and the update's, here. The trainer's fields RL does not offer keep their defaults,
    but for the two the recipe sets (eexp.rl.recipe.RL: a LoRA --model is trained on as `adapter`; no LoRA
    dropout)."""

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "model",
        "output",
        "env",
        "env_kwargs",
        "split",
        "tasks",
        "group_size",
        "tasks_per_step",
        "max_steps",
        "act",
        "temperature",
        "max_tokens",
        "episode_steps",
        "reward",
        "expert",
        "expert_match",
        "outcomes",
        "scale_rewards",
        "clip",
        "kl_coef",
        "ppo_epochs",
        "minibatches",
        "lr",
        "lr_scheduler",
        "weight_decay",
        "max_grad_norm",
        "lora",
        "lora_rank",
        "lora_alpha",
        "seed",
        "save_every",
        "keep_checkpoints",
        "allow_zero_start",
        "precision",
        "gradient_checkpointing",
        "attn_implementation",
        "trust_remote_code",
        "export_gguf",
        "quant",
        "resume",
        "quiet",
    )
    LR_KIND: ClassVar[str] = "rl"

    env: str = setting(None, "Environment to act in (`eexp envs`).", required=True, metavar="NAME")
    env_kwargs: dict = field(default_factory=dict)
    split: str = setting("train", "Split whose tasks RL trains on.")
    tasks: int | None = setting(
        None,
        "Use the first N tasks of the split (default: all); with --expert, its first N "
        "trajectories of the split; with --outcomes, its first N outcome records of the split.",
        short="-n",
        min=1,
    )
    group_size: int = setting(8, "Episodes sampled per task; advantages are relative to the group.", short="-G", min=2)
    tasks_per_step: int = setting(
        4,
        "Tasks (groups) per RL step; expert states with --reward expert-step, transitions with --reward next-state.",
        min=1,
    )
    act: str | None = setting(
        None,
        "How an action is chosen: a draw from softmax(log-likelihood / T) over the "
        "admissible actions, free generation, or a generated thought and then the action after "
        "it (as eval --act think). Default: score where the environment's action set is closed, "
        "else generate; with --reward next-state, generate (the only one: a prediction is "
        "text).",
        choices=list(RL_ACT_MODES),
    )
    temperature: float = setting(1.0, "Sampling temperature of the episodes (above 0).")
    max_tokens: int = setting(
        64,
        "Most tokens per generated reply (--act generate); with --reward next-state, per "
        "prediction (an observation is longer than an action: a shop page is ~1,500 "
        "characters, so raise it there).",
        min=1,
    )
    episode_steps: int | None = setting(None, "Most steps per episode (default: the environment's).", min=1)
    reward: str = setting(
        "success",
        "The reward: the episode's success (1/0), its score, or both, at its end; or "
        "expert-step: no episodes, the policy acts at the states of expert trajectories and each "
        "action is rewarded by its match with the expert's (--expert-match). --tasks-per-step then "
        "counts expert states, each a group of --group-size actions. Or next-state: no episodes, "
        "the policy predicts the next observation of each transition of --outcomes, asked as IWM "
        "trains it (world-model-data's prompt), and each prediction is rewarded by its token F1 "
        "with the recorded one (world-model-eval's); --tasks-per-step then counts transitions, each "
        "a group of --group-size predictions.",
        choices=list(REWARDS),
    )
    expert: str | None = setting(
        None,
        "With --reward expert-step: the expert trajectories (as `eexp expert` writes "
        "them) whose states the policy acts at, those of --split, successful, the first "
        "--tasks of them. Default: the environment's oracle on the first --tasks tasks of "
        "--split, run once at the start.",
        metavar="FILE",
    )
    expert_match: str = setting(
        "exact",
        "With --reward expert-step: an action's reward is 1 where it equals the "
        "expert's after the environment's canonicalize, else 0 (exact) or the token F1 of "
        "the two (f1: words shared, SQuAD's F1).",
        choices=["exact", "f1"],
    )
    outcomes: str | None = setting(
        None,
        "With --reward next-state (required there): the outcome records (as `eexp "
        "rollout` writes them) to learn from; the policy predicts the next observation "
        "after each executed action of them (the expert's and each alternative's). Those of "
        "--split whose state was reached, the first --tasks of them.",
        metavar="FILE",
    )
    scale_rewards: bool = setting(
        True,
        "Divide advantages by the group's standard deviation (GRPO), or only subtract its mean (Dr. GRPO).",
        flag="--scale-rewards/--no-scale-rewards",
    )
    clip: float = setting(0.2, "PPO clip range of the probability ratio (above 0).", min=0, min_open=True, max=1)
    kl_coef: float = setting(0.0, "Weight of the KL term to the starting model (0: no reference model is kept).", min=0)
    ppo_epochs: int = setting(1, "Passes over each step's samples.", min=1)
    minibatches: int = setting(1, "Optimizer updates per pass (the samples split in seeded chunks).", min=1)
    allow_zero_start: bool = setting(
        False,
        "Train even when no episode of the probe batch succeeds (refused by "
        "default: there is nothing to learn from; expert-step and next-state have no such "
        "probe).",
    )

    # the trainer's options, as RL tells them
    model: str = retold(
        TrainerConfig,
        "model",
        "The checkpoint to start from: an IL, IWM or SR model from `eexp "
        "finetune` (a full checkpoint, or a LoRA adapter, trained on on its base), a Hugging Face Hub "
        "id (as finetune takes it), or a GGUF file (imported once, as finetune does).",
    )
    output: str = retold(
        TrainerConfig,
        "output",
        "Directory to write: model or adapter, tokenizer, config.yaml "
        "(options, serializer, probe, episodes used), card.yaml, metrics.jsonl (one row per step), and "
        "checkpoints/ while running.",
    )
    max_steps: int | None = retold(
        TrainerConfig,
        "max_steps",
        "RL steps: each is one rollout batch (tasks-per-step x group-size episodes) and its updates.",
        default=50,
    )
    lr: float | None = retold(
        TrainerConfig,
        "lr",
        "Learning rate. Default: 1e-6 full, 1e-5 LoRA, 1e-4 full for a model "
        "whose weights began random (`eexp init-model`).",
    )
    lr_scheduler: str = retold(
        TrainerConfig,
        "lr_scheduler",
        "Learning-rate schedule over the run's updates.",
        default="constant",
        choices=["constant", "cosine", "linear"],
    )
    weight_decay: float = retold(TrainerConfig, "weight_decay", "AdamW weight decay.")
    lora: bool = retold(
        TrainerConfig,
        "lora",
        "Train a fresh LoRA adapter on a full checkpoint, or every weight (a LoRA --model is always trained as LoRA).",
    )
    lora_rank: int = retold(TrainerConfig, "lora_rank", "Rank of a fresh LoRA adapter.")
    seed: int = retold(
        TrainerConfig, "seed", "Seed of the task order, every episode's sampling and the minibatch order."
    )
    save_every: int = retold(TrainerConfig, "save_every", "Resumable checkpoint every N RL steps.", default=10)
    precision: str = retold(
        TrainerConfig,
        "precision",
        "auto: bf16 autocast (rollouts and updates; TF32 for the "
        "rest) on a GPU that supports it, fp32 on CPU. A LoRA base is held in bf16 there.",
    )
    gradient_checkpointing: bool | None = retold(
        TrainerConfig,
        "gradient_checkpointing",
        "Recompute activations in "
        "the update's backward pass: a fraction of the activation memory, "
        "slower. Default: on with a CUDA GPU, off on CPU.",
    )
    attn_implementation: str | None = retold(
        TrainerConfig,
        "attn_implementation",
        "Attention kernel (as "
        "finetune's). The update packs several replies into one pass under a 4D "
        "mask with sdpa or eager; with flash_attention_2 it scores one reply "
        "set at a time.",
    )
    resume: bool = retold(TrainerConfig, "resume", "Continue the run in OUT from its last checkpoint (exactly).")
