"""What an RL step draws and how it is rewarded: an objective object that `RL` (eexp.rl.recipe) is given, the class
`--reward NAME` names in `REWARDS` (eexp.rl.config), where the name is said once. The RL counterpart of
eexp.training.objective.Objective.

An objective says what a step samples from the live weights and what each sample earns; the recipe does the rest
(the group-relative advantages, the clipped updates, checkpoints, --resume, metrics, the final save). It declares
the options it owns and checks them:

    OPTIONS                           RLConfig's fields that are its own (expert-step: expert, expert_match): given
                                      under another objective they are refused, in one place
                                      (eexp.training.objective.refuse_foreign_options)
    check(rl)                         refuse values of options it cannot run with (UsageProblem)
    setup(run)                        what it reads before the first step (expert states, outcome records)
    fingerprint_data(run)             what --resume must find unchanged
    collect(run, step)                the step's samples: [(drawn, its trace of policy calls)], grouped
    probe(run, drawn)                 the first step's check (outcome RL refuses a start that never succeeds)
    rewards(run, drawn)               one reward per sample (None: trains nothing)
    account(run, drawn, rewards)      the run's counts, and the metrics row's fields
    postfix(row)                      the progress bar's fields
    config(run)                       config.yaml's extra fields
    phase, unit, act                  the metrics' and the card's phase; what `<unit>_per_s` counts; the default of
                                      --act where it samples one way whatever the environment (None: the
                                      environment's)

`Episodes` (eexp.rl.rollouts) is GRPO over whole episodes; `ExpertStep` (eexp.rl.expert_step) actions at expert
states; `NextState` (eexp.rl.next_state) predictions of the next observation.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from eexp.rl.config import RLConfig


class RLObjective(Protocol):
    """What `RL` asks of the objective --reward names (`Episodes`, `ExpertStep`, `NextState`)."""

    OPTIONS: ClassVar[tuple[str, ...]]
    phase: ClassVar[str]
    unit: ClassVar[str]
    act: ClassVar[str | None]

    def check(self, rl: RLConfig) -> None: ...

    def setup(self, run: Any) -> None: ...

    def fingerprint_data(self, run: Any) -> list: ...

    def collect(self, run: Any, step: int) -> list[tuple[dict, list[dict]]]: ...

    def probe(self, run: Any, drawn: list) -> None: ...

    def rewards(self, run: Any, drawn: list) -> list[float | None]: ...

    def account(self, run: Any, drawn: list, rewards: list[float | None]) -> dict: ...

    def postfix(self, row: dict) -> dict: ...

    def config(self, run: Any) -> dict: ...
