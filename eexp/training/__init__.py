"""`eexp finetune`: imitation (IL), the implicit-world-modeling schedule (IWM) and self-reflection (SR) training,
and DPO on preference pairs.

One module per concept, in the style of torchtune:

    config.py      TrainerConfig (the trainer's options) and FinetuneConfig (every option of finetune: the
                   trainer's and its own), each with its default and help; OBJECTIVES (the objective each name
                   of --objective and of rl's --reward stands for); the errors
    data.py        examples -> token ids and loss weights (chat-template masks, budgeted shortening)
    batches.py     length-grouped updates and their micro-batches, collation, the weighted loss
    model.py       the tokenizer and the model to train (full, LoRA, QLoRA), accelerate
    checkpoint.py  resumable checkpoints written whole or not at all
    trainer.py     Trainer: device, precision, model, optimizer and schedule, checkpoints, --resume, metrics, the
                   final save; what every recipe (finetune's, eexp.rl's) shares, whatever its objective
    objective.py   Objective: what a supervised objective is (what an example is, the loss of a micro-batch)
    dpo.py         --objective dpo: preference pairs and the DPO loss (an objective)
    recipe.py      the recipe itself: Finetune.setup / train / save / resume / finish, over examples; SFT

The names below are the package's public interface (`from eexp.training import finetune, FinetuneConfig`). Each is
imported from its module the first time it is used (eexp/lazy.py), not here: the commands' start-up reads config.py
(FinetuneConfig's fields make finetune's options), which runs this file first, and must not import torch, which
the other modules import at their top.
"""

from eexp.lazy import lazy_exports

LAZY_IMPORTS = {
    "eexp.training.batches": ["collate", "epoch_updates", "examples_per_update", "micro_batches", "phase_updates",
                              "updates_per_epoch", "weighted_nll"],
    "eexp.training.config": ["OBJECTIVES", "PHASES", "RESUME_FREE", "FinetuneConfig", "TrainerConfig", "default_lr",
                             "from_scratch", "objective_class"],
    "eexp.training.data": ["Dataset", "Encoded", "encode", "encode_items", "read_examples", "render",
                           "split_validation", "target_spans"],
    "eexp.training.model": ["check_model_dir", "linear_module_names", "load_model", "load_tokenizer"],
    "eexp.training.dpo": ["DPO"],
    "eexp.training.objective": ["Objective"],
    "eexp.training.recipe": ["SFT", "Finetune", "finetune"],
    "eexp.training.trainer": ["Trainer"],
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, LAZY_IMPORTS)
