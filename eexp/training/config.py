"""The options of the trainer (`TrainerConfig`) and of a fine-tune (`FinetuneConfig`, which extends it); what an
objective option's names stand for (`Objectives`), and finetune's (`OBJECTIVES`)."""

from __future__ import annotations

import importlib
from dataclasses import MISSING, asdict, dataclass, field
from typing import ClassVar

from eexp.card import read_card
from eexp.errors import UsageProblem
from eexp.fields import setting

PHASES = ("warmup", "train")
# Options that may differ between a run and its --resume without changing the loss curve: the trainer's (every
# recipe's), and finetune's own.
TRAINER_RESUME_FREE = frozenset(
    {
        "resume",
        "quiet",
        "export_gguf",
        "quant",
        "save_every",
        "keep_checkpoints",
        "save_dtype",
        "gradient_checkpointing",
    }
)
RESUME_FREE = TRAINER_RESUME_FREE | {"log_every", "on_error"}


class Objectives(dict):
    """A command's objective option (`option`, the config field: finetune's --objective, rl's --reward) and what each
    of its names stands for, an objective class named as "module:Class" and imported when a run starts
    (`objective_class`): the commands' start-up reads the names (the option's choices, the recipes, the card), and
    must not import torch, which the objectives' modules import at their top. Each command's config module holds
    its own (finetune's `OBJECTIVES` here, rl's `REWARDS` in eexp.rl.config), so a layer names no objective of the
    layer above it."""

    def __init__(self, option: str, classes: dict[str, str]):
        super().__init__(classes)
        self.option = option


# `eexp finetune --objective NAME`: an eexp.training.objective.Objective.
OBJECTIVES = Objectives("objective", {"sft": "eexp.training.recipe:SFT", "dpo": "eexp.training.dpo:DPO"})


def objective_class(objectives: Objectives, name: str) -> type:
    """The class `name` stands for in `objectives` (a command's registry: OBJECTIVES, eexp.rl.config.REWARDS),
    imported."""
    module, _, attr = objectives[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def retold(base: type, name: str, help: str, *, default=MISSING, choices: list | None = None):
    """A field of `base` (TrainerConfig) as another command tells it: declared in `base`, once (its type, flag,
    bounds, metavar), with this command's help, and where given its own default and choices (a subset)."""
    declared = base.__dataclass_fields__[name]
    metadata = {
        **declared.metadata,
        "help": help,
        "retold": base.__name__,
        **({"choices": choices} if choices is not None else {}),
    }
    if default is MISSING and declared.default_factory is not MISSING:
        return field(default_factory=declared.default_factory, metadata=metadata)
    return field(default=declared.default if default is MISSING else default, metadata=metadata)


@dataclass(kw_only=True)
class TrainerConfig:
    """The options `Trainer` (eexp.training.trainer) runs with, whatever its recipe optimizes: the model and what of
    it is trained, the optimizer and its schedule, the seed, precision and memory, checkpoints and --resume, the
    final save. A command's config extends it (`FinetuneConfig`, eexp.rl.config.RLConfig): its options are the
    fields `OPTIONS` names, in that order (its --help's and config.yaml's; a field it does not name keeps its
    default); a command that says more or other of one of these options retells it (`retold`)."""

    OPTIONS: ClassVar[tuple[str, ...]]
    # whose default learning rates a run without --lr gets (a key of DEFAULT_LR)
    LR_KIND: ClassVar[str] = "sft"

    # the model, and what of it is trained (every weight, or a LoRA adapter)
    model: str = setting(
        None,
        "Transformers checkpoint to train (e.g. from `eexp init-model`, or a downloaded model "
        "directory), a Hugging Face Hub id (ORG/NAME or ORG/NAME@REVISION: safetensors only, through "
        "the Hugging Face cache; HF_HUB_OFFLINE=1 uses the cache alone), or a GGUF file (quantized "
        "or not), imported once into $EEXP_CACHE as a float32 checkpoint (see `eexp import-model`).",
        required=True,
        metavar="CKPT",
    )
    output: str = setting(
        None,
        "Directory to write: model or adapter, tokenizer, config.yaml, card.yaml, "
        "metrics.jsonl (and checkpoints/ while running).",
        required=True,
        short="-o",
        metavar="OUT",
    )
    lora: bool = setting(
        False, "Train a LoRA adapter through PEFT, or every weight (the paper's default).", flag="--lora/--full"
    )
    qlora: bool = setting(False, "LoRA over a 4-bit base (bitsandbytes, CUDA only).")
    adapter: str | None = setting(None, "Continue training this LoRA adapter of --model.", metavar="DIR")
    lora_rank: int = setting(16, "Rank of the LoRA matrices.", min=1)
    lora_alpha: float = setting(32.0, "LoRA scaling numerator (the update is scaled by alpha / rank).")
    lora_dropout: float = setting(0.05, "Dropout on the LoRA path.", min=0, max=1)
    lora_targets: list[str] = setting(
        help="Comma-separated module names to adapt (q_proj,v_proj,...), or all-linear.",
        factory=lambda: ["all-linear"],
        sep=",",
        metavar="NAMES",
    )
    # the length of the run, the optimizer and its schedule
    max_steps: int | None = setting(
        None,
        "Total optimizer updates, warm-up phase included: IL, IWM and SR runs with one --max-steps have one budget.",
        min=1,
    )
    lr: float | None = setting(
        None,
        "Peak learning rate. Default: 1e-5 full (the paper), 2e-4 LoRA, 1e-3 full for a model "
        "from `eexp init-model` (random weights).",
    )
    lr_scheduler: str = setting(
        "cosine",
        "Learning-rate schedule of each phase.",
        choices=["cosine", "linear", "constant", "constant_with_warmup"],
    )
    lr_warmup_ratio: float = setting(
        0.0, "Fraction of each phase's updates spent warming the learning rate up.", min=0, max=1
    )
    weight_decay: float = setting(0.0, "AdamW weight decay (matrices only; biases and norms get none).")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.")
    # the seed, checkpoints and --resume
    seed: int = setting(0, "Seed of initialization, batch order and the validation split.")
    save_every: int = setting(500, "Resumable checkpoint every N updates.", min=1, metavar="N")
    keep_checkpoints: int = setting(1, "Resumable checkpoints kept while running.", min=1)
    # precision and memory
    precision: str = setting(
        "auto", "auto: bf16 autocast on a GPU that supports it, fp32 on CPU.", choices=["auto", "bf16", "fp32"]
    )
    save_dtype: str = setting(
        "auto",
        "Weights of a full fine-tune as saved: auto is the training precision (bf16 "
        "when trained in bf16: half the disk of the fp32 master weights), or bf16, fp32.",
        choices=["auto", "bf16", "fp32"],
    )
    gradient_checkpointing: bool | None = setting(
        None,
        "Recompute activations in the backward pass: a fraction of "
        "the activation memory, 1.5x the time a step (SmolLM2-135M on an H200). Default: off on CPU; on a GPU, "
        "on only where the memory a step needs without it, estimated from "
        "the model's shape and the largest micro-batch, exceeds 80% of the "
        "GPU's free memory. The card says which, and why.",
        flag="--gradient-checkpointing/--no-gradient-checkpointing",
    )
    attn_implementation: str | None = setting(
        None,
        "Attention kernel (transformers' attn_implementation): "
        "flash_attention_2 needs the flash-attn package and a CUDA GPU. Default: "
        "transformers' choice (sdpa where the model supports it).",
        choices=["sdpa", "flash_attention_2", "eager"],
    )
    # loading and the final save; the run
    trust_remote_code: bool = setting(False, "Allow model code from the checkpoint directory.")
    export_gguf: bool = setting(False, "Finally write OUT/model.gguf (as `eexp export`).")
    quant: str = setting(
        "q8_0", "GGUF type for --export-gguf (eexp export's --quant).", choices=["f32", "f16", "q8_0", "q4_k_m"]
    )
    resume: bool = setting(False, "Continue the run in OUT from its last checkpoint.")
    quiet: bool = setting(False, "No progress bar.", short="-q")

    @property
    def method(self) -> str:
        return "qlora" if self.qlora else "lora" if (self.lora or self.adapter) else "full"

    def resolved_lr(self) -> float:
        """--lr, or the default for what this run trains (`default_lr`)."""
        return self.lr if self.lr is not None else default_lr(self.LR_KIND, self.method, self.model)

    def options(self) -> dict:
        """The command's options and their values, in its order (`OPTIONS`): its config.yaml, --resume's
        fingerprint."""
        values = asdict(self)
        return {name: values[name] for name in self.OPTIONS}


@dataclass(kw_only=True)
class FinetuneConfig(TrainerConfig):
    """Every option of `eexp finetune`, with its default and help (the command's options are made from them): the
    trainer's (TrainerConfig) and the data's, the objective's, the phases' and validation's, here."""

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "train_files",
        "model",
        "output",
        "objective",
        "beta",
        "lora",
        "qlora",
        "adapter",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_targets",
        "epochs",
        "max_steps",
        "lr",
        "lr_scheduler",
        "lr_warmup_ratio",
        "weight_decay",
        "max_grad_norm",
        "batch_size",
        "grad_accum",
        "loss_norm",
        "max_length",
        "truncate",
        "seed",
        "val",
        "val_fraction",
        "eval_every",
        "keep_best",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "warmup_data",
        "warmup_epochs",
        "warmup_steps",
        "warmup_lr",
        "precision",
        "save_dtype",
        "gradient_checkpointing",
        "attn_implementation",
        "packing",
        "export_gguf",
        "quant",
        "trust_remote_code",
        "resume",
        "on_error",
        "quiet",
    )

    train_files: list[str] = setting(argument=True, metavar="TRAIN.jsonl...")
    objective: str = setting(
        "sft",
        "sft: the likelihood of the assistant turns of training examples (IL, IWM, SR). "
        "dpo: Direct Preference Optimization on preference pairs (`eexp preference-data`), "
        "against the starting weights as the reference; the loss of a pair is -log sigmoid(beta "
        "x ((chosen - reference chosen) - (rejected - reference rejected))), with the "
        "log-probabilities of the answers' target tokens.",
        choices=list(OBJECTIVES),
    )
    beta: float = setting(
        0.1,
        "With --objective dpo: how strongly the loss holds the model to the reference (larger: closer; DPO's beta).",
        min=0,
        min_open=True,
    )
    epochs: int = setting(
        1,
        "Epochs over the training files (ignored with --max-steps): ceil(examples / examples "
        "per update) updates each, so a larger data set gets more updates (the paper's SR budget: "
        "IL's epochs over D_refl + D_expert). The card records each phase's updates and epochs.",
        min=1,
    )
    batch_size: int = setting(8, "Examples per micro-batch (per process).", min=1)
    grad_accum: int = setting(
        1,
        "Micro-batches per update. An update's examples depend only on how many it has "
        "(--batch-size x --grad-accum x processes), never on how they are split, so 2 x 4 "
        "gives the updates (and to float rounding the loss) of one batch of 8.",
        min=1,
    )
    loss_norm: str = setting(
        "example",
        "How an update's loss weighs its examples. example: each example's mean "
        "over its target tokens, then the mean over the update's examples, so every example "
        "counts alike whatever its length (an update mixing IL examples, ~9 target tokens, and "
        "self-reflections, ~300, one for one gives the IL actions half its loss, not 3%). "
        "token: the sum over the update's target tokens divided by their count, so an example "
        "weighs as many target tokens as it has. Under both, a message's `weight` scales its "
        "tokens and the logged loss and val_loss are the same mean. DPO averages over pairs.",
        choices=["example", "token"],
    )
    max_length: int = setting(
        2048,
        "Tokens per example; longer ones lose their oldest history first, as at "
        "inference (the task only when it alone is over the limit; never the last target).",
        min=8,
    )
    truncate: bool = setting(
        True, "Shorten over-long examples (--no-truncate: reject them).", flag="--truncate/--no-truncate"
    )
    val: str | None = setting(None, "Validation examples.", metavar="FILE")
    val_fraction: float = setting(
        0.0,
        "Hold out this fraction of the training trajectories (seeded) for validation.",
        min=0,
        max=1,
        max_open=True,
        metavar="F",
    )
    eval_every: int | None = setting(
        None, "Validation loss every N updates (default: every epoch).", min=1, metavar="N"
    )
    keep_best: bool = setting(False, "OUT gets the weights with the lowest validation loss.")
    log_every: int | None = setting(
        None, "A metrics row every N updates (default: 1 under 1,000 updates, else 10).", min=1, metavar="N"
    )
    warmup_data: list[str] = setting(
        help="World-model examples trained on first (the IWM schedule); then the "
        "training files continue the same weights with a fresh optimizer.",
        factory=list,
        multiple=True,
        metavar="FILE",
    )
    warmup_epochs: int = setting(1, "Epochs of --warmup-data.", min=1)
    warmup_steps: int | None = setting(
        None,
        "Updates of world modeling before the training data, instead of "
        "--warmup-epochs epochs (the data is cycled or cut to fit); counted in "
        "--max-steps.",
        min=1,
    )
    warmup_lr: float | None = setting(None, "Learning rate of the warm-up phase (default: --lr).")
    on_error: str = setting(
        "fail", "On a bad example: stop (exit 1), or skip it and count it.", choices=["fail", "skip"]
    )
    packing: bool = setting(
        False,
        "Padding-free micro-batches: a micro-batch's examples end to end in one row, each "
        "attending to itself alone (its positions restart at 0), so no padding is computed "
        "(TRL's padding_free). The updates' examples and each example's loss are unchanged. Fast "
        "with --attn-implementation flash_attention_2 on a GPU (variable-length kernel); under sdpa "
        "or eager a block-diagonal mask over the whole row, which costs more than it saves.",
    )


# The default peak learning rates: (full training of a pretrained model, LoRA, full training of a model whose weights
# began random). Supervised: 1e-5 full (the paper's), 2e-4 LoRA, 1e-3 from scratch (at 1e-5 random weights would
# barely move). RL: 1e-6 full (verl's GRPO default), 1e-5 LoRA, 1e-4 from scratch.
DEFAULT_LR = {"sft": (1e-5, 2e-4, 1e-3), "rl": (1e-6, 1e-5, 1e-4)}


def default_lr(kind: str, method: str, model_dir: str) -> float:
    """The learning rate a run of `kind` (sft: finetune, rl) gets without --lr: by its method (full, lora, qlora)
    and, for full training, whether the checkpoint's weights began random (`from_scratch`, read from its card)."""
    full, lora, scratch = DEFAULT_LR[kind]
    if method != "full":
        return lora
    return scratch if from_scratch(model_dir) else full


def from_scratch(model_dir: str) -> bool:
    """Whether a checkpoint's weights began random (its card says so: made by `eexp init-model`, or fine-tuned from
    such a model)."""
    return read_card(model_dir).from_scratch


# Full fine-tuning holds fp32 weights (4 bytes a parameter), their gradients (4) and AdamW's two moments (8).
FULL_BYTES_PER_PARAM = 16


def full_finetune_bytes(n_params: int) -> int:
    """Memory of a full fine-tune's weights, gradients and AdamW state, before activations."""
    return n_params * FULL_BYTES_PER_PARAM


def check_full_fits(model: str, n_params: int, device_bytes: int, processes: int = 1, sharded: bool = False) -> None:
    """Refuse --full where the weights, gradients and optimizer state alone exceed the GPU's memory (divided over
    the processes under FSDP, whole on each one otherwise), with the estimate and what to do instead."""
    need = full_finetune_bytes(n_params) // (processes if sharded else 1)
    if need <= device_bytes:
        return
    where = f"{_size(need)} on each of {processes} GPUs under FSDP" if sharded else _size(need)
    fsdp = (
        "more GPUs"
        if sharded
        else "several GPUs with FSDP (accelerate launch --config_file "
        "recipes/accelerate/fsdp.yaml -m eexp finetune ...)"
    )
    count = f"{n_params / 1e9:.2f}B" if n_params >= 1e8 else f"{n_params / 1e6:.1f}M"
    raise UsageProblem(
        f"--full on {model} ({count} parameters) needs about {where} for the fp32 weights, "
        f"gradients and AdamW state ({FULL_BYTES_PER_PARAM} bytes a parameter, activations not "
        f"counted), and the GPU has {_size(device_bytes)}. Train a LoRA adapter (--lora, or --qlora "
        f"over a 4-bit base), or shard the full model over {fsdp}"
    )


def _size(n: int) -> str:
    return f"{n / 1024**3:.0f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"
