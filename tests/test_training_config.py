"""The options of the training commands (issue 51): one trainer config, one registry of objectives.

`TrainerConfig` (eexp/training/config.py) declares the options the trainer runs with, once; `FinetuneConfig` and
`RLConfig` extend it, and a command that words one of them otherwise retells it (`retold`: the same declaration,
its own help, default or choices) rather than declaring it again. Each command's registry (finetune's
`OBJECTIVES`, rl's `REWARDS`) names each objective once: the options' choices, the recipes and the card read it.
Nothing here imports torch but the last test.
"""

from __future__ import annotations

import dataclasses
import inspect

import click
import pytest

from eexp.cli import cli
from eexp.fields import setting
from eexp.rl.config import REWARDS, RLConfig
from eexp.training.config import OBJECTIVES, FinetuneConfig, TrainerConfig, objective_class, retold
from eexp.training.objective import Objective

CONFIGS = (TrainerConfig, FinetuneConfig, RLConfig)
COMMANDS = {"finetune": FinetuneConfig, "rl": RLConfig}
# What a retelling may change of the field it retells
RETELLABLE = {"help", "choices", "retold"}


def declared_here(cls) -> dict[str, dataclasses.Field]:
    """The fields written in `cls`'s own body: declared there (`option`), or retold there (`retold`)."""
    own = inspect.get_annotations(cls)
    return {f.name: f for f in dataclasses.fields(cls) if f.name in own}


def declarations(configs=CONFIGS) -> dict[str, list[str]]:
    """Each field name, and the config classes that declare it (not those that retell it)."""
    found: dict[str, list[str]] = {}
    for cls in configs:
        for name, f in declared_here(cls).items():
            if "retold" not in f.metadata:
                found.setdefault(name, []).append(cls.__name__)
    return found


def test_no_option_is_declared_in_two_config_classes():
    twice = {name: owners for name, owners in declarations().items() if len(owners) > 1}
    assert not twice, f"declared in more than one config class (declare it once, in TrainerConfig): {twice}"


def test_a_field_of_the_trainer_is_only_retold_elsewhere_keeping_its_declaration():
    trainer = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    base_types = inspect.get_annotations(TrainerConfig)
    for cls in (FinetuneConfig, RLConfig):
        own_types = inspect.get_annotations(cls)
        for name, f in declared_here(cls).items():
            if "retold" not in f.metadata:
                assert name not in trainer, f"{cls.__name__}.{name} declares a TrainerConfig field again"
                continue
            assert name in trainer and f.metadata["retold"] == "TrainerConfig", f"{cls.__name__}.{name}"
            assert own_types[name] == base_types[name], f"{cls.__name__}.{name}: its type is the trainer's"
            base = trainer[name].metadata
            assert {k: v for k, v in f.metadata.items() if k not in RETELLABLE} == {
                k: v for k, v in base.items() if k not in RETELLABLE
            }, f"{cls.__name__}.{name}: flag, bounds"
            assert set(f.metadata.get("choices", [])) <= set(base.get("choices", [])), f"{cls.__name__}.{name}"


def test_the_check_sees_an_option_declared_twice():
    @dataclasses.dataclass(kw_only=True)
    class Twice(TrainerConfig):
        lr: float | None = setting(None, "Learning rate.")  # declared again, not retold
        seed: int = retold(TrainerConfig, "seed", "Seed.")

    assert declarations((TrainerConfig, Twice))["lr"] == ["TrainerConfig", "Twice"]
    assert declarations((TrainerConfig, Twice))["seed"] == ["TrainerConfig"]


def test_the_two_commands_declare_no_option_in_common_but_the_trainer_s():
    shared = set(declared_here(FinetuneConfig)) & set(declared_here(RLConfig))
    trainer = {f.name for f in dataclasses.fields(TrainerConfig)}
    assert shared <= trainer, f"both commands declare {sorted(shared - trainer)}: it belongs in TrainerConfig"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_s_options_are_its_config_s_fields_in_its_order(command):
    cls = COMMANDS[command]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert len(set(cls.OPTIONS)) == len(cls.OPTIONS) and set(cls.OPTIONS) <= fields
    params = [p.name for p in cli.commands[command].params if p.name not in ("config", "env_args")]
    assert params == [n for n in cls.OPTIONS if n != "env_kwargs"]
    # every field of the command's own is an option; a trainer field it does not offer keeps its default
    assert set(declared_here(cls)) <= set(cls.OPTIONS)


def test_rl_offers_every_trainer_option_but_those_it_fixes():
    hidden = {f.name for f in dataclasses.fields(TrainerConfig)} - set(RLConfig.OPTIONS)
    assert hidden == {"qlora", "adapter", "lora_dropout", "lora_targets", "lr_warmup_ratio", "save_dtype"}
    assert set(FinetuneConfig.OPTIONS) == {f.name for f in dataclasses.fields(FinetuneConfig)}


def choices(command: str, option: str) -> list[str]:
    param = next(p for p in cli.commands[command].params if p.name == option)
    assert isinstance(param.type, click.Choice)
    return list(param.type.choices)


def test_the_objective_choices_are_the_registry_s_names():
    assert choices("finetune", "objective") == list(OBJECTIVES) == ["sft", "dpo"]
    assert (
        choices("rl", "reward") == list(REWARDS) == ["success", "score", "success+score", "expert-step", "next-state"]
    )
    assert FinetuneConfig.__dataclass_fields__["objective"].metadata["choices"] == list(OBJECTIVES)
    assert (OBJECTIVES.option, REWARDS.option) == ("objective", "reward")


def test_every_registered_objective_is_a_class_of_its_recipe():
    pytest.importorskip("torch")
    for name in OBJECTIVES:
        cls = objective_class(OBJECTIVES, name)
        assert all(
            callable(getattr(cls, m, None))
            for m in Objective.__dict__
            if not m.startswith("_") and callable(Objective.__dict__[m])
        ), name
    for name in REWARDS:
        cls = objective_class(REWARDS, name)
        assert cls.phase.startswith("rl") and callable(cls.collect) and callable(cls.rewards), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["finetune", "x.jsonl", "-o", "out", "--val-fraction", "1"], "1.0 is not in the range 0<=x<1"),
        (["rl", "--model", "m", "--env", "shop", "-o", "out", "--clip", "0"], "0.0 is not in the range 0<x<=1"),
        (["finetune", "x.jsonl", "-o", "out", "--quant", "q9"], "'q9' is not one of 'f32', 'f16', 'q8_0', 'q4_k_m'"),
    ],
)
def test_a_value_the_run_cannot_use_is_refused_as_a_usage_error(runner, args, message):
    """A value the run cannot use (all of the data held out; a clip range of 0; a GGUF type export does not write,
    which was found only after training) is a usage error before anything loads, and --help shows the bound."""
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and message in result.output, result.output
