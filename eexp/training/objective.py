"""What a supervised run optimizes: an objective object that `Finetune` (eexp.training.recipe) is given, the class
`--objective NAME` names in `OBJECTIVES` (eexp.training.config), where the name is said once.

An objective says what an example is and what a micro-batch of examples adds to the loss; the recipe does the rest
(batches, updates, validation, checkpoints, --resume, the final save). It declares the options it owns and checks
them:

    OPTIONS                           the config fields that are its own (DPO: beta): given under another objective,
                                      they are refused, in one place for every objective and both commands
                                      (`refuse_foreign_options`); an objective with none may leave it out
    check(cfg)                        refuse values of options it cannot train with (UsageProblem)
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

import dataclasses
from typing import Any, Callable, ClassVar, Protocol

from eexp.errors import UsageProblem
from eexp.fields import default_of
from eexp.io import Reader
from eexp.training.config import FinetuneConfig, Objectives, objective_class
from eexp.training.data import Dataset


class Objective(Protocol):
    """What `Finetune` asks of the objective it optimizes (`SFT`, `DPO`)."""

    OPTIONS: ClassVar[tuple[str, ...]]

    def check(self, cfg: FinetuneConfig) -> None: ...

    def read(self, paths: list[str], cfg: FinetuneConfig, echo: Callable[[str], None]) -> tuple[list, Reader]: ...

    def encode(self, name: str, items: list, reader: Reader, tokenizer: Any, cfg: FinetuneConfig) -> Dataset: ...

    def example_key(self, example: Any) -> list: ...

    def units(self, example: Any, cfg: FinetuneConfig) -> int: ...

    def batch_loss(self, run: Any, batch: list) -> tuple[Any, int, dict]: ...

    def prepare(self, run: Any) -> None: ...

    def card(self, cfg: FinetuneConfig) -> dict: ...


def options_of(objective: Any) -> tuple[str, ...]:
    """The config fields an objective (a class or an instance) declares as its own; none when it declares nothing."""
    return tuple(getattr(objective, "OPTIONS", ()))


def refuse_foreign_options(objectives: Objectives, cfg: Any, objective: Any) -> None:
    """The one place an option of one objective given under another is refused (exit 2), for a command's
    objectives (its registry: OBJECTIVES, eexp.rl.config.REWARDS): every field some objective declares in its
    OPTIONS, and `objective` (the one the run trains) does not, must keep its default. The recipes name no objective
    here: a new objective's options are refused under the others by its OPTIONS alone."""
    option = objectives.option
    owners: dict[str, list[str]] = {}
    for name in objectives:
        for field in options_of(objective_class(objectives, name)):
            owners.setdefault(field, []).append(name)
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for name, names in owners.items():
        if name in options_of(objective) or getattr(cfg, name) == default_of(fields[name]):
            continue
        flag = (fields[name].metadata.get("flag") or "--" + name.replace("_", "-")).split("/")[0]
        raise UsageProblem(
            f"{flag}: only with --{option} {' or '.join(names)} (--{option} {getattr(cfg, option)} does not take it)"
        )
