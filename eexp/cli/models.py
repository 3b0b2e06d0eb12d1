"""Commands that make and convert models: init-model (a small model from scratch) and export (to GGUF)."""

from __future__ import annotations

import click

from eexp.cli import cli
from eexp.cli.options import UserError, config_option


def _quiet_transformers() -> None:
    # transformers draws its own bars ("Writing model shards") on stderr; eexp's commands keep stderr for messages.
    from transformers.utils import logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()


@cli.command("init-model")
@click.argument("out", metavar="OUT")
@click.option("--arch", type=click.Choice(["qwen2", "llama"]), default="qwen2", show_default=True,
              help="Model architecture.")
@click.option("--size", type=click.Choice(["tiny", "small"]), default="tiny", show_default=True,
              help="tiny: ~0.1M parameters, for tests; small: ~4M parameters, for CPU demos.")
@click.option("--corpus", multiple=True, metavar="FILE",
              help="Text to train the tokenizer on: JSONL records (their observations, actions, goals and "
              "message contents are used) or plain text. Repeatable; with none, a small built-in text.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@config_option
def init_model_command(out, arch, size, corpus, seed):
    """Create a randomly initialized model with its own tokenizer, as a transformers checkpoint in OUT.

    The tokenizer is a byte-level BPE trained on the corpus, with ChatML special tokens (`<|im_start|>`,
    `<|im_end|>` = end of turn and eos, `<|endoftext|>` = padding; no BOS) and a ChatML chat template. Nothing is
    downloaded. OUT must not exist or be empty.

    \b
    Example:
      eexp expert --env shop -n 50 > expert.jsonl
      eexp init-model models/base --arch qwen2 --size small --corpus expert.jsonl
    """
    from eexp.models.init import ModelError, init_model

    _quiet_transformers()
    try:
        path = init_model(out, arch=arch, size=size, corpus=corpus, seed=seed)
    except ModelError as e:
        raise UserError(str(e)) from None
    click.echo(f"eexp: wrote {arch} {size} model to {path}", err=True)
