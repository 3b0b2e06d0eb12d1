"""`eexp finetune`: training examples -> a checkpoint directory. The recipe itself is the eexp.training package; the
options, their defaults and help are FinetuneConfig's fields (eexp/training/config.py), made into click options here."""

from __future__ import annotations

from eexp.cli.group import cli
from eexp.cli.options import config_option, dataclass_options, quiet_transformers
from eexp.training.config import FinetuneConfig


@cli.command("finetune")
@dataclass_options(FinetuneConfig)
@config_option
def finetune_command(config: FinetuneConfig):
    """Fine-tune a model on training examples (IL, SR) with an optional world-model warm-up (IWM), or on preference
    pairs (DPO).

    Loss is on assistant turns only (weight 0 turns excluded), located by rendering the conversation with the
    model's own chat template, end-of-turn token included. OUT holds the final model (or LoRA adapter), its
    tokenizer, config.yaml (the resolved options: `--config OUT/config.yaml` replays the run), card.yaml (the
    model card: serializer settings eval reads, base model and its hash, phases) and metrics.jsonl.

    --objective dpo trains on `eexp preference-data`'s pairs with the DPO loss, the starting weights as the
    reference (their log-probabilities computed once, before the first update).

    \b
    Example:
      eexp finetune il.jsonl --model models/base -o runs/il --epochs 2 --val-fraction 0.1
      eexp finetune il.jsonl --warmup-data iwm.jsonl --model models/base -o runs/iwm --max-steps 600
      eexp finetune il.jsonl sr.jsonl --model models/base -o runs/sr --lora --export-gguf
      eexp finetune il.jsonl --model SmolLM2-135M-Instruct.Q4_1.gguf -o runs/il-smol --lora
      eexp finetune --config runs/il/config.yaml -o runs/il-again
      eexp finetune pairs.jsonl --objective dpo --model runs/il -o runs/il-dpo --lora
      accelerate launch -m eexp finetune il.jsonl --model Qwen2.5-0.5B -o runs/il
    """
    from eexp.training.recipe import finetune

    quiet_transformers()
    finetune(config)


finetune_command.name = "finetune"
