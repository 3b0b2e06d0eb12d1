"""The records of DESIGN.md: their shapes, validation that names the field, kinds, ids and `meta`.

A shape is written as a small spec: a dict is an object (a key ending in `?` is optional and may be null), a
one-element list is a list of that element, and a type is a leaf. Validation returns the first problem as
`field.path: what is wrong`, so an error reads `FILE:LINE: steps[2].action: expected a string, got a number`.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, Callable, Iterator

import orjson

from eexp import __version__

NUMBER = (int, float)
ANY = object

ENV = {"name": str, "version": str, "kwargs?": dict}
TASK = {"id": str, "split": str, "goal": str, "category?": str}
STEP = {"observation": str, "action": str, "admissible?": [str]}
STATE = {"goal": str, "history": [{"observation": str, "action": str}], "observation": str, "admissible?": [str]}
ALTERNATIVE = {
    "action": str,
    "source": str,
    "seed?": int,
    "next_observation?": str,
    "reward?": NUMBER,
    "done?": bool,
    "valid?": bool,
    "error?": str,
}
MESSAGE = {"role": str, "content": str, "weight?": NUMBER}


def type_name(value) -> str:
    """A JSON value's type as an error message names it (`expected a string, got a number`)."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


SHAPES: dict[str, dict] = {
    "trajectory": {
        "id": str,
        "env": ENV,
        "task": TASK,
        "steps": [STEP],
        "final_observation": str,
        "success": bool,
        "score?": NUMBER,
        "meta?": dict,
    },
    "branch": {
        "id": str,
        "source_id": str,
        "trajectory_id": str,
        "step": int,
        "env": ENV,
        "task": TASK,
        "prefix": [str],
        "state": STATE,
        "expert": {"action": str},
        "alternatives": [ALTERNATIVE],
        "meta?": dict,
    },
    "outcome": {
        "id": str,
        "source_id": str,
        "trajectory_id": str,
        "step": int,
        "env": ENV,
        "task": TASK,
        "prefix": [str],
        "state": STATE,
        "expert": {
            "action": str,
            "next_observation?": str,
            "reward?": NUMBER,
            "done?": bool,
            "valid?": bool,
            "error?": str,
        },
        "alternatives": [ALTERNATIVE],
        "error?": str,
        "meta?": dict,
    },
    "example": {"id": str, "source_id?": str, "messages": [MESSAGE], "meta?": dict},
    "preference": {
        "id": str,
        "source_id?": str,
        "prompt": [MESSAGE],
        "chosen": [MESSAGE],
        "rejected": [MESSAGE],
        "meta?": dict,
    },
    "episode": {
        "id": str,
        "task": TASK,
        "policy": str,
        "actions": [str],
        "observations": [str],
        "success": bool,
        "score": NUMBER,
        "steps": int,
        "invalid_actions": int,
        "stop_reason": str,
        "meta?": dict,
    },
    "summary": {
        "env": str,
        "split": str,
        "policy": str,
        "n": int,
        "success_rate": NUMBER,
        "ci_low": NUMBER,
        "ci_high": NUMBER,
        "mean_score": NUMBER,
        "mean_steps": NUMBER,
        "invalid_rate": NUMBER,
        "by_category?": dict,
    },
    "prediction": {
        "id": str,
        "source_id": str,
        "trajectory_id": str,
        "step": int,
        "env": ENV,
        "task": TASK,
        "action": str,
        "action_source": str,
        "alternative": int,
        "prompt_sha256": str,
        "prediction": str,
        "labelled": bool,
        "finish_reason": str,
        "target": str,
        "scores?": dict,
        "effect": dict,
        "meta?": dict,
    },
}

KIND_NAMES = {
    "trajectory": "a trajectory",
    "branch": "a branch record",
    "outcome": "an outcome record",
    "example": "a training example",
    "preference": "a preference pair",
    "episode": "an episode",
    "summary": "an eval summary",
    "prediction": "a world-model prediction",
}
KIND_PLURALS = {
    "trajectory": "trajectories",
    "branch": "branch records",
    "outcome": "outcomes",
    "example": "training examples",
    "preference": "preference pairs",
    "episode": "episodes",
    "summary": "eval summaries",
    "prediction": "world-model predictions",
}


# A spec is compiled once into a function value -> None | (path parts, problem); the path is only built when
# something is wrong, so validating a good record costs little (stages validate every input record).
Problem = tuple[list, str]


def _exact_types(spec: Any) -> tuple:
    """The types a leaf spec takes at a glance (`type(value) in them`, no call); () for an object, a list or ANY."""
    if isinstance(spec, (dict, list)) or spec is ANY:
        return ()
    return spec if isinstance(spec, tuple) else (spec,)


def _compile(spec: Any) -> Callable[[Any], Problem | None]:
    if isinstance(spec, dict):
        # a field whose value has one of its leaf's exact types passes without calling its check (most fields)
        fields = [(key.rstrip("?"), key.endswith("?"), _compile(sub), _exact_types(sub)) for key, sub in spec.items()]

        def check_object(value):
            if not isinstance(value, dict):
                return [], f"expected an object, got {type_name(value)}"
            for name, optional, check_field, exact in fields:
                if name not in value:
                    if optional:
                        continue
                    return [name], "missing"
                item = value[name]
                if type(item) in exact:
                    continue
                if item is None and optional:
                    continue
                problem = check_field(item)
                if problem:
                    return [name, *problem[0]], problem[1]
            return None

        return check_object
    if isinstance(spec, list):
        check_item = _compile(spec[0])
        exact = _exact_types(spec[0])

        def check_list(value):
            if not isinstance(value, list):
                return [], f"expected a list, got {type_name(value)}"
            if exact:  # a list of leaves (strings): checked at a glance, item by item only to name a problem
                for item in value:
                    if type(item) not in exact:
                        break
                else:
                    return None
            for i, item in enumerate(value):
                problem = check_item(item)
                if problem:
                    return [i, *problem[0]], problem[1]
            return None

        return check_list
    if spec is ANY:
        return lambda value: None
    wanted = spec if isinstance(spec, tuple) else (spec,)
    expected = f"expected {type_name(wanted[0]())}"
    takes_bool = bool in wanted

    def check_leaf(value):
        if type(value) in wanted:  # the common case, without the isinstance calls
            return None
        if isinstance(value, wanted) and (takes_bool or not isinstance(value, bool)):  # True is no number to us
            return None
        return [], f"{expected}, got {type_name(value)}"

    return check_leaf


def _path(parts: list) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "record"


_COMPILED: dict[int, Callable] = {}


def check(value: Any, spec: Any) -> str | None:
    """The first way `value` departs from `spec`, as `field.path: problem`, or None."""
    compiled = _COMPILED.get(id(spec))
    if compiled is None:
        compiled = _COMPILED[id(spec)] = _compile(spec)
    problem = compiled(value)
    return None if problem is None else f"{_path(problem[0])}: {problem[1]}"


def kind_of(record: dict) -> str | None:
    """Which DESIGN.md record this looks like, from its distinctive keys (not a validation)."""
    if "messages" in record:
        return "example"
    if "chosen" in record and "rejected" in record:
        return "preference"
    if "prediction" in record and "target" in record:
        return "prediction"
    if "steps" in record and "final_observation" in record:
        return "trajectory"
    if "alternatives" in record:
        meta = record.get("meta")
        stage = meta.get("stage") if isinstance(meta, dict) else None
        if stage in ("branch", "rollout"):  # the stage that wrote it says: a damaged outcome is still an outcome,
            return "outcome" if stage == "rollout" else "branch"  # and its validation names the field it lacks
        expert = record.get("expert") if isinstance(record.get("expert"), dict) else {}
        # rollout fills the expert's outcome, or its error (an expert action that failed), or the record's
        return "outcome" if "next_observation" in expert or "error" in expert or "error" in record else "branch"
    if "stop_reason" in record or ("actions" in record and "policy" in record):
        return "episode"
    if "success_rate" in record:
        return "summary"
    return None


def validate(record: dict, kind: str) -> str | None:
    problem = check(record, SHAPES[kind])
    if problem is None and kind == "example":
        problem = _check_messages(record["messages"])
    if problem is None and kind == "preference":
        problem = _check_pair(record)
    if problem is None and kind == "outcome":
        problem = _check_executed(record)
    return problem


def _check_executed(outcome: dict) -> str | None:
    """rollout gives the expert's action and every alternative a next observation or an error, unless the state
    itself could not be reached (the record's error): a record that has neither was cut, not rolled out."""
    if outcome.get("error"):
        return None
    for path, executed in [("expert", outcome["expert"])] + [
        (f"alternatives[{j}]", alt) for j, alt in enumerate(outcome["alternatives"])
    ]:
        if executed.get("next_observation") is None and not executed.get("error"):
            return f"{path}.next_observation: missing"
    return None


def _check_messages(messages: list[dict]) -> str | None:
    if not messages:
        return "messages: empty"
    for i, m in enumerate(messages):
        if m["role"] not in ("system", "user", "assistant", "tool"):
            return f"messages[{i}].role: expected system, user, assistant or tool, got {m['role']!r}"
        weight = m.get("weight", 1)
        if not (math.isfinite(weight) and weight >= 0):  # a negative one would push the target down, silently
            return f"messages[{i}].weight: expected a number >= 0 (0: not trained on), got {weight}"
    if not any(m["role"] == "assistant" for m in messages):
        return "messages: no assistant turn to learn from"
    return None


def _check_pair(record: dict) -> str | None:
    """A pair as DPO reads it: a prompt that ends on a user turn, and assistant turns on each side."""
    if not record["prompt"]:
        return "prompt: empty"
    if record["prompt"][-1]["role"] != "user":
        return f"prompt: expected it to end on a user turn, got {record['prompt'][-1]['role']!r}"
    for side in ("chosen", "rejected"):
        if not record[side]:
            return f"{side}: empty"
        for i, m in enumerate(record[side]):
            if m["role"] != "assistant":
                return f"{side}[{i}].role: expected assistant, got {m['role']!r}"
    return None


def expect(*kinds: str):
    """A validator for run_stage: the record must be one of `kinds`, and valid as that kind."""

    def check_record(record: dict) -> str | None:
        kind = kind_of(record)
        if kind not in kinds:
            wanted = " or ".join(KIND_NAMES[k] for k in kinds)
            got = KIND_NAMES.get(kind, "a record of no known kind")
            # most likely the wanted kind with a field missing: it is named
            missing = validate(record, kinds[0]) if kind is None and len(kinds) == 1 else None
            return f"expected {wanted}, got {got}" + (f" ({missing})" if missing else "")
        return validate(record, kind)

    return check_record


# --- ids and meta ---------------------------------------------------------------------------------------------


def short_hash(*parts: Any, n: int = 12) -> str:
    data = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()[:n]


_utc_second: tuple[int, str] = (-1, "")  # the last whole second and its text, formatted once per second


def utc_now() -> str:
    global _utc_second
    now, (second, text) = int(time.time()), _utc_second
    if now != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        _utc_second = (now, text)
    return text


def make_meta(stage: str, **fields: Any) -> dict:
    """`meta` for a non-example record: the stage, the version and the time, plus what the stage adds."""
    return {"stage": stage, "eexp_version": __version__, **fields, "created_utc": utc_now()}


# What a resumed file and its continuation must agree on (`--resume`): the settings each stage records in `meta`
# that shape its records, by the stage that wrote them. Not what varies from record to record (the environment of a
# mixed input, the task, the step, an example's action, a reflection's fallback reflector) nor when or by which
# eexp version it was written. A stage not named here is checked some other way (eval: its settings are in the
# episode id; world-model-eval: meta.run) or cannot resume.
_RUN_META = {
    "expert": ("env", "env_kwargs", "split", "seed", "policy", "step_timeout", "admissible"),
    "rollout": ("step_timeout",),
    "imitation-data": ("kind", "serializer", "extra"),
    "world-model-data": ("kind", "serializer", "extra"),
    "preference-data": ("kind", "serializer", "extra", "rejected_filter"),
    "critic-data": ("kind", "serializer"),
    "reflect": ("kind", "serializer"),  # not meta.seed: a model reflector's is derived per outcome (derive_seed)
}
_RUN_EXTRA = {
    "critic-data": ("rejected_filter", "balance"),
    "reflect": ("template_sha256",),
}  # run-level keys of meta.extra
# a model reflection's own (a grounded fallback's record has none of them: compared where both records have them)
_REFLECT_MODEL_META = ("model", "model_sha256")
_REFLECT_MODEL_EXTRA = ("temperature", "top_p", "max_tokens")
# branch's meta, less these, is its settings and its policy's; these are not: the environment of a mixed input, a
# dreamed trajectory's world, the endpoints of a fleet that answered at the start, the CPU's llama.cpp buffers, the
# time and the version
_PER_RECORD_BRANCH_META = {"env", "env_version", "dream", "endpoint", "extra_bufts", "created_utc", "eexp_version"}


def run_settings(record: dict) -> dict[str, Any] | None:
    """The settings of the run that wrote `record`, as its meta records them (see _RUN_META); None for a record
    whose stage has none to compare. Two records' are compared on the keys both have (a reflection's model settings
    are in a model reflection's alone)."""
    meta = record.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("stage"), str):
        return None
    stage = meta["stage"]
    if stage == "branch":  # every key but the environment's and the time: its settings and the policy's
        return {"stage": stage, **{k: v for k, v in meta.items() if k not in _PER_RECORD_BRANCH_META}}
    if stage not in _RUN_META:
        return None
    found = {"stage": stage, **{key: meta.get(key) for key in _RUN_META[stage]}}
    if stage == "rollout" and isinstance(meta.get("branch"), dict):
        # the branch run its input came from (its K, seed, proposer): a part rolled out from `-k 8` is not continued
        # from `-k 3`'s branches
        branch = run_settings({"meta": meta["branch"]}) or {}
        found.update({f"branch.{key}": value for key, value in branch.items() if key != "stage"})
    if stage in _RUN_EXTRA:
        try:
            extra = orjson.loads(meta.get("extra") or "{}")
        except orjson.JSONDecodeError:
            extra = {}
        extra = extra if isinstance(extra, dict) else {}
        # a key a file's records do not have (written before eexp recorded it) is not compared
        found.update({key: extra[key] for key in _RUN_EXTRA[stage] if key in extra})
        if stage == "reflect":
            # who the run asked: a grounded fallback's record names the model reflector it stands in for, so a file
            # of grounded reflections is not continued by a model's, nor the other way round
            found["reflector"] = extra.get("fallback_for") or meta.get("reflector")
        if stage == "reflect" and meta.get("reflector") not in ("", "grounded"):
            found.update({key: meta.get(key) for key in _REFLECT_MODEL_META})
            found.update({key: extra.get(key) for key in _REFLECT_MODEL_EXTRA})
    return found


# Every training example has exactly these meta keys with these types, whichever stage wrote it, so Arrow never
# sees a column change type (huggingface/datasets #6460). Unknown values are "" or 0, never null.
EXAMPLE_META: dict[str, type] = {
    "stage": str,  # imitation-data | world-model-data | reflect | preference-data | critic-data
    "kind": str,  # il | il-obs | iwm | sr | critic (preference pairs: preference)
    "eexp_version": str,
    "env": str,
    "env_version": str,
    "task_id": str,
    "trajectory_id": str,
    "step": int,
    "action": str,  # the action the example is about (expert, or the alternative for IWM)
    "action_source": str,  # expert | policy | admissible
    "model": str,  # the model that wrote part of the example (reflect), else ""
    "model_sha256": str,
    "reflector": str,  # self | teacher | grounded, else ""
    "seed": int,  # the sampling seed used, 0 when none was
    "serializer": str,  # the state serializer settings, as compact JSON
    "extra": str,  # anything else, as compact JSON ("" when nothing)
    "created_utc": str,
}


_EMPTY_META = {key: typ() for key, typ in EXAMPLE_META.items()}  # "" or 0


def example_meta(**fields: Any) -> dict:
    """Fill the fixed example meta: known keys of the right type kept, anything else folded into `extra`."""
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in fields.items():
        typ = EXAMPLE_META.get(key)
        if type(value) is typ and key != "extra":  # the common case: a known key, the exact type
            out[key] = value
        elif typ is None or key == "extra":
            if key != "extra" and value not in (None, "", {}, []):
                extra[key] = value
        elif isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
            out[key] = value
        elif typ is int and isinstance(value, float) and value.is_integer():
            out[key] = int(value)
        elif value is not None:
            extra[key] = value
    if fields.get("extra"):
        out["extra"] = (
            fields["extra"]
            if isinstance(fields["extra"], str)
            else orjson.dumps(fields["extra"], option=orjson.OPT_SORT_KEYS).decode()
        )
    elif extra:
        out["extra"] = orjson.dumps(extra, option=orjson.OPT_SORT_KEYS).decode()
    meta = {**_EMPTY_META, **out}  # every key, in EXAMPLE_META's order
    meta["eexp_version"] = meta["eexp_version"] or __version__
    meta["created_utc"] = meta["created_utc"] or utc_now()
    return meta


def outcome_origin(outcome: dict) -> dict:
    """The example meta that says which expert state an outcome record's examples come from."""
    return dict(
        env=outcome["env"]["name"],
        env_version=outcome["env"]["version"],
        task_id=outcome["task"]["id"],
        trajectory_id=outcome["trajectory_id"],
        step=outcome["step"],
    )


# --- states along a trajectory ---------------------------------------------------------------------------------


def trajectory_states(trajectory: dict) -> Iterator[tuple[int, dict, str]]:
    """(step, raw state, expert action) for every step: the state the expert acted in, history included."""
    steps = trajectory["steps"]
    goal = trajectory["task"]["goal"]
    for i, step in enumerate(steps):
        state = {
            "goal": goal,
            "history": [{"observation": s["observation"], "action": s["action"]} for s in steps[:i]],
            "observation": step["observation"],
        }
        if step.get("admissible") is not None:
            state["admissible"] = step["admissible"]
        yield i, state, step["action"]
