"""reflect: one self-reflection example per expert state, grounded in the outcomes observed by rollout.

Paper §4.3: a model sees the state, the chosen (expert) action with its outcome and a few alternatives with theirs,
and writes a first-person monologue explaining why the chosen action is the better one. The training example is
`state -> Thought: <monologue>\n\nAction: <expert action>`: the alternatives and the outcomes are only in the prompt
that *writes* the reflection, never in the training input (at inference the model has only the state).

Three reflectors: `self` (the model being trained writes its own reflections, the paper's setting), `teacher` (a
stronger model, recorded as teacher-assisted) and `grounded` (a deterministic rationale assembled from the observed
outcomes, no model: for CPU experiments and tests; not the paper's method, and its meta says so).

Every reflection goes through the same filters, from what the paper's public code base learned about its generated
reflections and what SmolLM2-135M did here: a cut-off reply, an empty, short or over-long one, label leakage, a copy
of the template's own words, page text pasted in (12 words in a row of an observation it was shown), one off the
topic or going round in circles, the chosen action's outcome narrated as already seen, a different concluding
action, and one that names a number or a place (an object's location, a receptacle, a folder, "found here") that
neither the state nor any outcome it was shown has (`claims`). A monologue repeated twice is repaired (first copy
kept), not rejected.

The package: the prompt template and what the reflector is shown (`template`), the grounded writer (`grounded`),
the filters (`filters`), the claims check (`claims`), the words they share (`text`), the stage's settings
(`settings`) and the stage itself (`stage`: `Reflect`, `reflect_examples`, `Reflector`, `policy_writer`). This file
defines nothing: it names what the commands and the tests import from the package.
"""

from __future__ import annotations

from eexp.stages.reflect.claims import Claim, Evidence, unsupported_claims
from eexp.stages.reflect.filters import (
    COUNTS,
    FILTERS,
    PASTE_RUN,
    Verdict,
    judge,
    page_runs,
    pasted_span,
    topic_words,
    trim_repeat,
)
from eexp.stages.reflect.grounded import VERSION as GROUNDED_VERSION
from eexp.stages.reflect.grounded import describe_action, grounded_reflection
from eexp.stages.reflect.settings import Settings
from eexp.stages.reflect.stage import Reflect, Reflector, policy_writer, reflect_examples
from eexp.stages.reflect.template import BUILTIN_TEMPLATES, Template, reflection_prompt, shown_alternatives

__all__ = [
    "BUILTIN_TEMPLATES",
    "COUNTS",
    "Claim",
    "Evidence",
    "FILTERS",
    "GROUNDED_VERSION",
    "PASTE_RUN",
    "Reflect",
    "Reflector",
    "Settings",
    "Template",
    "Verdict",
    "describe_action",
    "grounded_reflection",
    "judge",
    "page_runs",
    "pasted_span",
    "policy_writer",
    "reflect_examples",
    "reflection_prompt",
    "shown_alternatives",
    "topic_words",
    "trim_repeat",
    "unsupported_claims",
]
