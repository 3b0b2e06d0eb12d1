"""`eexp finetune --objective dpo`: Direct Preference Optimization (Rafailov et al., 2023) on preference pairs.

The pairs are `eexp preference-data`'s (or any file of preference records: a prompt, chosen and rejected assistant
turns). DPO is an objective of the supervised recipe (eexp.training.objective), which keeps all of the rest: model
loading (full, LoRA, QLoRA), length-grouped batches, checkpoints, exact --resume, validation, metrics.jsonl, the
final save. What changes is what an example is (a pair of encoded conversations over one prompt, `encode_pair`) and
the loss of a micro-batch.

The loss of a pair, with pc and pr the model's log-probabilities of the chosen and the rejected answer (summed over
their target tokens, the tokens `eexp finetune` trains: each assistant turn with its end-of-turn token) and rc and
rr the reference's:

    -log sigmoid(beta * ((pc - rc) - (pr - rr)))

averaged over the pairs of an update. `beta * (p - r)` is each side's implicit reward; metrics.jsonl logs the mean
reward margin (`reward_margin`) and the share of pairs whose chosen answer has the larger reward
(`reward_accuracy`) beside the loss.

The reference is the start: the model as loaded, before any update (for a fresh LoRA adapter the base with the
adapter disabled; for --adapter the adapter as it was; for full fine-tuning the weights loaded). Its log-probabilities
do not change, so they are computed once, in eval mode, before the first update, and kept with the pairs (as TRL's
`precompute_ref_log_probs` does): no second copy of the model is held while training. --resume computes them again
from the same starting weights before the checkpoint is loaded, so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eexp.errors import UsageProblem
from eexp.io import Reader
from eexp.records import expect
from eexp.training.batches import collate_rows, example_nll
from eexp.training.chat_template import encode_or_reject
from eexp.training.config import FinetuneConfig
from eexp.training.data import Dataset, Encoded, encode_pair, warn_without_end_of_turn


@dataclass
class Pair:
    """One encoded preference pair and the reference's log-probabilities of its two answers."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def length(self) -> int:
        return self.chosen.length + self.rejected.length

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def read_pairs(paths: list[str], on_error: str, warn) -> tuple[list, Reader]:
    """Valid preference records with where they came from; a bad one fails as FILE:LINE or is skipped."""
    reader = Reader(list(paths), on_error=on_error, warn=warn)
    check = expect("preference")
    items = []
    for item in reader:
        problem = check(item.record)
        if problem:
            reader.reject(item.error(problem))
            continue
        items.append(item)
    return items, reader


def encode_pairs(name: str, items, reader: Reader, tokenizer, cfg) -> Dataset:
    data = Dataset(name, [])
    for item in items:
        record = item.record
        encoded = encode_or_reject(
            lambda: encode_pair(
                tokenizer, record["prompt"], record["chosen"], record["rejected"], cfg.max_length, cfg.truncate
            ),
            item,
            reader,
            cfg.model,
            "pair",
        )
        if encoded is None:
            continue
        pair = Pair(*encoded)
        data.examples.append(pair)
        data.truncated += pair.truncated
        serializer = (record.get("meta") or {}).get("serializer")
        if serializer:
            data.serializers[serializer] += 1
    data.skipped = reader.skipped
    if data.examples:
        warn_without_end_of_turn(tokenizer, data.examples[0].chosen, cfg.model)
    return data


def dpo_losses(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    """(the loss of each pair, each pair's reward margin beta * ((pc - rc) - (pr - rr)))."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


class DPO:
    """The objective of `--objective dpo`: preference pairs for examples and the DPO loss."""

    OPTIONS = ("beta",)  # FinetuneConfig's fields that are DPO's own: refused under another objective

    def check(self, cfg: FinetuneConfig) -> None:
        if cfg.warmup_data:
            raise UsageProblem(
                "--objective dpo trains on preference pairs alone; run the warm-up (--warmup-data) "
                "as a finetune of its own and give its output as --model"
            )
        if cfg.beta <= 0:
            raise UsageProblem("--beta must be above 0")
        if cfg.loss_norm != "example":
            raise UsageProblem(
                f"--loss-norm {cfg.loss_norm} is the sft loss's; DPO's loss is the mean over "
                "pairs (--loss-norm example)"
            )

    def read(self, paths: list[str], cfg: FinetuneConfig, echo):
        return read_pairs(paths, cfg.on_error, echo)

    def encode(self, name: str, items, reader, tokenizer, cfg: FinetuneConfig) -> Dataset:
        return encode_pairs(name, items, reader, tokenizer, cfg)

    @staticmethod
    def example_key(pair: Pair) -> list:
        return [pair.chosen.ids, pair.chosen.weights, pair.rejected.ids, pair.rejected.weights]

    @staticmethod
    def units(pair: Pair, cfg: FinetuneConfig) -> int:
        return 1  # the loss is a mean over pairs

    @staticmethod
    def logps(run, batch: list[Pair]):
        """The model's log-probabilities of the chosen and of the rejected answers of `batch`, in one forward pass,
        and the tokens of that pass."""
        # each answer's sum of weight x log-probability: the supervised loss's per-example sum (padded rows), negated
        rows = collate_rows([p.chosen for p in batch] + [p.rejected for p in batch], run.pad_id, run.device)
        logps = -example_nll(run.model, rows)
        return logps[: len(batch)], logps[len(batch) :], rows.tokens

    def batch_loss(self, run, batch: list[Pair]):
        chosen, rejected, tokens = self.logps(run, batch)
        ref = torch.tensor([[p.ref_chosen, p.ref_rejected] for p in batch], dtype=torch.float32, device=run.device)
        losses, margin = dpo_losses(chosen, rejected, ref[:, 0], ref[:, 1], run.cfg.beta)
        margin = margin.detach()
        return losses.sum(), tokens, {"reward_margin": margin.sum(), "reward_accuracy": (margin > 0).sum()}

    def prepare(self, run) -> None:
        """The reference log-probabilities of every pair (training and validation), from the weights as loaded."""
        model = run.acc.unwrap_model(run.model) if run.acc else run.model
        fresh_adapter = run.cfg.method != "full" and not run.cfg.adapter
        # A fresh adapter starts at zero (PEFT's B matrices), so its model is its base; disabling it says so
        # whatever the initialization.
        start = model.disable_adapter() if fresh_adapter else contextlib.nullcontext()
        autocast = torch.autocast(run.device.type, dtype=torch.bfloat16) if run.bf16 else contextlib.nullcontext()
        pairs = [p for data in (run.data["train"], run.val) if data is not None for p in data.examples]
        order = sorted(range(len(pairs)), key=lambda j: pairs[j].length)
        size = run.cfg.batch_size
        run.model.eval()
        # Every process computes every pair, in the same order (under FSDP each forward pass is collective).
        with torch.no_grad(), start, autocast:
            for k in range(0, len(order), size):
                batch = [pairs[j] for j in order[k : k + size]]
                chosen, rejected, _ = self.logps(run, batch)
                for pair, c, r in zip(batch, chosen.tolist(), rejected.tolist()):
                    pair.ref_chosen, pair.ref_rejected = c, r
        run.model.train()
        run.echo(f"reference log-probabilities of {len(pairs)} pairs computed (the starting weights)")

    def card(self, cfg: FinetuneConfig) -> dict:
        """The card's training phase says it was DPO (its name in OBJECTIVES), and with which beta."""
        return {"objective": cfg.objective, "beta": cfg.beta}
