"""Language-model pretraining of a fresh model on plain text (`init-model --pretrain`), nanoGPT style.

The texts (corpus pages, each ending with the end-of-text token) are tokenized once and packed into one stream;
each update takes `batch` windows of `block` tokens at random offsets and minimizes next-token cross-entropy.
AdamW, a linear warm-up over the first 5% of the updates, then cosine decay to a tenth of the rate. A tenth of
the pages (every tenth one) is held out, and its loss is reported, so a user can see the prior learned something
that generalizes rather than memorized pages.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 1000
    block: int = 256
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0


def _stream(tokenizer, texts: list[str]) -> list[int]:
    ids: list[int] = []
    end = tokenizer.pad_token_id  # <|endoftext|>
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(end)
    return ids


def _mean_loss(model, data, block: int, windows: int) -> float:
    """Loss over up to `windows` consecutive, non-overlapping windows of `data` (deterministic)."""
    import torch

    starts = list(range(0, max(1, len(data) - block - 1), block))[:windows]
    with torch.no_grad():
        x = torch.stack([data[s : s + block] for s in starts])
        return float(model(input_ids=x, labels=x).loss)


def pretrain(
    model, tokenizer, texts: list[str], settings: PretrainSettings, progress: Callable[[int, float], None] | None = None
) -> dict:
    """Train `model` in place on `texts`; return what to record (tokens, losses before and after)."""
    import torch

    if not texts:
        raise ValueError("pretraining needs text")
    held_out = texts[::10] if len(texts) >= 10 else []
    train_texts = [t for i, t in enumerate(texts) if i % 10] if held_out else texts
    data = torch.tensor(_stream(tokenizer, train_texts), dtype=torch.long)
    valid = torch.tensor(_stream(tokenizer, held_out), dtype=torch.long) if held_out else None
    block = min(settings.block, len(data) - 1)
    if block < 8:
        raise ValueError(f"pretraining text too short: {len(data)} tokens")

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, settings.steps // 20)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, settings.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    record = {
        "steps": settings.steps,
        "block": block,
        "batch": settings.batch,
        "lr": settings.lr,
        "seed": settings.seed,
        "pages": len(train_texts),
        "tokens": len(data),
        "held_out_pages": len(held_out),
    }
    if valid is not None and len(valid) > block + 1:
        record["held_out_loss_before"] = round(_mean_loss(model, valid, block, 32), 4)
    model.train()
    loss_value = float("nan")
    for step in range(settings.steps):
        starts = [rng.randrange(0, len(data) - block) for _ in range(settings.batch)]
        x = torch.stack([data[s : s + block] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if progress:
            progress(step + 1, loss_value)
    model.eval()
    record["final_train_loss"] = round(loss_value, 4)
    if "held_out_loss_before" in record:
        record["held_out_loss"] = round(_mean_loss(model, valid, block, 32), 4)
    return record
