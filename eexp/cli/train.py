"""`eexp finetune`: training examples -> a checkpoint directory. The recipe itself is eexp/training.py."""

from __future__ import annotations

import click

from eexp.cli import cli
from eexp.cli.options import UserError, config_option, quiet_transformers


def _targets(ctx, param, value):
    return [t.strip() for t in (value or "all-linear").split(",") if t.strip()]


@cli.command("finetune")
@click.argument("train_files", nargs=-1, required=True, metavar="TRAIN.jsonl...")
@click.option("--model", required=True, metavar="CKPT", help="Transformers checkpoint to train (e.g. from "
              "`eexp init-model`, or a downloaded model directory), or a GGUF file (quantized or not), imported "
              "once into $EEXP_CACHE as a float32 checkpoint (see `eexp import-model`).")
@click.option("-o", "--output", required=True, metavar="OUT", help="Directory to write: model or adapter, "
              "tokenizer, config.yaml, metrics.jsonl (and checkpoints/ while running).")
@click.option("--lora/--full", default=False, show_default=True,
              help="Train a LoRA adapter through PEFT, or every weight (the paper's default).")
@click.option("--qlora", is_flag=True, help="LoRA over a 4-bit base (bitsandbytes, CUDA only).")
@click.option("--adapter", metavar="DIR", help="Continue training this LoRA adapter of --model.")
@click.option("--lora-rank", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lora-alpha", type=float, default=32, show_default=True)
@click.option("--lora-dropout", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--lora-targets", callback=_targets, default="all-linear", show_default=True, metavar="NAMES",
              help="Comma-separated module names to adapt (q_proj,v_proj,...), or all-linear.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Epochs over the training files (ignored with --max-steps).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Total optimizer updates, warm-up phase included: "
              "IL, IWM and SR runs with one --max-steps have one budget.")
@click.option("--lr", type=float, help="Peak learning rate. Default: 1e-5 full (the paper), 2e-4 LoRA, 1e-3 for a "
              "model from `eexp init-model` (random weights).")
@click.option("--lr-scheduler", type=click.Choice(["cosine", "linear", "constant", "constant_with_warmup"]),
              default="cosine", show_default=True)
@click.option("--lr-warmup-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of each phase's updates spent warming the learning rate up.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Examples per micro-batch (per process).")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="Micro-batches per update.")
@click.option("--max-length", type=click.IntRange(min=8), default=2048, show_default=True,
              help="Tokens per example; longer ones lose their oldest history first, as at inference (never the "
              "task or the target).")
@click.option("--no-truncate", is_flag=True, help="Reject over-long examples instead of truncating them.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of initialization, batch order and the validation split.")
@click.option("--val", metavar="FILE", help="Validation examples.")
@click.option("--val-fraction", type=click.FloatRange(0, 1), default=0.0, metavar="F",
              help="Hold out this fraction of the training trajectories (seeded) for validation.")
@click.option("--eval-every", type=click.IntRange(min=1), metavar="N",
              help="Validation loss every N updates (default: every epoch).")
@click.option("--keep-best", is_flag=True, help="OUT gets the weights with the lowest validation loss.")
@click.option("--save-every", type=click.IntRange(min=1), default=500, show_default=True, metavar="N",
              help="Resumable checkpoint every N updates.")
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), metavar="N",
              help="A metrics row every N updates (default: 1 under 1,000 updates, else 10).")
@click.option("--warmup-data", multiple=True, metavar="FILE", help="World-model examples trained on first (the "
              "IWM schedule); then the training files continue the same weights with a fresh optimizer.")
@click.option("--warmup-epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=1), default=None,
              help="Updates of world modeling before the training data, instead of --warmup-epochs epochs (the "
              "data is cycled or cut to fit); counted in --max-steps.")
@click.option("--warmup-lr", type=float, help="Learning rate of the warm-up phase (default: --lr).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a GPU that supports it, fp32 on CPU.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations: less memory, ~30% slower.")
@click.option("--export-gguf", is_flag=True, help="Finally write OUT/model.gguf (as `eexp export`).")
@click.option("--quant", default="q8_0", show_default=True, help="GGUF type for --export-gguf.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the checkpoint directory.")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="On a bad example: stop (exit 1), or skip it and count it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@config_option
def finetune_command(train_files, output, no_truncate, **options):
    """Fine-tune a model on training examples (IL, SR) with an optional world-model warm-up (IWM).

    Loss is on assistant turns only (weight 0 turns excluded), located by rendering the conversation with the
    model's own chat template, end-of-turn token included. OUT holds the final model (or LoRA adapter), its
    tokenizer, config.yaml (resolved options and the serializer settings eval reads) and metrics.jsonl.

    \b
    Example:
      eexp finetune il.jsonl --model models/base -o runs/il --epochs 2 --val-fraction 0.1
      eexp finetune il.jsonl --warmup-data iwm.jsonl --model models/base -o runs/iwm --max-steps 600
      eexp finetune il.jsonl sr.jsonl --model models/base -o runs/sr --lora --export-gguf
      eexp finetune il.jsonl --model SmolLM2-135M-Instruct.Q4_1.gguf -o runs/il-smol --lora
      accelerate launch -m eexp finetune il.jsonl --model Qwen2.5-0.5B -o runs/il
    """
    from eexp.training import FinetuneConfig, finetune
    quiet_transformers()
    cfg = FinetuneConfig(train_files=list(train_files), output=output, truncate=not no_truncate,
                         warmup_data=list(options.pop("warmup_data")), **options)
    finetune(cfg)


finetune_command.name = "finetune"
