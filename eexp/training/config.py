"""The options of a fine-tune (`FinetuneConfig`) and the errors the recipe reports."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

from eexp import errors
from eexp.errors import EexpError

PHASES = ("warmup", "train")
# Options that may differ between a run and its --resume without changing the loss curve.
RESUME_FREE = {"resume", "quiet", "export_gguf", "quant", "save_every", "log_every", "keep_checkpoints", "on_error"}


class TrainingError(EexpError):
    """A user-facing problem (bad model directory, no data, out of memory, disk full): message, exit 1."""


class UsageProblem(TrainingError, errors.UsageProblem):
    """A bad combination of options (exit 2 at the CLI)."""


@dataclass
class FinetuneConfig:
    train_files: list[str]
    model: str
    output: str
    lora: bool = False
    qlora: bool = False
    adapter: str | None = None
    lora_rank: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    epochs: int = 1
    max_steps: int | None = None
    lr: float | None = None            # None: see resolved_lr
    lr_scheduler: str = "cosine"
    lr_warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 2048
    truncate: bool = True
    seed: int = 0
    val: str | None = None
    val_fraction: float = 0.0
    eval_every: int | None = None      # None: at the end of every epoch of the training phase
    keep_best: bool = False
    save_every: int = 500
    keep_checkpoints: int = 1
    log_every: int | None = None       # None: every step for runs under 1,000 steps, else every 10
    warmup_data: list[str] = field(default_factory=list)
    warmup_epochs: int = 1
    warmup_steps: int | None = None    # None: warmup_epochs epochs of --warmup-data
    warmup_lr: float | None = None     # None: --lr
    precision: str = "auto"            # auto: bf16 on a GPU that supports it, fp32 otherwise
    gradient_checkpointing: bool = False
    export_gguf: bool = False
    quant: str = "q8_0"
    trust_remote_code: bool = False
    resume: bool = False
    on_error: str = "fail"
    quiet: bool = False

    @property
    def method(self) -> str:
        return "qlora" if self.qlora else "lora" if (self.lora or self.adapter) else "full"

    def resolved_lr(self) -> float:
        """1e-5 for full fine-tuning of a pretrained model (the paper's), 2e-4 for LoRA, and 1e-3 for a model whose
        weights are random (made by `eexp init-model`): at 1e-5 such a model would barely move."""
        if self.lr is not None:
            return self.lr
        if self.method != "full":
            return 2e-4
        return 1e-3 if from_scratch(self.model) else 1e-5


def from_scratch(model_dir: str) -> bool:
    """Whether a checkpoint's weights began random: made by `eexp init-model`, or fine-tuned from such a model."""
    try:
        with open(os.path.join(model_dir, "config.yaml")) as f:
            made = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(made, dict) and (made.get("command") == "init-model" or bool(made.get("from_scratch")))

