"""Objectives own their options: every objective of `eexp finetune --objective` and `eexp rl --reward` declares the
config fields that are its own (OPTIONS) and follows its interface (eexp.training.objective.Objective,
eexp.rl.objective.RLObjective); an option of one objective given under another is refused in one place
(refuse_foreign_options), whatever the objectives are called, so a new objective needs no recipe change.
No model is loaded: these are the checks a run makes before it loads one."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from eexp.cli import cli  # noqa: E402
from eexp.errors import UsageProblem  # noqa: E402
from eexp.rl.config import REWARDS, RLConfig  # noqa: E402
from eexp.rl.objective import RLObjective  # noqa: E402
from eexp.rl.recipe import RL  # noqa: E402
from eexp.training import objective as objectives  # noqa: E402
from eexp.training.config import OBJECTIVES, FinetuneConfig, objective_class  # noqa: E402
from eexp.training.objective import Objective, refuse_foreign_options  # noqa: E402


def rl_config(**kw) -> RLConfig:
    return RLConfig(**{"model": "m", "output": "o", "env": "shop", **kw})


def members(protocol: type) -> set[str]:
    """The names a protocol asks for: its methods and its declared (class) attributes."""
    return {name for name in vars(protocol) if not name.startswith("_")} | set(protocol.__annotations__)


@pytest.mark.parametrize(
    "registry, protocol, config", [(OBJECTIVES, Objective, FinetuneConfig), (REWARDS, RLObjective, RLConfig)]
)
def test_every_objective_follows_its_interface_and_owns_options_of_its_command(registry, protocol, config):
    fields = {f.name for f in dataclasses.fields(config)}
    for name in registry:
        cls = objective_class(registry, name)
        missing = members(protocol) - {"OPTIONS"} - set(dir(cls))
        assert not missing, f"{name}: {sorted(missing)}"
        assert set(objectives.options_of(cls)) <= fields & set(config.OPTIONS), name


@pytest.mark.parametrize(
    "given, reward, refused",
    [
        (
            {"outcomes": "f.jsonl"},
            "success",
            "--outcomes: only with --reward next-state (--reward success does not take it)",
        ),
        (
            {"outcomes": "f.jsonl"},
            "expert-step",
            "--outcomes: only with --reward next-state (--reward expert-step does not take it)",
        ),
        (
            {"expert": "e.jsonl"},
            "next-state",
            "--expert: only with --reward expert-step (--reward next-state does not take it)",
        ),
        (
            {"expert_match": "f1"},
            "score",
            "--expert-match: only with --reward expert-step (--reward score does not take it)",
        ),
    ],
)
def test_an_objectives_option_is_refused_under_another(given, reward, refused):
    rl = rl_config(reward=reward, **given)
    with pytest.raises(UsageProblem) as e:
        refuse_foreign_options(REWARDS, rl, objective_class(REWARDS, reward)())
    assert str(e.value) == refused


def test_an_objectives_own_options_pass():
    refuse_foreign_options(
        REWARDS,
        rl_config(reward="expert-step", expert="e.jsonl", expert_match="f1"),
        objective_class(REWARDS, "expert-step")(),
    )
    refuse_foreign_options(
        REWARDS, rl_config(reward="next-state", outcomes="f.jsonl"), objective_class(REWARDS, "next-state")()
    )
    refuse_foreign_options(
        OBJECTIVES,
        FinetuneConfig(train_files=["t"], model="m", output="o", objective="dpo", beta=0.3),
        objective_class(OBJECTIVES, "dpo")(),
    )


class Toy:
    """An objective that is not eexp's: its option is one RLConfig has, which no objective of eexp claims."""

    OPTIONS = ("allow_zero_start",)


def test_a_new_objective_is_a_registry_line_and_its_options_are_refused_elsewhere(monkeypatch):
    monkeypatch.setitem(REWARDS, "toy", f"{__name__}:Toy")
    with pytest.raises(UsageProblem, match=r"^--allow-zero-start: only with --reward toy \(--reward success does "):
        refuse_foreign_options(REWARDS, rl_config(allow_zero_start=True), objective_class(REWARDS, "success")())
    refuse_foreign_options(REWARDS, rl_config(reward="toy", allow_zero_start=True), Toy())


def test_the_recipe_checks_an_objectives_options_before_it_loads_anything(tmp_path):
    """The objective's own check (next-state's: --outcomes is required) and the refusal run at setup's start: no
    model is looked for, no OUT made."""
    with pytest.raises(UsageProblem, match="--reward next-state needs --outcomes FILE"):
        RL(rl_config(reward="next-state", output=str(tmp_path / "o"), model=str(tmp_path / "none"))).setup()
    with pytest.raises(UsageProblem, match="--expert: only with --reward expert-step"):
        RL(rl_config(expert="e.jsonl", output=str(tmp_path / "o"), model=str(tmp_path / "none"))).setup()
    assert not (tmp_path / "o").exists()


def test_the_cli_says_the_refusal_as_a_usage_error(tiny_checkpoint, tmp_path):
    (tmp_path / "f.jsonl").write_text("")
    result = CliRunner().invoke(
        cli,
        [
            "rl",
            "--model",
            str(tiny_checkpoint),
            "--env",
            "shop",
            "-o",
            str(tmp_path / "a"),
            "--reward",
            "expert-step",
            "--outcomes",
            str(tmp_path / "f.jsonl"),
            "-q",
        ],
    )
    assert result.exit_code == 2
    assert "--outcomes: only with --reward next-state (--reward expert-step does not take it)" in result.output
    assert not (tmp_path / "a").exists()
