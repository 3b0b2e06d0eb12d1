"""world-model-eval: how well a model predicts the next state of held-out transitions (issue 53, item 1).

IWM (`world-model-data`) trains a model on (state, action) -> `Observation: <next observation>`. This stage asks a
model the prompts of those very examples (`world_model_transitions`: the same serializer, the same system prompt,
the same transitions, the expert's and every executed alternative's) and scores each answer against the example's
target, the observation the environment really showed:

- `exact`: the prediction equals the target. Both are read as the serializer writes a target: the `Observation:`
  label taken off, surrounding whitespace stripped (`clip`'s normalisation; with `max_chars`, the target clipped as
  world-model-data --max-chars clipped it); nothing else is normalised.
- `f1`: token-level F1 between prediction and target (`tokens`: case folded, every run of letters, digits and
  underscores one token and every other non-space character one token; counted as multisets, as SQuAD's F1 does).
  Both empty: 1; one empty: 0.
- the effect of the action, where the record can say it: `changed` (did the observation change? the record: the
  next observation differs from the current one, whitespace-normalised, as rollout's state check compares them; the
  prediction: it differs from the current observation), and `valid` (did the environment accept the action? the
  record's `valid`, read from the prediction by the environment's refusal reply where that has a fixed form,
  `INVALID_REPLIES`, and only for the transitions whose recorded target that reply reads right). `done` is in the
  record but not in an IWM target (world-model-data trains the observation alone), so no prediction can be scored
  on it: the summary says so.

One record per prediction (kind `prediction`, eexp.records), flushed as it is made; `summarize` reads them back
into the --summary file: per environment the rates with their 95% Wilson intervals and the mean F1 with a seeded
bootstrap interval (eexp.stats). A failed request (a server that did not answer) is recorded, marked by its
`finish_reason`, and left out of the scores.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import orjson

from eexp.fields import setting
from eexp.inflight import InOrder
from eexp.policies.base import derive_seed
from eexp.prompts import Serializer, clip, read_observation
from eexp.records import make_meta, short_hash
from eexp.runner import MadeFrom, Stage
from eexp.stages.settings import shared
from eexp.stages.world_model import world_model_transitions
from eexp.stats import bootstrap_mean, wilson
from eexp.text import normalize_space

STAGE = "world-model-eval"
# What the scores mean: bumped whenever a score is computed otherwise, so records of two versions are not compared.
SCORER_VERSION = 1
TOKEN_RULE = (
    "case folded; every run of letters, digits and underscores is one token, every other non-space character one token"
)
_TOKEN = re.compile(r"\w+|[^\w\s]")
FAILED = "error"  # a finish_reason that starts so: the request failed, nothing was predicted

# How an environment's observation says that it refused the action, where it says so in a fixed form (each from the
# environment's step(): alfworld_env, scienceworld_env.INVALID_REPLY, shop._invalid, miniwob_env, tau2_env). A
# prediction that matches says "refused", one that does not says "accepted". Other environments (textworld, tools,
# bfcl) word a refusal like any other observation, so validity is not scored there.
INVALID_REPLIES = {
    "alfworld": re.compile(r"Nothing happens\.?\s*\Z"),
    "scienceworld": re.compile(r"No known action matches that input\.?\s*\Z"),
    "shop": re.compile(r"invalid action:"),
    "miniwob": re.compile(r"Invalid action:"),
    "tau2": re.compile(r"Invalid action:"),
}
DONE_NOT_SCORABLE = (
    "an IWM prediction is the next observation alone (world-model-data trains no end-of-episode "
    "signal), so none says whether the episode ended; the records carry the recorded `done`"
)
VALID_NOT_SCORABLE = (
    "this environment words a refused action like any other observation (no fixed refusal reply "
    "eexp can read from a prediction)"
)


@dataclass(frozen=True)
class Settings:
    """How the model is asked and what its answers are scored against; the defaults and help of world-model-eval's
    options are these fields' (eexp.cli.options.field_options)."""

    max_chars: int = setting(
        0,
        "Clip each recorded next observation to this many characters before scoring, as "
        "world-model-data --max-chars clipped the model's training targets (0: no limit).",
        min=0,
    )
    temperature: float = shared("temperature", 0.0)  # greedy: the model's most likely next state
    top_p: float = shared("top_p")
    # an observation is longer than an action: a shop page is ~1,500 characters
    max_tokens: int = shared("max_tokens", 512)
    seed: int = shared("seed")


def tokens(text: str) -> list[str]:
    """The tokens the F1 score counts (TOKEN_RULE)."""
    return _TOKEN.findall(text.casefold())


def token_f1(prediction: str, target: str) -> float:
    """Token-level F1 of a prediction against a target (tokens; multiset overlap): 2PR / (P + R)."""
    p, t = tokens(prediction), tokens(target)
    if not p and not t:
        return 1.0
    common = sum((Counter(p) & Counter(t)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def refused(env: str, observation: str) -> bool | None:
    """Whether an observation is the environment's refusal reply (None: this environment has no fixed one)."""
    pattern = INVALID_REPLIES.get(env)
    return None if pattern is None else bool(pattern.match(observation.strip()))


def prompt_sha256(messages: list[dict]) -> str:
    """The hash a prediction record carries of its prompt: sha256 of the messages as compact JSON (orjson, keys in
    order); the same hash of an IWM example's messages without its last (the assistant's) is the same value."""
    return hashlib.sha256(orjson.dumps(messages)).hexdigest()


def effect_of(env: str, observation: str, executed: dict, target: str, prediction: str, max_chars: int) -> dict:
    """The effect fields of one prediction: what the record says happened and what the prediction says, where the
    record can say it (see the module)."""
    changed = normalize_space(executed["next_observation"]) != normalize_space(observation)
    effect = {
        "changed": changed,
        "predicted_changed": normalize_space(prediction) != normalize_space(clip(observation, max_chars)),
        "valid": None,
        "predicted_valid": None,
        "done": executed["done"] if isinstance(executed.get("done"), bool) else None,
    }
    valid = executed.get("valid")
    said = refused(env, target)
    if isinstance(valid, bool) and said is not None and said == (not valid):  # the reply reads this target right
        effect["valid"], effect["predicted_valid"] = valid, not refused(env, prediction)
    return effect


def score(effect: dict, prediction: str, target: str) -> dict:
    return {
        "exact": prediction == target,
        "f1": round(token_f1(prediction, target), 6),
        "changed": effect["predicted_changed"] == effect["changed"],
        "valid": None if effect["valid"] is None else effect["predicted_valid"] == effect["valid"],
    }


Predict = Callable[[list[dict], int], tuple[str, str]]  # (prompt messages, seed) -> (reply text, finish_reason)


def asked(example: dict) -> list:
    """What a prediction record shows of the IWM example it was asked: its prompt's digest and its target."""
    return [prompt_sha256(example["messages"][:-1]), read_observation(example["messages"][-1]["content"])[0]]


def run_key(model: dict, settings: Settings, serializer: Serializer) -> str:
    """A short hash of what decides the predictions (model, decoding, serializer, clipping): meta.run, which
    --resume checks so that a file is continued only by the run that began it."""
    return short_hash(
        model.get("model", ""), model.get("model_sha256", ""), asdict(settings), serializer.json, SCORER_VERSION
    )


class WorldModelEval(Stage):
    """Outcome records in, one prediction record per IWM transition out, with up to `concurrency` predictions asked
    at once; the records come in input order, as a serial run writes them."""

    def __init__(
        self,
        *,
        predict: Predict,
        serializer: Serializer,
        settings: Settings,
        model: dict,
        count: Callable[..., None] = lambda name, n=1: None,
        concurrency: int = 1,
        keep: bool = False,
    ):
        self.predict, self.serializer, self.settings, self.model, self.count = (
            predict,
            serializer,
            settings,
            model,
            count,
        )
        self.keep = keep
        self.kept: list[dict] = []  # with keep: every record yielded (a summary of a run written to stdout)
        self.run = run_key(model, settings, serializer)
        self.calls = InOrder(concurrency, name="eexp-world-model-eval")

    def __call__(self, outcome: dict) -> Iterator[dict]:
        transitions = list(world_model_transitions(outcome, self.serializer, self.settings.max_chars, count=self.count))
        for j, executed, example in transitions:
            self.calls.submit(lambda j=j, executed=executed, example=example: self._one(outcome, j, executed, example))
        return self._collect()

    def made_from(self) -> MadeFrom:
        """For --resume (SameInput): a prediction shows its outcome by its prompt (the state as this serializer
        renders it, and the action) and its target (the observation the environment showed), an outcome by those of
        its transitions, in their order: a part begun from other outcomes behind the same ids is refused."""

        def from_outcome(outcome: dict) -> tuple[str, list]:
            transitions = world_model_transitions(outcome, self.serializer, self.settings.max_chars)
            return str(outcome.get("id")), [asked(example) for _, _, example in transitions]

        def from_prediction(prediction: dict) -> tuple[str, list]:
            return str(prediction.get("source_id")), [prediction.get("prompt_sha256"), prediction.get("target")]

        return MadeFrom(from_outcome, from_prediction, many=True)

    def _one(self, outcome: dict, j: int, executed: dict, example: dict) -> dict:
        s = self.settings
        messages = example["messages"][:-1]
        prompt_digest, target = asked(example)  # as made_from reads them: a resume compares these
        seed = derive_seed(s.seed, example["id"], 0)
        reply, finish_reason = self.predict(messages, seed)
        prediction, labelled = read_observation(reply)
        env = outcome["env"]["name"]
        effect = effect_of(env, outcome["state"]["observation"], executed, target, prediction, s.max_chars)
        failed = finish_reason.startswith(FAILED)
        if failed:  # nothing was predicted: no effect read from it
            effect["predicted_changed"] = effect["predicted_valid"] = None
        return {
            "id": f"wmeval:{outcome['id']}:{'expert' if j < 0 else j}",
            "source_id": outcome["id"],
            "trajectory_id": outcome["trajectory_id"],
            "step": outcome["step"],
            "env": outcome["env"],
            "task": outcome["task"],
            "action": executed["action"],
            "action_source": "expert" if j < 0 else executed.get("source", ""),
            "alternative": j,
            "prompt_sha256": prompt_digest,
            "prediction": prediction,
            "labelled": labelled,
            "finish_reason": finish_reason,
            "target": target,
            "scores": None if failed else score(effect, prediction, target),
            "effect": effect,
            "meta": make_meta(
                STAGE,
                model=self.model.get("model", ""),
                model_sha256=self.model.get("model_sha256", ""),
                policy=self.model.get("policy", ""),
                env=env,
                env_version=outcome["env"]["version"],
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=s.seed,
                call_seed=seed,
                max_chars=s.max_chars,
                serializer=self.serializer.json,
                scorer=SCORER_VERSION,
                example_id=example["id"],
                run=self.run,
            ),
        }

    def finish(self) -> Iterator[dict]:
        return self._collect(block=True)

    def _collect(self, block: bool = False) -> Iterator[dict]:
        for _, record in self.calls.ready(block):
            if record["scores"] is None:
                self.count("failed_predictions")
            else:
                self.count("exact", int(record["scores"]["exact"]))
            self.count("predictions")
            if self.keep:
                self.kept.append(record)
            yield record

    def close(self) -> None:
        self.calls.close()


# --- the summary ------------------------------------------------------------------------------------------------


def rate(k: int, n: int) -> dict:
    low, high = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else 0.0, "ci_low": low, "ci_high": high}


def mean_f1(values: list[float], seed: int, resamples: int) -> dict:
    found = bootstrap_mean(values, resamples=resamples, seed=seed)
    return {"n": len(values), "mean": found.mean, "ci_low": found.ci_low, "ci_high": found.ci_high}


def scores_of(records: list[dict], seed: int, resamples: int) -> dict:
    """n, the exact-match rate (95% Wilson) and the mean F1 (seeded bootstrap) of scored predictions."""
    n = len(records)
    return {
        "n": n,
        "exact_match": rate(sum(r["scores"]["exact"] for r in records), n),
        "f1": mean_f1([r["scores"]["f1"] for r in records], seed, resamples),
    }


def summarize_env(env: str, records: list[dict], *, seed: int = 0, resamples: int = 10000) -> dict:
    scored = [r for r in records if r["scores"] is not None]
    n = len(scored)
    out = {
        "predictions": len(records),
        "failed": len(records) - n,
        "states": len({r["source_id"] for r in records}),
        **scores_of(scored, seed, resamples),
        "labelled": rate(sum(r["labelled"] for r in scored), n),
        "cut": sum(1 for r in scored if r["finish_reason"] == "length"),
    }
    out["changed"] = {
        **rate(sum(r["scores"]["changed"] for r in scored), n),
        "recorded_changed": sum(r["effect"]["changed"] for r in scored),
    }
    readable = [r for r in scored if r["scores"]["valid"] is not None]
    if readable:
        out["valid"] = {
            **rate(sum(r["scores"]["valid"] for r in readable), len(readable)),
            "recorded_invalid": sum(not r["effect"]["valid"] for r in readable),
            "not_scorable": n - len(readable),
        }
    else:
        out["valid"] = {
            "n": 0,
            "not_scorable": n,
            "why": VALID_NOT_SCORABLE
            if env not in INVALID_REPLIES
            else "no record says whether its action was valid in a form the refusal reply reads",
        }
    out["done"] = {"n": 0, "why": DONE_NOT_SCORABLE, "recorded_done": sum(1 for r in scored if r["effect"]["done"])}
    out["by_action"] = {
        "expert": scores_of([r for r in scored if r["alternative"] < 0], seed, resamples),
        "alternatives": scores_of([r for r in scored if r["alternative"] >= 0], seed, resamples),
    }
    return out


def summarize(records: Iterable[dict], *, seed: int = 0, resamples: int = 10000) -> dict:
    """The --summary object: what was asked of which model, per environment the rates (k of n, with 95% Wilson
    intervals) and the mean F1 (with a seeded percentile bootstrap interval), and which effect fields could be
    scored."""
    by_env: dict[str, list[dict]] = {}
    models: dict[str, None] = {}
    meta: dict = {}
    for record in records:
        by_env.setdefault(record["env"]["name"], []).append(record)
        meta = meta or record.get("meta") or {}
        models[(record.get("meta") or {}).get("model", "")] = None
    envs = {env: summarize_env(env, rs, seed=seed, resamples=resamples) for env, rs in sorted(by_env.items())}
    scorable = {name: sum(e[name]["n"] for e in envs.values()) for name in ("changed", "valid", "done")}
    return {
        "stage": STAGE,
        "model": " + ".join(models) if models else "",
        "policy": meta.get("policy", ""),
        "temperature": meta.get("temperature"),
        "seed": meta.get("seed"),
        "max_chars": meta.get("max_chars"),
        "scorer": SCORER_VERSION,
        "tokens": TOKEN_RULE,
        "intervals": "95%: Wilson for rates; percentile "
        f"bootstrap ({resamples} resamples, seed {seed}) for the mean F1; predictions taken as independent",
        "predictions": sum(e["predictions"] for e in envs.values()),
        "scored": sum(e["exact_match"]["n"] for e in envs.values()),
        "effect_scorable": {
            **scorable,
            "valid_envs": sorted(e for e, s in envs.items() if s["valid"]["n"]),
            "done_why": DONE_NOT_SCORABLE,
        },
        "envs": envs,
    }


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_summary(summary: dict) -> str:
    """The lines world-model-eval prints on stderr: one per environment. Each effect rate comes with what the
    records say (how many transitions changed the state, how many actions were refused), since a rate is read
    against that base: where nothing was refused, any model that never predicts a refusal scores 100% on valid."""
    lines = []
    for env, s in summary["envs"].items():
        e, f, c = s["exact_match"], s["f1"], s["changed"]
        line = (
            f"world-model-eval: {env}: {e['n']} predictions ({s['states']} states): exact match {pct(e['rate'])} "
            f"[{pct(e['ci_low'])}, {pct(e['ci_high'])}], token F1 {f['mean']:.3f} [{f['ci_low']:.3f}, "
            f"{f['ci_high']:.3f}]; effect right: changed {pct(c['rate'])} of {c['n']} "
            f"({c['recorded_changed']} changed the state)"
        )
        v = s["valid"]
        line += (
            f", valid {pct(v['rate'])} of {v['n']} ({v['recorded_invalid']} refused)"
            if v["n"]
            else ", valid not scorable"
        ) + ", done not scorable"
        if s["failed"]:
            line += f"; {s['failed']} failed requests left out"
        if s["cut"]:
            line += f"; {s['cut']} replies cut at --max-tokens"
        lines.append(line)
    return "\n".join(lines) or "world-model-eval: no predictions"
