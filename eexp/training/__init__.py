"""`eexp finetune`: imitation (IL), the implicit-world-modeling schedule (IWM) and self-reflection (SR) training,
and DPO on preference pairs.

One module per concept, in the style of torchtune:

    config.py      TrainerConfig (the trainer's options) and FinetuneConfig (every option of finetune: the
                   trainer's and its own), each with its default and help; OBJECTIVES (the objective each name
                   of --objective stands for; rl's --reward has its own, eexp.rl.config.REWARDS)
    data.py        examples -> token ids and loss weights (chat-template masks, budgeted shortening)
    batches.py     length-grouped updates and their micro-batches, collation, the weighted loss
    model.py       the tokenizer and the model to train (full, LoRA, QLoRA), accelerate
    checkpoint.py  resumable checkpoints written whole or not at all
    trainer.py     Trainer: device, precision, model, optimizer and schedule, checkpoints, --resume, metrics, the
                   final save; what every recipe (finetune's, eexp.rl's) shares, whatever its objective
    objective.py   Objective: what a supervised objective is (what an example is, the loss of a micro-batch)
    dpo.py         --objective dpo: preference pairs and the DPO loss (an objective)
    recipe.py      the recipe itself: Finetune.setup / train / save / resume / finish, over examples; SFT

Each name is imported from its module (`from eexp.training.recipe import finetune`): this file imports nothing, so
the commands' start-up, which reads config.py (FinetuneConfig's fields make finetune's options) and so runs this
file first, imports no torch, which the other modules import at their top.
"""
