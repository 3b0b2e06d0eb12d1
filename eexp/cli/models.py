"""Commands that make and convert models: init-model (a small model from scratch), import-model (a GGUF to a
checkpoint folder) and export (to GGUF)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from eexp.cli.group import cli
from eexp.cli.options import config_option, field_options, quiet_option, quiet_transformers
from eexp.fields import setting
from eexp.models.merge import MergeSettings
from eexp.models.pretrain import PretrainSettings

# The commands' own options, a default and a help written once (made into click options by field_options); merge's
# are MergeSettings' fields (eexp/models/merge.py).


@dataclass(frozen=True, kw_only=True)
class InitModelSettings:
    arch: str = setting("qwen2", "Model architecture.", choices=["qwen2", "llama"])
    size: str = setting(
        "tiny", "tiny: ~0.1M parameters, for tests; small: ~4M parameters, for CPU demos.", choices=["tiny", "small"]
    )
    corpus: list[str] = setting(
        help="Text to train the tokenizer on: JSONL records (their observations, actions, goals and message contents "
        "are used) or plain text. Repeatable; with none, a small built-in text.",
        factory=list,
        metavar="FILE",
        multiple=True,
    )
    seed: int = setting(0, "Seed of the random weights.")
    pretrain: list[str] = setting(
        help="Pretrain the model as a language model on this text (JSONL records or plain text, as for --corpus; the "
        "tokenizer is trained on it too), e.g. the pages of `eexp corpus`. Repeatable.",
        factory=list,
        metavar="FILE",
        multiple=True,
    )
    # the pretraining recipe's own defaults (eexp.models.pretrain), shown and overridable here
    pretrain_steps: int = setting(PretrainSettings.steps, "Pretraining updates.", min=1)
    pretrain_batch: int = setting(PretrainSettings.batch, "Windows per update.", min=1)
    pretrain_block: int = setting(PretrainSettings.block, "Tokens per window.", min=8)
    pretrain_lr: float = setting(
        PretrainSettings.lr, "Peak learning rate (warm-up, then cosine decay to a tenth).", min=0, min_open=True
    )


@dataclass(frozen=True, kw_only=True)
class ImportModelSettings:
    output: str | None = setting(
        None,
        "Write the checkpoint folder here (it must not exist, or be empty). Without it, into the cache "
        "($EEXP_CACHE/models), where `finetune --model FILE.gguf` finds it.",
        short="-o",
        metavar="DIR",
    )
    chat_template: str | None = setting(
        None,
        "A Jinja chat template for the folder's tokenizer, instead of the GGUF's own: for a base model's GGUF, which "
        "has none (e.g. an instruct model's template of the same family). Recorded in config.yaml with its hash.",
        metavar="FILE",
    )


@dataclass(frozen=True, kw_only=True)
class ExportSettings:
    output: str = setting(help="The GGUF file to write.", short="-o", metavar="FILE", required=True)
    adapter: str | None = setting(
        None, "A PEFT LoRA adapter to merge into CKPT first (CKPT is its base).", metavar="DIR"
    )
    quant: str | None = setting(
        None,
        "Weight type: f32, f16, q8_0 (default; rows of a multiple of 32 values), or q4_k_m (widths that are "
        "multiples of 256). With "
        "--lora-only: f32 (default), f16 or q8_0.",
        choices=["f32", "f16", "q8_0", "q4_k_m"],
    )
    lora_only: bool = setting(
        False,
        "Write the --adapter alone as a GGUF LoRA adapter, for llama.cpp's lora_path over a GGUF of CKPT.",
    )


@cli.command("init-model")
@click.argument("out", metavar="OUT")
@field_options(
    InitModelSettings,
    "arch",
    "size",
    "corpus",
    "seed",
    "pretrain",
    "pretrain_steps",
    "pretrain_batch",
    "pretrain_block",
    "pretrain_lr",
)
@quiet_option()
@config_option
def init_model_command(
    out, arch, size, corpus, seed, pretrain, pretrain_steps, pretrain_batch, pretrain_block, pretrain_lr, quiet
):
    """Create a randomly initialized model with its own tokenizer, as a transformers checkpoint in OUT.

    The tokenizer is a byte-level BPE trained on the corpus, with ChatML special tokens (`<|im_start|>`,
    `<|im_end|>` = end of turn and eos, `<|endoftext|>` = padding; no BOS) and a ChatML chat template. Nothing is
    downloaded. OUT must not exist or be empty.

    With --pretrain, the weights are then trained as a language model on that text (next-token loss on packed
    windows; every tenth page held out, its loss before and after printed), and config.yaml and the model card
    (card.yaml) record it: a shared language prior that every method fine-tunes from, as a pretrained LM is in
    the paper.

    \b
    Examples:
      eexp expert --env shop -n 50 > expert.jsonl
      eexp init-model models/base --arch qwen2 --size small --corpus expert.jsonl
      eexp corpus --env shop --holdout 200 -o pages.jsonl
      eexp init-model models/prior --pretrain pages.jsonl --pretrain-steps 2000
    """
    from eexp.models.init import init_model
    from eexp.runner import progress_bar

    quiet_transformers()
    settings = PretrainSettings(
        steps=pretrain_steps, block=pretrain_block, batch=pretrain_batch, lr=pretrain_lr, seed=seed
    )
    with progress_bar(quiet or not pretrain, total=pretrain_steps, unit="step") as bar:

        def progress(step: int, loss: float) -> None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")

        path = init_model(
            out,
            arch=arch,
            size=size,
            corpus=corpus,
            seed=seed,
            pretrain=pretrain,
            pretrain_settings=settings,
            progress=progress,
        )
    click.echo(f"eexp: wrote {arch} {size} model to {path}", err=True)
    if pretrain:
        import yaml

        record = yaml.safe_load((path / "config.yaml").read_text())["pretrain"]
        before = record.get("held_out_loss_before")
        held = f"; held-out loss {before} -> {record['held_out_loss']}" if before is not None else ""
        click.echo(
            f"eexp: pretrained {record['steps']} steps on {record['tokens']} tokens of {record['pages']} pages{held}",
            err=True,
        )


@cli.command("import-model")
@click.argument("gguf_file", metavar="FILE.gguf")
@field_options(ImportModelSettings, "output", "chat_template")
@config_option
def import_model_command(gguf_file, output, chat_template):
    """Import a GGUF model (quantized or not) as a float32 transformers checkpoint folder; print the folder.

    transformers dequantizes the weights; the folder gets model.safetensors, config.json, generation_config.json,
    the tokenizer and chat template from the GGUF, the model card (card.yaml: the source file and its content
    hash) and config.yaml (the same, with the source's quant type and architecture). `eexp finetune --model
    FILE.gguf` does this itself (once per file, cached), so this command is for those who want the folder, or who
    import a base model's GGUF: it has no chat template, which eexp trains and acts through, so give one with
    --chat-template. The folder is written under a temporary name and renamed when complete.

    \b
    Examples:
      eexp import-model SmolLM2-135M-Instruct.Q4_1.gguf -o models/smollm2
      eexp finetune il.jsonl --model models/smollm2 -o runs/il --lora
      eexp export models/smollm2 --adapter runs/il -o il.q8_0.gguf
      eexp import-model gemma-3-270m.Q4_K_M.gguf --chat-template gemma3.jinja -o models/gemma3
    """
    from eexp.models.import_gguf import import_gguf

    quiet_transformers()
    path = import_gguf(
        gguf_file, output, echo=lambda msg: click.echo(f"eexp: {msg}", err=True), chat_template=chat_template
    )
    click.echo(str(path))


@cli.command("export")
@click.argument("ckpt", metavar="CKPT")
@field_options(ExportSettings, "output", "adapter", "quant", "lora_only")
@config_option
def export_command(ckpt, output, adapter, quant, lora_only):
    """Convert a transformers checkpoint to one GGUF file for llama.cpp, with llama.cpp's own converter.

    Every architecture that converter knows exports (Llama with plain or Llama-3 RoPE, Qwen2, Qwen3, Gemma-3, ...);
    it comes from the installed llama-cpp-python's sdist, installed by `python -m eexp.models.llama_converter`
    (install.sh runs it; it fetches the sdist with pip, which export never does). The file holds the weights, the
    tokenizer (the pre-tokenizer of eexp's own tokenizers named by eexp), the chat template and the model card
    (eexp/card.py: one `eexp.*` key per field): the card of the adapter or checkpoint (its serializer settings among
    them), with export's own fields added (source, its content hash, adapter, quant). CKPT may also be a LoRA
    adapter directory whose base is a local directory, or a GGUF file (a base that `finetune --model FILE.gguf`
    trained an adapter on: its import, see `eexp import-model`). The file is written under a temporary name and
    renamed when complete.

    \b
    Examples:
      eexp export runs/il -o il.q8_0.gguf
      eexp export models/base --adapter runs/il-lora -o il.q4_k_m.gguf --quant q4_k_m
      eexp export models/base --adapter runs/il-lora --lora-only -o il-lora.gguf
    """
    from eexp.models.export import export_gguf

    if quant == "q4_k_m" and lora_only:
        raise click.BadParameter("--lora-only takes f32, f16 or q8_0", param_hint="--quant")
    quiet_transformers()
    quant = quant or ("f32" if lora_only else "q8_0")
    path = export_gguf(ckpt, output, quant=quant, adapter=adapter, lora_only=lora_only)
    # the quant type written, said every time: a GGUF given as CKPT is imported and quantized anew, not copied
    click.echo(f"eexp: wrote {path} ({quant})", err=True)


@cli.command("merge")
@click.argument("adapter", metavar="ADAPTER")
@field_options(MergeSettings, "output", "base", "dtype", "trust_remote_code")
@config_option
def merge_command(adapter, **options):
    """Merge a LoRA adapter into its base: one Hugging Face checkpoint folder, for `vllm serve` or SGLang.

    The adapter is folded into the base's weights in fp32 on the CPU, then the weights are saved in --dtype (bf16
    by default) as safetensors, with config.json, generation_config.json, the tokenizer and its chat template,
    and the model card (card.yaml: the adapter's card, with the adapter, its hash and the saved precision). The
    base is the one the adapter names (a folder, the import of a GGUF, or a Hugging Face Hub id and revision),
    unless --base is given. OUT is written under a temporary name and renamed when complete.

    \b
    Example:
      eexp finetune il.jsonl --model Qwen/Qwen2.5-7B-Instruct --lora -o runs/il-lora
      eexp merge runs/il-lora -o runs/il-merged
      vllm serve runs/il-merged --port 8000
      eexp eval --policy http://127.0.0.1:8000/v1 --env shop --concurrency 16 -o il.jsonl
    """
    from eexp.models.merge import merge_adapter

    quiet_transformers()
    path = merge_adapter(
        MergeSettings(adapter=adapter, **options), echo=lambda msg: click.echo(f"eexp: {msg}", err=True)
    )
    click.echo(f"eexp: wrote {path}", err=True)
