"""`eexp finetune`: imitation (IL), the implicit-world-modeling schedule (IWM) and self-reflection (SR) training,
and DPO on preference pairs.

One module per concept, in the style of torchtune:

    config.py      FinetuneConfig (every option, its default and help), the errors
    data.py        examples -> token ids and loss weights (chat-template masks, budgeted shortening)
    batches.py     length-grouped updates and their micro-batches, collation, the weighted loss
    model.py       the tokenizer and the model to train (full, LoRA, QLoRA), accelerate
    checkpoint.py  resumable checkpoints written whole or not at all
    trainer.py     Trainer: device, precision, model, optimizer and schedule, checkpoints, --resume, metrics, the
                   final save; what every recipe (finetune's, eexp.rl's) shares, whatever its objective
    objective.py   Objective: what a supervised objective is (what an example is, the loss of a micro-batch)
    dpo.py         --objective dpo: preference pairs and the DPO loss (an objective)
    recipe.py      the recipe itself: Finetune.setup / train / save / resume / finish, over examples; SFT

The names below are the package's public interface (`from eexp.training import finetune, FinetuneConfig`).
"""

from eexp.io import InputError
from eexp.training.batches import (collate, epoch_updates, examples_per_update, micro_batches, phase_updates,
                                   updates_per_epoch, weighted_nll)
from eexp.training.config import (PHASES, RESUME_FREE, FinetuneConfig, TrainingError, UsageProblem, default_lr,
                                  from_scratch)
from eexp.training.data import (Dataset, Encoded, encode, encode_items, read_examples, render, split_validation,
                                target_spans)
from eexp.training.model import check_model_dir, linear_module_names, load_model, load_tokenizer
from eexp.training.dpo import DPO
from eexp.training.objective import Objective
from eexp.training.recipe import OBJECTIVES, SFT, Finetune, finetune
from eexp.training.trainer import Trainer

__all__ = ["FinetuneConfig", "Finetune", "finetune", "encode", "target_spans", "TrainingError", "UsageProblem",
           "InputError", "from_scratch", "check_model_dir", "load_model", "load_tokenizer", "linear_module_names",
           "Dataset", "Encoded", "render", "read_examples", "encode_items", "split_validation", "epoch_updates",
           "micro_batches", "examples_per_update", "updates_per_epoch", "phase_updates", "collate", "weighted_nll",
           "PHASES", "RESUME_FREE", "Trainer", "Objective", "SFT", "DPO", "OBJECTIVES", "default_lr"]
