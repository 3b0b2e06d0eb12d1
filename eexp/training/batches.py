"""Batches: length-grouped micro-batches (a pure function of seed, phase and epoch, so resume needs no sampler
state), collation, and the weighted loss computed only where a target token is predicted."""

from __future__ import annotations

import math
import random
from typing import Iterator

from eexp.training.config import FinetuneConfig
from eexp.training.data import Dataset, Encoded


def epoch_batches(lengths: list[int], batch_size: int, seed: int, phase: str, epoch: int) -> list[list[int]]:
    """Length-grouped micro-batches: shuffle, sort within windows of 64 batches, shuffle the batches.

    Examples of similar length share a batch (little padding, no attention across examples, unlike naive
    packing) while the order stays random. A pure function of (seed, phase, epoch): resume needs no sampler state.
    """
    rng = random.Random(f"{seed}/{phase}/{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 64
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i:i + window], key=lambda j: lengths[j], reverse=True)
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def updates_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    return math.ceil(math.ceil(n_examples / batch_size) / (grad_accum * world))


def phase_updates(data: Dataset, cfg: FinetuneConfig, phase: str, world: int = 1) -> Iterator[tuple[int, list]]:
    """(epoch, micro-batches) for every update of a phase, epoch after epoch, without end."""
    lengths = [e.length for e in data.examples]
    per_update = cfg.grad_accum * world
    for epoch in range(10**9):
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, phase, epoch)
        for k in range(0, len(batches), per_update):
            yield epoch, batches[k:k + per_update]


def collate(examples: list[Encoded], pad_id: int, device):
    import torch
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    weights = torch.zeros((len(examples), width), dtype=torch.float32)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        weights[row, :n] = torch.tensor(e.weights)
    return ids.to(device), mask.to(device), weights.to(device)


def weighted_nll(model, ids, mask, weights):
    """Sum over target tokens of weight x negative log-likelihood, computing logits only where a target is predicted.

    `logits_to_keep` (a tensor of positions) makes the model apply its output layer at those positions only: for a
    chat example that is a few dozen of the sequence's positions, so the vocabulary-sized logits never exist for the
    prompt.
    """
    import torch
    import torch.nn.functional as F
    keep = torch.nonzero(weights[:, 1:].any(dim=0)).flatten()  # positions whose next token is a target
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model without logits_to_keep: full logits, then select
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, keep]
    labels = ids[:, keep + 1]
    w = weights[:, keep + 1]
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return (nll * w.flatten()).sum()

