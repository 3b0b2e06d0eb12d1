"""reflect's settings: what the reflector is shown, the filters' word limits and how it samples. Their own module,
so that the prompt template (which reads the limits) and the stage both import them and neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

from eexp.fields import setting
from eexp.stages.settings import shared


@dataclass(frozen=True)
class Settings:
    """What the reflector is shown, the filters' word limits, and how it samples. The defaults and help of reflect's
    options are these fields' (eexp.cli.options.field_options)."""

    # the paper finds SR best at K = 2-4
    max_alternatives: int = setting(
        3, "Alternatives shown per state: the first N that rollout executed, valid or not.", min=1
    )
    # The templates ask for 40-120 words (a short rationale, as the grounded writer's ~50): 200 words is ~260 tokens,
    # past which eval's thought budget cuts the closing `So my move is ...` (the paper's repo capped at 500).
    max_words: int = setting(200, "Reject reflections longer than this.", min=1)
    # a few words explain nothing (and are what a broken model emits)
    min_words: int = setting(10, "Reject reflections shorter than this.", min=1)
    max_outcome_chars: int = setting(600, "Clip each outcome shown to the reflector (0: no limit).", min=0)
    # Reflections are free prose: 1024 tokens leaves ample room for the 40-120 words the prompt asks for (and the
    # 200-word cap), so a reply is cut only when it rambles, and 0.7 keeps a small model coherent while still varying
    # the wording from state to state (the paper used 0.9 for TravelPlanner; its repo's generator ran at 0.7).
    temperature: float = shared("temperature", 0.7)
    top_p: float = shared("top_p")
    max_tokens: int = shared("max_tokens", 1024)
    seed: int = shared("seed")


@dataclass(frozen=True, kw_only=True)
class StageSettings:
    """reflect's options about the stage rather than what the reflector is shown: who writes, from which template,
    where rejected reflections go and what their states get. Their defaults and help, written once (field_options)."""

    reflector: str | None = setting(
        None,
        "Who writes the reflections: self (the --policy model being trained; default with --policy), teacher (a "
        "stronger --policy model, recorded as teacher-assisted), grounded (no model: a deterministic rationale from "
        "the observed outcomes, not the paper's method).",
        choices=["self", "teacher", "grounded"],
    )
    template_path: str | None = setting(
        None,
        "Prompt template: a built-in one (default; short: two or three sentences after one worked example, for "
        "models of ~100M-1B parameters) or a file with the slots {situation}, {chosen_action}, {chosen_outcome} and "
        "{alternatives} ({goal} and {max_words} are optional).",
        flag="--template",
        metavar="NAME|FILE",
    )
    rejected: str | None = setting(None, "Write each rejected reflection here, with its reason.", metavar="FILE")
    fallback: str = setting(
        "none",
        "What a state whose model reflection was rejected gets: nothing (its IL example stays its only one), or the "
        "grounded rationale, labelled reflector=grounded in meta and counted as fallback_grounded.",
        choices=["none", "grounded"],
    )
