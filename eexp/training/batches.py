"""Batches: length-grouped updates (a pure function of seed, phase, epoch and the examples per update, so resume needs
no sampler state and --grad-accum cannot change them), their micro-batches, collation, and the weighted loss computed
only where a target token is predicted."""

from __future__ import annotations

import math
import random
from typing import Iterator

import torch
import torch.nn.functional as F

from eexp.training.config import FinetuneConfig
from eexp.training.data import Dataset, Encoded


def epoch_updates(lengths: list[int], per_update: int, seed: int, phase: str, epoch: int) -> list[list[int]]:
    """The updates of an epoch, each a list of example indices: shuffle, sort by length within windows of 64
    updates, cut the windows into updates of `per_update` examples, shuffle the updates.

    Examples of similar length share an update (little padding, no attention across examples, unlike naive
    packing) while the order stays random. A pure function of (seed, phase, epoch) and the examples per update:
    resume needs no sampler state, and how an update is then split into micro-batches and processes
    (`micro_batches`) cannot change which examples share it. (Grouping micro-batches first and then gathering
    --grad-accum of them made an update's examples depend on the split: 2 x 4 mixed what one batch of 8 kept
    apart.) With --grad-accum 1 on one process these are the micro-batches eexp has always made.
    """
    rng = random.Random(f"{seed}/{phase}/{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = per_update * 64
    updates = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i:i + window], key=lambda j: lengths[j], reverse=True)
        updates += [chunk[k:k + per_update] for k in range(0, len(chunk), per_update)]
    rng.shuffle(updates)
    return updates


def micro_batches(update: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """An update's examples as micro-batches of `batch_size`, longest first, so each micro-batch holds neighbours in
    length (the least padding). The processes take every world-th of them (the recipe); the last may be short."""
    ordered = sorted(update, key=lambda j: lengths[j], reverse=True)
    return [ordered[k:k + batch_size] for k in range(0, len(ordered), batch_size)]


def examples_per_update(cfg: FinetuneConfig, world: int = 1) -> int:
    """What an update is made of: --batch-size x --grad-accum x processes."""
    return cfg.batch_size * cfg.grad_accum * world


def updates_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    return math.ceil(n_examples / (batch_size * grad_accum * world))


def phase_updates(data: Dataset, cfg: FinetuneConfig, phase: str, world: int = 1) -> Iterator[tuple[int, list]]:
    """(epoch, micro-batches) for every update of a phase, epoch after epoch, without end."""
    lengths = [e.length for e in data.examples]
    for epoch in range(10**9):
        for update in epoch_updates(lengths, examples_per_update(cfg, world), cfg.seed, phase, epoch):
            yield epoch, micro_batches(update, lengths, cfg.batch_size)


def collate(examples: list[Encoded], pad_id: int, device):
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


def weighted_nll(model, ids, mask, weights, per_example: bool = False):
    """Sum over target tokens of weight x negative log-likelihood (one sum per row with `per_example`), computing
    logits only where a target is predicted.

    `logits_to_keep` (a tensor of positions) makes the model apply its output layer at those positions only: for a
    chat example that is a few dozen of the sequence's positions, so the vocabulary-sized logits never exist for the
    prompt.
    """
    keep = torch.nonzero(weights[:, 1:].any(dim=0)).flatten()  # positions whose next token is a target
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model without logits_to_keep: full logits, then select
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, keep]
    labels = ids[:, keep + 1]
    w = weights[:, keep + 1]
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
    rows = (nll * w).sum(dim=1)
    return rows if per_example else rows.sum()

