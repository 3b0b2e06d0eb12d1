"""What a supervised run optimizes: an objective object that `Finetune` (eexp.training.recipe) is given, the class
`--objective NAME` names in `OBJECTIVES` (eexp.training.config), where the name is said once.

An objective says what an example is and what a micro-batch of examples adds to the loss; the recipe does the rest
(batches, updates, validation, checkpoints, --resume, the final save). Its methods:

    check(cfg)                        refuse options it cannot train with (UsageProblem)
    read(paths, cfg, echo)            the valid records of the files, and their reader (--on-error)
    encode(name, items, reader, tokenizer, cfg) -> Dataset
    example_key(example)              what --resume's fingerprint of the data hashes for one example
    units(example, cfg)               what an update's loss is averaged over, per example
    batch_loss(run, batch)            (the loss summed over the batch's units, a tensor; its tokens; {name: tensor}
                                      of other sums to log per unit)
    prepare(run)                      what it needs from the starting weights, before a checkpoint replaces them
    card(cfg)                         what the card adds to each phase it trained

`SFT` (eexp.training.recipe) is the likelihood of the target tokens (IL, IWM, SR); `DPO` (eexp.training.dpo)
preference pairs.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from eexp.io import Reader
from eexp.training.config import FinetuneConfig
from eexp.training.data import Dataset


class Objective(Protocol):
    """What `Finetune` asks of the objective it optimizes (`SFT`, `DPO`)."""

    def check(self, cfg: FinetuneConfig) -> None: ...

    def read(self, paths: list[str], cfg: FinetuneConfig, echo: Callable[[str], None]) -> tuple[list, Reader]: ...

    def encode(self, name: str, items: list, reader: Reader, tokenizer: Any, cfg: FinetuneConfig) -> Dataset: ...

    def example_key(self, example: Any) -> list: ...

    def units(self, example: Any, cfg: FinetuneConfig) -> int: ...

    def batch_loss(self, run: Any, batch: list) -> tuple[Any, int, dict]: ...

    def prepare(self, run: Any) -> None: ...

    def card(self, cfg: FinetuneConfig) -> dict: ...
