"""What the finetune benches (bench_finetune.py, bench_finetune_real.py) share: TRL's SFTTrainer set up as their
baseline, on the same examples as eexp trains on (prompt/completion, loss on the completion only), with the same
optimizer settings and LoRA (r 16, alpha 32, all linear layers), on the CPU, in fp32; and the common unit of their
throughputs, tokens per example as eexp encodes them."""

from __future__ import annotations

import json


def sft_trainer(args, *, seed: int, logging_steps: int):
    """(trainer, tokenizer, losses): `losses` fills with the logged training losses while the trainer runs."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = []
    for line in open(args.data):
        messages = [{"role": m["role"], "content": m["content"]} for m in json.loads(line)["messages"]]
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    config = SFTConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        max_length=args.max_length,
        completion_only_loss=True,
        packing=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=logging_steps,
        dataloader_num_workers=0,
        seed=seed,
        disable_tqdm=True,
        max_grad_norm=1.0,
    )
    peft_config = (
        None
        if args.full
        else LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    losses: list[float] = []

    class Log(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[Log()],
    )
    return trainer, tok, losses


def tokens_per_example(data: str, model: str, max_length: int) -> float:
    """Mean tokens per example (eexp's encoding), the common unit of every throughput."""
    from transformers import AutoTokenizer

    from eexp.training.data import encode

    tok = AutoTokenizer.from_pretrained(model)
    lengths = [len(encode(tok, json.loads(line)["messages"], max_length).ids) for line in open(data)]
    return sum(lengths) / len(lengths)
