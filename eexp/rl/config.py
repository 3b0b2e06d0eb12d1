"""The options of an RL run (`RLConfig`) and the constants of the probe and the loss."""

from __future__ import annotations

from dataclasses import dataclass, field

from eexp.training.config import option

REWARDS = ("success", "score", "success+score", "expert-step")
OUTCOME_REWARDS = REWARDS[:3]  # rewards of whole episodes; expert-step rewards single actions (eexp/rl/expert_step.py)
PACK_TOKENS = 4096  # tokens in one packed forward pass of the update (rows x longest row): bounds its memory (9 GiB
#                   for a 0.5B-parameter shape in bf16 with its 152k vocabulary, measured on an H100)
ENCODE_CACHE_SIZE = 50_000  # tokenized prompts and replies the live policy remembers (then it starts over)
RL_ACT_MODES = ("score", "generate", "think")
# Options that may differ between a run and its --resume without changing the result.
RESUME_FREE = {"resume", "quiet", "export_gguf", "quant", "save_every", "keep_checkpoints",
               "gradient_checkpointing"}
ZERO_START_ADVICE = ("RL learns only from groups whose episodes differ, and with no success every group is all "
                     "failures (verl-agent issue #41: RL cannot start from 0% success). Start from an IL, IWM or SR "
                     "checkpoint that succeeds some of the time when sampled (`eexp finetune`, more updates if it "
                     "does not; `eexp eval --temperature 1` shows it), train with --reward expert-step first "
                     "(rewarded by agreement with the expert's actions at the expert's states: no success needed), "
                     "or pass --allow-zero-start to try anyway (with --reward score partial scores can still "
                     "differ)")


@dataclass
class RLConfig:
    """Every option of `eexp rl`, with its default and help (the command's options are made from these fields;
    --env-arg, parsed as YAML scalars, fills env_kwargs)."""

    model: str = option(None, "The checkpoint to start from: an IL, IWM or SR model from `eexp finetune` (a full "
                        "checkpoint, or a LoRA adapter, trained on on its base), a Hugging Face Hub id (as finetune "
                        "takes it), or a GGUF file (imported once, as finetune does).", required=True,
                        metavar="CKPT")
    output: str = option(None, "Directory to write: model or adapter, tokenizer, config.yaml (options, serializer, "
                         "probe, episodes used), metrics.jsonl (one row per step), and checkpoints/ while running.",
                         required=True, short="-o", metavar="OUT")
    env: str = option(None, "Environment to act in (`eexp envs`).", required=True, metavar="NAME")
    env_kwargs: dict = field(default_factory=dict)
    split: str = option("train", "Split whose tasks RL trains on.")
    tasks: int | None = option(None, "Use the first N tasks of the split (default: all); with --expert, its first N "
                               "trajectories of the split.", short="-n", min=1)
    group_size: int = option(8, "Episodes sampled per task; advantages are relative to the group.", short="-G",
                             min=2)
    tasks_per_step: int = option(4, "Tasks (groups) per RL step; expert states with --reward expert-step.",
                                 min=1)
    max_steps: int = option(50, "RL steps: each is one rollout batch (tasks-per-step x group-size episodes) and its "
                            "updates.", min=1)
    act: str | None = option(None, "How an action is chosen: a draw from softmax(log-likelihood / T) over the "
                             "admissible actions, free generation, or a generated thought and then the action after "
                             "it (as eval --act think). Default: score where the environment's action set is closed, "
                             "else generate.", choices=list(RL_ACT_MODES))
    temperature: float = option(1.0, "Sampling temperature of the episodes (above 0).")
    max_tokens: int = option(64, "Most tokens per generated reply (--act generate).", min=1)
    episode_steps: int | None = option(None, "Most steps per episode (default: the environment's).", min=1)
    reward: str = option("success", "The reward: the episode's success (1/0), its score, or both, at its end; or "
                         "expert-step: no episodes, the policy acts at the states of expert trajectories and each "
                         "action is rewarded by its match with the expert's (--expert-match). --tasks-per-step then "
                         "counts expert states, each a group of --group-size actions.", choices=list(REWARDS))
    expert: str | None = option(None, "With --reward expert-step: the expert trajectories (as `eexp expert` writes "
                                "them) whose states the policy acts at, those of --split, successful, the first "
                                "--tasks of them. Default: the environment's oracle on the first --tasks tasks of "
                                "--split, run once at the start.", metavar="FILE")
    expert_match: str = option("exact", "With --reward expert-step: an action's reward is 1 where it equals the "
                               "expert's after the environment's canonicalize, else 0 (exact) or the token F1 of "
                               "the two (f1: words shared, SQuAD's F1).", choices=["exact", "f1"])
    scale_rewards: bool = option(True, "Divide advantages by the group's standard deviation (GRPO), or only "
                                 "subtract its mean (Dr. GRPO).", flag="--scale-rewards/--no-scale-rewards")
    clip: float = option(0.2, "PPO clip range of the probability ratio (above 0).", min=0, max=1)
    kl_coef: float = option(0.0, "Weight of the KL term to the starting model (0: no reference model is kept).",
                            min=0)
    ppo_epochs: int = option(1, "Passes over each step's samples.", min=1)
    minibatches: int = option(1, "Optimizer updates per pass (the samples split in seeded chunks).", min=1)
    lr: float | None = option(None, "Learning rate. Default: 1e-6 full, 1e-5 LoRA, 1e-4 for a model whose weights "
                              "began random (`eexp init-model`).")
    lr_scheduler: str = option("constant", "Learning-rate schedule over the run's updates.",
                               choices=["constant", "cosine", "linear"])
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    lora: bool = option(False, "Train a fresh LoRA adapter on a full checkpoint, or every weight (a LoRA --model is "
                        "always trained as LoRA).", flag="--lora/--full")
    lora_rank: int = option(16, "Rank of a fresh LoRA adapter.", min=1)
    lora_alpha: float = option(32.0, "LoRA scaling numerator (the update is scaled by alpha / rank).")
    seed: int = option(0, "Seed of the task order, every episode's sampling and the minibatch order.")
    save_every: int = option(10, "Resumable checkpoint every N RL steps.", min=1, metavar="N")
    keep_checkpoints: int = option(1, "Resumable checkpoints kept while running.", min=1)
    allow_zero_start: bool = option(False, "Train even when no episode of the probe batch succeeds (refused by "
                                    "default: there is nothing to learn from; expert-step has no such probe).")
    precision: str = option("auto", "auto: bf16 autocast (rollouts and updates; TF32 for the rest) on a GPU that "
                            "supports it, fp32 on CPU. A LoRA base is held in bf16 there.",
                            choices=["auto", "bf16", "fp32"])
    gradient_checkpointing: bool | None = option(None, "Recompute activations in the update's backward pass: a "
                                                 "fraction of the activation memory, slower. Default: on with a CUDA "
                                                 "GPU, off on CPU.",
                                                 flag="--gradient-checkpointing/--no-gradient-checkpointing")
    attn_implementation: str | None = option(None, "Attention kernel (as finetune's). The update packs several "
                                             "replies into one pass under a 4D mask with sdpa or eager; with "
                                             "flash_attention_2 it scores one reply set at a time.",
                                             choices=["sdpa", "flash_attention_2", "eager"])
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint directory.")
    export_gguf: bool = option(False, "Finally write OUT/model.gguf (as `eexp export`).")
    quant: str = option("q8_0", "GGUF type for --export-gguf.")
    resume: bool = option(False, "Continue the run in OUT from its last checkpoint (exactly).")
    quiet: bool = option(False, "No progress bar.", short="-q")
