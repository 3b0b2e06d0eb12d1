"""Batches: length-grouped updates (a pure function of seed, phase, epoch and the examples per update, so resume needs
no sampler state and --grad-accum cannot change them), their micro-batches, collation, and the weighted loss computed
only where a target token is predicted."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
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
        chunk = sorted(order[i : i + window], key=lambda j: lengths[j], reverse=True)
        updates += [chunk[k : k + per_update] for k in range(0, len(chunk), per_update)]
    rng.shuffle(updates)
    return updates


def micro_batches(update: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """An update's examples as micro-batches of `batch_size`, longest first, so each micro-batch holds neighbours in
    length (the least padding). The processes take every world-th of them (the recipe); the last may be short."""
    ordered = sorted(update, key=lambda j: lengths[j], reverse=True)
    return [ordered[k : k + batch_size] for k in range(0, len(ordered), batch_size)]


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


@dataclass
class Rows:
    """A micro-batch as the model reads it, built on the host, every tensor on the device.

    Padded (the default): one row per example, right-padded to the longest. Packed (--packing, as TRL's
    padding_free): the examples end to end in one row, no padding, `position_ids` restarting at 0 for each example;
    transformers then attends within each example only (flash-attention's variable-length kernel, from
    `flash_kwargs`; a block-diagonal causal mask under sdpa or eager). Either way `keep` (the positions whose next
    token is a target) and `segment` (the example of each kept position) come from the host, so reading the batch
    needs no synchronization with the device."""

    ids: torch.Tensor  # (rows, width)
    mask: torch.Tensor | None  # attention mask of the padded rows; None when packed
    position_ids: torch.Tensor | None  # packed: each example's positions, from 0
    targets: torch.Tensor  # (rows, positions kept) the token each kept position predicts
    weights: torch.Tensor  # (rows, positions kept) the loss weight of that prediction
    keep: torch.Tensor  # the kept positions (of every row)
    segment: torch.Tensor | None  # packed: the example of each kept position
    n_targets: torch.Tensor  # (examples,) each example's target tokens (at least 1: --loss-norm example)
    n_examples: int
    tokens: int  # non-padding tokens
    flash_kwargs: dict = field(default_factory=dict)


def collate_rows(examples: list[Encoded], pad_id: int, device, packed: bool = False) -> Rows:
    """`examples` as `Rows` on `device`: built in (pinned, with CUDA) host memory and copied without blocking."""
    cuda = torch.device(device).type == "cuda"
    if packed:
        ids = [t for e in examples for t in e.ids]
        # Predicting an example's first token from the previous example's last is no target: only positions
        # inside an example are kept (the first weight of an example is never used, padded or packed).
        weights = [w if k else 0.0 for e in examples for k, w in enumerate(e.weights)]
        positions = [k for e in examples for k in range(len(e.ids))]
        owner = [i for i, e in enumerate(examples) for _ in e.ids]
        keep = [p for p in range(len(ids) - 1) if weights[p + 1]]
        host = {
            "ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "targets": torch.tensor([[ids[p + 1] for p in keep]], dtype=torch.long),
            "weights": torch.tensor([[weights[p + 1] for p in keep]], dtype=torch.float32),
            "keep": torch.tensor(keep, dtype=torch.long),
            "segment": torch.tensor([owner[p + 1] for p in keep], dtype=torch.long),
        }
        flash = {}
        if cuda:  # flash-attention's variable-length kernel reads the boundaries from here, not from the device
            bounds = [0]
            for e in examples:
                bounds.append(bounds[-1] + len(e.ids))
            longest = max(len(e.ids) for e in examples)
            flash = {
                "cu_seq_lens_q": torch.tensor(bounds, dtype=torch.int32),
                "cu_seq_lens_k": torch.tensor(bounds, dtype=torch.int32),
                "max_length_q": longest,
                "max_length_k": longest,
            }
    else:
        width = max(len(e.ids) for e in examples)
        targets_at = sorted({p for e in examples for p in range(len(e.ids) - 1) if e.weights[p + 1]})
        ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        weights = torch.zeros((len(examples), width), dtype=torch.float32)
        for row, e in enumerate(examples):
            n = len(e.ids)
            ids[row, :n] = torch.tensor(e.ids)
            mask[row, :n] = 1
            weights[row, :n] = torch.tensor(e.weights)
        keep = torch.tensor(targets_at, dtype=torch.long)
        host = {"ids": ids, "mask": mask, "targets": ids[:, keep + 1], "weights": weights[:, keep + 1], "keep": keep}
        flash = {}
    host["n_targets"] = torch.tensor([max(e.n_targets, 1) for e in examples], dtype=torch.float32)
    if cuda:
        host = {k: v.pin_memory() for k, v in host.items()}
        flash = {
            k: v.pin_memory().to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in flash.items()
        }
    on = {k: v.to(device, non_blocking=cuda) for k, v in host.items()}
    return Rows(
        ids=on["ids"],
        mask=on.get("mask"),
        position_ids=on.get("position_ids"),
        targets=on["targets"],
        weights=on["weights"],
        keep=on["keep"],
        segment=on.get("segment"),
        n_targets=on["n_targets"],
        n_examples=len(examples),
        tokens=sum(len(e.ids) for e in examples),
        flash_kwargs=flash,
    )


def example_nll(model, rows: Rows):
    """Each example's sum over its target tokens of weight x negative log-likelihood, padded or packed, computing
    logits only at the kept positions: `logits_to_keep` (a tensor of positions) makes the model apply its output
    layer there only, so for a chat example the vocabulary-sized logits never exist for the prompt. The supervised
    loss, and DPO's log-probabilities (negated)."""
    inputs = {"input_ids": rows.ids, "use_cache": False}
    if rows.mask is not None:
        inputs["attention_mask"] = rows.mask
    if rows.position_ids is not None:
        inputs["position_ids"] = rows.position_ids
    if "flash" in str(getattr(getattr(model, "config", None), "_attn_implementation", "")):
        inputs.update(rows.flash_kwargs)
    try:
        logits = model(**inputs, logits_to_keep=rows.keep).logits
    except TypeError:  # a model without logits_to_keep: full logits, then select
        logits = model(**inputs).logits[:, rows.keep]
    nll = F.cross_entropy(logits.float().flatten(0, 1), rows.targets.flatten(), reduction="none").view(
        rows.targets.shape
    )
    weighted = nll * rows.weights
    if rows.segment is None:
        return weighted.sum(dim=1)
    return torch.zeros(rows.n_examples, dtype=weighted.dtype, device=weighted.device).index_add_(
        0, rows.segment, weighted[0]
    )
