"""The options of an RL run (`RLConfig`) and the constants of the probe and the loss."""

from __future__ import annotations

from dataclasses import dataclass, field

REWARDS = ("success", "score", "success+score")
PACK_TOKENS = 4096  # tokens in one packed forward pass of the update (rows x longest row): bounds its memory (9 GiB
#                   for a 0.5B-parameter shape in bf16 with its 152k vocabulary, measured on an H100)
ENCODE_CACHE_SIZE = 50_000  # tokenized prompts and replies the live policy remembers (then it starts over)
RL_ACT_MODES = ("score", "generate", "think")
# Options that may differ between a run and its --resume without changing the result.
RESUME_FREE = {"resume", "quiet", "export_gguf", "quant", "save_every", "keep_checkpoints"}
ZERO_START_ADVICE = ("RL learns only from groups whose episodes differ, and with no success every group is all "
                     "failures (verl-agent issue #41: RL cannot start from 0% success). Start from an IL, IWM or SR "
                     "checkpoint that succeeds some of the time when sampled (`eexp finetune`, more updates if it "
                     "does not; `eexp eval --temperature 1` shows it), or pass --allow-zero-start to try anyway "
                     "(with --reward score partial scores can still differ)")


@dataclass
class RLConfig:
    model: str
    output: str
    env: str
    env_kwargs: dict = field(default_factory=dict)
    split: str = "train"
    tasks: int | None = None           # the first N tasks of the split (None: all)
    group_size: int = 8
    tasks_per_step: int = 4
    max_steps: int = 50                # RL steps: one rollout batch and its updates each
    act: str | None = None             # None: score where the environment's action set is closed, else generate
    temperature: float = 1.0
    max_tokens: int = 64               # generate mode: most tokens per reply
    episode_steps: int | None = None   # None: the environment's max_steps
    reward: str = "success"
    scale_rewards: bool = True         # divide the advantages by the group's std (GRPO); off: Dr. GRPO
    clip: float = 0.2
    kl_coef: float = 0.0
    ppo_epochs: int = 1
    minibatches: int = 1
    lr: float | None = None
    lr_scheduler: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: float = 32
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 1
    allow_zero_start: bool = False
    precision: str = "auto"
    trust_remote_code: bool = False
    export_gguf: bool = False
    quant: str = "q8_0"
    resume: bool = False
    quiet: bool = False

    def default_lr(self, start_from_scratch: bool, method: str) -> float:
        """1e-6 for full RL of a pretrained model (verl's GRPO default), 1e-5 with LoRA, 1e-4 for a model whose
        weights began random (`eexp init-model`): the supervised rates divided by ten."""
        if self.lr is not None:
            return self.lr
        if start_from_scratch and method == "full":
            return 1e-4
        return 1e-6 if method == "full" else 1e-5

